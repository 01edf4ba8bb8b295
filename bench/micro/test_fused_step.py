"""Fused Triton digit step (CUDA only) vs the PyTorch reference step vs the bare-GEMM floor."""

import pytest
import torch

from conftest import BEAM, L

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused Triton step is timed on CUDA only")


@pytest.mark.parametrize("provider", ("fused_triton", "reference", "floor_gemm"))
@pytest.mark.parametrize("level", range(L))
def test_fused_step(benchmark, levels, folded, ctx, catalog, level, provider):
    from sidmlp_kernels.decode.folded import project_context
    from sidmlp_kernels.decode.kernels.fused_step import fused_step, fused_step_reference

    dev = torch.device("cuda")
    f = folded.to(dev)
    lv = levels[level]
    batch, width = lv.nodes.shape
    proj = project_context(f, ctx.to(dev))[level]
    prefixes, scores = lv.prefixes.to(dev), lv.scores.to(dev)
    valid = catalog.valid_children(lv.prefixes.reshape(batch * width, level)).reshape(batch, width, -1)
    valid &= torch.isfinite(lv.scores).unsqueeze(-1)
    valid = valid.to(dev)
    benchmark.group = f"fused step level {level} (B={batch}, W={width})"
    if provider == "fused_triton":
        def fn():
            fused_step(proj, f.prefix_tables[level], prefixes, f.ln_weight[level], f.ln_bias[level], f.ln_eps,
                       f.out_weight[level], f.out_bias[level], scores, valid, BEAM)
            torch.cuda.synchronize()
    elif provider == "reference":
        def fn():
            fused_step_reference(proj, f.prefix_tables[level], prefixes, f.ln_weight[level], f.ln_bias[level],
                                 f.ln_eps, f.out_weight[level], f.out_bias[level], scores, valid, BEAM)
            torch.cuda.synchronize()
    else:
        x = torch.randn(batch * width, f.out_weight[level].shape[1], device=dev)

        def fn():
            torch.mm(x, f.out_weight[level].t())
            torch.cuda.synchronize()
    with torch.inference_mode():
        benchmark(fn)
