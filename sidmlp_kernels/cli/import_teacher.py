"""`sidmlp import`: turn another code base's saved teacher (T5, per-digit heads, an LLM with SID tokens) into a
teacher directory."""

from __future__ import annotations

import argparse
import sys

# The formats, as plain data (teacher/importers.py holds the readers; the parser imports no torch).
IMPORT_FORMAT_NAMES = ("sidmlp-official", "tiger-xlt", "grid", "rqvae", "cornac", "minionerec", "lcrec",
                       "openonerec")
# Per-digit-head formats: sizes come from the checkpoint, the SIDs from --sids (grid) or the checkpoint itself.
DIGIT_HEAD_FORMAT_NAMES = ("grid", "rqvae", "cornac")
# LLMs with SID tokens in their tokenizer: --model (a save_pretrained directory) and --index (its .index.json;
# OpenOneRec: its sid2pid.json).
LLM_FORMAT_NAMES = ("minionerec", "lcrec", "openonerec")


def cmd_import(args: argparse.Namespace) -> int:
    from ..teacher.importers import import_teacher

    if args.format in LLM_FORMAT_NAMES:
        return _import_llm(args, import_teacher)
    if args.checkpoint is None:
        print(f"sidmlp import: --checkpoint is required for --format {args.format}", file=sys.stderr)
        return 2
    options = dict(n_user_tokens=args.n_user_tokens, num_heads=args.num_heads, d_kv=args.d_kv,
                   feed_forward_proj=args.feed_forward_proj)
    if args.format not in DIGIT_HEAD_FORMAT_NAMES and args.sids is None:
        print(f"sidmlp import: --sids is required for --format {args.format}", file=sys.stderr)
        return 2
    _, layout, catalog = import_teacher(args.format, args.checkpoint, args.sids, args.out, config=args.config,
                                        prepared=args.prepared, **options)
    print(f"[sidmlp import] {args.format} teacher written to {args.out} ({catalog.num_items} items, "
          f"layout {layout.kind}, vocab {layout.vocab_size}); catalog in {args.out}/catalog")
    return 0


def _import_llm(args: argparse.Namespace, import_teacher) -> int:
    """`sidmlp import --format minionerec|lcrec|openonerec --model DIR --index FILE [--base-model DIR] --out DIR`."""
    missing = [flag for flag, value in (("--model", args.model), ("--index", args.index)) if value is None]
    if missing:
        print(f"sidmlp import: {' and '.join(missing)} required for --format {args.format}", file=sys.stderr)
        return 2
    print(f"[sidmlp import] reading {args.model}" + (f" (LoRA over {args.base_model})" if args.base_model else ""))
    _, layout, catalog = import_teacher(args.format, args.model, args.index, args.out, base_model=args.base_model)
    print(f"[sidmlp import] {args.format} teacher written to {args.out} ({catalog.num_items} SIDs, "
          f"{catalog.num_all_items} items, {layout.num_levels} digits); catalog in {args.out}/catalog")
    return 0


def register(sub) -> None:
    """Add `sidmlp import` to the subcommands."""
    p = sub.add_parser("import", help="import a teacher saved by another code base (SID-MLP official, TIGER, GRID, "
                                      "RQ-VAE-Recommender, cornac, MiniOneRec, LC-Rec, OpenOneRec)")
    p.add_argument("--format", required=True, choices=IMPORT_FORMAT_NAMES,
                   help="sidmlp-official: ztguo715/SID-MLP (keys t5.*, JSON .sem_ids); "
                        "tiger-xlt: XiaoLongtaoo/TIGER (keys model.*, .npy codes); "
                        "grid: snap-research/GRID (Lightning .ckpt, --sids merged_predictions_tensor.pt, "
                        "--config its .hydra/config.yaml); rqvae: RQ-VAE-Recommender checkpoint_{iter}.pt "
                        "(SIDs inside); cornac: cornac TIGER's saved .pkl (SIDs inside); "
                        "minionerec: AkaliKong/MiniOneRec (Qwen2, --model, --index); "
                        "lcrec: zhengbw0324/LC-Rec (LLaMA, --model, --index, --base-model for a LoRA adapter); "
                        "openonerec: Kuaishou-OneRec/OpenOneRec (Qwen3, --model, --index sid2pid.json)")
    p.add_argument("--checkpoint", default=None, help="the code base's saved state_dict (.pth); T5 / digit-head formats")
    p.add_argument("--model", default=None, help="minionerec / lcrec / openonerec: the save_pretrained directory "
                                                 "(model + tokenizer), or the PEFT LoRA adapter directory with "
                                                 "--base-model")
    p.add_argument("--index", default=None, help="minionerec / lcrec: the SID index <name>.index.json; "
                                                 "openonerec: its sid2pid.json")
    p.add_argument("--base-model", default=None, help="lcrec / minionerec LoRA: the base model the adapter was "
                                                      "trained on (needs peft)")
    p.add_argument("--sids", default=None, help="its SID file (.sem_ids JSON, the .npy of codes, GRID's "
                                               "merged_predictions_tensor.pt); rqvae / cornac hold theirs")
    p.add_argument("--config", default=None, help="its config file (YAML or JSON): sizes the checkpoint does not hold")
    p.add_argument("--n-user-tokens", type=int, default=None,
                   help="user tokens of a sidmlp-official teacher (default: implied by the vocabulary)")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads (checked against the checkpoint)")
    p.add_argument("--d-kv", type=int, default=None, help="per-head width (checked against the checkpoint)")
    p.add_argument("--feed-forward-proj", default=None,
                   help="T5 feed-forward activation (relu, gelu, gated-gelu, ...), when --config lacks it")
    p.add_argument("--prepared", default=None,
                   help="a `sidmlp prepare --sids FILE` directory built from the same SID file: the teacher gets "
                        "that dataset's catalog, so `sidmlp distill --prepared` takes it (sidmlp-official, tiger-xlt)")
    p.add_argument("--out", required=True, help="teacher directory to write (must not exist or be empty)")
    p.set_defaults(func=cmd_import)
