"""LLM teachers with SID tokens (teacher/llm.py, teacher/llm_decode.py) against HF's own generate.

The oracle is HF `model.generate(num_beams=W, prefix_allowed_tokens_fn=trie)` on the same weights
and prompts, the trie written here from the index file's token strings through the tokenizer (SID
tokens, then the answer suffix, then EOS): what MiniOneRec's and LC-Rec's evaluations run, minus
their bugs. renormalize=False must return its beams (sequences) and scores within 1e-4.
"""

import pytest
import torch

import sidmlp_kernels as sk
from sidmlp_kernels.teacher.attention_decode import run_hf_generate
from sidmlp_kernels.teacher.llm import PromptTemplate, SIDIndex, llm_teacher
from sidmlp_kernels.teacher.llm_decode import SharedPromptDecoder
from tests.teacher.llm_cases import COLLISIONS, K, histories, llm_case

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["minionerec", "lcrec"])
def case(request):
    return llm_case(request.param)


def trie_fn(teacher, index, prompt_len):
    """HF prefix_allowed_tokens_fn: next tokens of [SID tokens, answer suffix, EOS] after each answer prefix (no EOS
    where config.sid_answer_eos is False: OpenOneRec)."""
    tok = teacher.tokenizer
    suffix = list(teacher.model.config.sid_answer_suffix)
    eos = [tok.eos_token_id] if getattr(teacher.model.config, "sid_answer_eos", True) else []
    children = {}
    for tokens in index.values():
        answer = tok.convert_tokens_to_ids(tokens) + suffix + eos
        for j in range(len(answer)):
            children.setdefault(tuple(answer[:j]), set()).add(answer[j])
    allowed = {k: sorted(v) for k, v in children.items()}

    def fn(batch_id, ids):
        return allowed.get(tuple(ids[prompt_len:].tolist()), [tok.eos_token_id])

    return fn


def test_token_ids_come_from_the_tokenizer_not_offsets(case):
    teacher, index = case
    tok, layout = teacher.tokenizer, teacher.layout
    for level, letter in enumerate("abc"):
        want = [tok.convert_tokens_to_ids(f"<{letter}_{c}>") for c in range(K)]
        assert layout.digit_token_ids(level).tolist() == want
    ids = layout.digit_token_ids(0).tolist()
    assert ids != sorted(ids)  # sorted-string add_tokens: "<a_10>" comes before "<a_2>"
    # The catalog keeps every item; colliding items share a row.
    assert teacher.catalog.num_all_items == len(index) and teacher.catalog.num_items == len(index) - len(COLLISIONS)
    for item, toks in index.items():
        codes = teacher.catalog.codes_of([int(item)])
        assert teacher.layout.codes_to_tokens(codes)[0].tolist() == tok.convert_tokens_to_ids(toks)


def test_prompts_are_the_templates_left_padded(case):
    teacher, _ = case
    hist = histories(3)
    ids, mask = teacher.prompts(hist)
    assert bool(mask[:, -1].all())  # left padding: every prompt ends in the last column
    for row, h in enumerate(hist):
        text = teacher.tokenizer.decode(ids[row][mask[row].bool()])
        assert ", ".join("".join(teacher.index.tokens[i]) for i in h) in text
        assert text.endswith("### Response:\n" if teacher.template.answer_suffix else "### Response:")
    lead = teacher.tokenizer.bos_token_id
    assert (lead is not None) == bool((ids[mask.bool()][:1] == lead).all()) if lead is not None else True


def assert_constrained_equals_hf_with_a_trie(teacher, index, ids, mask, length_penalty, beams=6, n=4):
    """sk.constrained_generate(renormalize=False) = HF generate with a catalog trie: same beams, scores
    within 1e-4; returns HF's output."""
    ours = sk.constrained_generate(teacher.model, teacher.catalog, ids, mask, num_beams=beams, num_return_sequences=n,
                                   return_dict_in_generate=True, output_scores=True, length_penalty=length_penalty,
                                   layout=teacher.layout)
    hf, start = run_hf_generate(teacher.model, teacher.layout, ids, mask, beams, n, length_penalty=length_penalty,
                                prefix_allowed_tokens_fn=trie_fn(teacher, index, ids.shape[1]))
    assert bool((hf.sequences_scores > -1e8).all())  # every HF beam is a real one
    assert torch.equal(ours.sequences, hf.sequences)
    torch.testing.assert_close(ours.sequences_scores, hf.sequences_scores, atol=1e-4, rtol=0)
    assert start == ids.shape[1]
    return hf


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_constrained_generate_equals_hf_generate_with_a_trie(case, length_penalty):
    teacher, index = case
    ids, mask = teacher.prompts(histories(3))
    assert_constrained_equals_hf_with_a_trie(teacher, index, ids, mask, length_penalty)


