"""OpenOneRec (Kuaishou-OneRec/OpenOneRec) teachers: a tiny random Qwen3 and its sid2pid.json, built here.

SID tokens `<s_a_N>` are appended in order (ids offset + code), the prompt is the Qwen3 chat ending in
`<|sid_begin|>`, and an answer is its 3 SID tokens with nothing scored after them (OpenOneRec's
benchmark generates max_new_tokens=3). The oracle is HF generate with a trie over the SID tokens.
"""

import json

import pytest
import torch

import sidmlp_kernels as sk
from sidmlp_kernels.cli import main
from sidmlp_kernels.teacher.llm import SIDIndex
from sidmlp_kernels.teacher.llm_import import load_llm_teacher
from tests.teacher.llm_cases import K, histories, openonerec_case
from tests.teacher.test_llm import assert_constrained_equals_hf_with_a_trie

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def case():
    return openonerec_case()


def pid_histories(n, seed=1):
    return [[5000 + 7 * i for i in h] for h in histories(n, seed=seed)]


def test_sid2pid_layout_and_prompt(case):
    teacher, blob, index = case
    tok, layout = teacher.tokenizer, teacher.layout
    for level, letter in enumerate("abc"):
        ids = layout.digit_token_ids(level).tolist()
        assert ids == tok.convert_tokens_to_ids([f"<s_{letter}_{c}>" for c in range(K)])
        assert ids == list(range(ids[0], ids[0] + K))  # appended in order: offset + code
    vocab = teacher.model.get_input_embeddings().weight.shape[0]
    assert vocab % 256 == 0 and vocab > len(tok)  # padded to a multiple of 256, as expand_qwen3_vocab.py does
    cat = teacher.catalog
    assert cat.num_all_items == 60 and cat.num_items == 57  # three pids share another's SID
    assert sorted(cat.all_item_ids.tolist()) == sorted(e["pid"] for items in blob.values() for e in items)
    hist = pid_histories(2)
    ids, mask = teacher.prompts(hist)
    text = tok.decode(ids[0][mask[0].bool()])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"
                                                                        "<|sid_begin|>")
    assert "".join(f"<|sid_begin|>{''.join(index[str(p)])}<|sid_end|>" for p in hist[0]) + "/no_think" in text
    assert teacher.answer_ids(hist[0][0]) == tok.convert_tokens_to_ids(index[str(hist[0][0])])  # no EOS after


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_constrained_generate_equals_hf_generate_with_a_trie(case, length_penalty):
    teacher, _, index = case
    ids, mask = teacher.prompts(pid_histories(3))
    hf = assert_constrained_equals_hf_with_a_trie(teacher, index, ids, mask, length_penalty)
    assert hf.sequences.shape[1] == ids.shape[1] + 3  # 3 new tokens, as OpenOneRec generates


def test_every_item_is_valid_and_shared_sids_return_all_their_items(case):
    teacher, blob, _ = case
    ids, mask = teacher.prompts(pid_histories(4, seed=5))
    out = sk.constrained_generate(teacher.model, teacher.catalog, ids, mask, num_beams=20, num_return_sequences=20,
                                  return_dict_in_generate=True, layout=teacher.layout)
    groups = {int(k): sorted(e["pid"] for e in items) for k, items in blob.items()}
    seqs = out.sequences.view(ids.shape[0], 20, -1)[:, :, ids.shape[1]:]
    for b in range(ids.shape[0]):
        items = [i for i in out.items[b].tolist() if i >= 0]
        want = []
        for row in seqs[b]:
            c1, c2, c3 = (int(t.rsplit("_", 1)[1][:-1]) for t in teacher.tokenizer.convert_ids_to_tokens(row.tolist()))
            want += groups[c1 * 8192 ** 2 + c2 * 8192 + c3]
        assert items == want and len(set(items)) == len(items)
    shared = {p for g in groups.values() if len(g) > 1 for p in g}
    assert shared & set(out.items.flatten().tolist()), "pick inputs whose top-20 holds a shared SID"


def test_import_then_accelerate_returns_catalog_items(case, tmp_path, capsys):
    teacher, blob, _ = case
    src = tmp_path / "hf_model"
    teacher.model.save_pretrained(src)
    teacher.tokenizer.save_pretrained(src)
    (tmp_path / "sid2pid.json").write_text(json.dumps(blob))
    out = tmp_path / "imported"
    assert main(["import", "--format", "openonerec", "--model", str(src), "--index", str(tmp_path / "sid2pid.json"),
                 "--out", str(out)]) == 0
    assert "57 SIDs, 60 items" in capsys.readouterr().out
    again = load_llm_teacher(out)
    assert again.layout == teacher.layout and again.catalog == teacher.catalog and again.template == teacher.template
    ids, mask = teacher.prompts(pid_histories(3))
    a, b = (sk.constrained_generate(t.model, t.catalog, ids, mask, num_beams=5, num_return_sequences=5,
                                    return_dict_in_generate=True, output_scores=True, layout=t.layout)
            for t in (teacher, again))
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.items, b.items)
    hist = pid_histories(32, seed=7)
    targets = torch.tensor(sorted(teacher.catalog.all_item_ids.tolist()))[torch.randint(0, 60, (32,))].tolist()
    train = again.examples(hist, targets)
    rec = sk.accelerate(again.model, again.catalog, train, epochs=1, layout=again.layout, head_hidden=16, ffn_dim=16,
                        num_heads=2, batch_size=16)
    got = rec.generate(ids, mask, beam_size=10, top_n=10)
    every = set(teacher.catalog.all_item_ids.tolist())
    for row in got.items.tolist():
        row = [i for i in row if i >= 0]
        assert row and set(row) <= every and len(set(row)) == len(row)
    seqs = rec.generate(ids, mask, num_beams=5, num_return_sequences=3)
    assert seqs.shape[1] == ids.shape[1] + 3  # the 3 SID tokens, no EOS, as the teacher's generate


def test_bad_sid2pid_files(tmp_path):
    with pytest.raises(ValueError, match="not a non-negative integer"):
        SIDIndex.from_sid2pid({"x": [{"pid": 1}]})
    with pytest.raises(ValueError, match="non-empty list"):
        SIDIndex.from_sid2pid({"5": []})
    with pytest.raises(ValueError, match="'pid' or 'iid'"):
        SIDIndex.from_sid2pid({"5": [{"item": 1}]})
    with pytest.raises(ValueError, match="two SIDs"):
        SIDIndex.from_sid2pid({"5": [{"pid": 1}], "6": [{"pid": 1}]})
    assert SIDIndex.from_sid2pid({str(3 * 8192 ** 2 + 2 * 8192 + 1): [{"iid": 9}]}).tokens == [("<s_a_3>", "<s_b_2>",
                                                                                               "<s_c_1>")]
    bad = tmp_path / "sid2pid.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="sid2pid.json"):
        SIDIndex.read_sid2pid(bad)
