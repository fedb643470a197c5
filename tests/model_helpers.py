"""Small models, tokenizers and foreign checkpoints that the model tests make themselves
(no hub here): a tiny WordPiece tokenizer, a MEDConfig and a BlipConfig of the same shape."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BlipConfig

from model.config import MEDConfig, preset
from model.tokenizer import TextTokenizer, train_wordpiece

CORPUS = [
    f"a {size} {colour} {shape} {where}"
    for size in ("small", "big", "large")
    for colour in ("red", "green", "blue", "yellow")
    for shape in ("circle", "square", "triangle", "star")
    for where in ("on the left", "in the middle", "near the top", "at the bottom")
]


def tiny_tokenizer() -> TextTokenizer:
    return train_wordpiece(CORPUS, vocab_size=120)


def small_config(tok: TextTokenizer, **changes) -> MEDConfig:
    """Smaller than the tiny preset, so the interop tests stay fast; heads are 2 so that a
    head-count bug would show."""
    base = preset(
        "tiny", image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=2,
        vision_mlp=96, vocab_size=tok.vocab_size, text_width=64, text_layers=2, text_heads=2,
        text_mlp=96, max_positions=40, embed_dim=32, tokens=tok.ids,
    )
    return base.replace(**changes) if changes else base


def blip_config(config: MEDConfig) -> BlipConfig:
    """transformers' config of the same shape, written out by hand (not via the code under test)."""
    return BlipConfig(
        text_config=dict(
            vocab_size=config.vocab_size, hidden_size=config.text_width, intermediate_size=config.text_mlp,
            num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_positions, bos_token_id=config.tokens.dec,
            pad_token_id=config.tokens.pad, sep_token_id=config.tokens.sep, eos_token_id=config.tokens.sep,
        ),
        vision_config=dict(
            hidden_size=config.vision_width, intermediate_size=config.vision_mlp,
            num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
            image_size=config.image_size, patch_size=config.patch_size, initializer_range=0.02,
        ),
        image_text_hidden_size=config.embed_dim,
    )


@torch.no_grad()
def jitter(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Random init leaves every LayerNorm at (1, 0) and biases at 0, where a swapped name would
    not show; noise on every tensor makes each one distinct."""
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def pixels(config: MEDConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, config.image_size, config.image_size, generator=gen)


def save_transformers(model, tok: TextTokenizer, directory: Path) -> Path:
    model.save_pretrained(directory)
    tok.save(directory)
    return directory


def to_blip_pth_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MED names -> salesforce/BLIP's original names, written independently of model/blip_pth.py."""
    import re

    vision = [
        (r"^vision\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
        (r"^vision\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
        (r"^vision\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
        (r"^vision\.post_layernorm\.", "visual_encoder.norm."),
        (r"^vision\.encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"visual_encoder.blocks.\1.norm\2."),
        (r"^vision\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
        (r"^vision\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"visual_encoder.blocks.\1.attn.qkv."),
        (r"^vision\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    ]
    out = {}
    for key, value in state.items():
        for pattern, repl in vision:
            key = re.sub(pattern, repl, key)
        out[key] = value.clone()
    assert not any(k.startswith("vision.") for k in out)
    return out


def write_hub_snapshot(cache: Path, repo_id: str, fill, commit: str) -> Path:
    """A model in huggingface_hub's cache layout, as a download would leave it:
    models--org--name/snapshots/<commit>/<files> and refs/main holding the commit.
    `fill(folder)` writes the files (save_pretrained + the tokenizer)."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    fill(snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
