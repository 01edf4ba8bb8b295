import json

import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.data.movielens import Split
from sidmlp_kernels.data.examples import Examples, build_examples
from sidmlp_kernels.data.layout import TokenLayout, to_left_padding, to_right_padding


def make_catalog(sizes, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, k, (n,), generator=g) for k in sizes], 1)
    codes = torch.unique(raw, dim=0)
    return SIDCatalog.from_codes(torch.arange(codes.shape[0]), codes, sizes)


@pytest.mark.parametrize("sizes", [[4], [3, 5], [256, 256, 256, 256], [2, 7, 3, 5, 4]])
def test_tiger_ids(sizes):
    layout = TokenLayout(tuple(sizes))
    assert layout.pad_id == 0
    assert layout.offsets[0] == 1
    for level in range(1, len(sizes)):
        assert layout.offsets[level] == 1 + sum(sizes[:level])
    assert layout.eos_id == 1 + sum(sizes)
    assert layout.user_base == layout.eos_id + 1
    assert layout.vocab_size == sum(sizes) + 3
    assert layout.digit_token_range(len(sizes) - 1) == (layout.offsets[-1], layout.eos_id)
    with_users = TokenLayout(tuple(sizes), num_user_tokens=10)
    assert with_users.vocab_size == sum(sizes) + 12
    assert with_users.user_token(23) == with_users.user_base + 3


