import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.decode.reference import exhaustive_search
from sidmlp_kernels.decode.backends import decode_folded
from sidmlp_kernels.decode.folded import FoldedHeads, folded_logits, project_context
from sidmlp_kernels.distill.student import SIDMLP, SIDMLPConfig


def make_student(sizes, embed, c=12, h=20, seed=0, readout="pool"):
    torch.manual_seed(seed)
    cfg = SIDMLPConfig(encoder_dim=10, codebook_sizes=sizes, embed_dims=embed, context_dim=c, head_hidden=h,
                       ffn_dim=16, num_heads=2, readout=readout)
    m = SIDMLP(cfg, [torch.randn(k, e) for k, e in zip(sizes, embed)]).eval()
    # Non-trivial LayerNorm affine so the fold is checked on every tensor it carries.
    for head in m.heads:
        torch.nn.init.normal_(head[1].weight)
        torch.nn.init.normal_(head[1].bias)
    return m


def random_catalog(seed, n, sizes):
    g = torch.Generator().manual_seed(seed)
    codes = torch.unique(torch.stack([torch.randint(0, k, (n,), generator=g) for k in sizes], 1), dim=0)
    return SIDCatalog.from_codes(torch.arange(100, 100 + codes.shape[0]), codes, sizes)


@pytest.mark.parametrize(
    "sizes, embed, c, h",
    [((6,), (), 12, 20), ((5, 7, 3), (8, 4), 12, 20), ((3, 4, 5, 6), (5, 5, 5), 8, 32), ((256, 256), (16,), 16, 64)],
)
@pytest.mark.parametrize("readout", ["pool", "pool+last"])
def test_fold_equals_unfold(sizes, embed, c, h, readout):
    m = make_student(sizes, embed, c, h, readout=readout)
    folded = m.fold()
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, :3] = False  # a left-padded row: its last real state is still column 6
    mask[2, 5:] = False  # a right-padded row: column 4
    ctx = m.context(torch.randn(4, 7, 10), mask)
    proj = project_context(folded, ctx)
    for level in range(len(sizes)):
        prefixes = torch.stack([torch.randint(0, k, (4, 9)) for k in sizes[:level]], -1) if level else \
            torch.zeros(4, 9, 0, dtype=torch.long)
        torch.testing.assert_close(folded_logits(folded, level, proj[level], prefixes),
                                   m.head_logits(level, ctx, prefixes), rtol=1e-4, atol=1e-5)


def test_folded_tensor_contract():
    sizes, embed, c, h = (5, 7, 3), (8, 4), 12, 20
    f = make_student(sizes, embed, c, h).fold()
    assert isinstance(f, FoldedHeads)
    assert f.num_levels == 3 and f.codebook_sizes == sizes
    for l, k in enumerate(sizes):
        assert f.ctx_weight[l].shape == (h, c) and f.ctx_bias[l].shape == (h,)
        assert [tuple(t.shape) for t in f.prefix_tables[l]] == [(sizes[j], h) for j in range(l)]
        assert f.ln_weight[l].shape == (h,) and f.ln_bias[l].shape == (h,)
        assert f.out_weight[l].shape == (k, h) and f.out_bias[l].shape == (k,)
        assert all(t.is_contiguous() and not t.requires_grad for t in [f.ctx_weight[l], *f.prefix_tables[l]])
    assert isinstance(f.ln_eps, float)
    g = FoldedHeads.from_tensors(f.to_tensors(), 3, f.ln_eps)
    for name in ("ctx_weight", "ctx_bias", "ln_weight", "ln_bias", "out_weight", "out_bias"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(f, name), getattr(g, name)))
    assert all(torch.equal(a, b) for ra, rb in zip(f.prefix_tables, g.prefix_tables) for a, b in zip(ra, rb))


def test_folded_logits_rejects_wrong_prefix_width():
    m = make_student((5, 7, 3), (8, 4))
    f = m.fold()
    proj = project_context(f, torch.randn(2, 12))
    with pytest.raises(ValueError, match="prefixes"):
        folded_logits(f, 2, proj[2], torch.zeros(2, 3, 1, dtype=torch.long))


def test_full_beam_equals_exhaustive_on_folded_heads():
    sizes, embed = (5, 7, 3), (8, 4)
    m = make_student(sizes, embed, seed=3)
    cat = random_catalog(3, 70, sizes)
    f = m.fold()
    ctx = torch.randn(2, 12)
    proj = project_context(f, ctx)
    out = decode_folded(f, proj, cat, cat.num_items, cat.num_items, backend="reference")
    oracle = exhaustive_search(lambda l, p: m.head_logits(l, ctx, p).detach(), cat, 2, top_n=cat.num_items)
    assert torch.equal(out.items, oracle.items)
    torch.testing.assert_close(out.scores, oracle.scores, rtol=1e-4, atol=1e-4)
