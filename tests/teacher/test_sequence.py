"""The full-sequence teacher: windows, the one-pass loss against per-prefix passes, training."""

import pytest
import torch
import torch.nn.functional as F

from sidmlp_kernels.data.examples import build_examples, synthetic_data
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.data.movielens import Split
from sidmlp_kernels.evaluation import most_popular_for
from sidmlp_kernels.metrics import evaluate_ranking
from sidmlp_kernels.teacher.adapters import adapter_for, causal_prompt, prompt_format
from sidmlp_kernels.teacher.models import build_gpt2_teacher, build_t5_teacher, load_teacher, teacher_loss
from sidmlp_kernels.teacher.sequence import _windows, build_windows, sequence_loss
from sidmlp_kernels.teacher.train import TrainConfig, train_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    catalog, split = synthetic_data((8, 6, 5), num_items=80, num_users=60, seq_len=12, max_history=5, seed=0)
    return catalog, split, TokenLayout.for_catalog(catalog)


def items_model(layout, seed=0, **kw):
    return build_gpt2_teacher(layout, "tiny", max_positions=64, seed=seed, prompt="items", **kw).eval()


@pytest.mark.parametrize("n, window", [(1, 4), (2, 4), (4, 4), (5, 4), (11, 4), (7, 2), (30, 6)])
def test_windows_cover_every_transition_once(n, window):
    seq = list(range(100, 100 + n))
    chunks = _windows(seq, window)
    assert all(1 <= len(c) <= window for c in chunks)
    # Concatenated in order, dropping each window's first item (predicted from the user token alone)
    # but the first one's, the windows list the sequence exactly: every transition once, with context.
    assert chunks[0][0] == seq[0] and [i for c in chunks for i in c[1:]] == seq[1:]
    inside = [(c[j], c[j + 1]) for c in chunks for j in range(len(c) - 1)]
    assert inside == list(zip(seq, seq[1:]))


def test_build_windows_layout(data):
    catalog, split, layout = data
    windows = build_windows(split, catalog, layout, window=4)
    assert windows.num_items == sum(len(c) for s in split.train_sequences for c in _windows(list(s), 4))
    tokens, mask = windows.tokens, windows.mask
    assert (tokens[:, 0] == layout.user_token(None)).all()
    assert not (tokens == layout.eos_id).any()  # no EOS anywhere: the "items" format
    lengths = mask.sum(dim=1)
    assert ((lengths - 1) % layout.num_levels == 0).all() and lengths.max() == 1 + 4 * layout.num_levels
    assert (tokens[mask == 0] == layout.pad_id).all() and mask[:, 0].all()  # right-padded
    first = _windows(list(split.train_sequences[0]), 4)[0]
    expected = layout.codes_to_tokens(catalog.codes[torch.tensor(first)]).reshape(-1)
    assert torch.equal(tokens[0, 1 : 1 + expected.numel()], expected)
    t, m = windows.batch(torch.tensor([0, 1]))
    assert t.shape[1] == int(m.sum(1).max())
    with pytest.raises(ValueError, match="window must be an int >= 2"):
        build_windows(split, catalog, layout, window=1)
    empty = Split([[]], [[1]], [2], [[1]], [3], 5)
    with pytest.raises(ValueError, match="no items"):
        build_windows(empty, catalog, layout)


@torch.no_grad()
def test_one_pass_equals_per_prefix_passes(data):
    """The sequence loss at item j's digits is the per-prefix loss of (items before j) -> item j."""
    catalog, split, layout = data
    model = items_model(layout, seed=3)
    seq = list(split.train_sequences[2])[:5]
    windows = build_windows(Split([seq], [seq], [0], [seq], [0], 10), catalog, layout, window=10)
    tokens, mask = windows.batch(torch.tensor([0]))
    logits = model(input_ids=tokens, attention_mask=mask).logits[0, :-1]
    per_token = F.cross_entropy(logits, tokens[0, 1:], reduction="none")
    num_levels = layout.num_levels
    torch.testing.assert_close(sequence_loss(model, layout, tokens, mask), per_token.mean())
    for j in range(1, len(seq)):
        ids, m = layout.encode_histories([seq[:j]], catalog, padding_side="left")
        codes = catalog.codes[torch.tensor([seq[j]])]
        expected = per_token[j * num_levels : (j + 1) * num_levels].mean()
        torch.testing.assert_close(teacher_loss(model, layout, ids, m, codes), expected, atol=1e-5, rtol=1e-5)
        # ... and the adapter's digit logits are that pass's logits, restricted to each digit.
        adapter = adapter_for(model, layout)
        for level, lg in enumerate(adapter.digit_logits(adapter.encode(ids, m), codes)):
            start, stop = layout.digit_token_range(level)
            torch.testing.assert_close(lg[0], logits[j * num_levels + level, start:stop], atol=1e-5, rtol=1e-5)


def test_prompt_formats(data):
    catalog, split, layout = data
    ex = build_examples(split, catalog, layout, "test")
    ids, mask, _, _ = ex.batch(torch.arange(4))
    eos_model = build_gpt2_teacher(layout, "tiny", max_positions=64, seed=0)
    assert prompt_format(eos_model) == "eos" and prompt_format(items_model(layout)) == "items"
    a, am = causal_prompt(eos_model, layout, ids, mask)
    b, bm = causal_prompt(items_model(layout), layout, ids, mask)
    assert torch.equal(a[:, :-1], b) and (a[:, -1] == layout.eos_id).all() and torch.equal(am[:, :-1], bm)
    with pytest.raises(ValueError, match="prompt must be one of"):
        build_gpt2_teacher(layout, "tiny", prompt="sep")
    with pytest.raises(ValueError, match="must end with the EOS token"):
        causal_prompt(items_model(layout), layout, ids[:, :-1], mask[:, :-1])
    windows = build_windows(split, catalog, layout)
    t, m = windows.batch(torch.arange(2))
    for wrong in (eos_model, build_t5_teacher(layout, "tiny", seed=0)):
        with pytest.raises(ValueError, match="full-sequence objective needs a decoder-only teacher"):
            sequence_loss(wrong, layout, t, m)


def test_train_full_sequence_teacher_learns_and_reloads(tmp_path, data):
    catalog, split, layout = data
    windows = build_windows(split, catalog, layout)
    valid = build_examples(split, catalog, layout, "valid", padding_side="left")
    model = items_model(layout, seed=0, dropout=0.0).train()
    assert (model.config.resid_pdrop, model.config.embd_pdrop, model.config.attn_pdrop) == (0.0, 0.0, 0.0)
    config = TrainConfig(epochs=40, batch_size=16, lr=1e-2, eval_every=60, patience=20, eval_beam=10)
    summary = train_teacher(model, layout, catalog, windows, valid, tmp_path / "run", config)
    # Synthetic users step item -> successor(item) 80% of the time: a learnt teacher finds it
    # (an untrained one scores about 0.05, most-popular about 0.1).
    assert summary["best_ndcg"] > 0.25
    popular = most_popular_for(split, "valid")
    assert summary["best_ndcg"] > 2 * evaluate_ranking(popular.expand(len(valid), -1), valid.target_items)["ndcg@10"]
    loaded, loaded_layout = load_teacher(tmp_path / "run", catalog=catalog)
    assert prompt_format(loaded) == "items" and loaded_layout == layout
