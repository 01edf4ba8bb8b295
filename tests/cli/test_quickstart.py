"""The quickstart end to end on a fake 40-item dataset: schema, determinism, reuse on a rerun."""

import json

import pytest

from sidmlp_kernels.cli.quickstart import run_quickstart

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fake_dataset", "fake_encoder")]


def quick(out):
    return run_quickstart(out, teacher_epochs=2, distill_epochs=1, encoder_epochs=1, stage2_epochs=1, beam_size=10,
                          threads=1, show_progress=False)


def test_quickstart_schema_determinism_and_reuse(tmp_path, capsys):
    first = quick(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "quickstart.json").read_text())
    assert saved["dataset"] == "ml-100k" and saved["split"] == "test" and saved["beam"] == 10
    models = saved["models"]
    assert list(models) == ["most_popular", "teacher", "sidmlp", "sidmlp++"]
    for name in ("teacher", "sidmlp", "sidmlp++"):
        assert set(models[name]["vs_most_popular"]) == {"ndcg@10", "recall@10"}
        assert len(models[name]["vs_most_popular"]["ndcg@10"]) == 3 and models[name]["distinct_items"] >= 1
    for name in ("sidmlp", "sidmlp++"):
        assert {"share_of_teacher", "vs_teacher", "top10_overlap"} <= set(models[name])
    teacher = json.loads((tmp_path / "a" / "teacher" / "best" / "teacher.json").read_text())
    assert teacher["arch"] == "gpt2"
    config = json.loads((tmp_path / "a" / "teacher" / "best" / "config.json").read_text())
    assert config["sid_prompt"] == "items"

    # The same seed in another directory: the same numbers (step schedule, no wall clock).
    second = quick(tmp_path / "b")
    for name in models:
        for metric in ("ndcg@10", "recall@10", "distinct_items"):
            assert second["models"][name][metric] == first["models"][name][metric], (name, metric)

    # A rerun reuses every stage.
    capsys.readouterr()
    again = quick(tmp_path / "a")
    out = capsys.readouterr().out
    assert "reusing the teacher" in out and out.count("reusing") >= 3
    assert again["models"]["teacher"]["ndcg@10"] == first["models"]["teacher"]["ndcg@10"]
