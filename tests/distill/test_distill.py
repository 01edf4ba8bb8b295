import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.configs import DistillConfig, EncoderTrainConfig
from sidmlp_kernels.distill.distill import ValidSet, distill, distill_loss, evaluate_student
from sidmlp_kernels.training import TrainingInterrupted
from sidmlp_kernels.data.examples import Examples
from sidmlp_kernels.distill.features import extract_features, load_features
from sidmlp_kernels.distill.mlp_encoder import MLPEncoder, train_mlp_encoder
from sidmlp_kernels.distill.student import SIDMLP, SIDMLPConfig

from tests.helpers import FakeAdapter, interrupt_on_call

REPO = Path(__file__).resolve().parents[2]
QUIET = dict(show_progress=False)


def setup_data(n=96, sizes=(4, 5, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.unique(torch.stack([torch.randint(0, k, (40,), generator=g) for k in sizes], 1), dim=0)
    cat = SIDCatalog.from_codes(torch.arange(codes.shape[0]), codes, sizes)
    ad = FakeAdapter(sizes)
    hist = [[int(x) for x in torch.randint(0, cat.num_items, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)]
            for _ in range(n)]
    ids, mask = ad.layout.encode_histories(hist, cat)
    rows = torch.randint(0, cat.num_items, (n,), generator=g)
    return cat, ad, Examples(ids, mask, cat.codes[rows], cat.item_ids[rows])


def make_student(ad, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    sizes = ad.layout.codebook_sizes
    cfg = SIDMLPConfig(encoder_dim=8, codebook_sizes=sizes, embed_dims=(8,) * (len(sizes) - 1), head_hidden=16,
                       ffn_dim=16, num_heads=2, dropout=dropout)
    return SIDMLP(cfg, [ad.code_embeddings(j) for j in range(len(sizes) - 1)])


def test_distill_loss_parts():
    torch.manual_seed(0)
    s = [torch.randn(6, 5), torch.randn(6, 3)]
    t = [torch.randn(6, 5), torch.randn(6, 3)]
    y = torch.stack([torch.randint(0, 5, (6,)), torch.randint(0, 3, (6,))], 1)
    kl = sum(F.kl_div(F.log_softmax(a, -1), F.softmax(b, -1), reduction="batchmean") for a, b in zip(s, t))
    ce = sum(F.cross_entropy(a, y[:, l]) for l, a in enumerate(s))
    torch.testing.assert_close(distill_loss(s, t, y, alpha=1.0)[0], kl)
    torch.testing.assert_close(distill_loss(s, t, y, alpha=0.0)[0], ce)
    torch.testing.assert_close(distill_loss(s, t, y, alpha=0.7)[0], 0.7 * kl + 0.3 * ce)
    # T^2 keeps the soft-target gradient scale: T=2 uses softened distributions times 4.
    kl2 = sum(F.kl_div(F.log_softmax(a / 2, -1), F.softmax(b / 2, -1), reduction="batchmean") for a, b in zip(s, t))
    torch.testing.assert_close(distill_loss(s, t, y, alpha=1.0, temperature=2.0)[0], 4 * kl2)
    loss, parts = distill_loss(s, s, y, alpha=1.0)
    assert abs(float(loss)) < 1e-6 and set(parts) == {"kl", "ce"}


def test_features_store_reuse_and_resume(tmp_path):
    cat, ad, ex = setup_data()
    mem = extract_features(ad, ex, None, batch_size=16, show_progress=False)
    stored = extract_features(ad, ex, tmp_path, batch_size=16, shard_size=32, storage_dtype="float32",
                              show_progress=False)
    assert len(stored) == len(ex) and stored.num_levels == 3
    torch.testing.assert_close(stored.states.float(), mem.states.float(), rtol=1e-3, atol=1e-3)
    for a, b in zip(stored.teacher_logits, mem.teacher_logits):
        torch.testing.assert_close(a, b)
    assert torch.equal(stored.mask, mem.mask) and torch.equal(stored.target_codes, ex.target_codes)
    # Teacher-forced logits equal the adapter's on the same batch.
    enc = ad.encode(ex.input_ids[:5], ex.attention_mask[:5])
    torch.testing.assert_close(stored.teacher_logits[1][:5], ad.digit_logits(enc, ex.target_codes[:5])[1])
    calls = ad.calls
    extract_features(ad, ex, tmp_path, batch_size=16, shard_size=32, storage_dtype="float32", show_progress=False)
    assert ad.calls == calls  # complete store: reused, teacher not run
    # An interrupted extraction: index gone, one shard truncated -> only that shard is recomputed.
    (tmp_path / "features.json").unlink()
    (tmp_path / "shard00001.safetensors").write_bytes(b"garbage")
    again = extract_features(ad, ex, tmp_path, batch_size=16, shard_size=32, storage_dtype="float32",
                             show_progress=False)
    assert ad.calls == calls + 2
    assert torch.equal(again.states, stored.states)
    assert torch.equal(load_features(tmp_path).states, stored.states)
    batch = stored.batch(torch.tensor([0, 3]))
    assert batch["states"].dtype == torch.float32 and batch["mask"].any(0).all()


def test_distill_learns_and_stops_early(tmp_path):
    cat, ad, ex = setup_data(n=128)
    feats = extract_features(ad, ex, None, show_progress=False)
    student = make_student(ad, dropout=0.1)
    valid = ValidSet(feats.states[:32].float(), feats.mask[:32], ex.target_items[:32])
    res = distill(student, feats, cat, valid, DistillConfig(epochs=6, batch_size=32, lr=3e-3, eval_beam=5,
                                                              patience=2), **QUIET)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0]
    assert res.best_epoch is not None and all("valid_ndcg@10" in h for h in res.history)
    # A constant metric never improves: stop after `patience` evaluations past the first.
    res2 = distill(make_student(ad), feats, cat, valid, DistillConfig(epochs=10, batch_size=64, eval_beam=1,
                                                                     patience=2, lr=1e-12), **QUIET)
    assert res2.stopped_early and len(res2.history) == 3 and res2.best_epoch == 1
    assert res2.history[0]["valid_ndcg@10"] == res2.history[-1]["valid_ndcg@10"]


def test_resume_matches_uninterrupted(tmp_path, monkeypatch):
    cat, ad, ex = setup_data(n=64)
    feats = extract_features(ad, ex, None, show_progress=False)
    valid = ValidSet(feats.states[:32].float(), feats.mask[:32], ex.target_items[:32])
    cfg = DistillConfig(epochs=4, batch_size=16, lr=2e-3, eval_beam=5, patience=10)
    full = make_student(ad, dropout=0.2)
    res_full = distill(full, feats, cat, valid, cfg, checkpoint=tmp_path / "a.ckpt", **QUIET)
    import sidmlp_kernels.distill.distill as distill_mod

    with monkeypatch.context() as patch:  # Ctrl-C in the third evaluation (end of epoch 3)
        patch.setattr(distill_mod, "evaluate_student", interrupt_on_call(evaluate_student, 3))
        with pytest.raises(TrainingInterrupted):
            distill(make_student(ad, dropout=0.2), feats, cat, valid, cfg, checkpoint=tmp_path / "b.ckpt", **QUIET)
    resumed = make_student(ad, dropout=0.2, seed=5)
    res_resumed = distill(resumed, feats, cat, valid, cfg, checkpoint=tmp_path / "b.ckpt", **QUIET)
    drop_time = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert drop_time(res_resumed.history) == drop_time(res_full.history)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="cannot resume .*: alpha was 0.7, now 0.5; epochs was 4, now 5; "
                                         "pass the same options, or delete it"):
        distill(make_student(ad, dropout=0.2), feats, cat, valid,
                DistillConfig(epochs=5, batch_size=16, lr=2e-3, eval_beam=5, patience=10, alpha=0.5),
                checkpoint=tmp_path / "a.ckpt", **QUIET)


def test_checkpoints_of_the_previous_version_are_refused(tmp_path):
    cat, ad, ex = setup_data(n=32)
    feats = extract_features(ad, ex, None, storage_dtype="float32", show_progress=False)
    old = {"signature": "{}", "model": {}, "epoch": 2, "result": "{}", "best_state": {}, "bad_evals": 0,
           "rng": torch.get_rng_state()}  # what train_loop wrote
    torch.save(old, tmp_path / "sidmlp.ckpt")
    torch.save(old, tmp_path / "mlp_encoder.ckpt")
    with pytest.raises(ValueError, match="sidmlp.ckpt: a checkpoint of an older version .* cannot be resumed; "
                                         "delete it to start over"):
        distill(make_student(ad), feats, cat, None, DistillConfig(epochs=1), checkpoint=tmp_path / "sidmlp.ckpt",
                **QUIET)
    with pytest.raises(ValueError, match="mlp_encoder.ckpt: a checkpoint of an older version"):
        train_mlp_encoder(MLPEncoder.for_layout(ad.layout, 8, ad, ffn_dim=8), feats, EncoderTrainConfig(epochs=1),
                          checkpoint=tmp_path / "mlp_encoder.ckpt", **QUIET)


@pytest.mark.parametrize("mixer", ["mean", "causal"])
def test_mlp_encoder_stage1_fits_teacher_states(mixer):
    cat, ad, ex = setup_data(n=128)
    feats = extract_features(ad, ex, None, storage_dtype="float32", show_progress=False)
    torch.manual_seed(0)
    enc = MLPEncoder.for_layout(ad.layout, 8, ad, ffn_dim=32, num_layers=2, mixer=mixer)
    res = train_mlp_encoder(enc, feats, EncoderTrainConfig(epochs=8, batch_size=32, lr=3e-3), **QUIET)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0]
    # Padding side does not change the states of real tokens.
    ids, mask = ex.input_ids[:4], ex.attention_mask[:4]
    from sidmlp_kernels.data.layout import to_left_padding

    lids, lmask = to_left_padding(ids, mask)
    right = enc(ids, mask).states[mask.bool()]
    left = enc(lids, lmask).states[lmask.bool()]
    torch.testing.assert_close(right, left, rtol=1e-5, atol=1e-5)


