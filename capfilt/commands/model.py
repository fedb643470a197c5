"""`capfilt model init` and `capfilt model info`: make a random-init checkpoint, describe one.

A fresh checkpoint serves as captioner and as filter (one MED, both heads). Its tokenizer is,
unless `--tokenizer DIR` names one (e.g. a BLIP checkpoint's), a WordPiece tokenizer trained on
the toy world's caption grammar, so that every word a toy caption can hold is one token.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field

from capfilt.commands import pretrain_vision
from capfilt.settings_cli import settings_command

EXIT_FAILED = 1

PresetName = Literal["tiny", "base", "large"]


class ModelInitSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    output: Path = Field(description="Checkpoint folder to write.")
    preset: PresetName = Field("tiny", description="Model size: tiny (CPU, toy world), base (ViT-B/16), large (ViT-L/16).")
    seed: int = Field(0, ge=0, description="Seed of the random init (same seed, same checkpoint hash).")
    image_size: int | None = Field(None, gt=0, description="Image side in px (default: the preset's; BLIP: 224 pre-train, 384 fine-tune).")
    position_init: Literal["random", "sincos"] | None = Field(
        None, description="How the ViT position embedding starts: random (BLIP) or sincos (the grid's geometry, "
                          "for training from scratch); default: the preset's (tiny: sincos).")
    vocab_size: int = Field(1024, ge=64, description="Upper bound on the trained toy tokenizer's vocabulary.")
    tokenizer: Path | None = Field(None, description="Use this folder's tokenizer (capfilt or BLIP) instead of training one.")
    overwrite: bool = Field(False, description="Replace an existing checkpoint folder.")


class ModelInfoSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    checkpoint: Path = Field(description="Checkpoint: capfilt folder, transformers BLIP folder, BLIP .pth, released "
                                         "preset (capfilt model list) or hub name org/name[@revision].")
    as_json: bool = Field(False, description="Print JSON instead of text.", json_schema_extra={"flag": "--json/--text"})


class ModelExportSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    checkpoint: Path = Field(description="capfilt checkpoint folder to export.")
    captioner: Path | None = Field(None, description="Write the captioner here as a transformers BlipForConditionalGeneration folder.")
    filter: Path | None = Field(None, description="Write the filter here as a transformers BlipForImageTextRetrieval folder.")


class ModelListSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    as_json: bool = Field(False, description="Print JSON instead of text.", json_schema_extra={"flag": "--json/--text"})


def released_presets() -> list[dict[str, Any]]:
    """BLIP's released weights that --captioner, --filter and --init take by name."""
    from dataclasses import asdict

    from model.released import RELEASED

    return [{**asdict(w), "format": "pth" if w.is_pth else "transformers"} for w in RELEASED.values()]


def format_presets(presets: list[dict[str, Any]]) -> str:
    from model.released import BLIP_TEST_TRANSFORM, CAPFILT_NEAREST

    lines = [f"{'name':<38}{'role':<11}{'ViT':<6}{'image':<7}source", "-" * 110]
    for p in presets:
        lines.append(f"{p['name']:<38}{p['role']:<11}{p['vit']:<6}{p['image_size']:<7}{p['source']}")
        lines.append(f"{'':<38}trained on: {p['trained_on']}; train transform: {p['train_transform']}"
                     + (f"; tokenizer from {p['tokenizer_from']}" if p['tokenizer_from'] else "")
                     + (f"; {p['note']}" if p['note'] else ""))
    lines += ["", f"Every preset's inference transform: {BLIP_TEST_TRANSFORM} at its image size.",
              f"Nearest released counterparts of BLIP's CapFilt-L: --captioner {CAPFILT_NEAREST['captioner']} "
              f"--filter {CAPFILT_NEAREST['filter']} (the CapFilt models themselves were never released)."]
    return "\n".join(lines)


def toy_caption_corpus() -> list[str]:
    """Every word and phrase of the toy world's caption grammar, in sentences like its captions,
    plus the printable ASCII characters (so that junk web alt-text never maps to [UNK]).

    Built from the grammar's vocabulary tables rather than by sampling scenes, so that it is
    complete and does not depend on how the world samples.
    """
    from capfilt.world.grammar import GENERIC_NOUNS, NUMBERS, PLACE_PHRASES, PREFIXES, RELATION_PHRASES
    from capfilt.world.scene import COLOURS, SHAPES, SIZES

    def plural(word: str) -> str:
        return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")

    nouns = [*SHAPES, *GENERIC_NOUNS]
    places = [p for forms in PLACE_PHRASES.values() for p in forms]
    relations = [r for forms in RELATION_PHRASES.values() for r in forms]
    prefixes = [p for p in PREFIXES if p] + ["there are"]
    lines: list[str] = []
    for i, noun in enumerate(nouns):
        for j, colour in enumerate(COLOURS):
            size = SIZES[(i + j) % len(SIZES)]
            det = "an" if size[0] in "aeiou" else "a"
            place = places[(i * len(COLOURS) + j) % len(places)]
            lines.append(f"{det} {size} {colour} {noun} {place}")
            count = list(NUMBERS)[(i + j) % len(NUMBERS)]
            lines.append(f"{count} {colour} {plural(noun)} {relations[(i + j) % len(relations)]} a {noun}")
    for k, prefix in enumerate(prefixes):
        lines.append(f"{prefix} an {SIZES[k % len(SIZES)]} {list(COLOURS)[k % len(COLOURS)]} {nouns[k % len(nouns)]} "
                     f"and a {nouns[-1 - k % len(nouns)]}")
    lines.append(" ".join(string.ascii_lowercase + string.digits + string.punctuation))
    return lines


