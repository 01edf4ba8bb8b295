"""`sidmlp prepare`."""

from __future__ import annotations

import argparse

from ..data.movielens import DATASETS


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare

    prepare(
        args.dataset,
        args.out,
        num_levels=args.levels,
        codebook_size=args.codebook_size,
        max_history=args.max_history,
        k_core=args.k_core,
        pca_dim=args.pca_dim,
        seed=args.seed,
        show_progress=True,
        overwrite=args.overwrite,
        sids=args.sids,
        sids_format=args.sids_format,
    )
    return 0


def _codebook_size(text: str):
    """--codebook-size: an int or "auto"."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def register(sub) -> None:
    """Add `sidmlp prepare` to the subcommands."""
    p = sub.add_parser("prepare", help="load a packaged dataset, split it, build Semantic IDs and the catalog")
    p.add_argument("--dataset", default="ml-100k", choices=sorted(DATASETS), help="packaged dataset")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--levels", type=int, default=4, help="SID digits L incl. the dedup digit")
    p.add_argument("--codebook-size", type=_codebook_size, default=256,
                   help="codes per digit K, or auto: the smallest power of two >= 2 x items**(1/(L-1))")
    p.add_argument("--max-history", type=int, default=20, help="history items kept per instance")
    p.add_argument("--k-core", type=int, default=None, help="optional k-core filter")
    p.add_argument("--pca-dim", type=int, default=None, help="optional whitened PCA before quantisation")
    p.add_argument("--seed", type=int, default=0, help="seed of the residual k-means")
    p.add_argument("--sids", default=None, metavar="FILE",
                   help="use another code base's SID file instead of building Semantic IDs (every dataset item by its "
                        "raw id; K = --codebook-size); then `sidmlp import --prepared` gives its teacher this catalog")
    p.add_argument("--sids-format", default="sidmlp-official", choices=("sidmlp-official", "tiger-xlt"),
                   help="--sids file format: sidmlp-official (.sem_ids JSON), tiger-xlt (.npy, row i = item i+1)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory (its embedding cache is reused)")
    p.set_defaults(func=cmd_prepare)
