"""generate(dtype=torch.bfloat16): the encoder, context readout and heads under a bf16 autocast."""

import pytest
import torch

from sidmlp_kernels.accelerated import AcceleratedRecommender, new_student
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.decode.folded import folded_logits
from sidmlp_kernels.decode.reference import exhaustive_search
from sidmlp_kernels.metrics import top_overlap
from sidmlp_kernels.teacher.adapters import as_adapter
from sidmlp_kernels.teacher.models import build_t5_teacher

from tests.test_accelerated import random_catalog, random_examples

BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def model():
    """A tiny T5 teacher and SID-MLP heads on it (random weights), 32 test users."""
    cat = random_catalog(4, 80, (6, 5, 4))
    layout = TokenLayout.for_catalog(cat)
    teacher = build_t5_teacher(layout, "tiny", seed=0)
    # seed 1: random heads whose bf16 scores hold no exact ties (the exhaustive comparison needs none)
    rec = AcceleratedRecommender(layout, cat, new_student(as_adapter(teacher, cat, layout), seed=1), teacher=teacher)
    ids, mask, _, _ = random_examples(cat, layout, 32, seed=1).batch(torch.arange(32))
    return rec, cat, ids, mask


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("heads", [torch.float32, BF16])
def test_bf16_full_beam_equals_exhaustive_scoring(model, backend, heads):
    rec, cat, ids, mask = model
    rec.backend = backend
    try:
        proj = rec.context_projection(rec.encode(ids, mask, dtype=BF16), dtype=heads)
        out = rec.decode(proj, beam_size=cat.num_items, top_n=10, dtype=heads)
        if heads == torch.float32:  # what generate(dtype=bf16) runs: bf16 encoder, float32 readout and heads
            assert torch.equal(rec.generate(ids, mask, beam_size=cat.num_items, top_n=10, dtype=BF16).scores,
                               out.scores)
    finally:
        rec.backend = None
    # The oracle scores every catalog item with the plain-PyTorch folded heads in the same dtype.
    with torch.autocast("cpu", dtype=BF16, enabled=heads == BF16):
        oracle = exhaustive_search(lambda l, p: folded_logits(rec.folded, l, proj[l], p), cat, ids.shape[0], 10)
    # A beam as wide as the catalog is exhaustive: the same ranked items (no near-ties among these scores).
    assert float((oracle.scores[:, :-1] - oracle.scores[:, 1:]).min()) > 1e-4
    assert torch.equal(out.items, oracle.items)
    torch.testing.assert_close(out.scores, oracle.scores, atol=0.05, rtol=0.01)
    assert out.scores.dtype == torch.float32


def test_bf16_is_close_to_fp32_and_really_runs_in_bf16(model):
    rec, cat, ids, mask = model
    fp32 = rec.generate(ids, mask, beam_size=20, top_n=10)
    bf16 = rec.generate(ids, mask, beam_size=20, top_n=10, dtype=BF16)
    # T5's last RMSNorm hands back float32, so the encoder's bf16 shows in its values, not its dtype.
    states16, states32 = rec.encode(ids, mask, dtype=BF16).states, rec.encode(ids, mask).states
    assert not torch.equal(states16.float(), states32)
    torch.testing.assert_close(states16.float(), states32, atol=0.1, rtol=0.05)
    assert not torch.equal(bf16.scores, fp32.scores), "bf16 arithmetic leaves a trace in the scores"
    # Log-probabilities of 3-digit items, accumulated in float32 from bf16 logits: within a few hundredths.
    torch.testing.assert_close(bf16.scores[:, 0], fp32.scores[:, 0], atol=0.1, rtol=0.02)
    assert top_overlap(bf16.items, fp32.items, 10) > 0.8
    assert bool(((bf16.items >= 0) & torch.isin(bf16.items, cat.item_ids)).all())
    assert not torch.is_autocast_enabled("cpu"), "the autocast ends with generate()"


def test_dtype_default_from_pretrained_and_bad_dtypes(model, tmp_path):
    rec, cat, ids, mask = model
    rec.save_pretrained(tmp_path / "m")
    teacher = rec.teacher.model
    loaded = AcceleratedRecommender.from_pretrained(tmp_path / "m", teacher=teacher, dtype="bfloat16")
    assert loaded.compute_dtype == BF16
    want = rec.generate(ids, mask, beam_size=8, top_n=4, dtype=BF16)
    assert torch.equal(loaded.generate(ids, mask, beam_size=8, top_n=4).scores, want.scores)
    assert torch.equal(loaded.generate(ids, mask, beam_size=8, top_n=4, dtype=torch.float32).scores,
                       rec.generate(ids, mask, beam_size=8, top_n=4).scores)
    seqs = loaded.generate(ids, mask, num_beams=8, num_return_sequences=4, dtype=torch.float32)  # HF convention
    assert seqs.shape[0] == ids.shape[0] * 4
    for bad in (torch.float16, "fp8", 3):
        with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.bfloat16"):
            rec.generate(ids, mask, beam_size=8, top_n=4, dtype=bad)
    with pytest.raises(ValueError, match="dtype must be"):
        AcceleratedRecommender.from_pretrained(tmp_path / "m", teacher=teacher, dtype=torch.float64)
