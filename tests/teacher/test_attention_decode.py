import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.decode.types import Encoded
from sidmlp_kernels.teacher.adapters import adapter_for, prompt_format
from sidmlp_kernels.teacher.attention_decode import (
    T5CachedDecoder,
    attention_beam_search,
    digit_allowed_tokens_fn,
    hf_generate,
    rank_beams,
)
from sidmlp_kernels.decode.reference import beam_search_reference, exhaustive_search
from sidmlp_kernels.data.examples import build_examples, synthetic_data
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.teacher.models import build_gpt2_teacher, build_t5_teacher, teacher_loss


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    catalog, split = synthetic_data((8, 6, 5), num_items=80, num_users=60, seed=0)
    layout = TokenLayout.for_catalog(catalog)
    return catalog, split, layout


def make_model(arch, layout, seed=0):
    if arch == "t5":
        return build_t5_teacher(layout, "tiny", seed=seed).eval()
    prompt = "items" if arch == "gpt2-items" else "eos"  # gpt2-items: the full-sequence teacher's prompt
    return build_gpt2_teacher(layout, "tiny", max_positions=64, seed=seed, prompt=prompt).eval()


def inputs(data, n=6, part="test"):
    catalog, split, layout = data
    ex = build_examples(split, catalog, layout, part)
    ids, mask, _, _ = ex.batch(torch.arange(n))
    return ids, mask


