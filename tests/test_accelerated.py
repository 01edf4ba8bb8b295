import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.accelerated import AcceleratedRecommender, accelerate
from sidmlp_kernels.decode.reference import exhaustive_search
from sidmlp_kernels.data.examples import Examples
from sidmlp_kernels.decode.folded import folded_logits
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.distill.mlp_encoder import MLPEncoder
from sidmlp_kernels.distill.student import SIDMLP, SIDMLPConfig

from tests.helpers import FakeAdapter

TINY = dict(head_hidden=16, ffn_dim=16, num_heads=2, batch_size=32)


def random_catalog(seed, n, sizes, first_id=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.unique(torch.stack([torch.randint(0, k, (n,), generator=g) for k in sizes], 1), dim=0)
    return SIDCatalog.from_codes(torch.arange(first_id, first_id + codes.shape[0]), codes, sizes)


def random_examples(catalog, layout, n, seed=0, padding_side="right"):
    g = torch.Generator().manual_seed(seed)
    hist = [torch.randint(0, catalog.num_items, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)
            for _ in range(n)]
    hist = [[int(catalog.item_ids[i]) for i in h] for h in hist]
    ids, mask = layout.encode_histories(hist, catalog, padding_side=padding_side)
    rows = torch.randint(0, catalog.num_items, (n,), generator=g)
    return Examples(ids, mask, catalog.codes[rows], catalog.item_ids[rows], padding_side=padding_side)


def exhaustive_of(rec, ids, mask, top_n):
    """Oracle: score every catalog item with the recommender's own folded heads."""
    proj = rec.context_projection(rec.encode(ids, mask))
    return exhaustive_search(lambda l, p: folded_logits(rec.folded, l, proj[l], p), rec.catalog, ids.shape[0], top_n)


@pytest.fixture(scope="module")
def trained():
    sizes = (4, 5, 3)
    cat = random_catalog(0, 40, sizes)
    ad = FakeAdapter(sizes)
    ex = random_examples(cat, ad.layout, 160)
    rec = accelerate(ad, cat, ex, ex.subset(torch.arange(30)), epochs=2, **TINY)
    pp = accelerate(ad, cat, ex, ex.subset(torch.arange(30)), replace_encoder=True, epochs=1, encoder_epochs=1,
                    encoder_ffn_dim=16, **TINY)
    return ad, cat, ex, rec, pp


@pytest.mark.parametrize("which", ["sidmlp", "sidmlp++"])
def test_full_beam_equals_exhaustive(trained, which):
    ad, cat, ex, rec, pp = trained
    r = rec if which == "sidmlp" else pp
    ids, mask, _, _ = ex.batch(torch.arange(6))
    n = cat.num_items
    out = r.generate(ids, mask, beam_size=n, top_n=n)
    oracle = exhaustive_of(r, ids, mask, n)
    assert torch.equal(out.items, oracle.items)
    torch.testing.assert_close(out.scores, oracle.scores, rtol=1e-4, atol=1e-4)
    assert sorted(out.items[0].tolist()) == sorted(cat.item_ids.tolist())


def test_training_history_and_info(trained):
    _, _, _, rec, pp = trained
    assert len(rec.info["history"]) == 2 and "valid_ndcg@10" in rec.info["history"][0]
    assert rec.uses_teacher_encoder and not pp.uses_teacher_encoder
    assert len(pp.info["encoder_history"]) == 1


def test_save_load_round_trip(trained, tmp_path):
    ad, cat, ex, rec, pp = trained
    ids, mask, _, _ = ex.batch(torch.arange(8))
    rec.save(tmp_path / "a")
    pp.save(tmp_path / "b")
    a = AcceleratedRecommender.load(tmp_path / "a", teacher=ad, catalog=cat, layout=ad.layout)
    b = AcceleratedRecommender.load(tmp_path / "b")
    for orig, new in ((rec, a), (pp, b)):
        x, y = orig.generate(ids, mask, 7, 5), new.generate(ids, mask, 7, 5)
        assert torch.equal(x.items, y.items) and torch.equal(x.codes, y.codes) and torch.equal(x.scores, y.scores)


def test_load_mismatches_fail_clearly(trained, tmp_path):
    ad, cat, ex, rec, pp = trained
    rec.save(tmp_path / "a")
    other_cat = random_catalog(9, 40, (4, 5, 3))
    with pytest.raises(ValueError, match="catalog mismatch"):
        AcceleratedRecommender.load(tmp_path / "a", teacher=ad, catalog=other_cat)
    with pytest.raises(ValueError, match="layout mismatch"):
        AcceleratedRecommender.load(tmp_path / "a", teacher=ad, layout=TokenLayout((4, 5, 3), num_user_tokens=3))
    with pytest.raises(ValueError, match="pass teacher="):
        AcceleratedRecommender.load(tmp_path / "a")
    with pytest.raises(ValueError, match="teacher mismatch"):
        AcceleratedRecommender.load(tmp_path / "a", teacher=FakeAdapter((4, 5, 3), seed=1))
    with pytest.raises(ValueError, match="teacher does not match"):
        AcceleratedRecommender.load(tmp_path / "a", teacher=FakeAdapter((4, 5, 4)))
    meta = json.loads((tmp_path / "a" / "accelerated.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "a" / "accelerated.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version"):
        AcceleratedRecommender.load(tmp_path / "a", teacher=ad)
    with pytest.raises(FileNotFoundError):
        AcceleratedRecommender.load(tmp_path / "nothing")


def test_generate_input_validation(trained):
    ad, cat, ex, rec, _ = trained
    ids, mask, _, _ = ex.batch(torch.arange(3))
    bad = ids.clone()
    bad[0, 1] = ad.layout.vocab_size
    with pytest.raises(ValueError, match="input_ids must be in"):
        rec.generate(bad, mask)
    empty_ids = torch.tensor([[ad.layout.user_base, ad.layout.eos_id, 0, 0, 0]])
    with pytest.raises(ValueError, match="empty history"):
        rec.generate(empty_ids, torch.tensor([[1, 1, 0, 0, 0]]))
    with pytest.raises(ValueError, match="beam_size"):
        rec.generate(ids, mask, beam_size=0, top_n=1)
    with pytest.raises(ValueError, match="top_n"):
        rec.generate(ids, mask, beam_size=3, top_n=4)
    with pytest.raises(ValueError, match="attention_mask"):
        rec.generate(ids, mask[:, :-1])


def test_accelerate_rejects_unknown_options_and_bad_layout():
    sizes = (4, 5, 3)
    cat = random_catalog(0, 40, sizes)
    ex = random_examples(cat, TokenLayout(sizes), 8)
    with pytest.raises(TypeError, match="unknown accelerate"):
        accelerate(FakeAdapter(sizes), cat, ex, epochz=3)
    with pytest.raises(ValueError, match="does not match the catalog"):
        accelerate(FakeAdapter((4, 5, 4)), cat, ex)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(2, 6), min_size=1, max_size=4),
    n_items=st.integers(1, 40),
    seed=st.integers(0, 10_000),
    beam=st.integers(1, 8),
    top_frac=st.floats(0.0, 1.0),
)
def test_generate_returns_only_catalog_items(sizes, n_items, seed, beam, top_frac):
    cat = random_catalog(seed, n_items, sizes, first_id=1000)
    ad = FakeAdapter(sizes, seed=seed)
    torch.manual_seed(seed)
    embed = tuple(8 for _ in sizes[:-1])
    student = SIDMLP(SIDMLPConfig(encoder_dim=8, codebook_sizes=tuple(sizes), embed_dims=embed, head_hidden=12,
                                  ffn_dim=8, num_heads=2), [ad.code_embeddings(j) for j in range(len(sizes) - 1)])
    use_mlp = seed % 2 == 1
    enc = MLPEncoder.for_layout(ad.layout, 8, ad, ffn_dim=8, num_layers=1) if use_mlp else None
    rec = AcceleratedRecommender(ad.layout, cat, student, teacher=None if use_mlp else ad, encoder=enc)
    ex = random_examples(cat, ad.layout, 3, seed=seed)
    top_n = max(1, int(round(top_frac * beam)))
    out = rec.generate(ex.input_ids, ex.attention_mask, beam_size=beam, top_n=top_n)
    assert out.items.shape == (3, top_n) and out.codes.shape == (3, top_n, len(sizes))
    alive = out.items >= 0
    # Dead slots only when the catalog cannot fill top_n.
    assert (alive.sum(1) == min(top_n, cat.num_items)).all()
    valid_ids = set(cat.item_ids.tolist())
    for row, codes, scores, ok in zip(out.items, out.codes, out.scores, alive):
        items = row[ok].tolist()
        assert set(items) <= valid_ids and len(set(items)) == len(items)
        assert torch.equal(cat.lookup(codes[ok]), row[ok])
        assert (scores[ok][:-1] >= scores[ok][1:]).all()


@pytest.mark.parametrize("arch, sizes", [("t5", (6, 5, 4)), ("gpt2", (6, 5, 4)), ("t5", (9, 7)), ("gpt2", (3, 4, 2, 5))])
def test_hf_teachers(arch, sizes, tmp_path):
    from sidmlp_kernels.teacher.models import build_gpt2_teacher, build_t5_teacher

    cat = random_catalog(1, 60, sizes)
    layout = TokenLayout.for_catalog(cat)
    model = build_t5_teacher(layout, "tiny", seed=0) if arch == "t5" else build_gpt2_teacher(layout, "tiny", max_positions=64, seed=0)
    model.eval()
    padding = "right" if arch == "t5" else "left"
    ex = random_examples(cat, layout, 64, padding_side=padding)
    rec = accelerate(model, cat, ex, ex.subset(torch.arange(16)), epochs=1, work_dir=tmp_path, **TINY)
    ids, mask, _, _ = ex.batch(torch.arange(4))
    n = cat.num_items
    out = rec.generate(ids, mask, beam_size=n, top_n=n)
    oracle = exhaustive_of(rec, ids, mask, n)
    assert torch.equal(out.items, oracle.items)
    rec.save(tmp_path / "model")
    again = AcceleratedRecommender.load(tmp_path / "model", teacher=model, catalog=cat)
    assert torch.equal(again.generate(ids, mask, 5, 3).items, rec.generate(ids, mask, 5, 3).items)
    # Rerun with the same work_dir reuses the stored features and resumes the finished checkpoint.
    rec2 = accelerate(model, cat, ex, ex.subset(torch.arange(16)), epochs=1, work_dir=tmp_path, **TINY)
    assert torch.equal(rec2.generate(ids, mask, 5, 3).items, rec.generate(ids, mask, 5, 3).items)


def test_generate_is_deterministic_with_the_teacher_in_training_mode(tmp_path):
    from sidmlp_kernels.teacher.models import build_t5_teacher

    sizes = (6, 5, 4)
    cat = random_catalog(2, 60, sizes)
    layout = TokenLayout.for_catalog(cat)
    model = build_t5_teacher(layout, "tiny", seed=0)
    ex = random_examples(cat, layout, 48)
    model.train()  # what a user has after their own training loop: dropout on
    rec = accelerate(model, cat, ex, epochs=1, **TINY)
    assert model.training, "accelerate() hands the teacher back in the mode it came in"
    ids, mask, _, _ = ex.batch(torch.arange(8))
    first, second = rec.generate(ids, mask, 10, 5), rec.generate(ids, mask, 10, 5)
    assert torch.equal(first.items, second.items) and torch.equal(first.scores, second.scores)
    assert model.training and all(m.training for m in model.modules()), "the caller's mode is restored"
    # The same holds when the recommender itself was switched to training mode.
    rec.train()
    third = rec.generate(ids, mask, 10, 5)
    assert torch.equal(third.scores, first.scores) and rec.training and rec.student.training
    # Reloaded, it serves the same lists.
    rec.save_pretrained(tmp_path / "m")
    again = AcceleratedRecommender.from_pretrained(tmp_path / "m", teacher=model, catalog=cat)
    assert torch.equal(again.generate(ids, mask, 10, 5).scores, first.scores)


def test_recommender_is_an_nn_module(trained):
    ad, cat, ex, rec, pp = trained
    assert isinstance(rec, torch.nn.Module) and rec.eval() is rec and not rec.training
    state = pp.state_dict()
    assert any(k.startswith("student.") for k in state) and any(k.startswith("encoder.") for k in state)
    assert not any(k.startswith("teacher") for k in rec.state_dict()), "the teacher is used, not owned"
    ids, mask, _, _ = ex.batch(torch.arange(5))
    before = pp.generate(ids, mask, 8, 4)
    moved = pp.to(torch.float64)
    assert moved is pp and pp.folded.out_weight[0].dtype == torch.float64 and pp.device.type == "cpu"
    pp.to(torch.float32)
    after = pp.generate(ids, mask, 8, 4)
    assert torch.equal(after.items, before.items)
    # load_state_dict re-folds the heads from the loaded weights.
    zeroed = {k: torch.zeros_like(v) for k, v in pp.state_dict().items()}
    clone = AcceleratedRecommender(pp.layout, pp.catalog, SIDMLP(pp.student.config),
                                   encoder=MLPEncoder(pp.encoder.config))
    clone.load_state_dict(pp.state_dict())
    assert torch.equal(clone.generate(ids, mask, 8, 4).items, before.items)
    clone.load_state_dict(zeroed)
    assert all(torch.count_nonzero(w) == 0 for w in clone.folded.out_weight)


def test_accelerate_leaves_the_global_rng_alone():
    sizes = (4, 5, 3)
    cat = random_catalog(0, 40, sizes)
    ad = FakeAdapter(sizes)
    ex = random_examples(cat, ad.layout, 64)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    accelerate(ad, cat, ex, ex.subset(torch.arange(8)), epochs=1, **TINY)
    assert torch.equal(torch.rand(3), expected)


def test_readout_default_and_sidmlp_pp_heads_from_another_readout(trained):
    ad, cat, ex, rec, pp = trained
    # Both students read the last encoder state too by default.
    assert rec.student.config.readout == "pool+last" and pp.student.config.readout == "pool+last"
    pool = accelerate(ad, cat, ex, epochs=1, readout="pool", **TINY)
    assert pool.student.config.readout == "pool"
    # SID-MLP++ heads may start from a student with the other readout: its weights are converted.
    pp2 = accelerate(ad, cat, ex, replace_encoder=True, epochs=1, encoder_epochs=1, encoder_ffn_dim=16,
                     init_student=pool.student, **TINY)
    assert pp2.student.config.readout == "pool+last"
    with pytest.raises(ValueError, match="readout must be"):
        accelerate(ad, cat, ex, epochs=1, readout="last", **TINY)
    with pytest.raises(ValueError, match="readout must be"):
        accelerate(ad, cat, ex, epochs=1, readout="auto", **TINY)


def test_accelerate_config_and_overrides():
    from sidmlp_kernels.configs import AccelerateConfig

    sizes = (4, 5, 3)
    cat = random_catalog(0, 40, sizes)
    ad = FakeAdapter(sizes)
    ex = random_examples(cat, ad.layout, 64)
    config = AccelerateConfig().with_overrides(epochs=1, **TINY)
    rec = accelerate(ad, cat, ex, config=config, head_hidden=8)
    assert rec.student.config.head_hidden == 8 and rec.info["config"]["distill"]["epochs"] == 1
    with pytest.raises(TypeError, match="config must be an AccelerateConfig"):
        accelerate(ad, cat, ex, config={"epochs": 1})


def test_bad_batches_are_clear_errors(trained):
    ad, cat, ex, rec, pp = trained
    ids, mask, _, _ = ex.batch(torch.arange(4))
    for model in (rec, pp):
        with pytest.raises(ValueError, match=r"input_ids must be \(B, T\) with B, T >= 1"):
            model.generate_batched(ids[:0], mask[:0])
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            model.generate_batched(ids, mask, batch_size=0)
        with pytest.raises(ValueError, match="input_ids is on meta but"):
            model.generate(ids.to("meta"), mask.to("meta"))
    out = rec.generate_batched(ids, mask, beam_size=6, top_n=3, batch_size=3)
    assert torch.equal(out.items, rec.generate(ids, mask, 6, 3).items)


def test_joint_encoder_trains_the_encoder_with_the_heads():
    """SID-MLP++ with joint_encoder: stage 2 moves the MLP encoder too, and fits the teacher better than
    heads trained on the fixed stage-1 states (same seed, same epochs)."""
    sizes = (4, 5, 3)
    cat = random_catalog(0, 40, sizes)
    ad = FakeAdapter(sizes)
    ex = random_examples(cat, ad.layout, 192)
    common = dict(replace_encoder=True, epochs=6, encoder_epochs=1, encoder_ffn_dim=16, patience=6, lr=5e-3,
                  alpha=1.0, dropout=0.0, **TINY)
    stage1 = accelerate(ad, cat, ex, None, **{**common, "epochs": 1, "lr": 1e-12})  # heads barely move
    # No validation set: both keep their last weights, so the comparison is not an early-stopping draw.
    fixed = accelerate(ad, cat, ex, None, **common)
    joint = accelerate(ad, cat, ex, None, joint_encoder=True, **common)
    enc0, enc_fixed, enc_joint = (r.encoder.state_dict() for r in (stage1, fixed, joint))
    assert all(torch.equal(enc0[k], enc_fixed[k]) for k in enc0)  # stage 2 alone leaves the encoder as stage 1 did
    assert not all(torch.equal(enc0[k], enc_joint[k]) for k in enc0)

    ids, mask, codes, _ = ex.batch(torch.arange(len(ex)))
    teacher = ad.digit_logits(ad.encode(ids, mask), codes)

    def kd(rec):
        with torch.no_grad():
            enc = rec.encode(ids, mask)
            student = rec.student(enc.states, enc.mask, codes)
        return sum(float(torch.nn.functional.kl_div(torch.log_softmax(s, -1), torch.log_softmax(t, -1),
                                                    reduction="batchmean", log_target=True))
                   for s, t in zip(student, teacher))

    assert kd(joint) < kd(fixed)
    with pytest.raises(ValueError, match="needs replace_encoder=True"):
        accelerate(ad, cat, ex, None, joint_encoder=True, **TINY)
