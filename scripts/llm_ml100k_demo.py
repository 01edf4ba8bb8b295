"""accelerate() on a small random Qwen2 teacher trained briefly on ML-100K SIDs (issue 16), end to end on CPU.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/llm_ml100k_demo.py --out OUT --minutes 20 --threads 1
    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/llm_ml100k_demo.py --out OUT --steps 800   # a fixed schedule

Stages (each timed; results in OUT/results.json, a table printed at the end):
  prepare   `sidmlp prepare --dataset ml-100k --codebook-size auto` into OUT/prepared (or --prepared DIR, reused)
  setup     a MiniOneRec-format setup built here: the index file {item: ["<a_..>", "<b_..>", "<c_..>", "<d_..>"]}
            from the catalog codes, a byte-level BPE tokenizer trained on MiniOneRec's prompt template (a few
            hundred tokens) with the SID tokens added by add_tokens(sorted(...)), a random Qwen2ForCausalLM
  sft       MiniOneRec-style SID SFT: prompt = the history as SID tokens in TEMPLATES["minionerec"]
            (LLMTeacher.prompt_ids), response = the next item's SID tokens, "\\n", EOS (LLMTeacher.answer_ids);
            next-token loss on the response only; --prefixes-per-user training prefixes per user (seeded); AdamW,
            warm-up + cosine over the steps run (training.run_training); the best of a few validation decodes kept
  import    save_pretrained (model + tokenizer) + the index file = a MiniOneRec output directory, read back with
            sk.import_teacher("minionerec", ...) and sk.load_llm_teacher (what `sidmlp import` does)
  distill   sk.accelerate(): SID-MLP heads distilled from the imported teacher; saved with save_pretrained and
            loaded back with AcceleratedRecommender.from_pretrained
  evaluate  ML-100K test split, every user, --beam beams, top 10: the teacher (sk.constrained_generate, digits
            renormalized over the catalog-valid children as the student decodes; also with HF generate's scores,
            renormalize=False, as a row of its own), the student (generate()), most-popular;
            evaluation.quality_report (paired bootstraps, overlap); every returned item checked to be a catalog item

--minutes times a few steps first (on a copy of the model) and fixes the step count from them; results.json
records it, and --steps with that count reruns the same schedule deterministically for a seed.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

import sidmlp_kernels as sk
from sidmlp_kernels.configs import TrainerConfig
from sidmlp_kernels.data.catalog import SIDCatalog
from sidmlp_kernels.data.examples import train_pairs
from sidmlp_kernels.data.movielens import Split
from sidmlp_kernels.evaluation import format_comparison, most_popular_for, quality_report
from sidmlp_kernels.metrics import evaluate_ranking, top_overlap
from sidmlp_kernels.teacher.llm import TEMPLATES, LLMTeacher, SIDIndex, llm_teacher
from sidmlp_kernels.training import run_training

EOS = "<|endoftext|>"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
TOP_K = 10  # quality_report's and format_comparison's k


@dataclass
class DemoOptions:
    """Every choice of a demo run (the CLI flags); ValueError naming the flag for a bad value."""

    steps: Optional[int] = None  # SFT optimizer steps; None: from minutes
    minutes: Optional[float] = 20.0  # SFT budget used to size the steps (when steps is None)
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    text_vocab: int = 400  # BPE vocabulary trained on the template (SID tokens come on top)
    prefixes_per_user: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    evals: int = 4  # validation decodes during SFT (the best is kept)
    eval_users: int = 943  # validation users of those decodes (the first N)
    eval_beam: int = 20
    distill_prefixes_per_user: int = 10
    distill_epochs: int = 20
    select_by: str = "teacher"  # accelerate()'s checkpoint choice on validation: "teacher" (top-10 overlap) or "ndcg"
    head_hidden: int = 256
    student_ffn: int = 512
    readout: str = "pool+last"
    beam: int = 50
    test_users: Optional[int] = None  # None: every test user
    batch_users: int = 64  # users per decode call
    bootstrap: int = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, flag: str, rule: str, value) -> None:
            if not ok:
                raise ValueError(f"--{flag} must be {rule}, got {value!r}")

        if (self.steps is None) == (self.minutes is None):
            raise ValueError("give exactly one of --steps and --minutes")
        need(self.steps is None or self.steps >= 1, "steps", ">= 1", self.steps)
        need(self.minutes is None or self.minutes > 0, "minutes", "> 0", self.minutes)
        for name in ("layers", "hidden", "heads", "kv_heads", "prefixes_per_user", "batch_size", "evals", "eval_users",
                     "eval_beam", "distill_prefixes_per_user", "distill_epochs", "head_hidden", "student_ffn",
                     "batch_users", "bootstrap"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, name.replace("_", "-"), "an int >= 1", value)
        need(self.hidden % self.heads == 0 and (self.hidden // self.heads) % 2 == 0, "hidden",
             f"a multiple of 2 x --heads ({self.heads}) (even rotary head size)", self.hidden)
        need(self.heads % self.kv_heads == 0, "kv-heads", f"a divisor of --heads ({self.heads})", self.kv_heads)
        need(self.text_vocab >= 300, "text-vocab", ">= 300 (the 256 bytes and a few merges)", self.text_vocab)
        need(self.lr > 0, "lr", "> 0", self.lr)
        need(self.weight_decay >= 0, "weight-decay", ">= 0", self.weight_decay)
        need(0 <= self.warmup_frac < 1, "warmup-frac", "in [0, 1)", self.warmup_frac)
        for name in ("beam", "eval_beam"):
            need(getattr(self, name) >= TOP_K, name.replace("_", "-"), f">= {TOP_K} (top {TOP_K} of the beams)",
                 getattr(self, name))
        need(self.test_users is None or self.test_users >= 1, "test-users", ">= 1", self.test_users)
        need(self.readout in ("pool", "pool+last"), "readout", "'pool' or 'pool+last'", self.readout)
        need(self.select_by in ("teacher", "ndcg"), "select-by", "'teacher' or 'ndcg'", self.select_by)
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", "an int >= 0", self.seed)


# ---------------------------------------------------------------- the MiniOneRec-format setup


def sid_index(catalog: SIDCatalog) -> dict[str, list[str]]:
    """MiniOneRec's index file content: item id -> one "<x_N>" token per digit (letter = digit, N = code)."""
    if catalog.num_levels > len(LETTERS):
        raise ValueError(f"a catalog of {catalog.num_levels} digits needs more than {len(LETTERS)} token letters")
    items = catalog.all_item_ids
    codes = catalog.codes_of(items)
    return {str(int(i)): [f"<{LETTERS[level]}_{int(c)}>" for level, c in enumerate(row)]
            for i, row in zip(items.tolist(), codes.tolist())}


