import pytest
import torch

from sidmlp_kernels.distill.student import SIDMLP, SIDMLPConfig, last_real_state


def make_student(sizes=(5, 7, 3), d=16, embed=(8, 6), seed=0, head_hidden=24, **kw):
    torch.manual_seed(seed)
    cfg = SIDMLPConfig(encoder_dim=d, codebook_sizes=sizes, embed_dims=embed, head_hidden=head_hidden, ffn_dim=20,
                       num_heads=2, **kw)
    tables = [torch.randn(k, e) for k, e in zip(sizes, embed)]
    return SIDMLP(cfg, tables)


@pytest.mark.parametrize("sizes, embed", [((5,), ()), ((5, 7, 3), (8, 6)), ((3, 4, 5, 2, 6), (4, 4, 4, 4))])
def test_forward_shapes_any_l_k(sizes, embed):
    m = make_student(sizes, embed=embed).eval()
    states, mask = torch.randn(3, 9, 16), torch.ones(3, 9, dtype=torch.bool)
    codes = torch.stack([torch.randint(0, k, (3,)) for k in sizes], 1)
    logits = m(states, mask, codes)
    assert [tuple(t.shape) for t in logits] == [(3, k) for k in sizes]
    ctx = m.context(states, mask)
    assert ctx.shape == (3, 16)
    for l in range(len(sizes)):
        torch.testing.assert_close(m.head_logits(l, ctx, codes[:, None, :l])[:, 0], logits[l])


def test_context_ignores_padding_and_its_side():
    m = make_student().eval()
    states = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    ctx = m.context(states, mask)
    garbage = states.clone()
    garbage[0, 4:] = 1e3
    torch.testing.assert_close(m.context(garbage, mask), ctx)
    # Left padding: the same real tokens moved to the end of the row.
    left = torch.cat([states[:1, 4:], states[:1, :4]], dim=1)
    left_mask = torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(m.context(left, left_mask), ctx[:1], rtol=1e-5, atol=1e-5)


def test_empty_mask_is_finite():
    m = make_student().eval()
    ctx = m.context(torch.randn(1, 4, 16), torch.zeros(1, 4, dtype=torch.bool))
    assert torch.isfinite(ctx).all()


def test_code_embeddings_frozen_and_dropout_only_in_training():
    m = make_student(dropout=0.5)
    assert not any("code_emb" in n for n, _ in m.named_parameters())
    assert "code_emb_0" in dict(m.named_buffers())
    states, mask = torch.randn(4, 5, 16), torch.ones(4, 5, dtype=torch.bool)
    codes = torch.zeros(4, 3, dtype=torch.long)
    m.train()
    a, b = m(states, mask, codes)[0], m(states, mask, codes)[0]
    assert not torch.allclose(a, b)
    m.eval()
    torch.testing.assert_close(m(states, mask, codes)[0], m(states, mask, codes)[0])


@pytest.mark.parametrize("kw, msg", [
    (dict(embed_dims=(8,)), "embed_dims"),
    (dict(num_heads=3), "divisible"),
    (dict(dropout=1.0), "dropout"),
    (dict(codebook_sizes=()), "codebook_sizes"),
    (dict(readout="last"), "readout"),
])
def test_config_validation(kw, msg):
    base = dict(encoder_dim=16, codebook_sizes=(5, 7, 3), embed_dims=(8, 6), num_heads=2)
    base.update(kw)
    with pytest.raises(ValueError, match=msg):
        SIDMLPConfig(**base)


def test_bad_code_embedding_shape():
    cfg = SIDMLPConfig(encoder_dim=16, codebook_sizes=(5, 7), embed_dims=(8,), num_heads=2)
    with pytest.raises(ValueError, match=r"code_embeddings\[0\]"):
        SIDMLP(cfg, [torch.randn(4, 8)])


def test_context_dim_differs_from_encoder_dim():
    cfg = SIDMLPConfig(encoder_dim=16, codebook_sizes=(5, 7), embed_dims=(8,), context_dim=12, attn_dim=8,
                       num_heads=2, head_hidden=10, ffn_dim=10)
    m = SIDMLP(cfg, [torch.randn(5, 8)]).eval()
    assert m.context(torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool)).shape == (2, 12)
    assert SIDMLPConfig.from_dict(cfg.to_dict()) == cfg


