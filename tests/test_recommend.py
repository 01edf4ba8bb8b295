"""`sidmlp recommend`: sharded, resumable, torchrun-split batch recommendation (sidmlp_kernels/recommend.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.accelerated import AcceleratedRecommender, new_student
from sidmlp_kernels.cli import main
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.data.users import read_users, write_users
from sidmlp_kernels.recommend import RecommendJob, load_ranker, merge_shards, recommend, run_shards
from sidmlp_kernels.teacher.adapters import as_adapter
from sidmlp_kernels.teacher.attention_decode import attention_beam_search
from sidmlp_kernels.teacher.models import build_gpt2_teacher, save_teacher

from tests.helpers import interrupt_on_call

REPO = Path(__file__).resolve().parents[1]
SIZES = (5, 4, 3)
FIRST_ID = 100  # item ids are not row numbers: the users file speaks item ids


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny GPT-2 teacher and a SID-MLP on it (random weights, no training), saved; a users file of 23 users."""
    root = tmp_path_factory.mktemp("recommend")
    g = torch.Generator().manual_seed(0)
    codes = torch.unique(torch.stack([torch.randint(0, k, (50,), generator=g) for k in SIZES], 1), dim=0)
    cat = SIDCatalog.from_codes(torch.arange(FIRST_ID, FIRST_ID + codes.shape[0]), codes, SIZES)
    layout = TokenLayout.for_catalog(cat)
    teacher = build_gpt2_teacher(layout, "tiny", max_positions=64, seed=0, prompt="items")
    save_teacher(teacher, layout, root / "teacher")
    cat.save(root / "teacher" / "catalog")
    student = new_student(as_adapter(teacher, cat, layout), seed=0)
    AcceleratedRecommender(layout, cat, student, teacher=teacher).save_pretrained(root / "sidmlp")
    users = [f"u{i}" for i in range(23)]
    histories = [[FIRST_ID + int(x) for x in torch.randint(0, cat.num_items, (int(n),), generator=g)]
                 for n in torch.randint(1, 7, (23,), generator=g)]
    write_users(root / "users.parquet", users, histories)
    return root, cat, layout, teacher, users, histories


def ranker_of(saved):
    root = saved[0]
    return load_ranker(root / "sidmlp", teacher=root / "teacher")


JOB = RecommendJob(top_n=4, beam_size=8, shard_size=7, batch_size=3, max_history=20)


def test_output_is_generate_of_every_user_in_order(saved, tmp_path):
    root, cat, layout, teacher, users, histories = saved
    out = recommend(ranker_of(saved), read_users(root / "users.parquet"), tmp_path / "r.parquet", JOB)
    table = pq.read_table(out)
    assert table.column("user").to_pylist() == users  # ids and their order kept (strings here)
    rec = AcceleratedRecommender.from_pretrained(root / "sidmlp", teacher=teacher)
    ids, mask = layout.encode_histories(histories, cat, padding_side="left")
    want = rec.generate(ids, mask, beam_size=8, top_n=4)
    assert table.column("items").to_pylist() == want.items.tolist()
    torch.testing.assert_close(torch.tensor(table.column("scores").to_pylist()), want.scores)
    assert not (tmp_path / "r.parquet.shards").exists(), "the shards are removed after the merge"


def test_two_ranks_write_their_shards_and_the_merge_equals_one_process(saved, tmp_path):
    root = saved[0]
    ranker, users = ranker_of(saved), read_users(root / "users.parquet")
    one = recommend(ranker, users, tmp_path / "one.parquet", JOB)
    work = tmp_path / "work"
    work.mkdir()
    assert run_shards(ranker, users, JOB, work, rank=1, world=2) == 2  # shards 1, 3 of 4
    assert sorted(p.name for p in work.iterdir()) == ["shard-00001.parquet", "shard-00003.parquet"]
    assert run_shards(ranker, users, JOB, work, rank=0, world=2) == 2  # shards 0, 2
    merge_shards(users, JOB, work, tmp_path / "two.parquet")
    assert pq.read_table(tmp_path / "two.parquet").equals(pq.read_table(one))


def test_a_teacher_directory_is_decoded_with_its_constrained_beam_search(saved, tmp_path):
    root, cat, layout, teacher, users, histories = saved
    ranker = load_ranker(root / "teacher")  # its own catalog/
    out = recommend(ranker, read_users(root / "users.parquet"), tmp_path / "t.parquet", JOB)
    ids, mask = layout.encode_histories(histories, cat, padding_side="left")
    want = attention_beam_search(teacher, layout, cat, ids, mask, 8, 4)
    assert pq.read_table(out).column("items").to_pylist() == want.items.tolist()


