"""The users file of `sidmlp recommend` (sidmlp_kernels/data/users.py)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidmlp_kernels.cli import main
from sidmlp_kernels.data.examples import synthetic_data
from sidmlp_kernels.data.users import read_users, users_from_split, write_users


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
@pytest.mark.parametrize("ids", [[5, 3, 11], ["a", "b", "c"]])
def test_round_trip(tmp_path, suffix, ids):
    histories = [[1, 2, 3], [7], [4, 4, 9, 0]]
    write_users(tmp_path / f"u{suffix}", ids, histories, extra={"target": [1, 2, 3]})
    users = read_users(tmp_path / f"u{suffix}")
    assert users.users.to_pylist() == ids and len(users) == 3
    assert [h.tolist() for h in users.histories(0, 3)] == histories
    assert users.histories(1, 2)[0].tolist() == [7]
    assert len(users.fingerprint) == 16


def test_a_sliced_parquet_column_reads_right(tmp_path):
    # A table whose list column does not start at offset 0 (a slice) is read from its own offsets.
    table = pa.table({"user": [1, 2, 3], "history": pa.array([[1], [2, 3], [4, 5, 6]], pa.list_(pa.int64()))})
    pq.write_table(table.slice(1, 2), tmp_path / "s.parquet")
    assert [h.tolist() for h in read_users(tmp_path / "s.parquet").histories(0, 2)] == [[2, 3], [4, 5, 6]]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows, message", [
    ([{"user": 1, "history": [1]}, {"user": 1, "history": [2]}], "user 1 appears 2 times"),
    ([{"user": 1, "history": [1]}, {"user": 2, "history": []}], "the history of user 2 (row 1) is empty"),
    ([{"user": 1, "items": [1]}], "has no 'history'"),
    ([{"user": 1, "history": [1.5]}], "is [1.5], not a list of integer item ids"),
    ([{"user": 1, "history": 3}], "is 3, not a list"),
    ([{"user": 1, "history": [1, None]}], "missing history or item id"),
    (["{not json"], "line 1 is not JSON"),
    (["[1, 2]"], "line 1 is a JSON list"),
    ([], "no users"),
])
def test_bad_jsonl_files_are_clear_errors(tmp_path, rows, message):
    with pytest.raises(ValueError, match="users file \\(--users\\)") as err:
        read_users(write_jsonl(tmp_path / "u.jsonl", rows))
    assert message in str(err.value)


def test_bad_parquet_files_are_clear_errors(tmp_path):
    pq.write_table(pa.table({"user": [1], "hist": [[1]]}), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="missing \\['history'\\]"):
        read_users(tmp_path / "a.parquet")
    pq.write_table(pa.table({"user": [1.5], "history": [[1]]}), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="column 'user' is double"):
        read_users(tmp_path / "b.parquet")
    pq.write_table(pa.table({"user": [1], "history": ["1 2"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="column 'history' is string"):
        read_users(tmp_path / "c.parquet")
    (tmp_path / "d.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        read_users(tmp_path / "d.parquet")
    with pytest.raises(ValueError, match="unknown file type '.csv'"):
        read_users(tmp_path / "u.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_users(tmp_path / "none.parquet")


def test_unknown_items_name_the_user():
    from sidmlp_kernels import SIDCatalog
    from sidmlp_kernels.data.users import Users

    cat = SIDCatalog.from_codes(np.array([10, 11, 12]), np.array([[0, 0], [0, 1], [1, 0]]), (2, 2))
    users = Users(pa.array(["x", "y"]), np.array([10, 12, 11, 13]), np.array([0, 2, 4]))
    with pytest.raises(ValueError, match="user 'y' \\(row 1\\) holds item 13, which is not in the model's catalog"):
        users.check_items(cat)
    Users(pa.array(["x"]), np.array([10, 12]), np.array([0, 2])).check_items(cat)


def test_users_from_a_split_and_export_users(tmp_path, monkeypatch, capsys):
    _, split = synthetic_data(num_users=12, seed=3)
    ids, histories, targets = users_from_split(split, "test")
    assert ids == list(range(12)) and histories == split.test_histories and targets == split.test_targets
    assert users_from_split(split, "valid")[1] == split.valid_histories
    with pytest.raises(ValueError, match="part \\(--part\\)"):
        users_from_split(split, "train")

    class Prepared:
        pass

    prepared = Prepared()
    prepared.split = split
    monkeypatch.setattr("sidmlp_kernels.data.prepare.load_prepared", lambda d: prepared)
    out = tmp_path / "users.parquet"
    assert main(["export-users", "--prepared", "P", "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.column("history").to_pylist() == split.test_histories
    assert table.column("target").to_pylist() == split.test_targets
    assert main(["export-users", "--prepared", "P", "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
