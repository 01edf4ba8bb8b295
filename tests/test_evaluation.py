import json
import types

import pytest
import torch

from sidmlp_kernels.accelerated import accelerate
from sidmlp_kernels.analysis.sasrec import SASRec, SASRecConfig
from sidmlp_kernels.teacher.attention_decode import attention_beam_search
from sidmlp_kernels.cli import main
from sidmlp_kernels.evaluation import (
    compare_with_teacher,
    evaluate_recommender,
    format_comparison,
    most_popular_for,
    quality_report,
)
from sidmlp_kernels.data.examples import build_examples, synthetic_data
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.metrics import evaluate_ranking, top_overlap
from sidmlp_kernels.teacher.models import build_t5_teacher, save_teacher

TINY = dict(head_hidden=16, ffn_dim=16, num_heads=2, batch_size=32)


def test_top_overlap_by_hand():
    a = torch.tensor([[1, 2, 3], [4, 5, -1]])
    b = torch.tensor([[3, 2, 9], [6, 7, 8]])
    assert top_overlap(a, b, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert top_overlap(a, a, 3) == pytest.approx((1 + 2 / 3) / 2)  # -1 slots never count
    assert top_overlap(a, b, 1) == 0.0
    with pytest.raises(ValueError, match="same N users"):
        top_overlap(a, b[:1], 3)
    with pytest.raises(ValueError, match="k must be"):
        top_overlap(a, b, 0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    catalog, split = synthetic_data((6, 5, 4), num_items=60, num_users=40, seq_len=6, seed=3)
    layout = TokenLayout.for_catalog(catalog)
    teacher = build_t5_teacher(layout, "tiny", seed=0).eval()
    train = build_examples(split, catalog, layout, "train")
    test = build_examples(split, catalog, layout, "test")
    work = tmp_path_factory.mktemp("work")
    rec = accelerate(teacher, catalog, train, test.subset(torch.arange(10)), epochs=1, work_dir=work, **TINY)
    return catalog, split, layout, teacher, test, rec, work


def test_compare_matches_the_separate_evaluations(setup):
    catalog, split, layout, teacher, test, rec, _ = setup
    popular = most_popular_for(split, "test")
    results = compare_with_teacher(teacher, layout, catalog, test, {"fast": rec}, popular, beam_size=12, batch_size=16)
    models = results["models"]
    assert list(models) == ["most_popular", "teacher", "fast"] and results["users"] == len(test)
    t_items = attention_beam_search(teacher, layout, catalog, test.input_ids, test.attention_mask, 12, 10).items
    t_metrics = evaluate_ranking(t_items, test.target_items, ks=(10,))
    s = evaluate_recommender(rec, test, beam_size=12, top_n=10)
    p_metrics = evaluate_ranking(popular.expand(len(test), -1), test.target_items, ks=(10,))
    for k in ("recall@10", "ndcg@10"):
        assert models["teacher"][k] == pytest.approx(t_metrics[k])
        assert models["fast"][k] == pytest.approx(s[k])
        assert models["most_popular"][k] == pytest.approx(p_metrics[k])
        assert models["fast"]["vs_teacher"][k][0] == pytest.approx(s[k] - t_metrics[k])
        if t_metrics[k] > 0:
            assert models["fast"]["share_of_teacher"][k] == pytest.approx(s[k] / t_metrics[k])
    assert models["fast"]["top10_overlap"] == pytest.approx(top_overlap(s["items"], t_items, 10))
    assert "vs_teacher" not in models["teacher"] and "vs_most_popular" not in models["most_popular"]
    table = format_comparison(results)
    assert table.count("\n") == 4 and "| most-popular |" in table and "| fast |" in table and "%" in table
    with pytest.raises(ValueError, match="non-empty Examples"):
        compare_with_teacher(teacher, layout, catalog, test.subset(torch.arange(0)), {"fast": rec}, popular)


def test_quality_report_by_hand():
    targets = torch.tensor([1, 2, 3, 4])
    popular = torch.tensor([1, 9])
    ranked = {
        "teacher": torch.tensor([[1, 9], [2, 8], [7, 6], [5, 4]]),  # hits users 0, 1, 3 (rank 1, 1, 2)
        "student": torch.tensor([[1, 9], [1, 9], [1, 9], [1, 9]]),  # copies most-popular exactly
    }
    report = quality_report(ranked, targets, popular, k=2, num_samples=200)
    assert report["most_popular"]["recall@10"] == pytest.approx(0.25)
    assert report["teacher"]["recall@10"] == pytest.approx(0.75)
    assert report["teacher"]["distinct_items"] == 8 and report["student"]["distinct_items"] == 2
    assert report["teacher"]["most_popular_share"] == pytest.approx((2 + 0 + 0 + 0) / 4 / 2)
    assert report["student"]["most_popular_share"] == 1.0
    assert report["student"]["vs_most_popular"]["ndcg@10"] == [0.0, 0.0, 0.0]
    assert report["student"]["share_of_teacher"]["recall@10"] == pytest.approx(0.25 / 0.75)
    mean, lo, hi = report["student"]["vs_teacher"]["recall@10"]
    assert mean == pytest.approx(-0.5) and lo <= mean <= hi <= 0.0
    assert report["student"]["top10_overlap"] == pytest.approx((1.0 + 0 + 0 + 0) / 4)
    with pytest.raises(ValueError, match="teacher='nobody'"):
        quality_report(ranked, targets, popular, teacher="nobody")
    with pytest.raises(ValueError, match=r"ranked\['student'\] must be \(N=4"):
        quality_report({"teacher": ranked["teacher"], "student": ranked["student"][:3]}, targets, popular)


def test_cli_compare(setup, tmp_path, monkeypatch, capsys):
    catalog, split, layout, teacher, _, rec, _ = setup
    import sidmlp_kernels.data.prepare as prepare_mod

    monkeypatch.setattr(prepare_mod, "load_prepared", lambda d: types.SimpleNamespace(catalog=catalog, split=split))
    save_teacher(teacher, layout, tmp_path / "teacher")
    rec.save(tmp_path / "fast")
    distill = ["distill", "--prepared", "X", "--teacher", str(tmp_path / "teacher"), "--init-student",
               str(tmp_path / "fast"), "--replace-encoder", "--epochs", "1", "--encoder-epochs", "1", "--ffn-dim", "16",
               "--num-heads", "2", "--eval-beam", "12", "--beam", "12", "--threads", "1", "--no-progress"]
    # The heads to start from must have this run's architecture.
    assert main(distill + ["--out", str(tmp_path / "bad"), "--head-hidden", "32"]) == 2
    assert "init_student must be a SIDMLP with this run's student sizes" in capsys.readouterr().err
    # Dropout shapes no weight: a continued run may change it.
    assert main(distill + ["--out", str(tmp_path / "pp"), "--head-hidden", "16", "--dropout", "0.05"]) == 0
    dirs = [str(tmp_path / "fast"), str(tmp_path / "pp")]
    SASRec(SASRecConfig(num_items=catalog.num_items, hidden=8, layers=1, heads=1, max_len=5)).save(tmp_path / "sas")
    compare = ["compare", "--prepared", "X", "--teacher", str(tmp_path / "teacher"), "--accelerated", *dirs,
               "--beam", "12", "--threads", "1", "--json-out", str(tmp_path / "c.json")]
    code = main(compare + ["--sasrec", str(tmp_path / "sas")])
    assert code == 0
    out = capsys.readouterr().out
    names = ["sidmlp", "sidmlp++"]  # named by kind: the teacher's encoder, or an MLP encoder
    assert "| teacher |" in out and "| sasrec |" in out and all(f"| {n} |" in out for n in names)
    blob = json.loads((tmp_path / "c.json").read_text())
    assert set(blob) == {"dataset", "split", "users", "beam", "models", "provenance"} and blob["provenance"]["command"]
    assert list(blob["models"]) == ["most_popular", "teacher", *names, "sasrec"] and blob["split"] == "test"
    assert all(0.0 <= blob["models"][n]["top10_overlap"] <= 1.0 for n in names)
    assert all(len(blob["models"][n]["vs_teacher"]["ndcg@10"]) == 3 for n in names)
    # SASRec is a baseline: against most-popular, not a student of the teacher.
    assert "vs_most_popular" in blob["models"]["sasrec"] and "vs_teacher" not in blob["models"]["sasrec"]
    # Two of one kind keep both, the second named with its directory.
    assert main(compare[:6] + [dirs[0], dirs[0]] + compare[8:]) == 0
    assert set(json.loads((tmp_path / "c.json").read_text())["models"]) == {
        "most_popular", "teacher", "sidmlp", f"sidmlp ({dirs[0]})"}
    SASRec(SASRecConfig(num_items=catalog.num_items + 1, hidden=8, layers=1, heads=1, max_len=5)).save(tmp_path / "s2")
    assert main(compare + ["--sasrec", str(tmp_path / "s2")]) == 2
    assert "use the SASRec trained on this --prepared directory" in capsys.readouterr().err