def init_model(settings: ModelInitSettings) -> dict[str, Any]:
    """Write a random-init checkpoint; returns what `model info` would print."""
    from model.random_init import save_random_checkpoint
    from model.tokenizer import TextTokenizer, train_wordpiece

    out = settings.output
    if out.exists() and any(out.iterdir()) and not settings.overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    if settings.tokenizer is not None:
        tokenizer = TextTokenizer.load(settings.tokenizer)
    else:
        tokenizer = train_wordpiece(toy_caption_corpus(), vocab_size=settings.vocab_size)
    changes: dict[str, Any] = {}
    if settings.image_size is not None:
        changes["image_size"] = settings.image_size
    if settings.position_init is not None:
        changes["position_init"] = settings.position_init
    extra = {"created_by": "capfilt model init", "seed": settings.seed, "roles": ["captioner", "filter"],
             "settings": json.loads(settings.model_dump_json())}
    save_random_checkpoint(out, settings.preset, tokenizer, seed=settings.seed, extra=extra, **changes)
    return model_info(out)


def model_info(path: Path) -> dict[str, Any]:
    """Preset, kind, roles, parameter counts (total / captioner / filter) and the hash."""
    from model.checkpoint import load_checkpoint
    from model.med import count_parameters

    ck = load_checkpoint(path)
    med = ck.med
    return {
        "checkpoint": str(path),
        "kind": ck.kind,
        "preset": ck.config.preset,
        "roles": list(ck.roles),
        "image_size": ck.config.image_size,
        "vocab_size": ck.config.vocab_size,
        "tied": med.tied,
        "parameters": {
            "total": count_parameters([med]),
            "captioner": count_parameters(med.captioner_modules()),
            "filter": count_parameters(med.filter_modules()),
        },
        "sha256": ck.sha256,
        "source": ck.source.record() if ck.source else None,
    }


def export_model(settings: ModelExportSettings) -> list[Path]:
    """Export a checkpoint's captioner and/or filter to transformers' BLIP classes.

    A capfilt checkpoint stores each shared tensor once, so transformers cannot read the folder
    itself; these exports are the folders `from_pretrained` takes."""
    from model.checkpoint import load_checkpoint
    from model.hf_interop import export_captioner, export_filter

    if settings.captioner is None and settings.filter is None:
        raise ValueError("nothing to export: give --captioner DIR and/or --filter DIR")
    ck = load_checkpoint(settings.checkpoint)
    written = []
    if settings.captioner is not None:
        written.append(export_captioner(ck.med, ck.tokenizer, settings.captioner))
    if settings.filter is not None:
        written.append(export_filter(ck.med, ck.tokenizer, settings.filter))
    return written


def format_info(info: dict[str, Any]) -> str:
    p = info["parameters"]
    return "\n".join([
        f"checkpoint  {info['checkpoint']}",
        f"kind        {info['kind']} (roles: {', '.join(info['roles'])}; {'tied' if info['tied'] else 'untied'})",
        f"preset      {info['preset']} (image {info['image_size']} px, vocabulary {info['vocab_size']})",
        f"parameters  total {p['total']:,}  captioner {p['captioner']:,}  filter {p['filter']:,}",
        f"sha256      {info['sha256']}",
        *([f"resolved    {info['source']['pinned']} -> {info['source']['path']}"]
          if info.get("source") and info["source"]["pinned"] != info["checkpoint"] else []),
    ])


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Make and inspect MED checkpoints.", no_args_is_help=True)
    app.add_typer(model_app, name="model")
    pretrain_vision.register(model_app)

    @settings_command(model_app, "init", ModelInitSettings)
    def init(settings: ModelInitSettings) -> None:
        """Write a random-init checkpoint that serves as captioner and as filter."""
        try:
            info = init_model(settings)
        except (FileExistsError, ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED)
        typer.echo(format_info(info))

    @settings_command(model_app, "info", ModelInfoSettings, positional=["checkpoint"])
    def info(settings: ModelInfoSettings) -> None:
        """Print a checkpoint's preset, parameter counts and hash."""
        try:
            data = model_info(settings.checkpoint)
        except (ValueError, OSError) as exc:  # CheckpointError is a ValueError
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED)
        typer.echo(json.dumps(data, indent=2) if settings.as_json else format_info(data))

    @settings_command(model_app, "list", ModelListSettings)
    def list_presets(settings: ModelListSettings) -> None:
        """List BLIP's released weights that --captioner, --filter and --init take by name."""
        presets = released_presets()
        typer.echo(json.dumps(presets, indent=2) if settings.as_json else format_presets(presets))

    @settings_command(model_app, "export", ModelExportSettings, positional=["checkpoint"])
    def export(settings: ModelExportSettings) -> None:
        """Write the captioner and/or the filter as transformers BLIP folders."""
        try:
            written = export_model(settings)
        except (ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED)
        for path in written:
            typer.echo(f"wrote {path}")