def test_codes_tokens_roundtrip_and_errors():
    layout = TokenLayout((3, 5, 2))
    codes = torch.tensor([[0, 0, 0], [2, 4, 1], [1, 3, 0]])
    tokens = layout.codes_to_tokens(codes)
    assert tokens.tolist() == [[1, 4, 9], [3, 8, 10], [2, 7, 9]]
    assert torch.equal(layout.tokens_to_codes(tokens), codes)
    # A digit-1 token in digit 0's place, EOS, pad: not codes of their digit.
    assert layout.tokens_to_codes(torch.tensor([[4, 4, 11]])).tolist() == [[-1, 0, -1]]
    with pytest.raises(ValueError, match="codebook"):
        layout.codes_to_tokens(torch.tensor([[0, 5, 0]]))
    with pytest.raises(ValueError, match="codebook"):
        layout.codes_to_tokens(torch.tensor([[-1, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        layout.codes_to_tokens(torch.tensor([[0, 0]]))


@pytest.mark.parametrize("bad", [(), (0,), (3, -1)])
def test_bad_layout_args(bad):
    with pytest.raises(ValueError):
        TokenLayout(bad)
    with pytest.raises(ValueError):
        TokenLayout((3, 3), num_user_tokens=0)


def test_validate_against_catalog():
    cat = make_catalog([4, 3, 5], 30)
    TokenLayout.for_catalog(cat).validate_against(cat)
    with pytest.raises(ValueError, match="does not match the catalog"):
        TokenLayout((4, 3)).validate_against(cat)
    with pytest.raises(ValueError, match=r"\[4, 3, 6\]"):
        TokenLayout((4, 3, 6)).validate_against(cat)


def test_encode_histories_right_and_left():
    cat = SIDCatalog.from_codes(torch.tensor([10, 11, 12]), torch.tensor([[0, 1], [2, 0], [1, 1]]), [3, 2])
    layout = TokenLayout.for_catalog(cat)  # offsets 1, 4; eos 6; user 7
    ids, mask = layout.encode_histories([[10, 12], [11]], cat)
    assert ids.tolist() == [[7, 1, 5, 2, 5, 6], [7, 3, 4, 6, 0, 0]]
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    left, lmask = layout.encode_histories([[10, 12], [11]], cat, padding_side="left")
    assert left.tolist() == [[7, 1, 5, 2, 5, 6], [0, 0, 7, 3, 4, 6]]
    assert lmask.tolist() == [[1] * 6, [0, 0, 1, 1, 1, 1]]
    # max_history keeps the most recent items.
    ids, _ = layout.encode_histories([[10, 12, 11]], cat, max_history=1)
    assert ids.tolist() == [[7, 3, 4, 6]]
    layout.check_inputs(ids, torch.ones_like(ids))


def test_encode_histories_errors():
    cat = make_catalog([3, 3], 8)
    layout = TokenLayout.for_catalog(cat)
    with pytest.raises(ValueError, match="empty"):
        layout.encode_histories([[0], []], cat)
    with pytest.raises(ValueError, match="not in the catalog"):
        layout.encode_histories([[0, 999]], cat)
    with pytest.raises(ValueError, match="at least one"):
        layout.encode_histories([], cat)
    with pytest.raises(ValueError, match="padding_side"):
        layout.encode_histories([[0]], cat, padding_side="middle")
    with pytest.raises(ValueError, match="does not match"):
        TokenLayout((3, 4)).encode_histories([[0]], cat)


def test_check_inputs_errors():
    layout = TokenLayout((3, 3))  # eos 7, user 8, vocab 9
    ids = torch.tensor([[8, 1, 4, 7]])
    layout.check_inputs(ids, torch.ones_like(ids))
    with pytest.raises(ValueError, match="input_ids must be in"):
        layout.check_inputs(torch.tensor([[8, 1, 4, 9]]), torch.ones_like(ids))
    with pytest.raises(ValueError, match="input_ids must be in"):
        layout.check_inputs(torch.tensor([[8, 1, -4, 7]]), torch.ones_like(ids))
    with pytest.raises(ValueError, match="empty history"):
        layout.check_inputs(torch.tensor([[8, 7, 0, 0]]), torch.tensor([[1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="empty history"):
        layout.check_inputs(torch.tensor([[8, 7, 7, 7]]), torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        layout.check_inputs(ids, torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        layout.check_inputs(ids[0], torch.ones(4))


def test_padding_conversions_roundtrip():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([5, 2, 7, 1])
    mask = (torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.randint(1, 50, (4, 7), generator=g) * mask
    left, lmask = to_left_padding(ids, mask)
    assert torch.equal(lmask.flip(1), mask)
    for row in range(4):
        n = int(lengths[row])
        assert torch.equal(left[row, 7 - n :], ids[row, :n])
    back, bmask = to_right_padding(left, lmask)
    assert torch.equal(back, ids) and torch.equal(bmask, mask)
    # Idempotent on already-converted inputs.
    again, _ = to_left_padding(left, lmask)
    assert torch.equal(again, left)


def test_json_roundtrip_and_validation(tmp_path):
    layout = TokenLayout((256, 256, 256, 4), num_user_tokens=7)
    text = layout.to_json()
    assert TokenLayout.from_json(text) == layout
    blob = json.loads(text)
    assert blob["eos_id"] == layout.eos_id and blob["vocab_size"] == layout.vocab_size
    layout.save(tmp_path)
    assert TokenLayout.load(tmp_path) == layout
    assert TokenLayout.load(tmp_path / "layout.json") == layout
    bad = dict(blob, format_version=99)
    with pytest.raises(ValueError, match="format_version"):
        TokenLayout.from_json(json.dumps(bad))
    with pytest.raises(ValueError, match="eos_id"):
        TokenLayout.from_json(json.dumps(dict(blob, eos_id=3)))
    with pytest.raises(ValueError, match="corrupted"):
        TokenLayout.from_json("{not json")
    with pytest.raises(ValueError, match="not a sidmlp"):
        TokenLayout.from_json(json.dumps({"format": "other"}))
    with pytest.raises(FileNotFoundError):
        TokenLayout.load(tmp_path / "missing.json")


# ---- examples ---------------------------------------------------------------------------


def toy_split():
    return Split(
        train_sequences=[[0, 1, 2, 3], [4], [5, 6, 7, 0, 1, 2]],
        valid_histories=[[0, 1, 2, 3], [4], [6, 7, 0]],
        valid_targets=[4, 5, 3],
        test_histories=[[1, 2, 3, 4], [4, 5], [7, 0, 3]],
        test_targets=[5, 6, 4],
        max_history=3,
    )


def test_build_examples_train_prefixes():
    cat = make_catalog([4, 4], 10, seed=3)
    assert cat.num_items >= 8
    layout = TokenLayout.for_catalog(cat)
    split = toy_split()
    ex = build_examples(split, cat, layout, "train")
    # User 0: t = 1..3; user 1: none; user 2: t = 1..5.
    assert len(ex) == 3 + 0 + 5
    assert ex.target_items.tolist() == [1, 2, 3, 6, 7, 0, 1, 2]
    assert ex.users.tolist() == [0, 0, 0, 2, 2, 2, 2, 2]
    assert torch.equal(ex.target_codes, cat.codes_of(ex.target_items))
    expected_histories = [[0], [0, 1], [0, 1, 2], [5], [5, 6], [5, 6, 7], [6, 7, 0], [7, 0, 1]]
    ids, mask = layout.encode_histories(expected_histories, cat)
    assert torch.equal(ex.input_ids, ids) and torch.equal(ex.attention_mask, mask)


def test_build_examples_cap_valid_test_and_batches():
    cat = make_catalog([4, 4], 10, seed=3)
    layout = TokenLayout.for_catalog(cat)
    split = toy_split()
    capped = build_examples(split, cat, layout, "train", max_prefixes_per_user=2, seed=5)
    assert capped.users.tolist().count(0) == 2 and capped.users.tolist().count(2) == 2
    assert torch.equal(capped.target_items, build_examples(split, cat, layout, "train", 2, seed=5).target_items)
    test = build_examples(split, cat, layout, "test")
    assert test.target_items.tolist() == [5, 6, 4]
    ids, mask = layout.encode_histories(split.test_histories, cat, max_history=3)
    assert torch.equal(test.input_ids, ids)
    ids, mask, codes, items = test.batch(torch.tensor([1]))
    assert ids.shape[1] == 2 + 2 * 2 and mask.all()
    left = build_examples(split, cat, layout, "valid", padding_side="left")
    ids, mask, _, _ = left.batch(torch.tensor([1]))
    assert ids.shape[1] == 4 and mask.all()
    assert sum(len(b[0]) for b in test.batches(2, shuffle=True, generator=torch.Generator().manual_seed(0))) == 3
    with pytest.raises(ValueError, match="part"):
        build_examples(split, cat, layout, "dev")
    with pytest.raises(ValueError, match="does not match"):
        build_examples(split, cat, TokenLayout((4, 5)), "test")
    with pytest.raises(ValueError):
        Examples(ids, mask[:, :2], codes, items)


# ---- other code bases' layouts ------------------------------------------------------------


def official_token(codes, sizes):
    """ztguo715/SID-MLP TIGERTokenizer._sem_ids_to_tokens: code + sum(K_0..K_{l-1}) + 1 ("0 is padding")."""
    offsets = [0]
    for k in sizes[:-1]:
        offsets.append(offsets[-1] + k)
    return [c + offsets[d] + 1 for d, c in enumerate(codes)]


def xlt_token(codes):
    """XiaoLongtaoo/TIGER model/dataset.py item2code: c + i * 256 + 1."""
    return [c + i * 256 + 1 for i, c in enumerate(codes)]


@pytest.mark.parametrize("sizes,users", [([256, 256, 256, 256], 1), ([3, 5, 2], 4)])
def test_sidmlp_official_ids(sizes, users):
    layout = TokenLayout(tuple(sizes), num_user_tokens=users, kind="sidmlp-official")
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, k, (20,), generator=g) for k in sizes], 1)
    expected = [official_token(row, sizes) for row in codes.tolist()]
    assert layout.codes_to_tokens(codes).tolist() == expected
    base_user_token = sum(sizes) + 1  # the tokenizer's base_user_token, then n_user_tokens, then eos
    assert (layout.pad_id, layout.decoder_start_id) == (0, 0)
    assert layout.user_base == base_user_token
    assert layout.eos_id == base_user_token + users
    assert layout.vocab_size == layout.eos_id + 1  # the tokenizer's vocab_size = eos_token + 1
    assert layout.user_token(users + 1) == base_user_token + 1 % users


def test_tiger_xlt_ids_and_inputs():
    layout = TokenLayout((256, 256, 256, 256), kind="tiger-xlt")
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 256, (30, 4), generator=g)
    assert layout.codes_to_tokens(codes).tolist() == [xlt_token(row) for row in codes.tolist()]
    assert (layout.pad_id, layout.eos_id, layout.decoder_start_id, layout.vocab_size) == (0, 0, 0, 1025)
    assert layout.num_user_tokens == 0 and layout.user_base is None and not layout.input_eos
    cat = SIDCatalog.from_codes(torch.tensor([1, 2, 3]), codes[:3], [256] * 4)
    ids, mask = layout.encode_histories([[1, 3], [2]], cat, padding_side="left")
    # XiaoLongtaoo's collate: the flattened SID tokens, left padded with 0, mask = token != 0; no user, no EOS.
    rows = [xlt_token(codes[0].tolist()) + xlt_token(codes[2].tolist()), [0] * 4 + xlt_token(codes[1].tolist())]
    assert ids.tolist() == rows
    assert mask.tolist() == [[int(t != 0) for t in row] for row in rows]
    layout.check_inputs(ids, mask)
    with pytest.raises(ValueError, match="empty history"):
        layout.check_inputs(ids[:, :3], mask[:, :3])
    with pytest.raises(ValueError, match="no user tokens"):
        layout.encode_histories([[1]], cat, users=[0])
    with pytest.raises(ValueError, match="num_user_tokens"):
        TokenLayout((256,) * 4, num_user_tokens=1, kind="tiger-xlt")
    with pytest.raises(ValueError, match="<= 256"):
        TokenLayout((300, 256), kind="tiger-xlt")


def test_custom_layout_code_tokens_use_digit_ranges():
    # Codes from id 10, users in between the digits, EOS below them: nothing assumes offset_0 = 1.
    layout = TokenLayout((3, 3), num_user_tokens=2, kind="custom", offsets=(10, 15), pad_id=0, eos_id=5,
                         user_base=13, decoder_start_id=1)
    assert layout.vocab_size == 18 and layout.digit_token_range(1) == (15, 18)
    cat = SIDCatalog.from_codes(torch.tensor([7, 8]), torch.tensor([[0, 2], [1, 0]]), [3, 3])
    ids, mask = layout.encode_histories([[7, 8], [8]], cat, users=[0, 3])
    assert ids.tolist() == [[13, 10, 17, 11, 15, 5], [14, 11, 15, 5, 0, 0]]
    layout.check_inputs(ids, mask)
    # Ids below eos (the TIGER test "1 <= id < eos") are not codes here: user and specials only.
    with pytest.raises(ValueError, match="no SID code tokens"):
        layout.check_inputs(torch.tensor([[13, 1, 2, 5]]), torch.ones(1, 4, dtype=torch.long))
    assert layout.is_code_token(torch.tensor([9, 10, 12, 13, 15, 17, 18])).tolist() == [
        False, True, True, False, True, True, False]
    with pytest.raises(ValueError, match="needs offsets"):
        TokenLayout((3, 3), kind="custom", pad_id=0, eos_id=5)


@pytest.mark.parametrize("kw,match", [
    (dict(offsets=(1, 3), pad_id=0, eos_id=9), "digit 0's codes .* overlap digit 1's codes"),
    (dict(offsets=(1, 4), pad_id=0, eos_id=9, user_base=6), "digit 1's codes .* overlap the user tokens"),
    (dict(offsets=(1, 4), pad_id=2, eos_id=9), "pad_id 2 lies inside digit 0's codes"),
    (dict(offsets=(1, 4), pad_id=0, eos_id=5), "eos_id 5 lies inside digit 1's codes"),
    (dict(offsets=(-1, 4), pad_id=0, eos_id=9), ">= 0"),
])
def test_overlapping_or_negative_ranges_rejected(kw, match):
    users = 2 if "user_base" in kw else 0
    with pytest.raises(ValueError, match=match):
        TokenLayout((3, 3), num_user_tokens=users, kind="custom", **kw)


def test_presets_reject_other_ids():
    with pytest.raises(ValueError, match="kind='custom'"):
        TokenLayout((3, 3), eos_id=3)
    assert TokenLayout((3, 3), eos_id=7) == TokenLayout((3, 3))


@pytest.mark.parametrize("layout", [
    TokenLayout((4, 3), num_user_tokens=3, kind="sidmlp-official"),
    TokenLayout((256, 256), kind="tiger-xlt"),
    TokenLayout((3, 3), num_user_tokens=2, kind="custom", offsets=(10, 15), pad_id=0, eos_id=5, user_base=13,
                decoder_start_id=1, input_eos=False),
])
def test_json_roundtrip_other_kinds(layout, tmp_path):
    layout.save(tmp_path)
    assert TokenLayout.load(tmp_path) == layout
    blob = json.loads(layout.to_json())
    assert blob["decoder_start_id"] == layout.decoder_start_id and blob["input_eos"] == layout.input_eos
    # A preset derives eos_id (the edit is caught there); a custom layout's vocab_size no longer fits it.
    with pytest.raises(ValueError, match="JSON says (eos_id|vocab_size)"):
        TokenLayout.from_json(json.dumps(dict(blob, eos_id=blob["eos_id"] + 100)))


def test_tiger_json_keeps_the_version_1_fields():
    """A TIGER layout writes exactly the fields of the files already on disk (which must keep loading)."""
    blob = TokenLayout((3, 3), num_user_tokens=2).to_dict()
    assert sorted(blob) == sorted(["format", "format_version", "kind", "codebook_sizes", "num_user_tokens",
                                   "pad_id", "offsets", "eos_id", "user_base", "vocab_size"])
    old = {"format": "sidmlp-token-layout", "format_version": 1, "kind": "tiger", "codebook_sizes": [3, 3],
           "num_user_tokens": 2}
    assert TokenLayout.from_json(json.dumps(old)) == TokenLayout((3, 3), num_user_tokens=2)


# ---- kind "tokenizer": per-digit token tables (a causal LLM's added SID tokens) ------------------


def tokenizer_layout():
    # Sorted-string add_tokens order: <a_0> <a_1> <a_10> <a_2> ... so code order is not id order.
    return TokenLayout((3, 2), kind="tokenizer", token_ids=((52, 50, 51), (61, 60)), pad_id=7, eos_id=7)


def test_tokenizer_layout_maps_codes_through_its_tables():
    layout = tokenizer_layout()
    assert not layout.contiguous and layout.vocab_size == 62
    codes = torch.tensor([[0, 1], [2, 0], [1, 1]])
    tokens = layout.codes_to_tokens(codes)
    assert tokens.tolist() == [[52, 60], [51, 61], [50, 60]]
    assert torch.equal(layout.tokens_to_codes(tokens), codes)
    assert layout.tokens_to_codes(torch.tensor([[60, 52], [7, 61]])).tolist() == [[-1, -1], [-1, 0]]
    assert layout.is_code_token(torch.tensor([50, 7, 61, 62])).tolist() == [True, False, True, False]
    assert layout.digit_token_ids(0).tolist() == [52, 50, 51]
    with pytest.raises(ValueError, match="digit_token_ids"):
        layout.digit_token_range(0)
    with pytest.raises(ValueError, match="outside digit 1"):
        layout.codes_to_tokens(torch.tensor([[0, 2]]))


def test_tokenizer_layout_roundtrip_and_prompt_inputs(tmp_path):
    layout = tokenizer_layout()
    layout.save(tmp_path)
    assert TokenLayout.load(tmp_path) == layout
    # Inputs are text prompts: any tokens (no SID token needed), at least one real token per row.
    ids = torch.tensor([[7, 3, 4], [1, 2, 5]])
    layout.check_inputs(ids, torch.tensor([[0, 1, 1], [1, 1, 1]]))
    with pytest.raises(ValueError, match="empty prompt"):
        layout.check_inputs(ids, torch.tensor([[0, 0, 0], [1, 1, 1]]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(token_ids=((1, 2, 3), (3, 4))), "names both"),
    (dict(token_ids=((1, 2, 3), (4,))), r"token_ids\[1\] must hold 2"),
    (dict(token_ids=((1, 2, 3), (4, 5)), pad_id=2), "pad_id 2 is digit 0"),
    (dict(token_ids=((1, -2, 3), (4, 5))), ">= 0"),
    (dict(token_ids=None), "token_ids go with"),
    (dict(token_ids=((1, 2, 3), (4, 5)), offsets=(1, 4)), "not offsets"),
])
def test_tokenizer_layout_rejects_bad_tables(kwargs, match):
    args = dict(kind="tokenizer", pad_id=9, eos_id=9) | kwargs
    with pytest.raises(ValueError, match=match):
        TokenLayout((3, 2), **args)


def test_token_tables_only_with_the_tokenizer_kind():
    with pytest.raises(ValueError, match="token_ids go with"):
        TokenLayout((3, 2), token_ids=((1, 2, 3), (4, 5)))
