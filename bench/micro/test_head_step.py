"""One digit's head: folded (cpu backend and reference) vs unfolded vs the bare-GEMM floor.

folded_cpu   decode.backends._head_logits_cpu on the live beams (dense GEMM, or valid-children dot
             products where the level's fan-out is small): what the cpu backend runs
folded_ref   decode.folded.folded_logits: gather-add, LayerNorm, GELU, hidden -> K over all beams
unfolded     SIDMLP.head_logits: concat [ctx, e(d_1)...] then the whole first Linear per beam
floor_gemm   torch.mm of (B*W, H) rows with the (H, K) output weight: the GEMM no head can skip
"""

import pytest
import torch

from conftest import L

PROVIDERS = ("folded_cpu", "folded_ref", "unfolded", "floor_gemm")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("level", range(L))
def test_head_step(benchmark, levels, folded, student, ctx, index, level, provider):
    from sidmlp_kernels.decode import backends
    from sidmlp_kernels.decode.folded import folded_logits, project_context

    lv = levels[level]
    batch, width = lv.nodes.shape
    hidden, k = folded.out_weight[level].shape[1], folded.out_weight[level].shape[0]
    proj = project_context(folded, ctx)[level]
    benchmark.group = f"head level {level} (GEMM {batch * width}x{hidden}x{k})"
    benchmark.extra_info.update(level=level, rows=batch * width, hidden=hidden, k=k, provider=provider)
    if provider == "folded_cpu":
        fn = lambda: backends._head_logits_cpu(folded, level, proj, lv.prefixes, lv.nodes, index)  # noqa: E731
    elif provider == "folded_ref":
        fn = lambda: folded_logits(folded, level, proj, lv.prefixes)  # noqa: E731
    elif provider == "unfolded":
        fn = lambda: student.head_logits(level, ctx, lv.prefixes)  # noqa: E731
    else:
        x = torch.randn(batch * width, hidden)
        w = folded.out_weight[level]
        fn = lambda: torch.mm(x, w.t())  # noqa: E731
    with torch.inference_mode():
        benchmark(fn)