def build_tokenizer(index: dict, text_vocab: int, template=TEMPLATES["minionerec"]):
    """A byte-level BPE of `text_vocab` tokens trained on the template's text (so "\\n" is one token, as in
    Qwen's), EOS = pad = "<|endoftext|>", then the SID tokens added as MiniOneRec adds them: add_tokens(sorted)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=text_vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([*template.parts, template.history_sep, template.answer_suffix], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)
    tokenizer.add_tokens(SIDIndex.from_dict(index).new_tokens())
    return tokenizer


def build_model(tokenizer, opts: DemoOptions, max_positions: int):
    """A random Qwen2ForCausalLM (tied embeddings, as Qwen2.5-0.5B), initial weights from opts.seed."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=opts.hidden, intermediate_size=4 * opts.hidden,
                         num_hidden_layers=opts.layers, num_attention_heads=opts.heads,
                         num_key_value_heads=opts.kv_heads, max_position_embeddings=max_positions,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id, bos_token_id=None)
    with torch.random.fork_rng():
        torch.manual_seed(opts.seed)
        return Qwen2ForCausalLM(config)


def save_minionerec(teacher: LLMTeacher, index: dict, out: Path) -> tuple[Path, Path]:
    """The model + tokenizer (save_pretrained) and the index file, as MiniOneRec leaves them: (model dir, index)."""
    model_dir, index_path = out / "final_checkpoint", out / "ML100K.index.json"
    config = teacher.model.config
    marks = {k: getattr(config, k) for k in ("sid_prompt", "sid_answer_suffix") if hasattr(config, k)}
    for key in marks:  # llm_teacher's marks on the config: a MiniOneRec directory has none
        delattr(config, key)
    try:
        teacher.model.save_pretrained(model_dir)
    finally:
        for key, value in marks.items():
            setattr(config, key, value)
    teacher.tokenizer.save_pretrained(model_dir)
    index_path.write_text(json.dumps(index))
    return model_dir, index_path


