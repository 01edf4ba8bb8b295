"""Tiny LLM teachers with SID tokens, built in the test (no download): MiniOneRec-style Qwen2, LC-Rec-style LLaMA,
OpenOneRec-style Qwen3.

The tokenizer is a byte-level BPE trained here on the prompt templates (a few hundred tokens, so
"\\n" is a token as in Qwen's), with the index's SID tokens added as the code bases add them:
`add_tokens(sorted(tokens))`, sorted as strings. With 12 codes per digit, "<a_10>" sorts before
"<a_2>", so token ids are not offset + code. The index keeps colliding SIDs.

OpenOneRec (`openonerec_case`): Qwen3 chat specials, `<s_a_0..11>`, `<s_b_..>`, `<s_c_..>`,
`<|sid_begin|>`, `<|sid_end|>` appended in that order (expand_qwen3_vocab.py), the embedding padded
to a multiple of 256, and the same SIDs written as its `sid2pid.json` (key c1*8192^2 + c2*8192 + c3,
items as {"pid", "count", "count_after_downsample"}), pids 5000 + 7 * item.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

from sidmlp_kernels.teacher.llm import TEMPLATES, llm_teacher

K = 12
NUM_ITEMS = 60
LETTERS = "abc"
COLLISIONS = {3: 57, 17: 58, 8: 59}  # item -> a new item sharing its SID (57, 58, 59 copy 3, 17, 8)


def sid_index(num_items: int = NUM_ITEMS, seed: int = 0) -> dict:
    """{"0": ["<a_..>", "<b_..>", "<c_..>"], ...}: random distinct SIDs, then three items that copy others'."""
    g = torch.Generator().manual_seed(seed)
    seen, rows = set(), []
    while len(rows) < num_items - len(COLLISIONS):
        code = tuple(int(c) for c in torch.randint(0, K, (3,), generator=g))
        if code not in seen:
            seen.add(code)
            rows.append(code)
    # Every number of every digit used at least once, so codes are the numbers themselves.
    for level in range(3):
        for c in range(K):
            if not any(r[level] == c for r in rows):
                rows[c] = tuple(c if j == level else v for j, v in enumerate(rows[c]))
    assert len(set(rows)) == len(rows), "the fix-up made a duplicate: pick another seed"
    index = {str(i): [f"<{LETTERS[l]}_{c}>" for l, c in enumerate(code)] for i, code in enumerate(rows)}
    for copy, of in COLLISIONS.items():
        index[str(of)] = list(index[str(copy)])
    return index


def _bpe(specials: list[str], templates: tuple[str, ...]) -> Tokenizer:
    """Byte-level BPE (320 tokens) trained on the named templates' text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([p for name in templates for p in TEMPLATES[name].parts] * 3, trainer)
    return tok


def make_tokenizer(index: dict, bos: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the templates (+ a BOS for the LLaMA case), SID tokens added sorted."""
    tok = _bpe(["<|endoftext|>"] + (["<s>"] if bos else []), ("minionerec", "lcrec"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<s>" if bos else None)
    new = sorted({t for toks in index.values() for t in toks})
    fast.add_tokens(new)
    return fast


def make_model(arch: str, vocab: int, seed: int = 0, **extra) -> torch.nn.Module:
    """A tiny random Qwen2 or LLaMA (GQA: 4 query heads over 2 KV heads), peaked logits (std 0.3)."""
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3, **extra)
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.eval()


def llm_case(fmt: str = "minionerec", seed: int = 0, **extra):
    """(LLMTeacher, index dict): MiniOneRec = Qwen2 + "\\n" answer suffix, LC-Rec = LLaMA with BOS."""
    index = sid_index(seed=seed)
    tokenizer = make_tokenizer(index, bos=fmt == "lcrec")
    model = make_model("qwen2" if fmt == "minionerec" else "llama", len(tokenizer), seed=seed, **extra)
    return llm_teacher(model, tokenizer, index, fmt), index


def histories(num_users: int, seed: int = 1, lengths=(2, 5)) -> list[list[int]]:
    """Random item histories of varying length (so prompts pad differently)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_users):
        n = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        out.append(torch.randint(0, NUM_ITEMS, (n,), generator=g).tolist())
    return out


def sid2pid(index: dict) -> dict:
    """sid_index() as OpenOneRec's sid2pid.json: {c1*8192^2 + c2*8192 + c3: [{"pid": 5000 + 7 * item, ...}]}."""
    out: dict[str, list] = {}
    for item, toks in index.items():
        c1, c2, c3 = (int(t.split("_")[1][:-1]) for t in toks)
        pid = 5000 + 7 * int(item)
        out.setdefault(str(c1 * 8192 ** 2 + c2 * 8192 + c3), []).append(
            {"pid": pid, "count": 10 + int(item), "count_after_downsample": 5})
    return out


def make_qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen3-style chat tokenizer; SID tokens appended in order, then <|sid_begin|>, <|sid_end|>."""
    tok = _bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ("openonerec",))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_tokens([f"<s_{letter}_{c}>" for letter in LETTERS for c in range(K)] + ["<|sid_begin|>", "<|sid_end|>"])
    return fast


def openonerec_case(seed: int = 0):
    """(LLMTeacher, sid2pid dict, {pid: tokens}): a tiny random Qwen3 (vocab padded to 256) on sid2pid()."""
    from sidmlp_kernels.teacher.llm import SIDIndex

    blob = sid2pid(sid_index(seed=seed))
    index = SIDIndex.from_sid2pid(blob)
    tokenizer = make_qwen3_tokenizer()
    vocab = -(-len(tokenizer) // 256) * 256
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                         max_position_embeddings=512, initializer_range=0.3)).eval()
    teacher = llm_teacher(model, tokenizer, index, "openonerec")
    return teacher, blob, dict(zip(index.keys, index.tokens))
