import argparse
import json
import os
import types

import pytest
import torch

from sidmlp_kernels.data.examples import build_examples, synthetic_data
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.cli.teacher import register as add_teacher_arguments
from sidmlp_kernels.evaluation import most_popular_baseline
from sidmlp_kernels.teacher.evaluate import evaluate_teacher
from sidmlp_kernels.teacher.models import build_gpt2_teacher, build_t5_teacher, load_teacher, save_teacher, teacher_loss
from sidmlp_kernels.teacher.train import TrainConfig, train_teacher


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    catalog, split = synthetic_data((8, 6, 5), num_items=80, num_users=80, seq_len=8, seed=1)
    layout = TokenLayout.for_catalog(catalog)
    return catalog, split, layout


def quick_config(**kw):
    base = dict(epochs=2, batch_size=64, lr=3e-3, eval_beam=10, patience=5, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_presets(data):
    _, _, layout = data
    cfg = build_t5_teacher(layout, "paper").config
    assert (cfg.num_layers, cfg.num_decoder_layers, cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv) == (
        4, 4, 128, 1024, 6, 64
    )
    assert cfg.dropout_rate == 0.1 and cfg.feed_forward_proj == "relu"
    assert cfg.vocab_size == layout.vocab_size
    assert (cfg.pad_token_id, cfg.decoder_start_token_id, cfg.eos_token_id) == (0, 0, layout.eos_id)
    small = build_t5_teacher(layout, "small").config
    assert (small.num_layers, small.d_model, small.d_ff, small.num_heads, small.d_kv) == (2, 64, 256, 4, 16)
    with pytest.raises(ValueError, match="preset"):
        build_t5_teacher(layout, "huge")


def test_train_t5_end_to_end_and_load(tmp_path, data):
    catalog, split, layout = data
    train = build_examples(split, catalog, layout, "train")
    valid = build_examples(split, catalog, layout, "valid")
    model = build_t5_teacher(layout, "tiny", seed=0)
    logs = []
    summary = train_teacher(model, layout, catalog, train, valid, tmp_path, quick_config(epochs=3), log=logs.append)
    assert summary["step"] == 3 * -(-len(train) // 64) and summary["done"]
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and all("ndcg@10" in h for h in history)
    assert summary["best_ndcg"] == max(h["ndcg@10"] for h in history)
    pop = most_popular_baseline(split.train_sequences, valid)
    assert summary["best_ndcg"] > pop["ndcg@10"]
    loaded, loaded_layout = load_teacher(tmp_path)
    assert loaded_layout == layout and not loaded.training
    again = evaluate_teacher(loaded, layout, catalog, valid, beam_size=10, top_n=10)
    assert again["ndcg@10"] == pytest.approx(summary["best_ndcg"], abs=1e-6)
    assert (tmp_path / "last" / "trainer_state.json").is_file() and (tmp_path / "last" / "optimizer.pt").is_file()
    # Finished runs do nothing on rerun.
    rerun = train_teacher(build_t5_teacher(layout, "tiny"), layout, catalog, train, valid, tmp_path,
                          quick_config(epochs=3), log=logs.append)
    assert rerun["step"] == summary["step"]


def test_resume_is_exact(tmp_path, data):
    catalog, split, layout = data
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=3)
    valid = build_examples(split, catalog, layout, "valid")
    full = build_t5_teacher(layout, "tiny", seed=0)
    train_teacher(full, layout, catalog, train, valid, tmp_path / "a", quick_config(), log=lambda s: None)
    part = build_t5_teacher(layout, "tiny", seed=0)
    first = train_teacher(part, layout, catalog, train, valid, tmp_path / "b", quick_config(max_minutes=0),
                          log=lambda s: None)
    assert first["step"] == 1 and not first["done"] and "time budget" in first["stop_reason"]
    resumed = build_t5_teacher(layout, "tiny", seed=123)
    second = train_teacher(resumed, layout, catalog, train, valid, tmp_path / "b", quick_config(), log=lambda s: None)
    assert second["done"] and second["step"] == 2 * -(-len(train) // 64)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ValueError, match="cannot resume"):
        train_teacher(build_t5_teacher(layout, "tiny"), layout, catalog, train, valid, tmp_path / "b",
                      quick_config(lr=1e-2), log=lambda s: None)


def test_bf16_training_learns_and_is_recorded(tmp_path, data):
    catalog, split, layout = data
    train = build_examples(split, catalog, layout, "train")
    valid = build_examples(split, catalog, layout, "valid")
    runs = {}
    for bf16 in (False, True):
        model = build_t5_teacher(layout, "tiny", seed=0)
        summary = train_teacher(model, layout, catalog, train, valid, tmp_path / str(bf16),
                                quick_config(epochs=3, bf16=bf16), log=lambda s: None)
        runs[bf16] = (model, summary)
    pop = most_popular_baseline(split.train_sequences, valid)
    assert runs[True][1]["best_ndcg"] > pop["ndcg@10"]
    # Autocast really ran: the same seed and batches give different weights than fp32.
    a, b = runs[False][0].state_dict(), runs[True][0].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in b.values() if v.is_floating_point())
    with pytest.raises(ValueError, match="its bf16 was True"):
        train_teacher(build_t5_teacher(layout, "tiny"), layout, catalog, train, valid, tmp_path / "True",
                      quick_config(epochs=3, bf16=False), log=lambda s: None)


def test_train_gpt2_teacher(tmp_path, data):
    catalog, split, layout = data
    train = build_examples(split, catalog, layout, "train", padding_side="left")
    valid = build_examples(split, catalog, layout, "valid", padding_side="left")
    model = build_gpt2_teacher(layout, "tiny", max_positions=64, seed=0)
    ids, mask, codes, _ = train.batch(torch.arange(32))
    before = teacher_loss(model, layout, ids, mask, codes).item()
    summary = train_teacher(model, layout, catalog, train, valid, tmp_path, quick_config(), log=lambda s: None)
    assert teacher_loss(model.eval(), layout, ids, mask, codes).item() < before
    loaded, loaded_layout = load_teacher(tmp_path)
    assert type(loaded).__name__ == "GPT2LMHeadModel" and loaded_layout == layout
    m = evaluate_teacher(loaded, layout, catalog, valid, decode="hf", beam_size=5, top_n=5)
    assert m["invalid_beams"] >= 0 and summary["best_ndcg"] >= 0


def test_load_teacher_errors(tmp_path, data):
    _, _, layout = data
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path)
    save_teacher(build_t5_teacher(layout, "tiny"), layout, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "teacher.json").read_text())
    (tmp_path / "m" / "teacher.json").write_text(json.dumps(dict(meta, format_version=42)))
    with pytest.raises(ValueError, match="format_version"):
        load_teacher(tmp_path / "m")