def test_an_interrupted_run_resumes_from_its_shards(saved, tmp_path):
    root = saved[0]
    users = read_users(root / "users.parquet")
    full = recommend(ranker_of(saved), users, tmp_path / "full.parquet", JOB)
    ranker = ranker_of(saved)
    ranker.decode = interrupt_on_call(ranker.decode, 7)  # batches 1-3 = shard 0, 4-6 = shard 1, 7: Ctrl-C
    out = tmp_path / "r.parquet"
    with pytest.raises(KeyboardInterrupt):
        recommend(ranker, users, out, JOB)
    work = tmp_path / "r.parquet.shards"
    assert sorted(p.name for p in work.glob("shard-*")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert not out.exists()
    calls = []
    ranker = ranker_of(saved)
    decode = ranker.decode
    ranker.decode = lambda *a: calls.append(1) or decode(*a)
    recommend(ranker, users, out, JOB)
    assert len(calls) == 3 + 1  # shard 2 (3 batches) and shard 3 (2 users, 1 batch) only
    assert pq.read_table(out).equals(pq.read_table(full))


def test_shards_of_another_job_are_refused_and_overwrite_starts_over(saved, tmp_path):
    root = saved[0]
    users = read_users(root / "users.parquet")
    ranker = ranker_of(saved)
    ranker.decode = interrupt_on_call(ranker.decode, 4)
    out = tmp_path / "r.parquet"
    with pytest.raises(KeyboardInterrupt):
        recommend(ranker, users, out, JOB)
    other = RecommendJob(top_n=3, beam_size=8, shard_size=7, batch_size=3)
    with pytest.raises(ValueError, match="another job.*top_n"):
        recommend(ranker_of(saved), users, out, other)
    recommend(ranker_of(saved), users, out, other, overwrite=True)
    assert len(pq.read_table(out).column("items")[0]) == 3
    with pytest.raises(ValueError, match="already exists"):
        recommend(ranker_of(saved), users, out, other)


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--top-n", "0"], "top_n (--top-n) must be >= 1"),
    (["--top-n", "9", "--beam", "8"], "top_n (--top-n) must be <= beam_size (--beam) (8)"),
    (["--shard-size", "0"], "shard_size (--shard-size) must be >= 1"),
    (["--batch-size", "-1"], "batch_size (--batch-size) must be >= 1"),
])
def test_bad_numbers_are_one_line_errors(saved, tmp_path, capsys, extra, message):
    root = saved[0]
    code, err = run_cli(["recommend", "--model", str(root / "sidmlp"), "--teacher", str(root / "teacher"),
                         "--users", str(root / "users.parquet"), "--out", str(tmp_path / "r.parquet"),
                         "--no-progress", *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_are_one_line_errors(saved, tmp_path, capsys):
    root, cat = saved[0], saved[1]
    model, teacher = str(root / "sidmlp"), str(root / "teacher")
    users, out = str(root / "users.parquet"), str(tmp_path / "r.parquet")
    write_users(tmp_path / "unknown.jsonl", [1, 2], [[FIRST_ID], [FIRST_ID + 1, 7]])
    (tmp_path / "exists.parquet").write_bytes(b"")
    cases = [
        (["--model", model, "--users", users, "--out", out], "pass --teacher DIR"),
        (["--model", model, "--teacher", teacher, "--users", str(tmp_path / "none.parquet"), "--out", out],
         "none.parquet does not exist"),
        (["--model", model, "--teacher", teacher, "--users", str(tmp_path / "unknown.jsonl"), "--out", out],
         f"user 2 (row 1) holds item 7, which is not in the model's catalog ({cat.num_items} items)"),
        (["--model", model, "--teacher", teacher, "--users", users, "--out", str(tmp_path / "r.csv")],
         "must be a .parquet file"),
        (["--model", model, "--teacher", teacher, "--users", users, "--out", str(tmp_path / "exists.parquet")],
         "already exists; pass overwrite=True (--overwrite)"),
        (["--model", str(tmp_path), "--users", users, "--out", out], "holds neither an accelerated model"),
        (["--model", teacher, "--teacher", teacher, "--users", users, "--out", out], "is itself a teacher"),
    ]
    for argv, message in cases:
        code, err = run_cli(["recommend", *argv, "--no-progress"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not Path(out).exists()


@pytest.mark.slow  # three fresh interpreters (1 + 2 ranks) on shared cores: ~15-40 s
def test_torchrun_two_processes_match_one(saved, tmp_path):
    root = saved[0]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["recommend", "--model", str(root / "sidmlp"), "--teacher", str(root / "teacher"), "--users",
            str(root / "users.parquet"), "--top-n", "4", "--beam", "8", "--shard-size", "5", "--batch-size", "2",
            "--no-progress"]
    one = subprocess.run([sys.executable, "-m", "sidmlp_kernels.cli", *args, "--out", str(tmp_path / "one.parquet")],
                         env=env, timeout=120, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "sidmlp_kernels.cli", *args, "--out", str(tmp_path / "two.parquet")],
                         env=env, timeout=120, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    assert pq.read_table(tmp_path / "two.parquet").equals(pq.read_table(tmp_path / "one.parquet"))
