"""`sidmlp import --format minionerec|lcrec` (teacher/llm_import.py) on artifacts written here with save_pretrained.

The imported teacher must decode exactly as the original model and tokenizer do (same beams, same
scores), with the same layout and catalog; a LoRA adapter (LC-Rec's --lora) is merged into its base
model after the base gets the tokenizer's size, as LC-Rec's test.py loads it.
"""

import json

import pytest
import torch

import sidmlp_kernels as sk
from sidmlp_kernels.cli import main
from sidmlp_kernels.teacher.llm import llm_teacher
from sidmlp_kernels.teacher.llm_import import load_llm_teacher
from tests.teacher.llm_cases import histories, llm_case, make_model, make_tokenizer, sid_index

pytestmark = pytest.mark.usefixtures("one_thread")


def decode(teacher, ids, mask):
    return sk.constrained_generate(teacher.model, teacher.catalog, ids, mask, num_beams=5, num_return_sequences=5,
                                   return_dict_in_generate=True, output_scores=True, layout=teacher.layout)


def assert_same_decode(a, b, ids, mask):
    x, y = decode(a, ids, mask), decode(b, ids, mask)
    assert torch.equal(x.sequences, y.sequences) and torch.equal(x.items, y.items)
    torch.testing.assert_close(x.sequences_scores, y.sequences_scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["minionerec", "lcrec"])
def test_import_a_saved_model_and_index(tmp_path, fmt, capsys):
    teacher, index = llm_case(fmt)
    src = tmp_path / "final_checkpoint"
    teacher.model.save_pretrained(src)
    teacher.tokenizer.save_pretrained(src)
    (tmp_path / "Toys.index.json").write_text(json.dumps(index))
    out = tmp_path / "imported"
    assert main(["import", "--format", fmt, "--model", str(src), "--index", str(tmp_path / "Toys.index.json"),
                 "--out", str(out)]) == 0
    assert "57 SIDs, 60 items" in capsys.readouterr().out
    again = load_llm_teacher(out)
    assert again.layout == teacher.layout and again.catalog == teacher.catalog
    assert again.template == teacher.template
    ids, mask = teacher.prompts(histories(3))
    assert torch.equal(again.prompts(histories(3))[0], ids)
    assert_same_decode(teacher, again, ids, mask)
    model, layout = sk.load_teacher(out)
    assert layout == teacher.layout and model.config.sid_prompt == "text"


def test_import_errors(tmp_path, capsys):
    teacher, index = llm_case("minionerec")
    src = tmp_path / "m"
    teacher.model.save_pretrained(src)
    teacher.tokenizer.save_pretrained(src)
    assert main(["import", "--format", "minionerec", "--model", str(src), "--out", str(tmp_path / "o")]) == 2
    assert "--index" in capsys.readouterr().err
    bad = tmp_path / "bad.index.json"
    bad.write_text(json.dumps({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>"]}))
    with pytest.raises(ValueError, match="bad.index.json"):
        sk.import_teacher("minionerec", src, bad, tmp_path / "o2")
    with pytest.raises(ValueError, match="holds no PEFT adapter"):
        (tmp_path / "i.json").write_text(json.dumps(index))
        sk.import_teacher("minionerec", src, tmp_path / "i.json", tmp_path / "o3", base_model=src)


def test_import_a_lora_adapter_over_its_base_model(tmp_path):
    peft = pytest.importorskip("peft")
    index = sid_index()
    tokenizer = make_tokenizer(index, bos=True)
    num_sid_tokens = len({t for toks in index.values() for t in toks})
    base = make_model("llama", len(tokenizer) - num_sid_tokens, seed=3)  # the base knows no SID token
    base.save_pretrained(tmp_path / "llama-base")
    # LC-Rec's fine-tune: resize to the tokenizer, LoRA on the attention, embeddings and head trained in full.
    tuned = make_model("llama", len(tokenizer) - num_sid_tokens, seed=3)
    tuned.resize_token_embeddings(len(tokenizer))
    lora = peft.get_peft_model(tuned, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      modules_to_save=["embed_tokens", "lm_head"]))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in lora.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    lora.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "Games.index.json").write_text(json.dumps(index))
    merged = lora.merge_and_unload().eval()
    original = llm_teacher(merged, tokenizer, index, "lcrec")
    out = tmp_path / "imported"
    assert main(["import", "--format", "lcrec", "--model", str(tmp_path / "ckpt"), "--base-model",
                 str(tmp_path / "llama-base"), "--index", str(tmp_path / "Games.index.json"), "--out", str(out)]) == 0
    again = load_llm_teacher(out)
    ids, mask = original.prompts(histories(3))
    assert_same_decode(original, again, ids, mask)
    with pytest.raises(ValueError, match="--base-model"):
        sk.import_teacher("lcrec", tmp_path / "ckpt", tmp_path / "Games.index.json", tmp_path / "o4")
