"""TIGER teacher: a HF T5 (or GPT-2) over SID tokens, its training loop, evaluation and CLI commands.

Run directory written by `train_teacher(out_dir=...)`::

    out/best/   model (save_pretrained: config.json + model.safetensors), layout.json,
                teacher.json (format version, arch, preset, validation metrics)
    out/last/   the same for the latest checkpoint + trainer_state.json + optimizer.pt
                (optimizer, scheduler, RNG); training resumes from here
    out/history.jsonl  one line per validation

`load_teacher(out)` loads out/best (or a model directory given directly).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import check_model_layout, left_positions
from .attention_decode import DecodeOutput, attention_beam_search, hf_generate
from .catalog import SIDCatalog
from .examples import Examples, build_examples
from .layout import TokenLayout
from .metrics import evaluate_ranking, ndcg_at_k, paired_bootstrap, recall_at_k

__all__ = [
    "T5_PRESETS",
    "GPT2_PRESETS",
    "TrainConfig",
    "add_teacher_arguments",
    "build_gpt2_teacher",
    "build_t5_teacher",
    "cmd_eval",
    "cmd_train_teacher",
    "evaluate_teacher",
    "load_teacher",
    "most_popular_baseline",
    "most_popular_items",
    "save_teacher",
    "teacher_loss",
    "train_teacher",
]

FORMAT_VERSION = 1
_FORMAT = "sidmlp-teacher"

# TIGER paper: 4+4 layers, d_model 128, d_ff 1024, 6 heads of 64, dropout 0.1, ReLU.
T5_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(num_layers=4, num_decoder_layers=4, d_model=128, d_ff=1024, num_heads=6, d_kv=64),
    "small": dict(num_layers=2, num_decoder_layers=2, d_model=64, d_ff=256, num_heads=4, d_kv=16),
    "tiny": dict(num_layers=1, num_decoder_layers=1, d_model=32, d_ff=64, num_heads=2, d_kv=8),
}
GPT2_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(n_layer=8, n_embd=128, n_inner=1024, n_head=4),
    "small": dict(n_layer=2, n_embd=64, n_inner=256, n_head=4),
    "tiny": dict(n_layer=1, n_embd=32, n_inner=64, n_head=2),
}
ARCHS = ("t5", "gpt2")


def _preset(table: dict[str, dict[str, Any]], preset: str) -> dict[str, Any]:
    if preset not in table:
        raise ValueError(f"preset must be one of {sorted(table)}, got {preset!r}")
    return dict(table[preset])


def build_t5_teacher(layout: TokenLayout, preset: str = "paper", seed: Optional[int] = None, **overrides) -> nn.Module:
    """A fresh T5ForConditionalGeneration in TIGER layout (pad 0 starts decoding, EOS = layout.eos_id)."""
    from transformers import T5Config, T5ForConditionalGeneration

    kwargs = dict(
        vocab_size=layout.vocab_size,
        dropout_rate=0.1,
        feed_forward_proj="relu",
        pad_token_id=layout.pad_id,
        eos_token_id=layout.eos_id,
        decoder_start_token_id=layout.pad_id,
    )
    kwargs.update(_preset(T5_PRESETS, preset))
    kwargs.update(overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(**kwargs))


def build_gpt2_teacher(
    layout: TokenLayout, preset: str = "small", max_positions: int = 1024, seed: Optional[int] = None, **overrides
) -> nn.Module:
    """A fresh GPT2LMHeadModel over the layout's tokens (prompt = [user, SIDs..., EOS], then the target SID)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    kwargs = dict(
        vocab_size=layout.vocab_size,
        n_positions=max_positions,
        bos_token_id=layout.user_base,
        eos_token_id=layout.eos_id,
        pad_token_id=layout.pad_id,
    )
    kwargs.update(_preset(GPT2_PRESETS, preset))
    kwargs.update(overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**kwargs))


def _arch(model: nn.Module) -> str:
    return "t5" if getattr(model.config, "is_encoder_decoder", False) else "gpt2"


