"""scripts/llm_ml100k_demo.py (issue 16): its core on a tiny synthetic dataset, so the code path stays tested.

The whole pipeline (SID index, tokenizer, random Qwen2, SFT, MiniOneRec directory, import, accelerate(),
test evaluation) runs in a few seconds; the pieces are checked where they can be wrong: the SFT loss is
on the answer tokens only, SFT learns and is deterministic for a seed, the saved directory is a plain
HF one that imports to the same decode, every returned item is a catalog item.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import sidmlp_kernels as sk
from sidmlp_kernels.data.examples import synthetic_data, train_pairs
from sidmlp_kernels.teacher.llm import llm_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llm_ml100k_demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("llm_ml100k_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def data():
    return synthetic_data(codebook_sizes=(8, 6, 5), num_items=80, num_users=40, seq_len=8, max_history=5)


def tiny(demo, **changes):
    base = dict(steps=4, minutes=None, layers=1, hidden=32, heads=2, kv_heads=1, prefixes_per_user=3, batch_size=8,
                evals=2, eval_users=8, eval_beam=10, distill_prefixes_per_user=2, distill_epochs=1, head_hidden=16,
                student_ffn=16, beam=10, test_users=12, bootstrap=200, lr=1e-3)
    return demo.DemoOptions(**{**base, **changes})


def sft_setup(demo, data, opts):
    catalog, split = data
    index = demo.sid_index(catalog)
    tokenizer = demo.build_tokenizer(index, opts.text_vocab)
    teacher = llm_teacher(demo.build_model(tokenizer, opts, 256), tokenizer, index, "minionerec")
    histories, targets, _ = train_pairs(split.train_sequences, split.max_history, opts.prefixes_per_user, opts.seed)
    return teacher, demo.sft_rows(teacher, histories, targets)


def test_the_index_and_tokenizer_are_minionerecs(demo, data):
    catalog, _ = data
    index = demo.sid_index(catalog)
    assert len(index) == catalog.num_all_items and all(len(t) == 3 for t in index.values())
    tokenizer = demo.build_tokenizer(index, 400)
    teacher = llm_teacher(demo.build_model(tokenizer, tiny(demo), 256), tokenizer, index, "minionerec")
    # The index's codes are the catalog's (every number of every digit is used in this catalog).
    assert teacher.catalog == catalog
    # Code c of digit l is the tokenizer's token "<x_c>", x = the digit's letter, added after the text vocabulary.
    for level, letter in enumerate("abc"):
        ids = teacher.layout.digit_token_ids(level).tolist()
        assert tokenizer.convert_ids_to_tokens(ids) == [f"<{letter}_{c}>" for c in range(catalog.codebook_sizes[level])]
        assert min(ids) >= len(tokenizer) - len(set(t for toks in index.values() for t in toks))
    assert teacher.answer_ids(int(catalog.item_ids[0]))[-2:] == [*teacher.model.config.sid_answer_suffix,
                                                                  teacher.tokenizer.eos_token_id]


def test_the_sft_loss_is_on_the_answer_tokens_only(demo, data):
    opts = tiny(demo)
    teacher, rows = sft_setup(demo, data, opts)
    pick = torch.tensor([0, 5, 7])
    loss = demo.sft_loss(rows, teacher.layout.pad_id)(teacher.model, pick)
    terms = []
    with torch.no_grad():
        for i in pick.tolist():
            ids, prompt_len = rows[i]
            logits = teacher.model(input_ids=torch.tensor([ids])).logits[0]
            answer = torch.tensor(ids[prompt_len:])
            terms.append(torch.nn.functional.cross_entropy(logits[prompt_len - 1:-1], answer, reduction="none"))
    torch.testing.assert_close(loss.detach(), torch.cat(terms).mean(), atol=1e-5, rtol=1e-5)
    assert len(rows[0][0]) - rows[0][1] == 3 + 1 + 1  # SID tokens, "\n", EOS


def test_sft_learns_and_is_deterministic(demo, data):
    opts = tiny(demo, steps=40, evals=1, lr=3e-3)
    first, rows = sft_setup(demo, data, opts)
    loss = demo.sft_loss(rows, first.layout.pad_id)
    every = torch.arange(len(rows))
    with torch.no_grad():
        before = float(loss(first.model.eval(), every))
    demo.train_sft(first, rows, opts, opts.steps)
    with torch.no_grad():
        after = float(loss(first.model, every))
    assert after < before - 0.5, (before, after)
    second, _ = sft_setup(demo, data, opts)
    demo.train_sft(second, rows, opts, opts.steps)
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="steps"):
        demo.train_sft(second, rows, opts, 0)


def test_the_demo_end_to_end(demo, data, tmp_path):
    catalog, split = data
    results = demo.run_demo(split, catalog, tmp_path / "run", tiny(demo), say=lambda msg: None)
    run = tmp_path / "run"
    # A plain HF save_pretrained directory (no package marks) + the index file: what MiniOneRec leaves.
    saved = json.loads((run / "minionerec" / "final_checkpoint" / "config.json").read_text())
    assert saved["model_type"] == "qwen2" and "sid_prompt" not in saved
    assert (run / "minionerec" / "final_checkpoint" / "tokenizer.json").is_file()
    index = json.loads((run / "minionerec" / "ML100K.index.json").read_text())
    assert index == demo.sid_index(catalog)
    # The imported teacher decodes as the saved model does, and the saved student loads back.
    teacher = sk.load_llm_teacher(run / "teacher")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = llm_teacher(AutoModelForCausalLM.from_pretrained(run / "minionerec" / "final_checkpoint"),
                           AutoTokenizer.from_pretrained(run / "minionerec" / "final_checkpoint"), index)
    histories = split.test_histories[:6]
    assert torch.equal(demo.teacher_ranked(teacher, histories, 10, 4), demo.teacher_ranked(original, histories, 10, 4))
    rec = sk.AcceleratedRecommender.from_pretrained(run / "accelerated", teacher=teacher.model)
    items = demo.student_ranked(rec, teacher, histories, 10, 4)
    assert demo.check_items(items, catalog, "student")["non_catalog"] == 0
    # results.json: the report of every model, the checks, each stage's time.
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(results))
    models = results["test"]["models"]
    assert set(models) == {"most_popular", "teacher", "teacher_hf_scores", "student"}
    assert results["test"]["users"] == 12
    assert {"vs_most_popular", "vs_teacher", "top10_overlap", "top10_overlap_with_teacher_hf_scores",
            "distinct_items"} <= set(models["student"])
    assert "vs_teacher" not in models["teacher_hf_scores"]  # a baseline row: against most-popular only
    for name in ("teacher", "teacher_hf_scores", "student"):
        assert results["validity"][name]["non_catalog"] == 0
        assert results["validity"][name]["returned"] + results["validity"][name]["empty_slots"] == 12 * 10
    assert results["sft"]["steps"] == 4 and set(results["wall_seconds"]) >= {"sft", "distill", "test_teacher"}
    with pytest.raises(ValueError, match="already holds a run"):
        demo.run_demo(split, catalog, run, tiny(demo), say=lambda msg: None)


def test_check_items_refuses_non_catalog_and_repeated_items(demo, data):
    catalog, _ = data
    good = catalog.item_ids[:4].view(2, 2)
    assert demo.check_items(torch.cat([good, torch.full((2, 1), -1)], 1), catalog, "x")["empty_slots"] == 2
    with pytest.raises(RuntimeError, match="1 non-catalog"):
        demo.check_items(torch.tensor([[int(good[0, 0]), 10_000]]), catalog, "x")
    with pytest.raises(RuntimeError, match="1 repeats"):
        demo.check_items(torch.tensor([[int(good[0, 0]), int(good[0, 0])]]), catalog, "x")


def test_bad_options_are_clear_errors(demo, capsys):
    for changes, flag in ((dict(minutes=5.0), "exactly one of --steps and --minutes"), (dict(hidden=30), "--hidden"),
                          (dict(kv_heads=3), "--kv-heads"), (dict(beam=5), "--beam"), (dict(eval_beam=5), "--eval-beam"), (dict(lr=0.0), "--lr"),
                          (dict(readout="mean"), "--readout"), (dict(test_users=0), "--test-users")):
        with pytest.raises(ValueError, match=flag):
            tiny(demo, **changes)
    assert demo.main(["--out", "x", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        demo.main(["--help"])
    assert stop.value.code == 0 and "MiniOneRec" in capsys.readouterr().out
