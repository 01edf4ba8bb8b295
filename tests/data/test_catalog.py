import json

import pytest
import torch

from sidmlp_kernels import SIDCatalog


def small_catalog():
    codes = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 2, 0], [3, 0, 0], [3, 0, 2]])
    return SIDCatalog.from_codes(torch.tensor([10, 11, 12, 13, 14]), codes, [4, 3, 3])


def test_children_match_brute_force():
    cat = small_catalog()
    codes = cat.codes.tolist()
    for level in range(3):
        k = cat.codebook_sizes[level]
        prefixes = sorted({tuple(c[:level]) for c in codes}) + [tuple([1] * level)] if level else [()]
        mask = cat.valid_children(torch.tensor(prefixes, dtype=torch.long).reshape(len(prefixes), level))
        for row, p in enumerate(prefixes):
            expected = {c[level] for c in codes if tuple(c[:level]) == p}
            assert {t for t in range(k) if mask[row, t]} == expected


def test_random_catalog_children_and_lookup():
    g = torch.Generator().manual_seed(0)
    sizes = [5, 7, 3, 6]
    raw = torch.stack([torch.randint(0, k, (400,), generator=g) for k in sizes], 1)
    codes = torch.unique(raw, dim=0)
    ids = torch.randperm(codes.shape[0], generator=g) + 100
    cat = SIDCatalog.from_codes(ids, codes, sizes)
    assert torch.equal(cat.lookup(codes), ids)
    for level in range(4):
        prefixes = raw[:50, :level]
        mask = cat.valid_children(prefixes)
        for row in range(50):
            p = prefixes[row]
            match = (codes[:, :level] == p).all(dim=1)
            expected = torch.zeros(sizes[level], dtype=torch.bool)
            expected[codes[match, level]] = True
            assert torch.equal(mask[row], expected)
    # absent codes and out-of-range codes map to -1
    missing = torch.tensor([[4, 6, 2, 5], [9, 0, 0, 0], [-1, 0, 0, 0]])
    known = {tuple(c) for c in codes.tolist()}
    out = cat.lookup(missing)
    for row, c in enumerate(missing.tolist()):
        assert (out[row] == -1) == (tuple(c) not in known)
    assert out[1] == -1 and out[2] == -1