def teacher_loss(
    model: nn.Module,
    layout: TokenLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_codes: torch.Tensor,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the L target SID tokens + EOS (full vocabulary, as TIGER trains)."""
    batch = input_ids.shape[0]
    labels = torch.cat(
        [layout.codes_to_tokens(target_codes), torch.full((batch, 1), layout.eos_id, dtype=torch.long)], dim=1
    ).to(input_ids.device)
    if getattr(model.config, "is_encoder_decoder", False):
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    # Causal LM: [prompt (left padded), t_0 .. t_{L-1}] predicts t_0 .. t_{L-1}, EOS from position T-1 on.
    from .layout import to_left_padding

    ids, mask = to_left_padding(input_ids, attention_mask)
    t = ids.shape[1]
    full_ids = torch.cat([ids, labels[:, :-1]], dim=1)
    full_mask = torch.cat([mask.long(), torch.ones_like(labels[:, :-1])], dim=1)
    logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=left_positions(full_mask)).logits
    pred = logits[:, t - 1 :]
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels.reshape(-1))


# ---- evaluation -----------------------------------------------------------------------


@torch.no_grad()
def evaluate_teacher(
    model: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    examples: Examples,
    decode: str = "constrained",
    beam_size: int = 50,
    top_n: int = 10,
    batch_size: int = 64,
    max_users: Optional[int] = None,
    ks: tuple[int, ...] = (5, 10),
    progress: bool = False,
    return_items: bool = False,
) -> dict[str, Any]:
    """Recall/NDCG@k of one decode ('constrained', 'unconstrained' or 'hf') plus invalid-beam counts and seconds.

    return_items adds "items": the (N, top_n) ranked lists.
    """
    if decode not in ("constrained", "unconstrained", "hf"):
        raise ValueError(f"decode must be 'constrained', 'unconstrained' or 'hf', got {decode!r}")
    n = len(examples) if max_users is None else min(len(examples), max_users)
    ranked, targets = [], []
    invalid = duplicate = 0
    start = time.perf_counter()
    device = next(model.parameters()).device
    batches = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"eval {decode}", unit="batch", leave=False)
    for lo in batches:
        ids, mask, _, items = examples.batch(torch.arange(lo, min(n, lo + batch_size)))
        ids, mask = ids.to(device), mask.to(device)
        if decode == "hf":
            out: DecodeOutput = hf_generate(model, layout, catalog, ids, mask, beam_size, top_n)
        else:
            out = attention_beam_search(
                model, layout, catalog, ids, mask, beam_size, top_n, constrained=decode == "constrained"
            )
        ranked.append(out.items)
        targets.append(items)
        invalid += int(out.num_invalid.sum())
        duplicate += int(out.num_duplicate.sum())
    items = torch.cat(ranked)
    metrics: dict[str, Any] = evaluate_ranking(items, torch.cat(targets), ks=ks)
    if return_items:
        metrics["items"] = items
    metrics.update(
        num_users=n,
        invalid_beams=invalid,
        invalid_per_user=invalid / max(n, 1),
        duplicate_beams=duplicate,
        seconds=time.perf_counter() - start,
    )
    return metrics


def most_popular_baseline(
    sequences: list[list[int]], examples: Examples, extra: Optional[list[int]] = None, ks: tuple[int, ...] = (5, 10)
) -> dict[str, float]:
    """Recall/NDCG@k of recommending the globally most frequent items (counts from sequences + extra)."""
    ranked = most_popular_items(sequences, max(ks), extra).unsqueeze(0).expand(len(examples), -1)
    return evaluate_ranking(ranked, examples.target_items, ks=ks)


def most_popular_items(sequences: list[list[int]], n: int, extra: Optional[list[int]] = None) -> torch.Tensor:
    """The n most frequent item ids in sequences + extra (ties: smaller id first)."""
    counts: dict[int, int] = {}
    for seq in sequences:
        for i in seq:
            counts[i] = counts.get(i, 0) + 1
    for i in extra or []:
        counts[i] = counts.get(i, 0) + 1
    return torch.tensor(sorted(counts, key=lambda i: (-counts[i], i))[:n], dtype=torch.long)


# ---- saving / loading -----------------------------------------------------------------


def save_teacher(model: nn.Module, layout: TokenLayout, directory: str | Path, info: Optional[dict] = None) -> None:
    """Write model (safetensors + config), layout.json and teacher.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    layout.save(directory / "layout.json")
    meta = {"format": _FORMAT, "format_version": FORMAT_VERSION, "arch": _arch(model)}
    meta.update(info or {})
    (directory / "teacher.json").write_text(json.dumps(meta, indent=2))


def load_teacher(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TokenLayout]:
    """Load (model in eval mode, layout) from a run directory (uses best/) or a saved model directory."""
    directory = Path(directory)
    if (directory / "best" / "teacher.json").is_file():
        directory = directory / "best"
    meta_path = directory / "teacher.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no teacher in {directory}: expected teacher.json (or best/teacher.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupted {meta_path}: {err}") from err
    if meta.get("format") != _FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} is not a sidmlp teacher of format_version {FORMAT_VERSION} "
            f"(format={meta.get('format')!r}, version={meta.get('format_version')!r})"
        )
    layout = TokenLayout.load(directory / "layout.json")
    arch = meta.get("arch")
    if arch == "t5":
        from transformers import T5ForConditionalGeneration as cls
    elif arch == "gpt2":
        from transformers import GPT2LMHeadModel as cls
    else:
        raise ValueError(f"{meta_path} names unknown arch {arch!r}; expected one of {ARCHS}")
    model = cls.from_pretrained(str(directory)).to(device)
    model.eval()
    check_model_layout(model, layout)
    return model, layout