@pytest.fixture(scope="module")
def trained_t5(data):
    """A tiny T5 trained for a few seconds on the synthetic successor task."""
    catalog, split, layout = data
    torch.manual_seed(0)
    model = build_t5_teacher(layout, "tiny", seed=0, dropout_rate=0.0)
    train = build_examples(split, catalog, layout, "train")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        ids, mask, codes, _ = train.batch(torch.randint(0, len(train), (64,), generator=g))
        loss = teacher_loss(model, layout, ids, mask, codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 2.5
    return model.eval()


def stateless_prefix_logits(model, layout, ids, mask):
    """Uncached oracle: digit logits of every (B, N, level) prefix from a full HF forward via the adapter."""
    adapter = adapter_for(model, layout)
    enc = adapter.encode(ids, mask)

    def prefix_logits(level, prefixes):
        b, n, _ = prefixes.shape
        rows = torch.arange(b).repeat_interleave(n)
        expanded = Encoded(
            enc.states[rows], enc.mask[rows], None if enc.input_ids is None else enc.input_ids[rows]
        )
        codes = torch.zeros(b * n, layout.num_levels, dtype=torch.long)
        codes[:, :level] = prefixes.reshape(b * n, level)
        return adapter.digit_logits(expanded, codes)[level].reshape(b, n, -1)

    return prefix_logits


# ---- the cached T5 decoder against HF's own forward ---------------------------------------


@pytest.mark.parametrize("variant", [{}, {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}])
@torch.no_grad()
def test_cached_decoder_matches_hf_forward_with_reordering(data, variant):
    catalog, split, layout = data
    model = build_t5_teacher(layout, "tiny", seed=0, **variant).eval()
    ids, mask = inputs(data, n=3)
    enc = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    dec = T5CachedDecoder(model, layout, enc, mask)
    g = torch.Generator().manual_seed(1)
    b, w = 3, 4
    seqs = torch.zeros(b, 1, 1, dtype=torch.long)  # decoder start
    hidden = dec.step(seqs[:, :, -1])
    for level in range(layout.num_levels):
        logits = dec.digit_logits(hidden, level)
        width = seqs.shape[1]
        flat = seqs.reshape(b * width, -1)
        rows = torch.arange(b).repeat_interleave(width)
        ref = model(encoder_outputs=(enc[rows],), attention_mask=mask[rows], decoder_input_ids=flat).logits[:, -1]
        start, stop = layout.digit_token_range(level)
        torch.testing.assert_close(logits.reshape(b * width, -1), ref[:, start:stop], atol=1e-4, rtol=1e-4)
        if level + 1 == layout.num_levels:
            break
        parents = torch.randint(0, width, (b, w), generator=g)
        tokens = torch.randint(start, stop, (b, w), generator=g)
        dec.reorder(parents)
        seqs = torch.cat([seqs[torch.arange(b).unsqueeze(1), parents], tokens.unsqueeze(-1)], dim=2)
        hidden = dec.step(tokens)


# ---- unconstrained mode == HF generate restricted to digit tokens -------------------------


def assert_same_beams(ours, theirs):
    alive = torch.isfinite(ours.beam_scores) & (theirs.beam_scores > -1e8)
    assert torch.equal(torch.isfinite(ours.beam_scores), theirs.beam_scores > -1e8)
    assert torch.equal(ours.beam_codes[alive], theirs.beam_codes[alive])
    torch.testing.assert_close(ours.beam_scores[alive], theirs.beam_scores[alive], atol=1e-4, rtol=1e-5)


def exact_hf(model, layout, catalog, ids, mask, beam, top_n):
    prompt = 1 if model.config.is_encoder_decoder else ids.shape[1] - (prompt_format(model) == "items")
    return hf_generate(
        model, layout, catalog, ids, mask, beam, top_n,
        length_penalty=0.0, renormalize_logits=True,
        prefix_allowed_tokens_fn=digit_allowed_tokens_fn(layout, prompt),
    )


@pytest.mark.parametrize("arch", ["t5", "gpt2", "gpt2-items"])
@pytest.mark.parametrize("beam, top_n", [(1, 1), (5, 3), (12, 12)])
def test_unconstrained_reproduces_hf_random_weights(data, arch, beam, top_n):
    catalog, _, layout = data
    model = make_model(arch, layout, seed=3)
    ids, mask = inputs(data, n=4)
    ours = attention_beam_search(model, layout, catalog, ids, mask, beam, top_n, constrained=False)
    theirs = exact_hf(model, layout, catalog, ids, mask, beam, top_n)
    assert_same_beams(ours, theirs)
    assert torch.equal(ours.items, theirs.items)
    assert torch.equal(ours.num_invalid, theirs.num_invalid)


def test_unconstrained_reproduces_hf_trained(data, trained_t5):
    catalog, _, layout = data
    ids, mask = inputs(data, n=8, part="valid")
    ours = attention_beam_search(trained_t5, layout, catalog, ids, mask, 10, 10, constrained=False)
    theirs = exact_hf(trained_t5, layout, catalog, ids, mask, 10, 10)
    assert_same_beams(ours, theirs)
    # Plain HF (full-vocabulary softmax, EOS step included) is close on a trained teacher, not exact.
    plain = hf_generate(trained_t5, layout, catalog, ids, mask, 10, 10)
    assert (plain.beam_codes[:, 0] == ours.beam_codes[:, 0]).all(-1).float().mean() >= 0.5


# ---- constrained mode == reference search over an uncached oracle -------------------------


@pytest.mark.parametrize("arch", ["t5", "gpt2", "gpt2-items"])
def test_constrained_matches_uncached_reference(data, arch):
    catalog, _, layout = data
    model = make_model(arch, layout, seed=5)
    ids, mask = inputs(data, n=4)
    ours = attention_beam_search(model, layout, catalog, ids, mask, 7, 5)
    prefix_logits = stateless_prefix_logits(model, layout, ids, mask)
    with torch.no_grad():
        ref = beam_search_reference(lambda l, p, parents: prefix_logits(l, p), catalog, 4, 7, 5)
    assert torch.equal(ours.items, ref.items)
    torch.testing.assert_close(ours.scores, ref.scores, atol=1e-4, rtol=1e-5)
    assert (ours.num_invalid == 0).all()


def test_constrained_full_beam_equals_exhaustive(data, trained_t5):
    catalog, _, layout = data
    ids, mask = inputs(data, n=3)
    n = catalog.num_items
    ours = attention_beam_search(trained_t5, layout, catalog, ids, mask, n, n)
    with torch.no_grad():
        oracle = exhaustive_search(stateless_prefix_logits(trained_t5, layout, ids, mask), catalog, 3, top_n=n)
    torch.testing.assert_close(ours.scores, oracle.scores, atol=1e-4, rtol=1e-5)
    # Identical order wherever neighbouring scores are not within tolerance of each other.
    gaps = (oracle.scores[:, :-1] - oracle.scores[:, 1:]).abs() > 1e-4
    distinct = torch.cat([gaps[:, :1], gaps[:, 1:] & gaps[:, :-1], gaps[:, -1:]], dim=1)
    assert torch.equal(ours.items[distinct], oracle.items[distinct])
    assert sorted(ours.items[0].tolist()) == sorted(catalog.item_ids.tolist())


@pytest.mark.parametrize("arch", ["t5", "gpt2", "gpt2-items"])
def test_constrained_results_valid_sorted_and_batch_independent(data, arch):
    catalog, _, layout = data
    model = make_model(arch, layout, seed=7)
    ids, mask = inputs(data, n=5)
    out = attention_beam_search(model, layout, catalog, ids, mask, 6, 6)
    assert (out.items >= 0).all()
    assert torch.equal(catalog.lookup(out.codes.reshape(-1, 3)).reshape(5, 6), out.items)
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    for row in out.items.tolist():
        assert len(set(row)) == len(row)
    for r in (0, 3):
        real = int(mask[r].sum())
        sl = slice(0, real) if arch == "t5" or mask[r, 0] else slice(ids.shape[1] - real, None)
        single = attention_beam_search(model, layout, catalog, ids[r : r + 1, sl], mask[r : r + 1, sl], 6, 6)
        assert torch.equal(single.items[0], out.items[r])
        torch.testing.assert_close(single.scores[0], out.scores[r], atol=1e-4, rtol=1e-5)


# ---- HF generate as TIGER code bases run it -----------------------------------------------


@pytest.mark.parametrize("arch", ["t5", "gpt2", "gpt2-items"])
def test_hf_generate_counts_dropped_beams(data, arch):
    catalog, _, layout = data
    model = make_model(arch, layout, seed=11)
    ids, mask = inputs(data, n=3)
    out = hf_generate(model, layout, catalog, ids, mask, 6, 4)
    kept = (out.items >= 0).sum(dim=1)
    assert torch.equal(kept + out.num_invalid + out.num_duplicate, torch.full((3,), 4))
    assert out.items.shape == (3, 4) and out.codes.shape == (3, 4, 3)
    assert torch.isinf(out.scores[out.items < 0]).all()


def test_hf_generate_trained_mostly_valid(data, trained_t5):
    catalog, _, layout = data
    ids, mask = inputs(data, n=8, part="valid")
    out = hf_generate(trained_t5, layout, catalog, ids, mask, 10, 5)
    assert (out.items[:, 0] >= 0).float().mean() >= 0.5
    valid = out.items >= 0
    assert torch.equal(catalog.lookup(out.codes[valid]), out.items[valid])


def test_rank_beams_drops_invalid_and_duplicates():
    catalog = SIDCatalog.from_codes(torch.tensor([7, 8, 9]), torch.tensor([[0, 1], [1, 0], [1, 1]]), [2, 2])
    codes = torch.tensor([[[0, 1], [-1, 0], [0, 1], [1, 1], [0, 0]]])
    scores = torch.tensor([[-1.0, -2.0, -3.0, -4.0, float("-inf")]])
    out = rank_beams(catalog, codes, scores, 5)
    assert out.items.tolist() == [[7, 9, -1, -1, -1]]
    assert out.scores[0, :2].tolist() == [-1.0, -4.0]
    assert out.codes[0, :2].tolist() == [[0, 1], [1, 1]]
    assert out.codes[0, 2:].eq(-1).all()
    assert out.num_invalid.tolist() == [1] and out.num_duplicate.tolist() == [1]
    assert torch.equal(out.beam_codes, codes)


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("decode", ["hf", "constrained", "unconstrained"])
def test_bad_inputs(data, decode):
    catalog, _, layout = data
    model = make_model("t5", layout)
    ids, mask = inputs(data, n=2)

    def run(m=model, lay=layout, cat=catalog, i=ids, am=mask, beam=4, top=2):
        if decode == "hf":
            return hf_generate(m, lay, cat, i, am, beam, top)
        return attention_beam_search(m, lay, cat, i, am, beam, top, constrained=decode == "constrained")

    other = SIDCatalog.from_codes(torch.arange(3), torch.tensor([[0, 1, 2], [1, 0, 0], [2, 2, 2]]), [8, 6, 6])
    with pytest.raises(ValueError, match="does not match the catalog"):
        run(cat=other)
    bigger = TokenLayout((8, 6, 50))
    with pytest.raises(ValueError, match="token embeddings"):
        run(lay=bigger, cat=SIDCatalog.from_codes(torch.arange(1), torch.tensor([[0, 0, 0]]), [8, 6, 50]))
    bad = ids.clone()
    bad[0, 1] = layout.vocab_size + 5
    with pytest.raises(ValueError, match="input_ids must be in"):
        run(i=bad)
    empty = mask.clone()
    empty[1] = 0
    empty[1, :2] = 1
    with pytest.raises(ValueError, match="empty history"):
        run(am=empty)
    with pytest.raises(ValueError, match="beam_size"):
        run(beam=0, top=1)
    with pytest.raises(ValueError, match="top_n"):
        run(beam=2, top=3)
    with pytest.raises(ValueError, match="attention_mask"):
        run(am=mask[:, :-1])