def test_codes_of_and_roundtrip(tmp_path):
    cat = small_catalog()
    assert cat.codes_of(torch.tensor([12, 10])).tolist() == [[0, 2, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="item_ids contains 99"):
        cat.codes_of(torch.tensor([99]))
    cat.save(tmp_path)
    again = SIDCatalog.load(tmp_path)
    assert again == cat
    assert torch.equal(again.lookup(cat.codes), cat.item_ids)


@pytest.mark.parametrize(
    "ids, codes, sizes, message",
    [
        ([0, 1], [[0, 1], [0, 1]], [2, 2], "unique per item"),
        ([0, 1], [[0, 1], [0, 2]], [2, 2], "must be < codebook size 2"),
        ([0, -1], [[0, 1], [1, 1]], [2, 2], "non-negative"),
        ([0, 0], [[0, 1], [1, 1]], [2, 2], "item_ids must be unique"),
        ([0, 1], [[0, -1], [1, 1]], [2, 2], "codes must be non-negative"),
        ([0], [[0, 1], [1, 1]], [2, 2], "2 rows but item_ids has 1"),
        ([0, 1], [[0, 1], [1, 1]], [2, 2, 2], "codebook_sizes has 3 entries"),
    ],
)
def test_bad_catalogs(ids, codes, sizes, message):
    with pytest.raises(ValueError, match=message):
        SIDCatalog.from_codes(torch.tensor(ids), torch.tensor(codes), sizes)


def test_float_codes_rejected():
    with pytest.raises(TypeError, match="codes must hold integers"):
        SIDCatalog.from_codes(torch.tensor([0]), torch.tensor([[0.5, 1.0]]), [2, 2])


def test_corrupted_files(tmp_path):
    cat = small_catalog()
    cat.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="no catalog"):
        SIDCatalog.load(tmp_path / "nowhere")
    meta = json.loads((tmp_path / "catalog.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "catalog.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version 99"):
        SIDCatalog.load(tmp_path)
    meta["format_version"] = 1
    meta["num_items"] = 3
    (tmp_path / "catalog.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds 5 items"):
        SIDCatalog.load(tmp_path)
    (tmp_path / "catalog.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"catalog.json: corrupted: not valid JSON"):
        SIDCatalog.load(tmp_path)
    meta["num_items"] = 5
    (tmp_path / "catalog.json").write_text(json.dumps(meta))
    (tmp_path / "catalog.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"catalog.safetensors: corrupted"):
        SIDCatalog.load(tmp_path)
    meta["codebook_sizes"] = [2, 3, 3]
    cat.save(tmp_path)
    (tmp_path / "catalog.json").write_text(json.dumps({**meta}))
    with pytest.raises(ValueError, match="must be < codebook size 2"):
        SIDCatalog.load(tmp_path)


# ---- shared SIDs (several items per SID) ------------------------------------------------------


def shared_catalog():
    # Items 7 and 3 share (0, 1); items 9, 5 and 8 share (2, 0); item 4 is alone.
    items = torch.tensor([7, 4, 9, 3, 5, 8])
    codes = torch.tensor([[0, 1], [1, 1], [2, 0], [0, 1], [2, 0], [2, 0]])
    return SIDCatalog.with_shared_sids(items, codes, [3, 2]), items, codes


def test_shared_sids_rows_are_distinct_sids_named_by_their_smallest_item():
    cat, items, codes = shared_catalog()
    assert cat.shares_sids and cat.num_items == 3 and cat.num_all_items == 6
    assert cat.codes.tolist() == [[0, 1], [1, 1], [2, 0]]  # first appearance
    assert cat.item_ids.tolist() == [3, 4, 5]
    assert sorted(cat.all_item_ids.tolist()) == sorted(items.tolist())
    # Every member, not only the representative, has its SID.
    assert torch.equal(cat.codes_of(items), codes)
    assert torch.equal(cat.lookup(codes), torch.tensor([3, 4, 5, 3, 5, 5]))


def test_expand_returns_every_item_of_each_sid_at_its_rank():
    from sidmlp_kernels.decode.types import GenerationOutput

    cat, _, _ = shared_catalog()
    # User 0 ranked SIDs (2,0), (1,1); user 1 ranked (0,1) then an empty slot.
    ranked = GenerationOutput(items=torch.tensor([[5, 4], [3, -1]]),
                              codes=torch.tensor([[[2, 0], [1, 1]], [[0, 1], [-1, -1]]]),
                              scores=torch.tensor([[-1.0, -2.0], [-0.5, float("-inf")]]))
    out = cat.expand(ranked)
    assert out.items.tolist() == [[5, 8, 9, 4], [3, 7, -1, -1]]
    assert out.scores[0].tolist() == [-1.0, -1.0, -1.0, -2.0]
    assert out.scores[1, :2].tolist() == [-0.5, -0.5] and bool(torch.isinf(out.scores[1, 2:]).all())
    assert out.codes[0].tolist() == [[2, 0], [2, 0], [2, 0], [1, 1]]
    assert out.codes[1, 2:].tolist() == [[-1, -1], [-1, -1]]
    # Brute force: each returned item's SID is the SID ranked at its slot, and every member is there.
    for b in range(2):
        want = [i for r in ranked.items[b].tolist() if r >= 0 for i in sorted(
            cat.all_item_ids[(cat.codes_of(cat.all_item_ids) == cat.codes_of([r])).all(1)].tolist())]
        assert [i for i in out.items[b].tolist() if i >= 0] == want


def test_unique_catalogs_are_unchanged_by_the_shared_constructor_and_expand(tmp_path):
    base = small_catalog()
    same = SIDCatalog.with_shared_sids(base.item_ids, base.codes, list(base.codebook_sizes))
    assert same == base and not same.shares_sids and same.fingerprint() == base.fingerprint()
    from sidmlp_kernels.decode.types import GenerationOutput
    ranked = GenerationOutput(items=base.item_ids[:2].view(1, 2), codes=base.codes[:2].view(1, 2, 3),
                              scores=torch.zeros(1, 2))
    assert base.expand(ranked) is ranked
    with pytest.raises(ValueError, match="unique per item"):  # the plain constructor still refuses shared SIDs
        SIDCatalog.from_codes([0, 1], [[0, 1], [0, 1]], [2, 2])


def test_shared_catalog_roundtrip_and_fingerprint(tmp_path):
    cat, items, codes = shared_catalog()
    cat.save(tmp_path)
    again = SIDCatalog.load(tmp_path)
    assert again == cat and again.shares_sids and again.fingerprint() == cat.fingerprint()
    # The members are part of the fingerprint: another grouping of the same SIDs differs.
    other = SIDCatalog.with_shared_sids(torch.tensor([7, 4, 9, 3, 5, 10]), codes, [3, 2])
    assert other.fingerprint() != cat.fingerprint() and other != cat
