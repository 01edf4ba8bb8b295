import argparse
import json
import os
import types

import pytest
import torch

from sidmlp_kernels.data.examples import build_examples, synthetic_data
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.cli.teacher import register as add_teacher_arguments
from sidmlp_kernels.teacher.evaluate import evaluate_teacher
from sidmlp_kernels.teacher.models import build_gpt2_teacher, build_t5_teacher, load_teacher, save_teacher, teacher_loss
from sidmlp_kernels.configs import TrainConfig
from sidmlp_kernels.teacher.train import train_teacher
from sidmlp_kernels.training import TrainingInterrupted
import sidmlp_kernels.teacher.train as train_mod

from tests.helpers import interrupt_on_call


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    catalog, split = synthetic_data((8, 6, 5), num_items=80, num_users=80, seq_len=8, seed=1)
    layout = TokenLayout.for_catalog(catalog)
    return catalog, split, layout


def read_history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


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
    summary = train_teacher(model, layout, catalog, train, valid, tmp_path, quick_config(epochs=3))
    assert summary["step"] == 3 * -(-len(train) // 64) and summary["done"]
    history = read_history(tmp_path)
    assert [h["epoch"] for h in history] == [1, 2, 3] and all("valid_ndcg@10" in h for h in history)
    assert summary["best_ndcg"] == max(h["valid_ndcg@10"] for h in history)
    # 21 steps are too few to beat most-popular reliably on this data; the loss must fall.
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"]
    loaded, loaded_layout = load_teacher(tmp_path)
    assert loaded_layout == layout and not loaded.training
    again = evaluate_teacher(loaded, layout, catalog, valid, beam_size=10, top_n=10)
    assert again["ndcg@10"] == pytest.approx(summary["best_ndcg"], abs=1e-6)
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "last").exists()
    # Finished runs do nothing on rerun.
    rerun = train_teacher(build_t5_teacher(layout, "tiny"), layout, catalog, train, valid, tmp_path,
                          quick_config(epochs=3))
    assert rerun["step"] == summary["step"]


def test_interrupted_run_resumes_exactly(tmp_path, data, monkeypatch):
    catalog, split, layout = data
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=3)
    valid = build_examples(split, catalog, layout, "valid")
    full = build_t5_teacher(layout, "tiny", seed=0)
    train_teacher(full, layout, catalog, train, valid, tmp_path / "a", quick_config())
    with monkeypatch.context() as patch:  # Ctrl-C in step 3
        patch.setattr(train_mod, "teacher_loss", interrupt_on_call(teacher_loss, 3))
        with pytest.raises(TrainingInterrupted) as stop:
            train_teacher(build_t5_teacher(layout, "tiny", seed=0), layout, catalog, train, valid, tmp_path / "b",
                          quick_config())
    assert stop.value.step == 2 and stop.value.checkpoint == tmp_path / "b" / "checkpoint.pt"
    resumed = build_t5_teacher(layout, "tiny", seed=123)
    second = train_teacher(resumed, layout, catalog, train, valid, tmp_path / "b", quick_config())
    assert second["done"] and second["step"] == 2 * -(-len(train) // 64)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert (tmp_path / "a" / "history.jsonl").read_text().count("\n") == 2
    with pytest.raises(ValueError, match="cannot resume .*lr was 0.003, now 0.01; pass the same options, or rerun "
                                         "with --fresh"):
        train_teacher(build_t5_teacher(layout, "tiny"), layout, catalog, train, valid, tmp_path / "b",
                      quick_config(lr=1e-2))


def test_time_budget_stops_with_a_best_model_and_resumes(tmp_path, data):
    catalog, split, layout = data
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=3)
    valid = build_examples(split, catalog, layout, "valid")
    first = train_teacher(build_t5_teacher(layout, "tiny", seed=0), layout, catalog, train, valid, tmp_path,
                          quick_config(max_minutes=0))
    assert first["step"] == 1 and not first["done"] and "time budget" in first["stop_reason"]
    assert load_teacher(tmp_path)[1] == layout  # validated before stopping: best/ exists
    second = train_teacher(build_t5_teacher(layout, "tiny"), layout, catalog, train, valid, tmp_path, quick_config())
    assert second["done"] and second["step"] == 2 * -(-len(train) // 64)
    assert [h["step"] for h in read_history(tmp_path)][0] == 1 and len(read_history(tmp_path)) == 3


def test_run_directory_of_the_previous_version_is_refused(tmp_path, data):
    catalog, split, layout = data
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=1)
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="earlier version of train-teacher.*rerun with --fresh"):
        train_teacher(build_t5_teacher(layout, "tiny"), layout, catalog, train, train, tmp_path, quick_config())
    fresh = train_teacher(build_t5_teacher(layout, "tiny"), layout, catalog, train, train, tmp_path,
                          quick_config(epochs=1), resume=False)
    assert fresh["done"] and (tmp_path / "checkpoint.pt").is_file()