def reference_mlp_encoder_states(enc, ids, mask):
    """MLPEncoder.states by its definition, one real token at a time: x + ffn_role([x, summaries])."""
    from sidmlp_kernels.distill.mlp_encoder import CAUSAL_HALF_LIVES_ITEMS

    levels = enc.config.num_levels
    x = [enc.token_emb(ids[b, mask[b]]) + enc.pos_emb(torch.arange(int(mask[b].sum()))) for b in range(len(ids))]
    for ffns in enc.layers:
        new = []
        for xb, roles in zip(x, (enc.token_role[ids[b, mask[b]]] for b in range(len(ids)))):
            rows = []
            for i in range(len(xb)):
                if enc.config.mixer == "mean":
                    summary = xb.mean(dim=0)
                else:
                    gap = (i - torch.arange(i + 1)).float()
                    weights = [torch.ones(i + 1)] + [2.0 ** (-gap / (h * levels)) for h in CAUSAL_HALF_LIVES_ITEMS]
                    summary = torch.cat([(w[:, None] * xb[: i + 1]).sum(0) / w.sum() for w in weights])
                rows.append(xb[i] + ffns[int(roles[i])](torch.cat([xb[i], summary])[None])[0])
            new.append(torch.stack(rows))
        x = new
    return [enc.norm(xb) for xb in x]


