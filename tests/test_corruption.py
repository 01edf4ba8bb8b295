"""Corruption suite: for every artifact kind (prepared data, catalog, teacher, features, accelerated
model, SASRec), each of its files truncated, deleted, its format version flipped, each of its keys
dropped. Every load either raises a clear error that names the damaged file, or (for a key the
reader does not need) loads exactly what was saved. None succeeds silently with other contents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.accelerated import AcceleratedRecommender, accelerate
from sidmlp_kernels.analysis.sasrec import SASRec, SASRecConfig
from sidmlp_kernels.data.examples import Examples
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.data.prepare import load_prepared, prepare
from sidmlp_kernels.distill.features import extract_features, load_features
from sidmlp_kernels.teacher.adapters import adapter_for
from sidmlp_kernels.teacher.models import build_t5_teacher, load_teacher, save_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _catalog() -> SIDCatalog:
    g = torch.Generator().manual_seed(0)
    codes = torch.unique(torch.stack([torch.randint(0, k, (40,), generator=g) for k in (5, 4, 3)], 1), dim=0)
    return SIDCatalog.from_codes(torch.arange(codes.shape[0]) * 2, codes, (5, 4, 3))


def _examples(catalog: SIDCatalog, layout: TokenLayout, n: int = 24) -> Examples:
    g = torch.Generator().manual_seed(1)
    hist = [[int(catalog.item_ids[i]) for i in torch.randint(0, catalog.num_items, (3,), generator=g)] for _ in range(n)]
    ids, mask = layout.encode_histories(hist, catalog, padding_side="right")
    rows = torch.randint(0, catalog.num_items, (n,), generator=g)
    return Examples(ids, mask, catalog.codes[rows], catalog.item_ids[rows], padding_side="right")


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# kind -> (write(dir) -> original, load(dir) -> loaded, same(original, loaded) -> bool)
Kind = tuple[Callable[[Path], Any], Callable[[Path], Any], Callable[[Any, Any], bool]]


def _kinds(fake_dataset) -> dict[str, Kind]:
    catalog = _catalog()
    layout = TokenLayout.for_catalog(catalog)
    teacher = build_t5_teacher(layout, "tiny", seed=0)
    examples = _examples(catalog, layout)

    def write_catalog(d):
        catalog.save(d)
        return catalog

    def write_prepared(d):
        return prepare("ml-100k", d, num_levels=3, codebook_size=8, max_history=4)

    def write_teacher(d):
        save_teacher(teacher, layout, d)
        return teacher

    def write_features(d):
        return extract_features(adapter_for(teacher, layout, catalog), examples, d, shard_size=16)

    def write_accelerated(d):
        rec = accelerate(teacher, catalog, examples, epochs=1, head_hidden=8, ffn_dim=8, num_heads=2,
                         replace_encoder=True, encoder_epochs=1, encoder_ffn_dim=8)
        rec.save_pretrained(d)
        return rec

    def write_sasrec(d):
        model = SASRec(SASRecConfig(num_items=9, hidden=8, layers=1, heads=1, max_len=4))
        model.save(d)
        return model

    def same_features(a, b):
        return len(a) == len(b) and torch.equal(a.states, b.states) and all(
            torch.equal(x, y) for x, y in zip(a.teacher_logits, b.teacher_logits))

    def same_accelerated(a, b):
        ids, mask, _, _ = examples.batch(torch.arange(4))
        return _state_equal(a, b) and torch.equal(a.generate(ids, mask, 6, 3).scores, b.generate(ids, mask, 6, 3).scores)

    return {
        "catalog": (write_catalog, SIDCatalog.load, lambda a, b: a == b),
        "prepared": (write_prepared, load_prepared,
                     lambda a, b: a.catalog == b.catalog and a.data == b.data and a.split == b.split),
        "teacher": (write_teacher, lambda d: load_teacher(d)[0], _state_equal),
        "features": (write_features, load_features, same_features),
        "accelerated": (write_accelerated, lambda d: AcceleratedRecommender.from_pretrained(d), same_accelerated),
        "sasrec": (write_sasrec, SASRec.load, _state_equal),
    }


def _corruptions(root: Path):
    """(description, relative file, apply(path)) for every file of a written artifact."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts[0] == "embeddings":
            continue  # prepare's embedding cache: recomputed when damaged, never read by load_prepared
        yield f"truncate {rel}", rel, lambda p: p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 2)])
        yield f"delete {rel}", rel, lambda p: p.unlink()
        if path.suffix == ".json":
            blob = json.loads(path.read_text())
            if isinstance(blob, dict) and "format_version" in blob:
                yield f"flip format_version of {rel}", rel, lambda p: _edit_json(p, lambda b: b.update(format_version=99))
            for key in (sorted(blob) if isinstance(blob, dict) else []):
                yield f"drop {key!r} from {rel}", rel, lambda p, key=key: _edit_json(p, lambda b: b.pop(key))


def _edit_json(path: Path, edit) -> None:
    blob = json.loads(path.read_text())
    edit(blob)
    path.write_text(json.dumps(blob))


KINDS = ["catalog", "prepared", "teacher", "features", "accelerated", "sasrec"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_damaged_file_is_named_or_harmless(kind, tmp_path, fake_dataset, fake_encoder):
    write, load, same = _kinds(fake_dataset)[kind]
    pristine = tmp_path / "pristine"
    original = write(pristine)
    assert same(original, load(pristine)), "the undamaged artifact loads as saved"
    cases = list(_corruptions(pristine))
    assert len(cases) >= 4
    silent = []
    for description, rel, damage in cases:
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        damage(work / rel)
        try:
            loaded = load(work)
        except (ValueError, FileNotFoundError) as err:
            named = rel.name in str(err) or str(work / rel.parent) in str(err)
            assert named, f"{kind}: {description}: the error does not name the file: {err}"
            continue
        if not same(original, loaded):
            silent.append(description)
    assert not silent, f"{kind}: loads that succeeded with other contents: {silent}"