def test_cli_train_and_eval(tmp_path, data, monkeypatch, capsys):
    catalog, split, layout = data
    import sidmlp_kernels.data.prepare as prepare_mod

    monkeypatch.setattr(prepare_mod, "load_prepared", lambda d: types.SimpleNamespace(catalog=catalog, split=split))
    parser = argparse.ArgumentParser()
    add_teacher_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-teacher", "--prepared", "X", "--out", str(tmp_path / "run"), "--preset", "tiny",
                              "--epochs", "1", "--batch-size", "64", "--eval-beam", "5", "--threads", "1",
                              "--no-progress"])
    assert args.func(args) == 0
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    # --init-from starts from those weights (a vanishing rate leaves them in place).
    start, _ = load_teacher(tmp_path / "run")
    args = parser.parse_args(["train-teacher", "--prepared", "X", "--out", str(tmp_path / "run2"), "--preset", "tiny",
                              "--init-from", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "64",
                              "--lr", "1e-12", "--eval-beam", "5", "--threads", "1", "--no-progress"])
    assert args.func(args) == 0
    again, _ = load_teacher(tmp_path / "run2")
    for (name, a), (_, b) in zip(start.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    args = parser.parse_args(["train-teacher", "--prepared", "X", "--out", str(tmp_path / "run3"), "--preset", "small",
                              "--init-from", str(tmp_path / "run"), "--epochs", "1", "--no-progress"])
    with pytest.raises(ValueError, match="--init-from .* differs from --arch t5 --preset small"):
        args.func(args)
    args = parser.parse_args(["eval", "--teacher", str(tmp_path / "run"), "--prepared", "X", "--split", "test",
                              "--decode", "both", "--beam", "6", "--top-n", "5", "--threads", "1", "--no-progress",
                              "--json-out", str(tmp_path / "m.json")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "hf" in out and "constrained" in out and "most-popular" in out and "invalid beams" in out
    blob = json.loads((tmp_path / "m.json").read_text())
    assert set(blob) >= {"hf", "constrained", "most_popular", "vs_most_popular"}
    boot = blob["vs_most_popular"]["constrained"]["ndcg@10"]
    assert boot["mean_difference"] == pytest.approx(blob["constrained"]["ndcg@10"] - blob["most_popular"]["ndcg@10"])
    assert boot["ci_low"] <= boot["mean_difference"] <= boot["ci_high"] and "paired bootstrap" in out
    assert blob["constrained"]["invalid_beams"] == 0


@pytest.mark.slow
def test_small_teacher_on_ml100k(tmp_path_factory):
    """Real data: one short epoch of the small preset beats nothing-learned and runs both decodes."""
    from sidmlp_kernels.data.prepare import load_prepared, prepare

    path = os.environ.get("SIDMLP_ML100K_PREPARED")
    if path:
        prepared = load_prepared(path)
    else:
        prepared = prepare("ml-100k", tmp_path_factory.mktemp("ml100k"), show_progress=False)
    catalog, split = prepared.catalog, prepared.split
    layout = TokenLayout.for_catalog(catalog)
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=10)
    valid = build_examples(split, catalog, layout, "valid")
    model = build_t5_teacher(layout, "small", seed=0)
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(model, layout, catalog, train, valid, out,
                  TrainConfig(epochs=1, batch_size=128, eval_beam=10, eval_users=200, progress=False))
    test = build_examples(split, catalog, layout, "test")
    loaded, _ = load_teacher(out)
    constrained = evaluate_teacher(loaded, layout, catalog, test, "constrained", beam_size=20, top_n=10,
                                   max_users=200)
    hf = evaluate_teacher(loaded, layout, catalog, test, "hf", beam_size=20, top_n=10, max_users=200)
    assert constrained["invalid_beams"] == 0 and constrained["recall@10"] > 0
    assert hf["invalid_beams"] >= 0