def test_last_real_state_any_padding_side():
    states = torch.randn(4, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    got = last_real_state(states, mask)
    torch.testing.assert_close(got[:3], torch.stack([states[0, 2], states[1, 4], states[2, 3]]))
    assert torch.equal(got[3], torch.zeros(3))


def test_pool_plus_last_readout_appends_the_last_state():
    m = make_student(readout="pool+last").eval()
    pool = make_student(readout="pool").eval()
    assert m.config.context_width == 32 and pool.config.context_width == 16
    pool.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("heads.")}, strict=False)
    states = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    ctx = m.context(states, mask)
    assert ctx.shape == (2, 32)
    torch.testing.assert_close(ctx[:, :16], pool.context(states, mask))
    torch.testing.assert_close(ctx[:, 16:], torch.stack([states[0, 3], states[1, 5]]))
    codes = torch.zeros(2, 3, dtype=torch.long)
    assert [tuple(t.shape) for t in m(states, mask, codes)] == [(2, 5), (2, 7), (2, 3)]
    assert SIDMLPConfig.from_dict(m.config.to_dict()) == m.config
    # A config saved before the option existed loads as the paper's readout.
    old = {k: v for k, v in pool.config.to_dict().items() if k != "readout"}
    assert SIDMLPConfig.from_dict(old).readout == "pool"


def test_with_readout_converts_between_readouts():
    pool = make_student(readout="pool").eval()
    states, mask = torch.randn(3, 6, 16), torch.ones(3, 6, dtype=torch.bool)
    codes = torch.stack([torch.randint(0, k, (3,)) for k in (5, 7, 3)], 1)
    grown = pool.with_readout("pool+last").eval()
    assert grown.config.readout == "pool+last"
    for a, b in zip(pool(states, mask, codes), grown(states, mask, codes)):  # zero weights on the last state
        torch.testing.assert_close(a, b)
    back = grown.with_readout("pool").eval()
    for a, b in zip(pool(states, mask, codes), back(states, mask, codes)):
        torch.testing.assert_close(a, b)
    same = grown.with_readout("pool+last").eval()
    for a, b in zip(grown(states, mask, codes), same(states, mask, codes)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("readout", ["pool", "pool+last"])
def test_head_logits_equal_the_heads_applied_to_the_concatenated_input(readout):
    # The plain definition: head l reads [ctx, e(d_1), ..., e(d_l)] (head_logits factors its first Linear).
    torch.manual_seed(0)
    cfg = SIDMLPConfig(encoder_dim=16, codebook_sizes=(5, 6, 7), embed_dims=(8, 4), head_hidden=24, readout=readout)
    model = SIDMLP(cfg, [torch.randn(5, 8), torch.randn(6, 4)]).eval()
    ctx = torch.randn(3, cfg.context_width)
    for level in range(3):
        prefixes = torch.stack([torch.randint(0, k, (3, 4)) for k in cfg.codebook_sizes[:level]], dim=-1) \
            if level else torch.zeros(3, 4, 0, dtype=torch.long)
        parts = [ctx[:, None].expand(3, 4, -1)] + [model.code_embedding(j)[prefixes[..., j]] for j in range(level)]
        want = model.heads[level](torch.cat(parts, dim=-1))
        torch.testing.assert_close(model.head_logits(level, ctx, prefixes), want, rtol=1e-5, atol=1e-5)


def test_training_gradients_are_deterministic_on_several_threads():
    # A table lookup whose backward accumulates by atomics (advanced indexing) gives another sum order on
    # each run at 2+ threads; the heads' prefix lookup must not (the quickstart promises repeatable numbers).
    m = make_student(sizes=(8, 8, 8), embed=(6, 6), head_hidden=64, dropout=0.0)
    states, mask = torch.randn(64, 9, 16), torch.ones(64, 9, dtype=torch.bool)
    codes = torch.stack([torch.randint(0, 8, (64,)) for _ in range(3)], 1)
    beams = [torch.randint(0, 8, (64, 16, level)) for level in (1, 2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = set()
        for _ in range(8):
            m.zero_grad()
            on_path, beam = m(states, mask, codes, beams)
            sum(x.logsumexp(-1).sum() for x in on_path + beam).backward()
            seen.add(b"".join(p.grad.numpy().tobytes() for p in m.parameters() if p.grad is not None))
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 1
