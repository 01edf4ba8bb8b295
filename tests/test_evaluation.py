import json
import types

import pytest
import torch

from sidmlp_kernels.accelerated import accelerate
from sidmlp_kernels.teacher.attention_decode import attention_beam_search
from sidmlp_kernels.cli import main
from sidmlp_kernels.evaluation import compare_with_teacher, evaluate_recommender, format_comparison
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
    catalog, _, layout, teacher, test, rec, _ = setup
    results = compare_with_teacher(teacher, layout, catalog, test, {"fast": rec}, beam_size=12, batch_size=16)
    t_items = attention_beam_search(teacher, layout, catalog, test.input_ids, test.attention_mask, 12, 10).items
    t_metrics = evaluate_ranking(t_items, test.target_items, ks=(5, 10))
    s = evaluate_recommender(rec, test, beam_size=12, top_n=10)
    for k in ("recall@10", "ndcg@10", "recall@5", "ndcg@5"):
        assert results["teacher"][k] == pytest.approx(t_metrics[k])
        assert results["fast"][k] == pytest.approx(s[k])
        if t_metrics[k] > 0:
            assert results["fast"][f"{k}_share_of_teacher"] == pytest.approx(s[k] / t_metrics[k])
    assert results["fast"]["top10_overlap_with_teacher"] == pytest.approx(top_overlap(s["items"], t_items, 10))
    table = format_comparison(results)
    assert table.count("\n") == 3 and "| fast |" in table and "%" in table
    with pytest.raises(ValueError, match="non-empty Examples"):
        compare_with_teacher(teacher, layout, catalog, test.subset(torch.arange(0)), {"fast": rec})


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
    assert "init_student must be a SIDMLP with this run's student config" in capsys.readouterr().err
    assert main(distill + ["--out", str(tmp_path / "pp"), "--head-hidden", "16"]) == 0
    dirs = [str(tmp_path / "fast"), str(tmp_path / "pp")]
    code = main(["compare", "--prepared", "X", "--teacher", str(tmp_path / "teacher"), "--accelerated", *dirs,
                 "--beam", "12", "--threads", "1", "--json-out", str(tmp_path / "c.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| teacher |" in out and all(f"| {d} |" in out for d in dirs)
    blob = json.loads((tmp_path / "c.json").read_text())
    assert set(blob) == {"teacher", "provenance", *dirs} and blob["provenance"]["command"]
    assert all(0.0 <= blob[d]["top10_overlap_with_teacher"] <= 1.0 for d in dirs)
