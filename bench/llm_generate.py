"""LLM SID teachers (MiniOneRec-style Qwen2): HF generate vs sk.constrained_generate (vs accelerate()), side by side.

    python bench/llm_generate.py                   # small Qwen2 shape, batch 8, beam 20, 256-token prompts (~1-2 min)
    python bench/llm_generate.py --quick           # smoke run (seconds; also times hf_trie)
    python bench/llm_generate.py --shape medium --name llm_generate_medium   # 8 layers x 512 (65M params with the embeddings, ~6 min on 1 thread)
    python bench/llm_generate.py --shape qwen2.5-0.5b --beam 50   # the real 0.5B shape (random weights; slow on CPU)

Random weights (speed and memory do not depend on their values). The SID tokens sit at the end of
the vocabulary in sorted-string order (as MiniOneRec adds them), codes 256 per digit, 3 digits,
then the answer suffix token and EOS. Providers (each returns the top --top-n of --beam beams per user):
  hf_minionerec         the baseline: model.generate(num_beams, logits_processor=[PerBeamSIDProcessor]), a
                        MiniOneRec-style constraint written from its description (below), not copied
  hf_trie               (with --hf-trie; on in --quick) model.generate(prefix_allowed_tokens_fn=catalog trie),
                        HF's own prefix constraint: the oracle the tests use
  constrained_generate  sk.constrained_generate: one prefill per user, the beams attend to the shared
                        prompt cache (teacher/llm_decode.py), constrained on the C++ index
  accelerated           (with --accelerated) AcceleratedRecommender.generate after accelerate() for one
                        epoch on random examples (heads for speed only, not quality)
PerBeamSIDProcessor does what MiniOneRec's ConstrainedLogitsProcessor (LogitProcessor.py, run by its
evaluate.py and GRPO rollouts) does each step: a Python loop over every batch row and every beam, a
dict lookup of that beam's generated answer prefix (a tuple of token ids) for its allowed next
tokens, every other token's score set to -inf. Two differences, both fixes of its bugs: the key is
the whole generated prefix (MiniOneRec keys on a step counter's tail, issue #50) and an unknown
prefix allows only EOS (MiniOneRec leaves the beam unconstrained); it masks with -inf where
MiniOneRec adds -1e6 (the same beams whenever every step has >= 2 x beam allowed continuations).
The bench checks that hf_minionerec (and hf_trie) return the same sequences as constrained_generate,
scores within 1e-4 (renormalize=False, length_penalty 0).
Providers alternate inside every round; medians over --repeats after --warmup. Peak memory: the
growth of the process's peak RSS over one call (bench/common.PeakRSS, glibc fresh pages), and the
prompt KV cache each provider holds, computed from the shapes. Writes bench/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import common
import sidmlp_kernels as sk
from sidmlp_kernels.data.examples import Examples
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.teacher.attention_decode import run_hf_generate
from transformers import LogitsProcessor, LogitsProcessorList

SHAPES = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, text_vocab=512),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, text_vocab=8192),
    "medium": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                   num_key_value_heads=2, text_vocab=32768),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, text_vocab=151665),
}


def build(shape: str, items: int, seed: int = 0):
    """(model, layout, catalog): a random Qwen2 whose last 3 x 256 ids are SID tokens in sorted-string order."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = dict(SHAPES[shape])
    text_vocab = spec.pop("text_vocab")
    k, levels = 256, 3
    # Sorted-string order of <x_0>..<x_255>: code c gets the rank of str(c) among the strings.
    rank = {c: r for r, c in enumerate(sorted(range(k), key=str))}
    table = tuple(tuple(text_vocab + level * k + rank[c] for c in range(k)) for level in range(levels))
    vocab = text_vocab + levels * k
    eos, newline = 0, 1
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, max_position_embeddings=4096, pad_token_id=eos,
                                         eos_token_id=eos, **spec)).eval()
    model.config.sid_prompt, model.config.sid_answer_suffix = "text", [newline]
    layout = TokenLayout((k,) * levels, kind="tokenizer", token_ids=table, pad_id=eos, eos_id=eos)
    catalog = common.synthetic_catalog(items, k=k, levels=levels, seed=seed)
    return model, layout, catalog


