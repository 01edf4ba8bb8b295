"""sk.constrained_generate (teacher/exact_generate.py) against HF's own generate on the original model.

The oracle is HF `model.generate` with a trie over the catalog's SIDs as `prefix_allowed_tokens_fn`
(written here, from the catalog's codes through the layout) and max_new_tokens = L + 1: what users'
pipelines run. renormalize=False must return its beams (sequences) and scores; renormalize=True
must equal the plain-PyTorch reference on an uncached HF forward (and HF with renormalize_logits).
"""

import pytest
import torch

import sidmlp_kernels as sk
from sidmlp_kernels.decode.reference import beam_search_reference
from sidmlp_kernels.teacher.adapters import causal_prompt
from sidmlp_kernels.teacher.attention_decode import run_hf_generate
from tests.helpers import assert_sequences_decode_to_ranked_items
from tests.teacher.test_attention_decode import data, inputs, make_model, stateless_prefix_logits  # noqa: F401
from tests.teacher.test_import import imported_case, official, xlt  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def catalog_trie_fn(layout, catalog, prompt_len):
    """HF prefix_allowed_tokens_fn: the catalog's next digit tokens after each SID prefix, then EOS."""
    tokens = layout.codes_to_tokens(catalog.codes).tolist()
    children = {}
    for row in tokens:
        for level in range(layout.num_levels):
            children.setdefault(tuple(row[:level]), set()).add(row[level])
    allowed = {prefix: sorted(next_tokens) for prefix, next_tokens in children.items()}

    def fn(batch_id, ids):
        return allowed.get(tuple(ids[prompt_len:].tolist()), [layout.eos_id])

    return fn


def prompt_length(model, layout, ids, mask):
    """Tokens before the new ones in HF's sequences: the decoder start, or the decoder-only prompt."""
    return 1 if model.config.is_encoder_decoder else causal_prompt(model, layout, ids, mask)[0].shape[1]


def hf_with_trie(model, layout, catalog, ids, mask, beams, n, **kwargs):
    """HF generate on `model` constrained by the catalog trie: its own output object."""
    trie = catalog_trie_fn(layout, catalog, prompt_length(model, layout, ids, mask))
    out, _ = run_hf_generate(model, layout, ids, mask, beams, n, prefix_allowed_tokens_fn=trie, **kwargs)
    return out


def assert_matches_hf(ours, hf, catalog, layout):
    # Precondition: every returned HF beam is a real one (enough valid candidates at every step).
    assert bool((hf.sequences_scores > -1e8).all())
    assert torch.equal(ours.sequences, hf.sequences)
    torch.testing.assert_close(ours.sequences_scores, hf.sequences_scores, atol=1e-4, rtol=0)


def case(request, teacher):
    """(model given to constrained_generate, the original HF model, layout, catalog, ids, mask)."""
    if teacher in ("sidmlp-official", "tiger-xlt"):  # imported from the code base's checkpoint; original = its T5
        original, model, layout, catalog, ids, mask = imported_case(request, teacher, n=4, seed=2)
        return model, original, layout, catalog, ids, mask
    catalog, _, layout = request.getfixturevalue("data")
    model = make_model(teacher, layout, seed=1)
    ids, mask = inputs(request.getfixturevalue("data"), n=4)
    return model, model, layout, catalog, ids, mask


# The official test catalog has 3 first digits: 3 beams keep every HF beam a real one.
CASES = [("t5", 6, 4), ("gpt2", 6, 4), ("gpt2-items", 5, 5), ("sidmlp-official", 3, 3), ("tiger-xlt", 6, 4)]


@pytest.mark.parametrize("teacher, beams, n", CASES)
@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_unnormalized_equals_hf_generate_with_a_catalog_trie(request, teacher, beams, n, length_penalty):
    model, original, layout, catalog, ids, mask = case(request, teacher)
    ours = sk.constrained_generate(model, catalog, ids, mask, num_beams=beams, num_return_sequences=n,
                                   return_dict_in_generate=True, output_scores=True,
                                   length_penalty=length_penalty, layout=layout)
    hf = hf_with_trie(original, layout, catalog, ids, mask, beams, n, length_penalty=length_penalty)
    assert_matches_hf(ours, hf, catalog, layout)
    # The sequences decode back to the ranked items, in order.
    assert_sequences_decode_to_ranked_items(ours, layout, catalog, prompt_length(model, layout, ids, mask))


@pytest.mark.parametrize("teacher, beams, n", [("t5", 6, 4), ("sidmlp-official", 3, 3), ("tiger-xlt", 6, 4)])
def test_renormalized_equals_the_reference_and_hf_renormalize_logits(request, teacher, beams, n):
    model, original, layout, catalog, ids, mask = case(request, teacher)
    ours = sk.constrained_generate(model, catalog, ids, mask, beams, n, renormalize=True,
                                   return_dict_in_generate=True, output_scores=True, layout=layout)
    prefix_logits = stateless_prefix_logits(model, layout, ids, mask)
    ref = beam_search_reference(lambda level, prefixes, parents: prefix_logits(level, prefixes), catalog,
                                ids.shape[0], beams, n)
    assert torch.equal(ours.items, ref.items)
    torch.testing.assert_close(ours.scores, ref.scores, atol=1e-4, rtol=0)
    hf = hf_with_trie(original, layout, catalog, ids, mask, beams, n, renormalize_logits=True)
    assert_matches_hf(ours, hf, catalog, layout)


def test_unnormalized_differs_from_renormalized(request):
    """The two scorings are different rules (the test above could not pass with one for the other)."""
    model, _, layout, catalog, ids, mask = case(request, "t5")
    a = sk.constrained_generate(model, catalog, ids, mask, 6, 4, return_dict_in_generate=True)
    b = sk.constrained_generate(model, catalog, ids, mask, 6, 4, renormalize=True, return_dict_in_generate=True)
    assert bool((a.scores < b.scores).all())  # masked full-vocabulary log-probs sum to less than renormalised ones


def test_hf_conventions(request):
    model, _, layout, catalog, ids, mask = case(request, "t5")
    seqs = sk.constrained_generate(model, catalog, ids, mask, 6, 4)
    assert isinstance(seqs, torch.Tensor) and seqs.dtype == torch.long
    assert torch.equal(sk.constrained_generate(model, catalog, ids, torch.ones_like(mask), 6, 4),
                       sk.constrained_generate(model, catalog, ids, None, 6, 4))
    out = sk.constrained_generate(model, catalog, ids, mask, 6, 4, return_dict_in_generate=True)
    hf = hf_with_trie(model, layout, catalog, ids, mask, 6, 4, output_scores=False)
    assert out.sequences_scores is None and hf.sequences_scores is None  # as HF without output_scores
    assert torch.equal(out.sequences, seqs)
    with pytest.raises(ValueError):  # HF's own rule
        model.generate(input_ids=ids, attention_mask=mask, num_beams=2, num_return_sequences=3, max_new_tokens=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        sk.constrained_generate(model, catalog, ids, mask, num_beams=2, num_return_sequences=3)
    with pytest.raises(TypeError, match="num_beams"):
        sk.constrained_generate(model, catalog, ids, mask, num_beams=2.0)
    with pytest.raises(TypeError, match="renormalize"):
        sk.constrained_generate(model, catalog, ids, mask, 6, 4, renormalize="no")
    with pytest.raises(TypeError, match="catalog"):
        sk.constrained_generate(model, catalog.codes, ids, mask)
    with pytest.raises(TypeError, match="return_dict_in_generate"):
        sk.constrained_generate(model, catalog, ids, mask, 6, 4, return_dict_in_generate=1)
