"""Micro-benchmark: one fused Triton beam step per digit vs the PyTorch reference step.

On CUDA it times both side by side (same inputs, same run) and prints medians and
ratios. Without CUDA the Triton kernel only runs in the (slow, semantic-only)
interpreter, so it is not timed: the script says so and times the reference alone.

    python bench/bench_fused_step.py --batch 32 --beam 50 --k 256 --levels 4 --hidden 512 --precision bf16

--precision is the kernel's GEMM precision (default: the kernel's, bf16 on CUDA); for bf16/fp16 the
prefix tables and out_w are handed to the kernel in that dtype, as the triton backend does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from common import cpu_model, time_repeats
from sidmlp_kernels.decode.kernels.fused_step import default_precision, fused_step, fused_step_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Fraction of valid children per digit: a full first digit, then the SID tree thins out.
DENSITY = [1.0, 0.5, 0.05, 0.02, 0.02, 0.02, 0.02, 0.02]


def make_level(level: int, args, device: str, dtype: torch.dtype, g: torch.Generator):
    """Random inputs for digit `level` (beams sorted best-first, every beam with >= 1 child)."""
    b, k, h = args.batch, args.k, args.hidden
    width = 1 if level == 0 else args.beam
    tables = [(torch.randn(k, h, generator=g) * 0.5).to(device, dtype) for _ in range(level)]
    ln_w = (torch.rand(h, generator=g) + 0.5).to(device, dtype)
    ln_b = (torch.randn(h, generator=g) * 0.1).to(device, dtype)
    out_w = (torch.randn(k, h, generator=g) * 3 / h**0.5).to(device, dtype)
    out_b = (torch.randn(k, generator=g) * 0.1).to(device, dtype)
    ctx = torch.randn(b, h, generator=g).to(device, dtype)
    prefixes = torch.randint(0, k, (b, width, level), generator=g).to(device)
    valid = torch.rand(b, width, k, generator=g) < DENSITY[min(level, len(DENSITY) - 1)]
    valid.scatter_(2, torch.randint(0, k, (b, width, 1), generator=g), True)
    scores = torch.sort(torch.randn(b, width, generator=g), dim=1, descending=True).values
    if level == 0:
        scores.zero_()
    return [ctx, tables, prefixes, ln_w, ln_b, 1e-5, out_w, out_b, scores.to(device), valid.to(device), args.beam]


def median_ms(fn, reps: int, warmup: int, cuda: bool) -> float:
    """Median wall time of fn() in milliseconds (CUDA events when on GPU)."""
    return statistics.median(time_repeats(fn, reps, warmup, cuda_events=cuda))


def main() -> None:
    """Time each digit's step and print one JSON record per digit plus a total."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="the heads' dtype (reference and inputs)")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16"], default=None,
                   help="the fused step's GEMM precision (default: the kernel's default, bf16 on CUDA)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", help="also write the records to this JSON file")
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = DTYPES[args.dtype]
    machine = torch.cuda.get_device_name() if cuda else f"{cpu_model()} CPU"
    if not cuda:
        print("fused_step needs a CUDA GPU (the CPU interpreter is for tests, not timing); "
              "timing the PyTorch reference step only.", file=sys.stderr)
    precision = args.precision or default_precision(torch.device(device), dtype)
    g = torch.Generator().manual_seed(0)
    records = []
    for level in range(args.levels):
        inputs = make_level(level, args, device, dtype, g)
        kernel_inputs = list(inputs)
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if low is not None:  # as the triton backend: tables and out_w stored in the GEMM's dtype
            kernel_inputs[1] = [t.to(low) for t in inputs[1]]
            kernel_inputs[6] = inputs[6].to(low)
        rec = {
            "bench": "fused_step", "level": level, "machine": machine, "threads": torch.get_num_threads(),
            "dtype": args.dtype, "precision": precision, "batch": args.batch, "beam": args.beam, "k": args.k, "hidden": args.hidden,
            "width": inputs[2].shape[1], "density": DENSITY[min(level, len(DENSITY) - 1)],
            "reference_ms": median_ms(lambda: fused_step_reference(*inputs), args.reps, args.warmup, cuda),
        }
        if cuda:
            rec["triton_ms"] = median_ms(
                lambda: fused_step(*kernel_inputs, check_inputs=False, precision=precision), args.reps,
                args.warmup, cuda
            )
            rec["speedup"] = rec["reference_ms"] / rec["triton_ms"]
        records.append(rec)
        print(json.dumps(rec))
    total = {"bench": "fused_step", "level": "all", "reference_ms": sum(r["reference_ms"] for r in records)}
    if cuda:
        total["triton_ms"] = sum(r["triton_ms"] for r in records)
        total["speedup"] = total["reference_ms"] / total["triton_ms"]
    print(json.dumps(total))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records + [total], f, indent=1)


if __name__ == "__main__":
    main()
