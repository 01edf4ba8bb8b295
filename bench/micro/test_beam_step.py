"""Constrained beam step: C++ ext (ConstrainedIndex.beam_step) vs the PyTorch reference vs a top-k floor.

reference = catalog.valid_children + sidmlp_kernels.decode.reference.beam_step_reference
            (how beam_search_reference runs it: the `reference` backend);
floor     = torch.topk over the (B, W*K) candidate scores with no constraint at all.
"""

import pytest
import torch

from conftest import BEAM, L

PROVIDERS = ("ext", "reference", "floor_topk")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("level", range(L))
def test_beam_step(benchmark, levels, catalog, index, level, provider):
    from sidmlp_kernels.decode.constrained import PrefixState
    from sidmlp_kernels.decode.reference import beam_step_reference

    lv = levels[level]
    batch, width, k = lv.logits.shape
    benchmark.group = f"beam_step level {level} (B={batch}, W={width}, K={k})"
    benchmark.extra_info.update(level=level, width=width, k=k, provider=provider)
    if provider == "ext":
        state = PrefixState(lv.nodes, level)
        fn = lambda: index.beam_step(lv.logits, lv.scores, state, BEAM)  # noqa: E731
    elif provider == "reference":
        def fn():
            valid = catalog.valid_children(lv.prefixes.reshape(batch * width, level)).reshape(batch, width, k)
            valid &= torch.isfinite(lv.scores).unsqueeze(-1)
            return beam_step_reference(lv.logits, lv.scores, valid, BEAM)
    else:
        cand = (lv.scores.unsqueeze(-1) + lv.logits).reshape(batch, width * k)
        fn = lambda: torch.topk(cand, min(BEAM, cand.shape[1]), dim=1)  # noqa: E731
    with torch.inference_mode():
        benchmark(fn)
