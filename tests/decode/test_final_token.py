"""renormalize=False beam steps and a scored final token (decode/final_token.py), index and reference paths.

Oracle: with beam >= catalog size, beam search keeps every catalog item, so the result must be
every item ranked by its path score written out here: the sum of its digits' log-probabilities
(masked, never renormalised) plus the final token's, each a fixed function of the item's codes.
"""

import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.decode.constrained import constrained_beam_search
from sidmlp_kernels.decode.dispatch import BACKEND_ENV
from sidmlp_kernels.decode.reference import beam_search_reference

SIZES = (5, 4, 3)


def random_catalog(seed, n=40):
    g = torch.Generator().manual_seed(seed)
    codes = torch.unique(torch.stack([torch.randint(0, k, (n,), generator=g) for k in SIZES], 1), dim=0)
    return SIDCatalog.from_codes(torch.arange(100, 100 + codes.shape[0]), codes, SIZES)


def tables(batch, seed):
    """Per user a log-prob table per (level, prefix code hash, code) and a final-token table (stateless)."""
    g = torch.Generator().manual_seed(seed)
    digit = [torch.randn(batch, 64, k, generator=g).log_softmax(-1) - 0.3 for k in SIZES]  # mass elsewhere too
    final = torch.randn(batch, 64, generator=g).clamp(max=0) - 0.1
    return digit, final


def key(prefixes):
    """A hash of each (B, W, l) prefix into 64 buckets (stateless, so any beam order gives the same logits)."""
    out = torch.zeros(prefixes.shape[:2], dtype=torch.long)
    for j in range(prefixes.shape[2]):
        out = (out * 7 + prefixes[:, :, j].cpu() + 1) % 64
    return out


def step_fn_of(digit):
    def fn(level, prefixes, parents):
        k = key(prefixes)
        return torch.gather(digit[level], 1, k.unsqueeze(-1).expand(-1, -1, SIZES[level]))
    return fn


def final_of(final):
    return lambda prefixes, parents: torch.gather(final, 1, key(prefixes))


def oracle(catalog, digit, final, batch, with_final):
    codes = catalog.codes
    total = torch.zeros(batch, catalog.num_items)
    for level in range(len(SIZES)):
        k = key(codes[:, :level].unsqueeze(0).expand(batch, -1, -1))
        total += torch.gather(digit[level], 1, k.unsqueeze(-1).expand(-1, -1, SIZES[level])).gather(
            2, codes[:, level].view(1, -1, 1).expand(batch, -1, -1)).squeeze(-1)
    if with_final:
        total += torch.gather(final, 1, key(codes.unsqueeze(0).expand(batch, -1, -1)))
    scores, order = torch.sort(total, dim=1, descending=True)
    return catalog.item_ids[order], scores


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("with_final", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_beam_equals_every_item_by_its_unnormalized_score(monkeypatch, backend, with_final, seed):
    monkeypatch.setenv(BACKEND_ENV, backend)
    catalog = random_catalog(seed)
    batch, n = 3, catalog.num_items
    digit, final = tables(batch, seed)
    out = constrained_beam_search(step_fn_of(digit), catalog, batch, n, n, renormalize=False,
                                  final_logp=final_of(final) if with_final else None)
    items, scores = oracle(catalog, digit, final, batch, with_final)
    assert torch.equal(out.items, items)
    torch.testing.assert_close(out.scores, scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_index_path_equals_reference_with_narrow_beams(monkeypatch, seed):
    catalog = random_catalog(seed)
    digit, final = tables(4, seed)
    runs = {}
    for backend in ("cpu", "reference"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        runs[backend] = constrained_beam_search(step_fn_of(digit), catalog, 4, 3, 2, renormalize=False,
                                                final_logp=final_of(final))
    assert torch.equal(runs["cpu"].items, runs["reference"].items)
    torch.testing.assert_close(runs["cpu"].scores, runs["reference"].scores, atol=1e-6, rtol=0)
    # Renormalising is a different rule: the reference's default gives other scores on the same logits.
    renorm = beam_search_reference(step_fn_of(digit), catalog, 4, 3, 2)
    assert not torch.allclose(renorm.scores, runs["reference"].scores)


def test_final_logp_needs_a_catalog():
    from sidmlp_kernels.decode.constrained import index_for

    catalog = random_catalog(0)
    digit, final = tables(1, 0)
    with pytest.raises(ValueError, match="final_logp"):
        constrained_beam_search(step_fn_of(digit), index_for(catalog), 1, 2, 2, final_logp=final_of(final))
