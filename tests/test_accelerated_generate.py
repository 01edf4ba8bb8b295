"""AcceleratedRecommender.generate in HF generate's convention, per teacher kind.

For each teacher (T5 in the tiger layout, a decoder-only GPT-2, imported sidmlp-official and tiger-xlt T5s)
the sequences must decode back (layout.tokens_to_codes -> catalog) to the ranked items in score
order, and have the shape and fixed positions (decoder start / prompt, EOS) of the sequences HF's
own generate returns for that teacher on the same inputs (TIGER-style: digit tokens, then EOS).
"""

import pytest
import torch

import sidmlp_kernels as sk
from sidmlp_kernels.data.examples import Examples, build_examples
from sidmlp_kernels.teacher.attention_decode import digit_allowed_tokens_fn, run_hf_generate
from tests.helpers import assert_sequences_decode_to_ranked_items
from tests.teacher.test_attention_decode import data, inputs, make_model  # noqa: F401
from tests.teacher.test_exact_generate import prompt_length
from tests.teacher.test_import import TINY, imported_case, official, random_histories, xlt  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

IMPORTED = ["sidmlp-official", "tiger-xlt"]
TEACHERS = ["t5", "gpt2", *IMPORTED]


@pytest.fixture(scope="module")
def accelerated(request):
    cache = {}

    def get(teacher):
        if teacher not in cache:
            cache[teacher] = _build(request, teacher)
        return cache[teacher]

    return get


def _build(request, teacher):
    if teacher in IMPORTED:
        _, model, layout, catalog, ids, mask = imported_case(request, teacher, n=4, seed=3)
        hist = [[int(catalog.item_ids[i - 1]) for i in h] for h in random_histories(catalog.num_items, 64, seed=0)]
        users = list(range(len(hist))) if layout.num_user_tokens else None
        tids, tmask = layout.encode_histories(hist, catalog, users=users)
        rows = torch.randint(0, catalog.num_items, (len(hist),), generator=torch.Generator().manual_seed(0))
        train = Examples(tids, tmask, catalog.codes[rows], catalog.item_ids[rows])
    else:
        d = request.getfixturevalue("data")
        catalog, split, layout = d
        model = make_model(teacher, layout)
        train = build_examples(split, catalog, layout, "train")
        ids, mask = inputs(d, n=4)
    rec = sk.accelerate(model, catalog, train, layout=layout, epochs=1, **TINY)
    return rec, model, layout, catalog, ids, mask


@pytest.mark.parametrize("teacher", TEACHERS)
def test_sequences_decode_to_the_ranked_items_in_hf_layout(accelerated, teacher):
    rec, model, layout, catalog, ids, mask = accelerated(teacher)
    beams, n = 6, 3
    seqs = rec.generate(ids, mask, num_beams=beams, num_return_sequences=n)
    out = rec.generate(ids, mask, num_beams=beams, num_return_sequences=n, return_dict_in_generate=True,
                       output_scores=True)
    legacy = rec.generate(ids, mask, beams, n)
    assert seqs.dtype == torch.long and torch.equal(out.sequences, seqs)
    assert torch.equal(out.items, legacy.items) and torch.equal(out.scores, legacy.scores)
    start = prompt_length(model, layout, ids, mask)
    assert_sequences_decode_to_ranked_items(out, layout, catalog, start)
    # HF's own generate on the same teacher and inputs, TIGER-style (digit tokens, then EOS).
    hf, hf_start = run_hf_generate(model, layout, ids, mask, beams, n,
                                   prefix_allowed_tokens_fn=digit_allowed_tokens_fn(layout, start))
    assert hf_start == start
    assert seqs.shape == hf.sequences.shape
    assert torch.equal(seqs[:, :start], hf.sequences[:, :start])  # decoder start / the prompt
    assert torch.equal(seqs[:, start + layout.num_levels:], hf.sequences[:, start + layout.num_levels:])  # EOS
    new_tokens = hf.sequences.shape[1] - start
    torch.testing.assert_close(out.sequences_scores, out.scores.flatten() / new_tokens)  # length_penalty 1
    plain = rec.generate(ids, mask, num_beams=beams, num_return_sequences=n, return_dict_in_generate=True)
    hf_plain, _ = run_hf_generate(model, layout, ids, mask, beams, n, output_scores=False)
    assert plain.sequences_scores is None and hf_plain.sequences_scores is None


def test_hf_defaults_mask_and_errors(accelerated):
    rec, model, layout, catalog, ids, mask = accelerated("t5")
    full = torch.ones_like(mask)
    assert torch.equal(rec.generate(ids), rec.generate(ids, full, num_beams=50, num_return_sequences=10))
    assert rec.generate(ids).shape[0] == ids.shape[0] * 10
    with pytest.raises(ValueError):  # HF's own rule
        model.generate(input_ids=ids, num_beams=2, num_return_sequences=3, max_new_tokens=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        rec.generate(ids, mask, num_beams=2, num_return_sequences=3)
    with pytest.raises(TypeError, match="num_beams"):
        rec.generate(ids, mask, beam_size=4, num_beams=4)
    with pytest.raises(TypeError, match="length_penalty"):
        rec.generate(ids, mask, length_penalty="long")


def test_saved_sidmlp_pp_keeps_the_sequence_format(request, tmp_path):
    d = request.getfixturevalue("data")
    catalog, split, layout = d
    model = make_model("gpt2-items", layout)
    train = build_examples(split, catalog, layout, "train")
    pp = sk.accelerate(model, catalog, train, layout=layout, epochs=1, replace_encoder=True, encoder_epochs=1,
                       encoder_ffn_dim=16, **TINY)
    ids, mask = inputs(d, n=3)
    pp.save_pretrained(tmp_path / "pp")
    again = sk.AcceleratedRecommender.from_pretrained(tmp_path / "pp")
    seqs = again.generate(ids, mask, num_beams=4, num_return_sequences=2)
    start = prompt_length(model, layout, ids, mask)
    hf, _ = run_hf_generate(model, layout, ids, mask, 4, 2,
                            prefix_allowed_tokens_fn=digit_allowed_tokens_fn(layout, start))
    assert seqs.shape == hf.sequences.shape and torch.equal(seqs[:, :start], hf.sequences[:, :start])
    assert torch.equal(seqs, pp.generate(ids, mask, num_beams=4, num_return_sequences=2))
