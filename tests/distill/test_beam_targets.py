"""Distillation for fidelity: targets at the teacher's own beam prefixes (features.teacher_beam_tree,
extract_features(teacher_beam=)) and early stopping on agreement with the teacher (select_by="teacher")."""

import pytest
import torch
import torch.nn.functional as F

from sidmlp_kernels.configs import DistillConfig
from sidmlp_kernels.data.examples import build_examples, synthetic_data
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.distill.distill import distill, distill_loss
from sidmlp_kernels.distill.features import FeatureStore, extract_features, load_features, teacher_beam_tree
from sidmlp_kernels.distill.student import SIDMLP, SIDMLPConfig
from sidmlp_kernels.teacher.adapters import adapter_for
from sidmlp_kernels.teacher.models import build_gpt2_teacher, build_t5_teacher

from tests.teacher.test_attention_decode import stateless_prefix_logits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    catalog, split = synthetic_data((8, 6, 5), num_items=80, num_users=40, seed=0)
    return catalog, split, TokenLayout.for_catalog(catalog)


def make_model(arch, layout):
    if arch == "t5":
        return build_t5_teacher(layout, "tiny", seed=0).eval()
    return build_gpt2_teacher(layout, "tiny", max_positions=64, seed=0, prompt="items").eval()


@pytest.mark.parametrize("arch", ["t5", "gpt2-items"])
@pytest.mark.parametrize("beam", [1, 4, 12])
def test_the_beam_tree_holds_the_teachers_logits_at_the_prefixes_it_scored(data, arch, beam):
    catalog, split, layout = data
    model = make_model(arch, layout)
    padding = "right" if arch == "t5" else "left"
    ex = build_examples(split, catalog, layout, "test", padding_side=padding)
    ids, mask, _, _ = ex.batch(torch.arange(7))
    prefixes, logits = teacher_beam_tree(adapter_for(model, layout), catalog, ids, mask, beam)
    oracle = stateless_prefix_logits(model, layout, ids, mask)
    assert len(prefixes) == len(logits) == layout.num_levels - 1
    for level, (p, lg) in enumerate(zip(prefixes, logits), start=1):
        assert tuple(p.shape) == (7, beam, level) and tuple(lg.shape) == (7, beam, catalog.codebook_sizes[level])
        torch.testing.assert_close(lg, oracle(level, p), rtol=1e-4, atol=1e-4)
    # The tree is the beam's: with a beam as wide as the first digit, digit 1 sees every first code.
    wide, _ = teacher_beam_tree(adapter_for(model, layout), catalog, ids, mask, catalog.codebook_sizes[0])
    first = set(int(c) for c in catalog.codes[:, 0].unique())
    assert all(set(int(c) for c in row[:, 0]) == first for row in wide[0])


def test_feature_store_keeps_the_tree_and_reuses_it_only_for_the_same_width(data, tmp_path):
    catalog, split, layout = data
    model = make_model("gpt2-items", layout)
    adapter = adapter_for(model, layout)
    ex = build_examples(split, catalog, layout, "train", max_prefixes_per_user=2, seed=0, padding_side="left")
    mem = extract_features(adapter, ex, None, batch_size=16, storage_dtype="float32", catalog=catalog,
                           teacher_beam=5)
    assert mem.teacher_beam == 5 and len(mem.beam_prefixes) == layout.num_levels - 1
    ids, mask, _, _ = ex.batch(torch.arange(16, 32))
    direct, direct_logits = teacher_beam_tree(adapter, catalog, ids, mask, 5)
    for got, want in zip(mem.beam_prefixes, direct):
        assert torch.equal(got[16:32].long(), want)
    for got, want in zip(mem.beam_logits, direct_logits):
        torch.testing.assert_close(got[16:32], want)
    stored = extract_features(adapter, ex, tmp_path, batch_size=16, shard_size=24, storage_dtype="float32",
                              catalog=catalog, teacher_beam=5)
    again = load_features(tmp_path)
    for a, b, c in zip(mem.beam_logits, stored.beam_logits, again.beam_logits):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    batch = again.batch(torch.tensor([0, 3]))
    assert [tuple(p.shape) for p in batch["beam_prefixes"]] == [(2, 5, 1), (2, 5, 2)]
    # Another width is another store: extracted again, not reused.
    plain = extract_features(adapter, ex, tmp_path, batch_size=16, catalog=catalog, teacher_beam=0)
    assert plain.beam_prefixes is None and plain.teacher_beam == 0 and "beam_prefixes" not in plain.batch(
        torch.tensor([0]))
    # with_states and subset keep the tree.
    assert mem.with_states(mem.states * 0).teacher_beam == 5
    assert torch.equal(mem.subset(torch.tensor([2])).beam_prefixes[1], mem.beam_prefixes[1][2:3])


def test_bad_beam_arguments_are_clear_errors(data):
    catalog, split, layout = data
    adapter = adapter_for(make_model("gpt2-items", layout), layout)
    ex = build_examples(split, catalog, layout, "train", max_prefixes_per_user=1, padding_side="left")
    with pytest.raises(ValueError, match="teacher_beam must be an int >= 0"):
        extract_features(adapter, ex, None, catalog=catalog, teacher_beam=-1)
    with pytest.raises(ValueError, match="needs the catalog"):
        extract_features(adapter, ex, None, teacher_beam=4)
    store = extract_features(adapter, ex, None, catalog=catalog, teacher_beam=2)
    with pytest.raises(ValueError, match="give both or neither"):
        FeatureStore(store.states, store.mask, store.input_ids, store.teacher_logits, store.target_codes,
                     store.target_items, beam_prefixes=store.beam_prefixes)
    with pytest.raises(ValueError, match=r"beam_prefixes\[0\] must be"):
        FeatureStore(store.states, store.mask, store.input_ids, store.teacher_logits, store.target_codes,
                     store.target_items, beam_prefixes=[store.beam_prefixes[1], store.beam_prefixes[1]],
                     beam_logits=store.beam_logits)