def prompts(batch: int, length: int, text_vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) left-padded random text prompts of about `length` tokens (lengths vary by up to 10%)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, text_vocab, (batch, length), generator=g)
    lengths = length - torch.randint(0, max(1, length // 10), (batch,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) >= (length - lengths).unsqueeze(1)).long()
    return torch.where(mask.bool(), ids, torch.zeros_like(ids)), mask


def answer_children(layout: TokenLayout, catalog, suffix: list[int]) -> dict[tuple, list[int]]:
    """{answer prefix (token ids): allowed next tokens}: the catalog's SID tokens, then the suffix, then EOS."""
    children: dict[tuple, set] = {}
    for row in layout.codes_to_tokens(catalog.codes).tolist():
        answer = row + suffix + [layout.eos_id]
        for j in range(len(answer)):
            children.setdefault(tuple(answer[:j]), set()).add(answer[j])
    return {key: sorted(v) for key, v in children.items()}


def trie_fn(allowed: dict, prompt_len: int, eos: int):
    """HF prefix_allowed_tokens_fn over the answer-prefix table (an unknown prefix: EOS only)."""
    return lambda batch_id, ids: allowed.get(tuple(ids[prompt_len:].tolist()), [eos])


class PerBeamSIDProcessor(LogitsProcessor):
    """MiniOneRec-style constraint (module docstring): per step, a Python loop over batch rows and beams, each
    beam's generated prefix looked up in `allowed`, every other token set to -inf."""

    def __init__(self, allowed: dict, num_beams: int, prompt_len: int, eos: int):
        self.allowed, self.num_beams, self.prompt_len, self.eos = allowed, num_beams, prompt_len, eos

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        for batch_id, beams in enumerate(input_ids.view(-1, self.num_beams, input_ids.shape[-1])):
            for beam_id, sent in enumerate(beams):
                tokens = self.allowed.get(tuple(sent[self.prompt_len:].tolist()), [self.eos])
                mask[batch_id * self.num_beams + beam_id, tokens] = 0.0
        return scores + mask


def prompt_kv_mib(model, batch: int, copies: int, length: int) -> float:
    """MiB of the prompt's KV cache (float32) held `copies` times per user."""
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return batch * copies * length * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * 4 / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="small", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--prompt", type=int, default=256, help="prompt tokens per user (about)")
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--accelerated", action="store_true", help="also time accelerate()'s generate")
    p.add_argument("--hf-trie", action="store_true", help="also time HF generate with prefix_allowed_tokens_fn")
    p.add_argument("--quick", action="store_true", help="tiny shape, 2 users, beam 5, 32-token prompts, --hf-trie")
    p.add_argument("--name", default="llm_generate")
    p.add_argument("--out", default=str(common.RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        args.shape, args.batch, args.beam, args.top_n, args.prompt, args.items, args.repeats = \
            "tiny", 2, 5, 3, 32, 300, 1
        args.hf_trie = True
    threads = common.set_threads(args.threads)
    model, layout, catalog = build(args.shape, args.items)
    ids, mask = prompts(args.batch, args.prompt, SHAPES[args.shape]["text_vocab"])
    allowed = answer_children(layout, catalog, list(model.config.sid_answer_suffix))
    beam, n = args.beam, args.top_n

    def hf_minionerec(phases):
        proc = PerBeamSIDProcessor(allowed, beam, ids.shape[1], layout.eos_id)
        with torch.inference_mode():
            return run_hf_generate(model, layout, ids, mask, beam, n, length_penalty=0.0,
                                   logits_processor=LogitsProcessorList([proc]))[0]

    def hf_trie(phases):
        with torch.inference_mode():
            return run_hf_generate(model, layout, ids, mask, beam, n, length_penalty=0.0,
                                   prefix_allowed_tokens_fn=trie_fn(allowed, ids.shape[1], layout.eos_id))[0]

    def ours(phases):
        with torch.inference_mode():
            return sk.constrained_generate(model, catalog, ids, mask, num_beams=beam, num_return_sequences=n,
                                           length_penalty=0.0, return_dict_in_generate=True, output_scores=True,
                                           layout=layout)

    providers = {"hf_minionerec": hf_minionerec, "constrained_generate": ours}
    if args.hf_trie:
        providers["hf_trie"] = hf_trie
    if args.accelerated:
        g = torch.Generator().manual_seed(2)
        pick = torch.randint(0, catalog.num_items, (64,), generator=g)
        train_ids, train_mask = prompts(64, args.prompt, SHAPES[args.shape]["text_vocab"], seed=3)
        ex = Examples(train_ids, train_mask, catalog.codes[pick], catalog.item_ids[pick], padding_side="left")
        rec = sk.accelerate(model, catalog, ex, epochs=1, layout=layout, batch_size=32)
        providers["accelerated"] = lambda phases: rec.generate(ids, mask, num_beams=beam, num_return_sequences=n)
    samples, outputs = common.run_interleaved(providers, repeats=args.repeats, warmup=args.warmup, budget_s=None)
    # Memory pass after the timing: fresh pages, so each call's peak RSS growth is its own buffers.
    common.fresh_page_allocator()
    memory = {}
    for name, fn in providers.items():
        common.trim_heap()
        sample, _ = common.time_call(fn)
        memory[name] = sample.peak_rss_delta_mib
    ref = outputs["constrained_generate"]
    hf_names = [name for name in providers if name.startswith("hf_")]
    same = {name: torch.equal(outputs[name].sequences, ref.sequences) for name in hf_names}
    gap = {name: float((outputs[name].sequences_scores - ref.sequences_scores).abs().max()) for name in hf_names}
    stats = {name: common.stats_of(s) for name, s in samples.items()}
    base = stats["hf_minionerec"]["median_ms"]
    record = {
        "machine": common.machine_info(), "threads": threads, "dtype": "float32", "shape": args.shape,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "batch": args.batch, "beam": beam,
        "top_n": n, "prompt_tokens": int(ids.shape[1]), "catalog_items": catalog.num_items,
        "providers": stats, "peak_rss_growth_mib": memory,
        "prompt_kv_cache_mib": {"hf_generate": prompt_kv_mib(model, args.batch, beam, ids.shape[1]),
                                "constrained_generate": prompt_kv_mib(model, args.batch, 1, ids.shape[1])},
        "baseline": "hf_minionerec",
        "speedup_vs_hf": {name: base / s["median_ms"] for name, s in stats.items()},
        "same_sequences_as_constrained_generate": same, "max_score_gap_to_constrained_generate": gap,
    }
    path = Path(args.out) / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"Qwen2 {args.shape} ({record['params_m']}M params), batch {args.batch}, beam {beam}, prompt "
          f"{ids.shape[1]} tokens, {catalog.num_items} items, {threads} threads, fp32")
    for name, s in stats.items():
        print(f"  {name:22s} {common.fmt_ms(s['median_ms'])} ms  x{record['speedup_vs_hf'][name]:.2f} vs HF+proc   "
              f"peak RSS +{memory[name] or 0:.0f} MiB")
    print(f"  prompt KV cache: HF {record['prompt_kv_cache_mib']['hf_generate']:.1f} MiB (beam copies), ours "
          f"{record['prompt_kv_cache_mib']['constrained_generate']:.1f} MiB")
    for name in hf_names:
        print(f"  {name} vs constrained_generate: same sequences {same[name]}, max score gap {gap[name]:.2e}")
    print(f"  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