def test_bf16_training_learns_and_is_recorded(tmp_path, data):
    catalog, split, layout = data
    train = build_examples(split, catalog, layout, "train")
    valid = build_examples(split, catalog, layout, "valid")
    runs = {}
    for bf16 in (False, True):
        model = build_t5_teacher(layout, "tiny", seed=0)
        summary = train_teacher(model, layout, catalog, train, valid, tmp_path / str(bf16),
                                quick_config(epochs=3, bf16=bf16))
        runs[bf16] = (model, summary)
    losses = {bf16: [h["train_loss"] for h in read_history(tmp_path / str(bf16))] for bf16 in runs}
    assert losses[True][-1] < 0.9 * losses[True][0]
    assert losses[True][-1] == pytest.approx(losses[False][-1], rel=0.05)
    # Autocast really ran: the same seed and batches give different weights than fp32.
    a, b = runs[False][0].state_dict(), runs[True][0].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in b.values() if v.is_floating_point())
    with pytest.raises(ValueError, match="bf16 was True, now False"):
        train_teacher(build_t5_teacher(layout, "tiny"), layout, catalog, train, valid, tmp_path / "True",
                      quick_config(epochs=3, bf16=False))


def test_train_gpt2_teacher(tmp_path, data):
    catalog, split, layout = data
    train = build_examples(split, catalog, layout, "train", padding_side="left")
    valid = build_examples(split, catalog, layout, "valid", padding_side="left")
    model = build_gpt2_teacher(layout, "tiny", max_positions=64, seed=0)
    ids, mask, codes, _ = train.batch(torch.arange(32))
    before = teacher_loss(model, layout, ids, mask, codes).item()
    summary = train_teacher(model, layout, catalog, train, valid, tmp_path, quick_config())
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
    assert set(blob) >= {"dataset", "split", "users", "beam", "models", "decodes", "provenance"}
    models = blob["models"]
    assert set(models) == {"most_popular", "teacher", "teacher_hf_generate"}
    mean, lo, hi = models["teacher"]["vs_most_popular"]["ndcg@10"]
    assert mean == pytest.approx(models["teacher"]["ndcg@10"] - models["most_popular"]["ndcg@10"])
    assert models["teacher"]["ndcg@10"] == pytest.approx(blob["decodes"]["constrained"]["ndcg@10"])
    assert lo <= mean <= hi and "paired bootstrap" in out and models["teacher"]["distinct_items"] >= 1
    assert blob["decodes"]["constrained"]["invalid_beams"] == 0
    # A teacher is tied to the catalog it was trained on: eval on another catalog names both.
    other, other_split = synthetic_data((8, 6, 5), num_items=80, num_users=80, seq_len=8, seed=2)
    assert other.fingerprint() != catalog.fingerprint()
    monkeypatch.setattr(prepare_mod, "load_prepared",
                        lambda d: types.SimpleNamespace(catalog=other, split=other_split))
    with pytest.raises(ValueError, match=f"trained on catalog {catalog.fingerprint()}.*{other.fingerprint()}"):
        args.func(args)
    recorded = json.loads((tmp_path / "run" / "best" / "teacher.json").read_text())
    assert recorded["catalog_fingerprint"] == catalog.fingerprint() and recorded["provenance"]["inputs"]


def test_cli_rejects_a_bad_option_before_loading_data(tmp_path, capsys):
    from sidmlp_kernels.cli import main

    assert main(["train-teacher", "--prepared", str(tmp_path / "missing"), "--out", str(tmp_path / "run"),
                 "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sidmlp train-teacher: error: batch_size must be >= 1 (--batch-size), got 0"


def test_cli_interrupted_run_says_how_to_resume(tmp_path, data, monkeypatch, capsys):
    catalog, split, layout = data
    import sidmlp_kernels.data.prepare as prepare_mod

    monkeypatch.setattr(prepare_mod, "load_prepared", lambda d: types.SimpleNamespace(catalog=catalog, split=split))

    monkeypatch.setattr(train_mod, "teacher_loss", interrupt_on_call(teacher_loss, 1))
    parser = argparse.ArgumentParser()
    add_teacher_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-teacher", "--prepared", "X", "--out", str(tmp_path / "run"), "--preset", "tiny",
                              "--threads", "1", "--no-progress"])
    assert args.func(args) == 130
    out = capsys.readouterr().out
    assert "interrupted at step 0" in out and "run the same command again (without --fresh) to resume" in out


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


def test_save_and_load_show_no_hf_progress_bars(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    layout = TokenLayout((4, 4))
    save_teacher(build_t5_teacher(layout, "tiny", seed=0), layout, tmp_path / "t")
    load_teacher(tmp_path / "t")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert hf_logging.is_progress_bar_enabled(), "the process-wide HF setting is restored"