# ---------------------------------------------------------------- SFT


def sft_rows(teacher: LLMTeacher, histories, targets) -> list[tuple[list[int], int]]:
    """(prompt + answer token ids, prompt length) per example: the answer is what the loss is on."""
    rows = []
    for history, target in zip(histories, targets):
        prompt = teacher.prompt_ids(history)
        rows.append((prompt + teacher.answer_ids(target), len(prompt)))
    return rows


def sft_loss(rows: list[tuple[list[int], int]], pad_id: int) -> Callable:
    """run_training's batch_loss: right-padded prompt + answer, labels -100 on the prompt and the pads."""

    def batch_loss(model, index: torch.Tensor):
        picked = [rows[i] for i in index.tolist()]
        width = max(len(ids) for ids, _ in picked)
        ids = torch.full((len(picked), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, (row, prompt_len) in enumerate(picked):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
            labels[r, prompt_len:len(row)] = ids[r, prompt_len:len(row)]
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    return batch_loss


def train_sft(teacher: LLMTeacher, rows: list[tuple[list[int], int]], opts: DemoOptions, steps: int,
              valid: Optional[tuple[list, list]] = None):
    """SFT of teacher.model in place (training.run_training: AdamW, warm-up + cosine over `steps`, data order and
    initial state from opts.seed); with valid = (histories, targets), opts.evals constrained validation decodes,
    the best NDCG@10 weights kept. Returns the TrainResult."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not rows:
        raise ValueError("SFT needs at least one example")
    validate = None
    if valid is not None:
        histories, targets = valid[0], torch.as_tensor(valid[1], dtype=torch.long)

        def validate(model) -> dict:  # model is teacher.model, in eval mode
            return evaluate_ranking(teacher_ranked(teacher, histories, opts.eval_beam, opts.batch_users), targets,
                                    ks=(TOP_K,))

    cfg = TrainerConfig(max_steps=steps, batch_size=opts.batch_size, lr=opts.lr, weight_decay=opts.weight_decay,
                        warmup_frac=opts.warmup_frac, grad_clip=1.0, eval_every=max(1, math.ceil(steps / opts.evals)),
                        patience=opts.evals + 1, seed=opts.seed)
    return run_training(teacher.model, sft_loss(rows, teacher.layout.pad_id), len(rows), cfg, evaluate=validate,
                        metric=f"ndcg@{TOP_K}", desc="sft")


def seconds_per_step(model, batch_loss, num_rows: int, batch_size: int, seed: int, repeats: int = 3) -> float:
    """Median time of one SFT optimizer step, measured on a copy of the model (the model is left untouched)."""
    probe = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        loss = batch_loss(probe, torch.randint(0, num_rows, (batch_size,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


# ---------------------------------------------------------------- ranking and checks


def _top(items: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) ranked ids: the first k columns, -1 padded when fewer came back."""
    items = items[:, :k]
    if items.shape[1] < k:
        items = torch.cat([items, items.new_full((items.shape[0], k - items.shape[1]), -1)], 1)
    return items


def teacher_ranked(teacher: LLMTeacher, histories, beam: int, batch_users: int, renormalize: bool = True
                   ) -> torch.Tensor:
    """(N, 10) items of the teacher's own constrained decode (sk.constrained_generate). renormalize=True: each
    digit's log-softmax over the catalog-valid children only (the package's decode semantics, the student's,
    compare_with_teacher's); False: HF generate's scores with a catalog trie (whole-vocabulary log-softmax, then
    the answer suffix and EOS scored)."""
    out = []
    for lo in range(0, len(histories), batch_users):
        ids, mask = teacher.prompts(histories[lo:lo + batch_users])
        gen = sk.constrained_generate(teacher.model, teacher.catalog, ids, mask, num_beams=beam,
                                      num_return_sequences=TOP_K, return_dict_in_generate=True, layout=teacher.layout,
                                      renormalize=renormalize)
        out.append(_top(gen.items, TOP_K))
    return torch.cat(out)


def student_ranked(rec, teacher: LLMTeacher, histories, beam: int, batch_users: int) -> torch.Tensor:
    """(N, 10) items of the accelerated model's generate() on the teacher's prompts."""
    out = []
    for lo in range(0, len(histories), batch_users):
        ids, mask = teacher.prompts(histories[lo:lo + batch_users])
        out.append(_top(rec.generate(ids, mask, beam_size=beam, top_n=TOP_K).items, TOP_K))
    return torch.cat(out)


def check_items(items: torch.Tensor, catalog: SIDCatalog, what: str) -> dict[str, int]:
    """RuntimeError unless every returned item is a catalog item and no list repeats one; the counts."""
    known = set(catalog.all_item_ids.tolist())
    returned = [i for i in items.flatten().tolist() if i >= 0]
    invalid = sorted({i for i in returned if i not in known})
    repeated = sum(len(r) - len(set(r)) for r in ([i for i in row if i >= 0] for row in items.tolist()))
    if invalid or repeated:
        raise RuntimeError(f"{what} returned {len(invalid)} non-catalog items (e.g. {invalid[:5]}) and {repeated} "
                           "repeats within a user's list")
    return {"returned": len(returned), "empty_slots": int(items.numel()) - len(returned), "non_catalog": 0,
            "repeated": 0}


# ---------------------------------------------------------------- the run


def run_demo(split: Split, catalog: SIDCatalog, out: str | Path, opts: DemoOptions,
             say: Callable[[str], None] = print, wall: Optional[dict] = None) -> dict:
    """Every stage after prepare on (split, catalog); writes OUT/{minionerec, teacher, accelerated, results.json}."""
    out = Path(out)
    if out.exists() and any(p.name != "prepared" for p in out.iterdir()):
        raise ValueError(f"--out {out} already holds a run; choose a new directory (a prepared/ inside is reused)")
    out.mkdir(parents=True, exist_ok=True)
    wall = dict(wall or {})
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        wall[stage] = round(now - clock, 2)
        clock = now
        say(f"[{stage}] done in {wall[stage]:.1f}s")

    # setup
    index = sid_index(catalog)
    tokenizer = build_tokenizer(index, opts.text_vocab)
    histories, targets, _ = train_pairs(split.train_sequences, split.max_history, opts.prefixes_per_user, opts.seed)
    model = build_model(tokenizer, opts, max_positions=1024)
    trained = llm_teacher(model, tokenizer, index, "minionerec")
    rows = sft_rows(trained, histories, targets)
    prompt_lengths = torch.tensor([p for _, p in rows], dtype=torch.float)
    # Every item is L SID tokens, so the longest history makes the longest prompt.
    max_prompt = max(len(trained.prompt_ids(max(part, key=len)))
                     for part in (histories, split.valid_histories, split.test_histories))
    if max_prompt + 16 > model.config.max_position_embeddings:
        raise ValueError(f"prompts of {max_prompt} tokens exceed the model's {model.config.max_position_embeddings} "
                         "positions")
    params = sum(p.numel() for p in model.parameters())
    say(f"[setup] {catalog.num_all_items} items, L={catalog.num_levels}, tokenizer {len(tokenizer)} tokens "
        f"({len(SIDIndex.from_dict(index).new_tokens())} SID tokens), Qwen2 {opts.layers} layers x {opts.hidden} "
        f"({params / 1e6:.2f}M params), {len(rows)} SFT examples ({opts.prefixes_per_user} per user), prompts "
        f"{prompt_lengths.mean():.0f} tokens on average, at most {max_prompt}")
    lap("setup")

    # SFT
    steps, step_s = opts.steps, None
    if steps is None:
        step_s = seconds_per_step(model, sft_loss(rows, trained.layout.pad_id), len(rows), opts.batch_size,
                                  opts.seed)
        steps = max(1, int(opts.minutes * 60 / step_s))
        say(f"[sft] {step_s:.2f}s per step measured: {steps} steps fill {opts.minutes:g} minutes "
            f"(rerun exactly with --steps {steps})")
    valid_n = min(opts.eval_users, len(split.valid_targets))
    say(f"[sft] {steps} steps of {opts.batch_size} ({steps * opts.batch_size / len(rows):.2f} epochs), validation "
        f"decode (beam {opts.eval_beam}, {valid_n} users) every {math.ceil(steps / opts.evals)} steps")
    logging.getLogger("sidmlp_kernels").setLevel(logging.INFO)
    sft = train_sft(trained, rows, opts, steps, (split.valid_histories[:valid_n], split.valid_targets[:valid_n]))
    lap("sft")

    # save as MiniOneRec does, import as a user would
    model_dir, index_path = save_minionerec(trained, index, out / "minionerec")
    sk.import_teacher("minionerec", model_dir, index_path, out / "teacher")
    teacher = sk.load_llm_teacher(out / "teacher")
    if set(teacher.catalog.all_item_ids.tolist()) != set(catalog.all_item_ids.tolist()):
        raise RuntimeError("the imported teacher's catalog does not hold the dataset's items")
    say(f"[import] {model_dir} + {index_path.name} -> {out / 'teacher'} ({teacher.catalog})")
    lap("save_and_import")

    # distill
    d_hist, d_tgt, _ = train_pairs(split.train_sequences, split.max_history, opts.distill_prefixes_per_user,
                                   opts.seed)
    valid_all = teacher.examples(split.valid_histories, split.valid_targets)
    rec = sk.accelerate(teacher.model, teacher.catalog, teacher.examples(d_hist, d_tgt), valid_all,
                        layout=teacher.layout, epochs=opts.distill_epochs, head_hidden=opts.head_hidden,
                        ffn_dim=opts.student_ffn, readout=opts.readout, eval_beam=opts.beam, select_by=opts.select_by,
                        seed=opts.seed)
    rec.save_pretrained(out / "accelerated")
    rec = sk.AcceleratedRecommender.from_pretrained(out / "accelerated", teacher=teacher.model)
    say(f"[distill] {len(d_tgt)} examples, best epoch {rec.info.get('best_epoch')} of {opts.distill_epochs}")
    lap("distill")

    # evaluate on test
    n = len(split.test_targets) if opts.test_users is None else min(opts.test_users, len(split.test_targets))
    test_hist, test_tgt = split.test_histories[:n], torch.tensor(split.test_targets[:n])
    ranked, seconds, validity = {}, {}, {}
    runs = (("teacher", lambda: teacher_ranked(teacher, test_hist, opts.beam, opts.batch_users)),
            ("teacher_hf_scores", lambda: teacher_ranked(teacher, test_hist, opts.beam, opts.batch_users, False)),
            ("student", lambda: student_ranked(rec, teacher, test_hist, opts.beam, opts.batch_users)))
    for name, rank in runs:
        t0 = time.perf_counter()
        ranked[name] = rank()
        seconds[name] = round(time.perf_counter() - t0, 2)
        validity[name] = check_items(ranked[name], catalog, name)
        say(f"[evaluate] {name}: {n} users in {seconds[name]:.1f}s, {validity[name]['returned']} items returned, "
            "all in the catalog")
        lap(f"test_{name}")
    # The student is held against the teacher decoded as it decodes (renormalized); the HF-scored decode of the
    # same teacher is a row of its own, with the student's overlap with it beside.
    report = quality_report(ranked, test_tgt, most_popular_for(split, "test", TOP_K), teacher="teacher",
                            baselines=("teacher_hf_scores",), seed=opts.seed, num_samples=opts.bootstrap)
    for name, value in seconds.items():
        report[name]["seconds"] = value
    report["student"]["top10_overlap_with_teacher_hf_scores"] = top_overlap(ranked["student"],
                                                                            ranked["teacher_hf_scores"], TOP_K)
    report["teacher_hf_scores"]["top10_overlap_with_teacher"] = top_overlap(ranked["teacher_hf_scores"],
                                                                            ranked["teacher"], TOP_K)
    comparison = {"users": n, "beam": opts.beam, "top_k": TOP_K, "models": report}
    table = format_comparison(comparison)
    lap("report")

    results = {
        "options": asdict(opts), "steps_run": sft.step, "seconds_per_step_measured": step_s,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "python": platform.python_version()},
        "data": {"items": catalog.num_all_items, "num_levels": catalog.num_levels,
                 "codebook_sizes": list(catalog.codebook_sizes), "users": len(split.test_targets),
                 "sft_examples": len(rows), "mean_prompt_tokens": float(prompt_lengths.mean()),
                 "max_prompt_tokens": max_prompt},
        "model": {"arch": "Qwen2ForCausalLM", "params": params, "layers": opts.layers, "hidden": opts.hidden,
                  "heads": opts.heads, "kv_heads": opts.kv_heads, "vocab": len(tokenizer)},
        "sft": {"steps": sft.step, "epochs": sft.step * opts.batch_size / len(rows), "best_step": sft.best_step,
                "best_valid_ndcg@10": sft.best_metric, "stop_reason": sft.stop_reason, "history": sft.history,
                "validation_users": valid_n, "validation_beam": opts.eval_beam},
        "distill": {"examples": len(d_tgt), "best_epoch": rec.info.get("best_epoch"),
                    "history": rec.info.get("history")},
        "test": comparison, "validity": validity, "wall_seconds": wall,
        "wall_seconds_total": round(sum(wall.values()), 2),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    say(f"\ntest split, {n} users, beam {opts.beam}, top {TOP_K}:\n{table}")
    say(f"wall seconds: {json.dumps(wall)} (total {results['wall_seconds_total']:.0f}); -> {out / 'results.json'}")
    return results


def parse_args(argv=None) -> tuple[argparse.Namespace, DemoOptions]:
    d = DemoOptions()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a new (or empty) directory; a prepared/ inside it is reused")
    p.add_argument("--prepared", default=None, help="a `sidmlp prepare` directory to use (default OUT/prepared, "
                                                    "prepared from ml-100k with --codebook-size auto if missing)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="SFT optimizer steps (a fixed schedule)")
    budget.add_argument("--minutes", type=float, default=None,
                        help=f"SFT budget: steps = minutes / measured seconds per step (default {d.minutes:g})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=d.seed)
    for name in ("layers", "hidden", "heads", "kv_heads", "text_vocab", "prefixes_per_user", "batch_size", "evals",
                 "eval_users", "eval_beam", "distill_prefixes_per_user", "distill_epochs", "head_hidden",
                 "student_ffn", "beam", "batch_users", "bootstrap"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "warmup_frac"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--readout", default=d.readout, choices=("pool", "pool+last"))
    p.add_argument("--select-by", default=d.select_by, choices=("teacher", "ndcg"),
                   help="the distilled heads kept: best validation top-10 overlap with the teacher, or NDCG@10")
    p.add_argument("--test-users", type=int, default=None, help="first N test users (default: all)")
    args = p.parse_args(argv)
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    fields = {k: v for k, v in vars(args).items() if k in DemoOptions.__dataclass_fields__}
    if fields["steps"] is None and fields["minutes"] is None:
        fields["minutes"] = d.minutes
    elif fields["steps"] is not None:
        fields["minutes"] = None
    return args, DemoOptions(**fields)


def main(argv=None) -> int:
    try:
        args, opts = parse_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    prepared = Path(args.prepared) if args.prepared else out / "prepared"
    if not (prepared / "data.json").is_file():
        print(f"[prepare] ml-100k -> {prepared}")
        sk.prepare("ml-100k", prepared, codebook_size="auto", seed=opts.seed)
    data = sk.load_prepared(prepared)
    wall = {"prepare": round(time.perf_counter() - t0, 2)}
    print(f"[prepare] {prepared}: {data.catalog}, {len(data.split.test_targets)} users ({wall['prepare']:.1f}s)")
    try:
        run_demo(data.split, data.catalog, out, opts, wall=wall)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