@pytest.mark.parametrize("mixer", ["mean", "causal"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_mlp_encoder_states_equal_the_per_token_reference(mixer, side):
    from sidmlp_kernels.data.layout import to_left_padding

    cat, ad, ex = setup_data(n=8)
    torch.manual_seed(0)
    enc = MLPEncoder.for_layout(ad.layout, 8, ad, ffn_dim=16, num_layers=2, mixer=mixer).eval()
    ids, mask = ex.input_ids[:6], ex.attention_mask[:6].bool()
    if side == "left":
        ids, mask = to_left_padding(ids, mask)
        mask = mask.bool()
    assert not mask.all(), "the batch must hold padding"
    with torch.no_grad():
        got = enc.states(ids, mask)
        want = reference_mlp_encoder_states(enc, ids, mask)
    for b in range(len(ids)):
        torch.testing.assert_close(got[b, mask[b]], want[b], rtol=1e-5, atol=1e-5)


def test_causal_mixer_states_ignore_later_tokens_and_weigh_recent_ones():
    cat, ad, ex = setup_data(n=8)
    torch.manual_seed(0)
    enc = MLPEncoder.for_layout(ad.layout, 8, ad, ffn_dim=16, num_layers=2, mixer="causal").eval()
    ids = torch.randint(1, ad.layout.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    later = ids.clone()
    later[:, 7:] = ids[:, 7:].flip(0)  # other tokens after position 6
    with torch.no_grad():
        a, b = enc.states(ids, mask), enc.states(later, mask)
        torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
        assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3
        # The summaries: uniform over s <= t, then halving every half-life (in tokens).
        uniform, *recency = enc._causal_kernels(5, ids.device)
        torch.testing.assert_close(uniform, torch.ones(5, 5).tril())
        halves = 1 * ad.layout.num_levels
        torch.testing.assert_close(recency[0][4, 4 - halves], torch.tensor(0.5))
        assert recency[0][1, 2] == 0
    # The paper's mixer sees the whole sequence, so later tokens move earlier states.
    mean = MLPEncoder.for_layout(ad.layout, 8, ad, ffn_dim=16, num_layers=2, mixer="mean").eval()
    with torch.no_grad():
        assert (mean.states(ids, mask)[:, :7] - mean.states(later, mask)[:, :7]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="mixer"):
        MLPEncoder.for_layout(ad.layout, 8, ad, mixer="attention")



def test_encoder_dropout_is_checked_before_any_work():
    from sidmlp_kernels.configs import AccelerateConfig

    assert AccelerateConfig().with_overrides(encoder_dropout=0.0).encoder.dropout == 0.0
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"encoder_dropout must be in \[0, 1\) \(--encoder-dropout\)"):
            AccelerateConfig().with_overrides(encoder_dropout=bad)


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from safetensors.torch import save_file
    from tests.distill.test_distill import setup_data, make_student
    from sidmlp_kernels.configs import DistillConfig
    from sidmlp_kernels.distill.distill import ValidSet, distill
    from sidmlp_kernels.training import is_main_process
    from sidmlp_kernels.distill.features import extract_features
    out = sys.argv[1]
    cat, ad, ex = setup_data(n=256)
    feats = extract_features(ad, ex, None, show_progress=False)
    valid = ValidSet(feats.states[:32].float(), feats.mask[:32], ex.target_items[:32])
    student = make_student(ad, dropout=0.0)
    res = distill(student, feats, cat, valid, DistillConfig(epochs=3, batch_size=32, lr=3e-3, eval_beam=5))
    if is_main_process():
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, out + "/student.safetensors")
        open(out + "/history.json", "w").write(json.dumps(res.history))
    """
)


@pytest.mark.slow  # three fresh interpreters (1 + 2 ranks) on shared cores: ~20-60 s
def test_torchrun_two_processes_match_one(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    subprocess.run([sys.executable, str(script), str(one)], check=True, env=env, timeout=120)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(two)],
        env=env, timeout=120, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    h1 = json.loads((one / "history.json").read_text())
    h2 = json.loads((two / "history.json").read_text())
    # Same global batches, gradients averaged by DDP: the same loss curve (up to summation order).
    assert [h["train_loss"] for h in h2] == pytest.approx([h["train_loss"] for h in h1], rel=1e-4)
    assert h2[0]["train_loss"] > h2[-1]["train_loss"]
    from safetensors.torch import load_file

    cat, ad, ex = setup_data(n=8)
    student = make_student(ad)
    student.load_state_dict(load_file(str(two / "student.safetensors")))
    ref = load_file(str(one / "student.safetensors"))
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-3, atol=1e-4)
