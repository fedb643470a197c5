"""MED.unfilled (no random init, for loaders) builds the same module as MED(): same tensors, same
sharing; a loaded checkpoint equals one loaded into a normally built MED, and the tensors a
foreign file lacks get a real init, not whatever memory held."""

import pytest
import torch
from transformers import BlipForConditionalGeneration

from model.checkpoint import load_checkpoint, save_checkpoint
from model.med import MED
from model.weights_io import assign_state
from tests.model_helpers import blip_config, jitter, save_transformers, small_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sharing(med: MED) -> list[list[str]]:
    """Names grouped by the tensor they are (shared tensors give one group of several names)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in med.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return sorted(sorted(g) for g in groups.values())


@pytest.mark.parametrize("tie", [True, False])
def test_same_tensors_and_same_sharing(tie):
    cfg = small_config(tiny_tokenizer())
    built, unfilled = MED(cfg, tie=tie), MED.unfilled(cfg, tie=tie)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in unfilled.state_dict().items()}
    assert sharing(built) == sharing(unfilled)
    # buffers that no file holds (position ids) are made, not drawn
    for name, buf in built.named_buffers():
        assert torch.equal(buf, unfilled.get_buffer(name)), name


def test_capfilt_checkpoint_loads_the_same(tmp_path):
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    med = MED(small_config(tok))
    jitter(med)
    save_checkpoint(tmp_path / "ck", med, tok)
    loaded = load_checkpoint(tmp_path / "ck").med
    reference = MED(med.config)
    assign_state(reference, med.state_dict(), "reference")
    for (name, a), b in zip(loaded.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_tensors_a_foreign_file_lacks_get_a_real_init(tmp_path):
    """A transformers captioner has no ITC projections or ITM head: they are initialised (zero
    biases, weights with the config's spread, temp 0.07), not left as allocated."""
    tok = tiny_tokenizer()
    cfg = small_config(tok)
    torch.manual_seed(0)
    hf = BlipForConditionalGeneration(blip_config(cfg)).eval()
    ck = load_checkpoint(save_transformers(hf, tok, tmp_path / "cap"))
    assert set(ck.left_at_init) >= {"itm_head.weight", "itm_head.bias", "vision_proj.weight", "temp"}
    med = ck.med
    assert med.temp.item() == pytest.approx(0.07)
    for head in (med.itm_head, med.vision_proj, med.text_proj):
        assert torch.equal(head.bias, torch.zeros_like(head.bias))
        assert torch.isfinite(head.weight).all()
        assert head.weight.std().item() == pytest.approx(ck.config.init_range, rel=0.3)