def test_every_item_is_valid_and_colliding_sids_return_all_their_items(case):
    teacher, index = case
    ids, mask = teacher.prompts(histories(4, seed=5))
    out = sk.constrained_generate(teacher.model, teacher.catalog, ids, mask, num_beams=20, num_return_sequences=20,
                                  return_dict_in_generate=True, layout=teacher.layout)
    cat = teacher.catalog
    groups = {}
    for item, toks in index.items():
        groups.setdefault(tuple(toks), []).append(int(item))
    n_sids = 20
    assert out.sequences.shape[0] == ids.shape[0] * n_sids  # one sequence per SID (HF's beams)
    seqs = out.sequences.view(ids.shape[0], n_sids, -1)[:, :, ids.shape[1]:ids.shape[1] + 3]
    for b in range(ids.shape[0]):
        items = [i for i in out.items[b].tolist() if i >= 0]
        assert len(set(items)) == len(items)
        assert set(items) <= set(cat.all_item_ids.tolist())
        # Exactly the items of the returned SIDs, SID by SID, ascending item id within a SID.
        want = []
        for row in seqs[b]:
            want += sorted(groups[tuple(teacher.tokenizer.convert_ids_to_tokens(row.tolist()))])
        assert items == want
        scores = out.scores[b, :len(items)]
        assert bool((scores[:-1] >= scores[1:]).all())
    shared = {i for g in groups.values() if len(g) > 1 for i in g}
    returned = set(out.items.flatten().tolist())
    assert any(i in returned for i in shared), "pick inputs whose top-20 holds a shared SID"


def test_beams_share_one_prompt_cache_per_user(case):
    teacher, _ = case
    ids, mask = teacher.prompts(histories(3))
    dec = SharedPromptDecoder(teacher.model, ids, mask)
    assert dec.prompt_k[0].shape[0] == ids.shape[0]  # (B, H_kv, T, d): never expanded to B * W
    # The decoder's step equals the model's own forward over prompt + token (one beam per user).
    tokens = teacher.layout.digit_token_ids(0)[:3].view(3, 1)
    with torch.no_grad():
        ours = dec.feed(tokens)
        full = teacher.model.model(input_ids=torch.cat([ids, tokens], 1), attention_mask=torch.cat(
            [mask, torch.ones_like(tokens)], 1), position_ids=(torch.cat([mask, torch.ones_like(tokens)], 1).cumsum(1) - 1
                                                               ).clamp(min=0)).last_hidden_state[:, -1:]
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-4)


def test_a_user_template_and_bad_inputs(case):
    teacher, index = case
    mine = llm_teacher(teacher.model, teacher.tokenizer, index, "minionerec",
                       template="History: {history}\nNext:")
    ids, mask = mine.prompts([[0, 1]])
    text = mine.tokenizer.decode(ids[0][mask[0].bool()])
    assert text.endswith("Next:") and "".join(index["0"]) in text
    with pytest.raises(ValueError, match="placeholder"):
        PromptTemplate(("no history here",))
    with pytest.raises(ValueError, match="not in the SID index"):
        teacher.prompts([[999]])
    with pytest.raises(ValueError, match="several token letters"):
        SIDIndex.from_dict({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "<c_2>"]})
    with pytest.raises(ValueError, match="no SID token"):
        llm_teacher(teacher.model, teacher.tokenizer, {"0": ["<a_1>", "<b_2>", "<z_3>"]}, "minionerec")
    with pytest.raises(ValueError, match="format"):
        llm_teacher(teacher.model, teacher.tokenizer, index, "tiger")


def test_accelerate_an_llm_teacher_returns_only_catalog_items(tmp_path):
    from sidmlp_kernels.accelerated import AcceleratedRecommender

    teacher, _ = llm_case("minionerec")
    hist = histories(48, seed=7)
    g = torch.Generator().manual_seed(8)
    targets = torch.randint(0, 60, (48,), generator=g).tolist()
    train = teacher.examples(hist, targets)
    tiny = dict(head_hidden=16, ffn_dim=16, num_heads=2, batch_size=16)
    rec = sk.accelerate(teacher.model, teacher.catalog, train, train.subset(torch.arange(8)), epochs=1,
                        layout=teacher.layout, **tiny)
    ids, mask = teacher.prompts(hist[:4])
    out = rec.generate(ids, mask, beam_size=20, top_n=20)
    every = set(teacher.catalog.all_item_ids.tolist())
    for row in out.items.tolist():
        got = [i for i in row if i >= 0]
        assert got and set(got) <= every and len(set(got)) == len(got)
    # HF-style: one sequence per SID, the prompt then SID tokens, "\n", EOS, as the teacher's generate lays it out.
    seqs = rec.generate(ids, mask, num_beams=5, num_return_sequences=3)
    tail = seqs[:, ids.shape[1]:]
    assert tail.shape[1] == 3 + 1 + 1 and bool((tail[:, 3] == teacher.model.config.sid_answer_suffix[0]).all())
    assert bool((tail[:, -1] == teacher.layout.eos_id).all())
    rec.save_pretrained(tmp_path / "fast")
    again = AcceleratedRecommender.from_pretrained(tmp_path / "fast", teacher=teacher.model)
    assert torch.equal(again.generate(ids, mask, 5, 3).items, rec.generate(ids, mask, 5, 3).items)
    with pytest.raises(ValueError, match="SID-MLP\\+\\+"):
        sk.accelerate(teacher.model, teacher.catalog, train, replace_encoder=True, layout=teacher.layout, **tiny)
