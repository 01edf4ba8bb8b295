"""io.py: atomic writes, validated loads whose errors name the file, and artifacts of the previous
version (before io.py) still loading."""

import json

import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.io import (
    ArtifactError,
    atomic_directory,
    load_tensors,
    read_meta,
    save_tensors,
    write_meta,
)


def test_meta_round_trip_and_each_failure_names_the_file(tmp_path):
    path = tmp_path / "thing.json"
    write_meta(path, "sidmlp-thing", 3, {"size": 4})
    assert read_meta(path, "sidmlp-thing", 3, required=("size",)) == {
        "format": "sidmlp-thing", "format_version": 3, "size": 4}
    assert not list(tmp_path.glob("*.tmp*")), "the temporary file is renamed away"
    cases = {
        "missing": (None, "file is missing"),
        "corrupt": ('{"format": "sidmlp-thing", "form', "corrupted: not valid JSON"),
        "not an object": ("[1, 2]", "expected a JSON object"),
        "other format": ('{"format": "other", "format_version": 3}', "not a sidmlp-thing file"),
        "other version": ('{"format": "sidmlp-thing", "format_version": 2}', "format_version 2"),
        "missing key": ('{"format": "sidmlp-thing", "format_version": 3}', r"missing required key\(s\) \['size'\]"),
    }
    for name, (text, message) in cases.items():
        target = tmp_path / f"{name}.json"
        if text is not None:
            target.write_text(text)
        with pytest.raises(ArtifactError, match=message) as err:
            read_meta(target, "sidmlp-thing", 3, required=("size",), hint="run `sidmlp thing`")
        assert str(target) in str(err.value) and "run `sidmlp thing`" in str(err.value), name
        assert isinstance(err.value, ValueError)


def test_legacy_format_key(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format_version": 1, "model": "sasrec"}))
    assert read_meta(path, "sidmlp-sasrec", 1, legacy_format_key=("model", "sasrec"))["model"] == "sasrec"
    with pytest.raises(ArtifactError, match="not a sidmlp-sasrec file"):
        read_meta(path, "sidmlp-sasrec", 1)


def test_tensors_round_trip_and_truncation(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors({"a": torch.arange(6).view(2, 3).t(), "b": torch.ones(2)}, path)  # a non-contiguous input
    back = load_tensors(path, expected=("a", "b"))
    assert torch.equal(back["a"], torch.arange(6).view(2, 3).t())
    with pytest.raises(ArtifactError, match=r"holds tensors \['a', 'b'\], expected \['a'\]"):
        load_tensors(path, expected=("a",))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ArtifactError, match="t.safetensors: corrupted: not a readable safetensors file"):
        load_tensors(path)


def test_atomic_directory_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "best"
    with atomic_directory(target) as tmp:
        (tmp / "x").write_text("1")
    assert (target / "x").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "x").write_text("2")
            raise RuntimeError("crash while writing")
    assert (target / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    with atomic_directory(target) as tmp:
        (tmp / "x").write_text("3")
    assert (target / "x").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def _catalog():
    return SIDCatalog.from_codes(torch.arange(5), torch.tensor([[0, 1], [0, 2], [1, 0], [2, 2], [2, 0]]), (3, 3))


def test_catalog_of_the_previous_version_loads(tmp_path):
    cat = _catalog()
    cat.save(tmp_path)
    meta = json.loads((tmp_path / "catalog.json").read_text())
    del meta["fingerprint"]  # written since io.py
    (tmp_path / "catalog.json").write_text(json.dumps(meta))
    assert SIDCatalog.load(tmp_path) == cat


def test_catalog_whose_tensors_changed_is_refused(tmp_path):
    cat = _catalog()
    cat.save(tmp_path)
    other = SIDCatalog.from_codes(torch.arange(5), torch.tensor([[0, 1], [0, 2], [1, 0], [2, 2], [1, 1]]), (3, 3))
    save_tensors({"item_ids": other.item_ids, "codes": other.codes}, tmp_path / "catalog.safetensors")
    with pytest.raises(ArtifactError, match="catalog.safetensors: does not match the fingerprint"):
        SIDCatalog.load(tmp_path)


def test_sasrec_of_the_previous_version_loads(tmp_path):
    from sidmlp_kernels.analysis.sasrec import SASRec, SASRecConfig

    model = SASRec(SASRecConfig(num_items=7, hidden=8, layers=1, heads=1, max_len=4))
    model.save(tmp_path)
    meta = json.loads((tmp_path / "sasrec.json").read_text())
    del meta["format"]  # the previous version wrote model="sasrec" only
    (tmp_path / "sasrec.json").write_text(json.dumps(meta))
    back = SASRec.load(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


def test_provenance_names_the_command_versions_and_inputs(monkeypatch):
    import sidmlp_kernels
    from sidmlp_kernels.io import provenance

    monkeypatch.setattr("sys.argv", ["/usr/bin/sidmlp", "eval", "--teacher", "runs/my teacher"])
    record = provenance({"catalog": "abc123"})
    assert record["command"] == "sidmlp eval --teacher 'runs/my teacher'"
    assert record["sidmlp_kernels"] == sidmlp_kernels.__version__ and record["torch"] == torch.__version__
    assert record["inputs"] == {"catalog": "abc123"} and record["created"][:2] == "20"
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    json.dumps(record)
