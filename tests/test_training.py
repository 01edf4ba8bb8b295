"""The one trainer (training.run_training) on a tiny regression model with dropout."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sidmlp_kernels.configs import TrainConfig, TrainerConfig
from sidmlp_kernels.training import TrainingInterrupted, forked_rng, lr_lambda, run_training

from tests.helpers import interrupt_on_call

_G = torch.Generator().manual_seed(0)
X = torch.randn(40, 4, generator=_G)
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])
EPOCH = 5  # steps per epoch: 40 examples, batch 8


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.drop, self.out = nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 1)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.inp(x)))).squeeze(-1)


def tiny(seed=0):
    with forked_rng(seed):
        return Tiny()


def mse(model, index):
    return F.mse_loss(model(X[index]), Y[index])


def neg_mse(model):
    return {"neg_mse": -float(F.mse_loss(model(X), Y))}


def config(**kw):
    return TrainerConfig(**{**dict(epochs=3, batch_size=8, lr=1e-2, grad_clip=1.0), **kw})


def train(model, cfg=None, **kw):
    return run_training(model, kw.pop("loss", mse), len(X), cfg or config(), **{"evaluate": neg_mse,
                                                                              "metric": "neg_mse", **kw})


def without_time(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_schedule_warmup_cosine_and_constant():
    fn = lr_lambda(100, 10)
    assert [fn(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert fn(55) == pytest.approx(0.5) and fn(100) == pytest.approx(0.0) and fn(1000) == pytest.approx(0.0)
    assert all(lr_lambda(100, 10, "constant")(s) == 1.0 for s in (0, 5, 99))
    # Sized by the steps actually planned: epochs x steps per epoch, or max_steps.
    by_epochs = train(tiny(), config(epochs=2, warmup_steps=2), evaluate=None)
    assert [h["step"] for h in by_epochs.history] == [EPOCH, 2 * EPOCH]
    assert by_epochs.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    by_steps = train(tiny(), config(epochs=2, max_steps=7, warmup_steps=2), evaluate=None)
    assert [h["step"] for h in by_steps.history] == [EPOCH, 7] and by_steps.step == 7
    assert by_steps.history[0]["lr"] == pytest.approx(1e-2 * lr_lambda(7, 2)(EPOCH))
    assert by_steps.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    flat = train(tiny(), config(schedule="constant"), evaluate=None)
    assert {h["lr"] for h in flat.history} == {1e-2}


@pytest.mark.parametrize("where", ["mid-epoch step", "evaluation"])
def test_resume_after_interrupt_equals_an_uninterrupted_run(tmp_path, where):
    cfg = config(eval_every=3, checkpoint_every=2)
    full = tiny()
    res_full = train(full, cfg, checkpoint=tmp_path / "full.ckpt")
    if where == "mid-epoch step":  # step 8 of 15: epoch 2, batch 3
        crash = dict(loss=interrupt_on_call(mse, 8))
    else:  # the evaluation at step 9
        crash = dict(evaluate=interrupt_on_call(neg_mse, 3))
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny(), cfg, checkpoint=tmp_path / "b.ckpt", **crash)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.checkpoint == tmp_path / "b.ckpt"
    assert info.value.step == (7 if where == "mid-epoch step" else 9)
    resumed = tiny(seed=123)  # other initial weights: all of them come from the checkpoint
    res = train(resumed, cfg, checkpoint=tmp_path / "b.ckpt")
    assert res.step == res_full.step == 3 * EPOCH and res.done and res.stop_reason == "finished"
    assert without_time(res.history) == without_time(res_full.history)
    assert (res.best_metric, res.best_step, res.best_epoch) == (res_full.best_metric, res_full.best_step,
                                                                res_full.best_epoch)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not resumed.training
    # A finished run reruns as nothing, loading its best weights.
    again = tiny(seed=7)
    assert train(again, cfg, checkpoint=tmp_path / "b.ckpt").step == res.step
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), resumed.state_dict().values()))


def test_checkpoints_come_every_n_steps_and_at_every_evaluation(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    seen = []

    def loss(model, index):  # which step does the file on disk hold when the next step starts?
        seen.append(torch.load(ckpt, weights_only=True)["result"] if ckpt.is_file() else None)
        return mse(model, index)

    train(tiny(), config(epochs=2, eval_every=4, checkpoint_every=3), loss=loss, checkpoint=ckpt)
    import json

    steps = [None if s is None else json.loads(s)["step"] for s in seen]
    # Saved after steps 3, 4 (evaluation), 6, 8 (evaluation), 9; the final one after step 10.
    assert steps == [None, None, None, 3, 4, 4, 6, 6, 8, 9]
    assert json.loads(torch.load(ckpt, weights_only=True)["result"])["step"] == 10


def test_early_stopping_keeps_the_best_weights(tmp_path):
    scores = iter([0.3, 0.5, 0.4, 0.2, 0.9])
    best_seen = {}

    def on_best(model, metrics):
        best_seen.update(step=metrics["step"], weights={k: v.clone() for k, v in model.state_dict().items()})

    model = tiny()
    res = train(model, config(epochs=10, patience=2), evaluate=lambda m: {"ndcg@10": next(scores)},
                metric="ndcg@10", on_best=on_best)
    assert res.stopped_early and res.step == 4 * EPOCH and len(res.history) == 4
    assert (res.best_metric, res.best_step, res.best_epoch) == (0.5, 2 * EPOCH, 2) and best_seen["step"] == 2 * EPOCH
    assert all(torch.equal(v, best_seen["weights"][k]) for k, v in model.state_dict().items())
    assert not model.training


def test_time_budget_stops_checkpoints_and_resumes(tmp_path):
    cfg = config(epochs=2)
    full = tiny()
    train(full, cfg, evaluate=None)
    part = tiny()
    first = train(part, config(epochs=2, max_minutes=0), evaluate=None, checkpoint=tmp_path / "c.ckpt")
    assert first.step == 1 and first.stop_reason.startswith("time budget") and not first.done
    assert (tmp_path / "c.ckpt").is_file()
    second = train(part, cfg, evaluate=None, checkpoint=tmp_path / "c.ckpt")
    assert second.done and second.step == 2 * EPOCH and [h["step"] for h in second.history] == [1, EPOCH, 2 * EPOCH]
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), part.state_dict().values()))


def test_the_global_rng_is_left_alone():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    train(tiny(), config(epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_resume_with_other_options_names_them(tmp_path):
    train(tiny(), config(epochs=1), checkpoint=tmp_path / "r.ckpt", run_config={"sizes": {"hidden": 16}})
    with pytest.raises(ValueError, match=r"batch_size was 8, now 4; epochs was 1, now 2; sizes.hidden was 16, now 32; "
                                         r"pass the same options, or delete it to start over"):
        train(tiny(), config(epochs=2, batch_size=4), checkpoint=tmp_path / "r.ckpt",
              run_config={"sizes": {"hidden": 32}})
    # A budget or checkpoint interval may change between a run and its resume.
    assert train(tiny(), config(epochs=1, max_minutes=5.0, checkpoint_every=2), checkpoint=tmp_path / "r.ckpt",
                 run_config={"sizes": {"hidden": 16}}).done


def test_checkpoint_of_the_old_format_is_refused(tmp_path):
    old = tmp_path / "sidmlp.ckpt"
    torch.save({"signature": "{}", "epoch": 3, "model": {}, "rng": torch.get_rng_state()}, old)
    with pytest.raises(ValueError, match="older version of sidmlp-kernels, which cannot be resumed; delete it"):
        train(tiny(), checkpoint=old)
    old.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        train(tiny(), checkpoint=old)


def test_log_and_bars_count_epochs_from_one_and_say_when_nothing_was_evaluated(tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="sidmlp_kernels.training"):
        with pytest.raises(TrainingInterrupted):
            train(tiny(), config(epochs=2, checkpoint_every=1), loss=interrupt_on_call(mse, 3),
                  checkpoint=tmp_path / "l.ckpt", desc="t")
        train(tiny(), config(epochs=2, checkpoint_every=1), checkpoint=tmp_path / "l.ckpt", desc="t",
              show_progress=True)
    text = caplog.text
    assert "t: resumed from" in text and "at step 2/10 (epoch 1/2); no evaluation yet" in text
    assert "t: step 5/10 epoch 1/2 " in text and "t: step 10/10 epoch 2/2 " in text
    assert "step -1" not in text and "epoch 0" not in text
    bars = capsys.readouterr().err
    assert "t epoch 1/2" in bars and "t epoch 2/2" in bars and "epoch 0/" not in bars and "epoch 3/" not in bars


def test_bf16_autocast_and_gradient_clipping_change_the_run():
    base = tiny()
    train(base, config(epochs=1), evaluate=None)
    for cfg in (config(epochs=1, bf16=True), config(epochs=1, grad_clip=None), config(epochs=1, weight_decay=0.5)):
        other = tiny()
        train(other, cfg, evaluate=None)
        assert any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), other.state_dict().values()))
        assert all(v.dtype == torch.float32 for v in other.state_dict().values())


@pytest.mark.parametrize("cls, kw, message", [
    (TrainerConfig, dict(batch_size=0), r"batch_size must be >= 1 \(--batch-size\), got 0"),
    (TrainerConfig, dict(lr=0.0), r"lr must be > 0 \(--lr\), got 0.0"),
    (TrainerConfig, dict(eval_every=0), r"eval_every must be >= 1 \(--eval-every\), got 0"),
    (TrainerConfig, dict(epochs=1.5), r"epochs must be an integer \(--epochs\), got 1.5"),
    (TrainerConfig, dict(schedule="linear"), r"schedule must be 'cosine' or 'constant' \(--schedule\)"),
    (TrainConfig, dict(eval_beam=0), r"eval_beam must be >= 1 \(--eval-beam\), got 0"),
    (TrainConfig, dict(max_minutes=-1.0), r"max_minutes must be >= 0 \(--max-minutes\), got -1.0"),
])
def test_config_errors_name_the_flag(cls, kw, message):
    with pytest.raises(ValueError, match=message):
        cls(**kw)


def test_epoch_count_follows_the_batch():
    res = train(tiny(), config(epochs=1, batch_size=16), evaluate=None)
    assert res.step == math.ceil(40 / 16) and res.history[0]["epoch"] == 1