def test_beam_loss_by_hand():
    torch.manual_seed(0)
    s = [torch.randn(3, 5), torch.randn(3, 4)]
    t = [torch.randn(3, 5), torch.randn(3, 4)]
    y = torch.stack([torch.randint(0, 5, (3,)), torch.randint(0, 4, (3,))], 1)
    sb, tb = [torch.randn(3, 6, 4)], [torch.randn(3, 6, 4)]
    plain = distill_loss(s, t, y, alpha=0.6, temperature=2.0)[0]
    beam_kl = F.kl_div(F.log_softmax(sb[0] / 2, -1), F.softmax(tb[0] / 2, -1), reduction="sum") / 18 * 4
    loss, parts = distill_loss(s, t, y, alpha=0.6, temperature=2.0, beam=(sb, tb))
    torch.testing.assert_close(loss, plain + 0.6 * beam_kl)
    assert parts["beam_kl"] == pytest.approx(float(beam_kl), rel=1e-5)


def test_student_fits_the_teachers_beam_tree(data):
    """Distilled on the tree, the student's logits at the teacher's beam prefixes approach the teacher's."""
    catalog, split, layout = data
    adapter = adapter_for(make_model("gpt2-items", layout), layout)
    ex = build_examples(split, catalog, layout, "train", max_prefixes_per_user=3, seed=0, padding_side="left")
    feats = extract_features(adapter, ex, None, storage_dtype="float32", catalog=catalog, teacher_beam=6)
    torch.manual_seed(0)
    sizes = layout.codebook_sizes
    cfg = SIDMLPConfig(encoder_dim=adapter.hidden_size, codebook_sizes=sizes,
                       embed_dims=tuple(int(adapter.code_embeddings(j).shape[1]) for j in range(len(sizes) - 1)),
                       head_hidden=64, ffn_dim=64, num_heads=2, dropout=0.0)
    student = SIDMLP(cfg, [adapter.code_embeddings(j).detach() for j in range(len(sizes) - 1)])

    def tree_kl():
        b = feats.batch(torch.arange(len(feats)))
        with torch.no_grad():
            _, beam = student(b["states"], b["mask"], b["target_codes"], b["beam_prefixes"])
        return sum(float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean",
                                  log_target=True)) for s, t in zip(beam, b["beam_logits"]))

    before = tree_kl()
    distill(student, feats, catalog, None, DistillConfig(alpha=1.0, epochs=40, batch_size=32, lr=5e-3),
            show_progress=False)
    student.eval()
    assert tree_kl() < 0.3 * before
    # The beam logits are the unfolded heads at those prefixes.
    b = feats.batch(torch.arange(4))
    with torch.no_grad():
        _, beam = student(b["states"], b["mask"], b["target_codes"], b["beam_prefixes"])
        ctx = student.context(b["states"], b["mask"])
        torch.testing.assert_close(beam[1], student.head_logits(2, ctx, b["beam_prefixes"][1]))


def test_select_by_teacher_keeps_the_weights_that_agree_most_with_the_teacher(data):
    from sidmlp_kernels.accelerated import accelerate
    from sidmlp_kernels.distill.features import teacher_top_items
    from sidmlp_kernels.metrics import top_overlap
    from sidmlp_kernels.teacher.attention_decode import attention_beam_search

    catalog, split, layout = data
    model = make_model("gpt2-items", layout)
    adapter = adapter_for(model, layout)
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=3, seed=0, padding_side="left")
    valid = build_examples(split, catalog, layout, "valid", padding_side="left")
    top = teacher_top_items(adapter, catalog, valid, beam_size=20, batch_size=7)
    ids, mask, _, _ = valid.batch(torch.arange(len(valid)))
    assert torch.equal(top, attention_beam_search(model, layout, catalog, ids, mask, 20, 10).items)  # batching-free
    rec = accelerate(model, catalog, train, valid, layout=layout, epochs=4, patience=4, eval_beam=20, alpha=1.0,
                     select_by="teacher", head_hidden=32, ffn_dim=32, num_heads=2, batch_size=32)
    history = [h["valid_teacher_overlap@10"] for h in rec.info["history"]]
    assert len(history) == 4 and rec.info["best_valid_teacher_overlap@10"] == max(history)
    out = rec.generate(ids, mask, beam_size=20, top_n=10)
    assert top_overlap(out.items, top, 10) == pytest.approx(max(history))


def test_select_by_is_checked(data):
    from sidmlp_kernels.accelerated import accelerate
    from tests.helpers import FakeAdapter

    catalog, split, layout = data
    with pytest.raises(ValueError, match=r"select_by must be one of \('ndcg', 'teacher'\) \(--select-by\)"):
        DistillConfig(select_by="recall")
    fake = FakeAdapter(catalog.codebook_sizes)
    ex = build_examples(split, catalog, fake.layout, "train", max_prefixes_per_user=1)
    with pytest.raises(ValueError, match="needs a teacher adapter with a .model"):
        accelerate(fake, catalog, ex, ex, select_by="teacher", epochs=1)