# ---- training -------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Teacher training options (AdamW, linear warmup + cosine decay, early stopping on valid NDCG@10)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: Optional[int] = None  # default: 5% of all steps, at most 1000
    grad_clip: float = 1.0
    max_minutes: Optional[float] = None  # wall-clock budget of this invocation
    eval_every: Optional[int] = None  # steps between validations; default once per epoch
    eval_beam: int = 20
    eval_users: Optional[int] = None  # validate on the first N validation users
    eval_batch_size: int = 64
    patience: int = 3  # validations without improvement before stopping
    checkpoint_minutes: float = 5.0
    seed: int = 0
    bf16: bool = False  # bf16 autocast for the forward pass (fp32 weights and optimizer)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded, checked on resume (data options)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def _atomic_save_dir(write: Callable[[Path], None], target: Path) -> None:
    """Write a directory via a temp sibling + rename so a crash never leaves a half-written checkpoint."""
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def train_teacher(
    model: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    train: Examples,
    valid: Examples,
    out_dir: str | Path,
    config: Optional[TrainConfig] = None,
    resume: bool = True,
    info: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train with early stopping on constrained-decode valid NDCG@10; checkpoints in out_dir; returns a summary.

    With resume=True and out_dir/last present, model/optimizer/scheduler/RNG and the
    position inside the epoch are restored from it (the passed model is overwritten).
    """
    config = config if config is not None else TrainConfig()
    check_model_layout(model, layout, catalog)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = config.warmup_steps if config.warmup_steps is not None else min(1000, max(1, total // 20))
    eval_every = config.eval_every or steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, total))
    cfg_record = asdict(config)
    state: dict[str, Any] = dict(
        step=0, epoch=0, batch_in_epoch=0, best_ndcg=-1.0, best_step=-1, bad_evals=0,
        train_seconds=0.0, done=False, config=cfg_record,
    )
    info = dict(info or {})
    last = out / "last"
    if resume and (last / "trainer_state.json").is_file():
        saved = json.loads((last / "trainer_state.json").read_text())
        for key in ("batch_size", "epochs", "lr", "seed", "bf16", "extra"):
            if saved["config"].get(key, getattr(TrainConfig(), key)) != cfg_record.get(key):
                raise ValueError(
                    f"cannot resume {out}: its {key} was {saved['config'].get(key)!r}, now {cfg_record.get(key)!r}; "
                    "pass the same options, or start fresh (--fresh / resume=False / another --out)"
                )
        loaded, saved_layout = load_teacher(last)
        if saved_layout != layout:
            raise ValueError(f"cannot resume {out}: its layout {saved_layout} differs from {layout}")
        model.load_state_dict(loaded.state_dict())
        blob = torch.load(last / "optimizer.pt", weights_only=False)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng"])
        # Keep the current invocation's budget and patience-related knobs, restore progress.
        state.update({k: saved[k] for k in state if k in saved and k != "config"})
        log(f"[train-teacher] resumed from {last} at step {state['step']} (epoch {state['epoch']}, "
            f"best valid NDCG@10 {state['best_ndcg']:.4f} at step {state['best_step']})")
    if state["done"]:
        log(f"[train-teacher] {out} is already finished (early stopping or all epochs); nothing to do")
        return _summary(state, out)

    def save_last() -> None:
        def write(d: Path) -> None:
            save_teacher(model, layout, d, dict(info, step=state["step"]))
            (d / "trainer_state.json").write_text(json.dumps(state, indent=2))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": torch.get_rng_state()}, d / "optimizer.pt")

        _atomic_save_dir(write, last)

    def validate() -> bool:
        """Evaluate, keep the best model; True when patience is exhausted."""
        metrics = evaluate_teacher(
            model, layout, catalog, valid, decode="constrained", beam_size=config.eval_beam,
            top_n=min(10, config.eval_beam), batch_size=config.eval_batch_size, max_users=config.eval_users,
        )
        model.train()
        ndcg = metrics["ndcg@10"]
        record = dict(step=state["step"], epoch=state["epoch"], **metrics)
        with open(out / "history.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        improved = ndcg > state["best_ndcg"]
        log(f"[train-teacher] step {state['step']} epoch {state['epoch']}: valid (beam {config.eval_beam}, "
            f"{metrics['num_users']} users) recall@10 {metrics['recall@10']:.4f} ndcg@10 {ndcg:.4f}"
            f"{' (best)' if improved else ''} [{metrics['seconds']:.1f}s]")
        if improved:
            state.update(best_ndcg=ndcg, best_step=state["step"], bad_evals=0)
            _atomic_save_dir(
                lambda d: save_teacher(model, layout, d, dict(info, step=state["step"], valid=metrics)), out / "best"
            )
        else:
            state["bad_evals"] += 1
        return state["bad_evals"] >= config.patience

    model.train()
    start = time.perf_counter()
    last_ckpt = start
    budget = None if config.max_minutes is None else config.max_minutes * 60.0
    stop_reason = None
    evaluated_at = -1
    while state["epoch"] < config.epochs and stop_reason is None:
        gen = torch.Generator().manual_seed(config.seed * 100003 + state["epoch"])
        order = torch.randperm(len(train), generator=gen)
        first = state["batch_in_epoch"]
        bar = None
        if config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {state['epoch'] + 1}/{config.epochs}",
                       unit="step", leave=False)
        for b in range(first, steps_per_epoch):
            ids, mask, codes, _ = train.batch(order[b * config.batch_size : (b + 1) * config.batch_size])
            device = next(model.parameters()).device
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                loss = teacher_loss(model, layout, ids.to(device), mask.to(device), codes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            state["batch_in_epoch"] = b + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            now = time.perf_counter()
            if state["step"] % eval_every == 0 and b + 1 < steps_per_epoch:
                evaluated_at = state["step"]
                if validate():
                    stop_reason = "early stopping"
                    break
            if budget is not None and now - start >= budget:
                stop_reason = f"time budget of {config.max_minutes} min"
                break
            if now - last_ckpt >= config.checkpoint_minutes * 60.0:
                state["train_seconds"] += now - last_ckpt
                last_ckpt = now
                save_last()
        if bar is not None:
            bar.close()
        if stop_reason is None:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            if eval_every >= steps_per_epoch or state["step"] % eval_every == 0 or state["epoch"] == config.epochs:
                evaluated_at = state["step"]
                if validate():
                    stop_reason = "early stopping"
    if stop_reason is None:
        stop_reason = f"all {config.epochs} epochs"
    if evaluated_at != state["step"] and not stop_reason.startswith("early"):
        validate()
    state["done"] = not stop_reason.startswith("time budget")
    state["train_seconds"] += time.perf_counter() - last_ckpt
    save_last()
    log(f"[train-teacher] stopped after step {state['step']} ({stop_reason}); best valid NDCG@10 "
        f"{state['best_ndcg']:.4f} at step {state['best_step']}; this run {time.perf_counter() - start:.0f}s")
    summary = _summary(state, out)
    summary["stop_reason"] = stop_reason
    return summary


def _summary(state: dict[str, Any], out: Path) -> dict[str, Any]:
    return dict(
        step=state["step"], epoch=state["epoch"], best_ndcg=state["best_ndcg"], best_step=state["best_step"],
        train_seconds=state["train_seconds"], best_dir=str(out / "best"), done=state["done"],
    )


# ---- CLI ------------------------------------------------------------------------------


def _set_threads(n: Optional[int]) -> None:
    if n:
        torch.set_num_threads(int(n))


def cmd_train_teacher(args: argparse.Namespace) -> int:
    """`sidmlp train-teacher`: train a TIGER (T5) or GPT-2 teacher on a prepared dataset."""
    from .prepare import load_prepared

    _set_threads(args.threads)
    prepared = load_prepared(args.prepared)
    catalog, split = prepared.catalog, prepared.split
    layout = TokenLayout.for_catalog(catalog)
    padding = "right" if args.arch == "t5" else "left"
    t0 = time.perf_counter()
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=args.max_prefixes_per_user,
                           seed=args.seed, padding_side=padding)
    valid = build_examples(split, catalog, layout, "valid", padding_side=padding)
    print(f"[train-teacher] {len(train)} train examples, {len(valid)} valid users "
          f"(built in {time.perf_counter() - t0:.1f}s); arch {args.arch}, preset {args.preset}")
    if args.arch == "t5":
        model = build_t5_teacher(layout, args.preset, seed=args.seed)
    else:
        max_pos = 2 + split.max_history * layout.num_levels + layout.num_levels + 1
        model = build_gpt2_teacher(layout, args.preset, max_positions=max_pos, seed=args.seed)
    if args.init_from:
        start, start_layout = load_teacher(args.init_from)
        shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
        if start_layout != layout or shapes(start) != shapes(model):
            raise ValueError(f"--init-from {args.init_from}: its layout/architecture differs from --arch "
                             f"{args.arch} --preset {args.preset} on this catalog")
        model.load_state_dict(start.state_dict())
        print(f"[train-teacher] weights from {args.init_from} (optimizer and schedule start fresh)")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[train-teacher] {n_params / 1e6:.2f}M parameters, {torch.get_num_threads()} threads")
    extra = dict(prepared=str(Path(args.prepared).resolve()), arch=args.arch, preset=args.preset,
                 max_prefixes_per_user=args.max_prefixes_per_user)
    if args.init_from:
        extra["init_from"] = str(Path(args.init_from).resolve())
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, max_minutes=args.max_minutes, eval_every=args.eval_every,
        eval_beam=args.eval_beam, eval_users=args.eval_users, patience=args.patience, seed=args.seed,
        checkpoint_minutes=args.checkpoint_minutes, bf16=args.bf16, progress=not args.no_progress, extra=extra,
    )
    summary = train_teacher(model, layout, catalog, train, valid, args.out, config, resume=not args.fresh,
                            info=dict(extra, params=n_params))
    print(json.dumps(summary, indent=2))
    return 0


def _fmt(m: dict[str, float]) -> str:
    return "  ".join(f"{k} {m[k]:.4f}" for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10") if k in m)


def cmd_eval(args: argparse.Namespace) -> int:
    """`sidmlp eval`: Recall/NDCG@5/10 of a teacher's decodes and a most-popular baseline."""
    from .prepare import load_prepared

    _set_threads(args.threads)
    prepared = load_prepared(args.prepared)
    catalog, split = prepared.catalog, prepared.split
    model, layout = load_teacher(args.teacher)
    check_model_layout(model, layout, catalog)
    padding = "right" if getattr(model.config, "is_encoder_decoder", False) else "left"
    examples = build_examples(split, catalog, layout, args.split, padding_side=padding)
    decodes = {"both": ["hf", "constrained"], "all": ["hf", "unconstrained", "constrained"]}.get(
        args.decode, [args.decode]
    )
    results: dict[str, Any] = {"split": args.split, "beam": args.beam, "top_n": args.top_n}
    n = len(examples) if args.max_users is None else min(args.max_users, len(examples))
    print(f"[eval] {args.teacher} on {args.split} ({n} users), beam {args.beam}, top {args.top_n}")
    rankings = {}
    for decode in decodes:
        m = evaluate_teacher(model, layout, catalog, examples, decode=decode, beam_size=args.beam,
                             top_n=args.top_n, batch_size=args.batch_size, max_users=args.max_users,
                             progress=not args.no_progress, return_items=True)
        rankings[decode] = m.pop("items")
        results[decode] = m
        extra = (f"  invalid beams {m['invalid_beams']} of {n * args.top_n} returned "
                 f"({m['invalid_per_user']:.2f}/user)" if decode != "constrained" else "")
        print(f"  {decode:<13} {_fmt(m)}{extra}  [{m['seconds']:.1f}s]")
    extra_items = list(split.valid_targets) if args.split == "test" else None
    users = examples.subset(torch.arange(n))
    popular = most_popular_items(split.train_sequences, 10, extra_items).unsqueeze(0).expand(n, -1)
    pop = evaluate_ranking(popular, users.target_items, ks=(5, 10))
    results["most_popular"] = pop
    print(f"  {'most-popular':<13} {_fmt(pop)}")
    # Is the teacher better than most-popular on these users? Paired bootstrap over users.
    results["vs_most_popular"] = {}
    for decode, ranked in rankings.items():
        boot = {
            name: paired_bootstrap(fn(ranked, users.target_items, 10, per_instance=True),
                                   fn(popular, users.target_items, 10, per_instance=True), seed=args.seed)
            for name, fn in (("recall@10", recall_at_k), ("ndcg@10", ndcg_at_k))
        }
        results["vs_most_popular"][decode] = boot
        print(f"  {decode} - most-popular, paired bootstrap over {n} users (95% interval, share of resamples "
              "with no gain): " + "; ".join(
                  f"{name} {b['mean_difference']:+.4f} [{b['ci_low']:+.4f}, {b['ci_high']:+.4f}] "
                  f"p={b['share_not_better']:.4f}" for name, b in boot.items()))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def add_teacher_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Register the `train-teacher` and `eval` subcommands on a subparsers object."""
    p = subparsers.add_parser("train-teacher", help="train a TIGER (T5) or GPT-2 teacher on a prepared dataset")
    p.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    p.add_argument("--out", required=True, help="run directory (best/, last/, history.jsonl)")
    p.add_argument("--arch", choices=ARCHS, default="t5", help="t5 (TIGER, default) or gpt2 (decoder-only)")
    p.add_argument("--preset", choices=sorted(T5_PRESETS), default="paper",
                   help="model size: paper (4+4 layers, d128), small (2+2, d64) or tiny")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget of this run")
    p.add_argument("--max-prefixes-per-user", type=int, default=None,
                   help="random cap on training prefixes per user (default: all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of all steps, at most 1000")
    p.add_argument("--eval-every", type=int, default=None, help="steps between validations (default: per epoch)")
    p.add_argument("--eval-beam", type=int, default=20, help="beam of the constrained validation decode")
    p.add_argument("--eval-users", type=int, default=None, help="validate on the first N users only")
    p.add_argument("--patience", type=int, default=3, help="validations without improvement before stopping")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast in training (about 1.4x faster on AVX512-BF16 CPUs; weights stay fp32)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from this trained teacher's weights (same arch/preset), with a new schedule")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_teacher)

    p = subparsers.add_parser("eval", help="Recall/NDCG of a teacher's decodes (HF generate, constrained)")
    p.add_argument("--teacher", required=True, help="run directory of train-teacher (or a saved model dir)")
    p.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--decode", choices=("hf", "constrained", "unconstrained", "both", "all"), default="both",
                   help="hf = HF generate (unconstrained, invalid beams dropped); constrained = cached, "
                        "catalog-constrained beam search; both = hf + constrained")
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--top-n", type=int, default=10, help="beams returned per user (ranked list length)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-users", type=int, default=None, help="evaluate the first N users only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out", default=None, help="also write the metrics as JSON here")
    p.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap against most-popular")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)
