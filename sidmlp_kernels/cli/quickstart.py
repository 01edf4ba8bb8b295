"""`sidmlp quickstart`: prepare a dataset, train a small teacher, distil SID-MLP and SID-MLP++, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..data.movielens import DATASETS
from ..errors import InvalidInput


def run_quickstart(
    out_dir: str | Path,
    dataset: str = "ml-100k",
    teacher_preset: str = "small",
    teacher_epochs: int = 9,
    max_prefixes_per_user: int = 20,
    distill_epochs: int = 12,
    encoder_epochs: int = 4,
    stage2_epochs: int = 6,
    eval_users: Optional[int] = None,
    beam_size: int = 50,
    threads: int = 2,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Prepare a dataset, train a small teacher, distil SID-MLP and SID-MLP++, print test metrics side by side.

    The teacher is the full-sequence decoder-only one (teacher/sequence.py) on a step schedule
    sized to `teacher_epochs`, validated on all validation users: the same seed and thread count
    give the same numbers. Every stage reuses what an earlier run left in out_dir (rerun = resume).
    """
    import time

    import torch

    from ..accelerated import AcceleratedRecommender, accelerate
    from ..data.examples import build_examples
    from ..data.layout import TokenLayout
    from ..data.prepare import load_prepared, prepare
    from ..evaluation import compare_with_teacher, format_comparison, most_popular_for
    from ..io import provenance, write_json
    from ..teacher.models import build_gpt2_teacher, load_teacher
    from ..teacher.sequence import build_windows, positions_needed
    from ..teacher.train import TrainConfig, train_teacher

    if isinstance(teacher_epochs, bool) or not isinstance(teacher_epochs, int) or teacher_epochs < 1:
        raise InvalidInput(f"teacher_epochs (--teacher-epochs) must be an int >= 1, got {teacher_epochs!r}")
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    stamp = lambda: f"[quickstart {time.perf_counter() - t_all:6.0f}s]"  # noqa: E731
    try:
        prepared = load_prepared(out / "prepared")
    except (FileNotFoundError, ValueError):
        prepared = None
    if prepared is not None:
        if prepared.config.get("dataset") != dataset:
            raise InvalidInput(f"--out {out} holds a quickstart on {prepared.config.get('dataset')}, not --dataset "
                             f"{dataset}; choose another --out")
        print(f"{stamp()} reusing {prepared.config['dataset']} data in {out / 'prepared'}")
    else:
        print(f"{stamp()} preparing {dataset} (MiniLM embeddings + residual-quantised Semantic IDs, K auto)")
        # The quickstart owns out/prepared: a half-written one (a crash) is rebuilt, reusing its embedding cache.
        prepared = prepare(dataset, out / "prepared", codebook_size="auto", show_progress=show_progress,
                           overwrite=True)
    catalog, split = prepared.catalog, prepared.split
    layout = TokenLayout.for_catalog(catalog)
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=max_prefixes_per_user, seed=seed,
                           padding_side="left")
    valid = build_examples(split, catalog, layout, "valid", padding_side="left")
    test = build_examples(split, catalog, layout, "test", padding_side="left")
    valid_small = valid if eval_users is None else valid.subset(torch.arange(min(eval_users, len(valid))))
    print(f"{stamp()} {catalog}, {len(train)} distillation prefixes, {len(test)} test users")

    teacher_dir = out / "teacher"
    if not (teacher_dir / "best" / "teacher.json").is_file() or (teacher_dir / "checkpoint.pt").is_file():
        windows = build_windows(split, catalog, layout)
        print(f"{stamp()} training a decoder-only GR teacher (GPT-2 preset {teacher_preset!r}, full-sequence "
              f"objective, {teacher_epochs} epochs over {len(windows)} windows)")
        model = build_gpt2_teacher(layout, teacher_preset, seed=seed,
                                   max_positions=positions_needed(layout, split.max_history, windows),
                                   prompt="items", dropout=0.2)
        cfg = TrainConfig(epochs=teacher_epochs, batch_size=32, lr=3e-3, eval_beam=20, patience=teacher_epochs,
                          seed=seed, progress=show_progress, extra={"dataset": dataset, "objective": "sequence"})
        train_teacher(model, layout, catalog, windows, valid, teacher_dir, cfg)
        (teacher_dir / "checkpoint.pt").unlink(missing_ok=True)  # done: a rerun reuses best/
    else:
        print(f"{stamp()} reusing the teacher in {teacher_dir} (delete it to train a new one)")
    teacher, layout = load_teacher(teacher_dir, catalog=catalog)

    # alpha=1: the students learn the teacher's distributions only (no ground-truth CE term), which kept
    # them closest to it on ML-100K (docs/results/ml-1m-quality.md, "Distillation fidelity").
    # select_by="teacher": early stopping keeps the weights closest to the teacher's own valid top-10.
    common = dict(eval_beam=20, patience=3, lr=2e-3, batch_size=256, alpha=1.0, select_by="teacher", seed=seed,
                  show_progress=show_progress)
    models: dict[str, AcceleratedRecommender] = {}
    for name, replace in (("sidmlp", False), ("sidmlp++", True)):
        path = out / name
        if (path / "accelerated.json").is_file():
            models[name] = AcceleratedRecommender.from_pretrained(path, teacher=teacher, catalog=catalog)
            print(f"{stamp()} reusing {path}")
            continue
        print(f"{stamp()} distilling {name}")
        # Stage 1 fits the MLP encoder to a frozen teacher's states (a regression on 18K prompts): without
        # dropout it fits as well on ML-100K (docs/results/ml-1m-quality.md, session 27) and runs 12% faster.
        extra = dict(encoder_epochs=encoder_epochs, epochs=stage2_epochs, encoder_dropout=0.0) if replace \
            else dict(epochs=distill_epochs)
        # SID-MLP++ heads start from the SID-MLP heads: stage 2 then only adapts them to the new encoder.
        init = models["sidmlp"].student if replace and "sidmlp" in models else None
        rec = accelerate(teacher, catalog, train, valid_small, replace_encoder=replace, layout=layout,
                         work_dir=out / "work", init_student=init, **common, **extra)
        rec.save_pretrained(path)
        models[name] = rec

    print(f"{stamp()} evaluating on {len(test)} test users, beam {beam_size}, top 10")
    results: dict[str, Any] = {"dataset": dataset, "split": "test", **compare_with_teacher(
        teacher, layout, catalog, test, models, most_popular_for(split, "test"), beam_size=beam_size)}
    print("\n" + format_comparison(results) + "\n")
    results["total_seconds"] = time.perf_counter() - t_all
    results["provenance"] = provenance({"dataset": dataset, "catalog": catalog.fingerprint()})
    write_json(out / "quickstart.json", results)
    print(f"{stamp()} wrote {out / 'quickstart.json'}")
    return results



def add_quickstart_arguments(parser) -> Any:
    """Add the `sidmlp quickstart` options to a (sub)parser and return it."""
    parser.add_argument("--out", default="runs/quickstart", help="run directory (rerun = reuse/resume)")
    parser.add_argument("--dataset", default="ml-100k", choices=sorted(DATASETS), help="packaged dataset")
    parser.add_argument("--teacher-epochs", type=int, default=9,
                        help="teacher training epochs (the learning-rate schedule is sized to them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_quickstart)
    return parser



def cmd_quickstart(args) -> int:
    """`sidmlp quickstart`: prepare ML-100K, train a small teacher, distil, compare teacher vs SID-MLP(++)."""
    run_quickstart(args.out, dataset=args.dataset, teacher_epochs=args.teacher_epochs, threads=args.threads,
                   seed=args.seed, show_progress=not args.no_progress)
    return 0


def register(sub) -> None:
    """Add `sidmlp quickstart` to the subcommands."""
    p = sub.add_parser("quickstart", help="prepare ML-100K, train a small teacher, distil, compare (the main job)")
    add_quickstart_arguments(p)
