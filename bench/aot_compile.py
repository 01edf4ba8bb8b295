"""Compile the fused Triton step ahead of time for a GPU target (no GPU needed) and record its resources.

    python bench/aot_compile.py --label after           # fp32/tf32/bf16 x hidden 256/512 x beam 10/50/100
    python bench/aot_compile.py --quick --out /tmp/c.json

A mode is the heads' storage dtype and the GEMM's operand precision, as the triton backend runs
them: fp32 (fp32 heads, exact fp32 dot), tf32 (fp32 heads, TF32 dot), bf16 (bf16 heads, bf16 dot;
the default on CUDA). For each shape the launcher's own compile-time parameters (fused_step.launch_config) are used, the
kernel is compiled with triton.compile for `--arch` (default sm_90a: capability 90), and the PTX is
assembled by the ptxas Triton uses, with -v: registers per thread, spill stores/loads and stack
frame come from ptxas, shared memory from the compiled kernel's metadata. The PTX's matrix
instructions are counted too (wgmma = Hopper tensor cores, mma.sync = the older tensor-core path,
fma.rn.f32 = plain FMA; in the SASS, HGMMA = wgmma, HMMA = mma.sync) and the local-memory
instructions of the SASS (LDL/STL: spills). Records go under `runs[LABEL]` of the JSON (other labels are kept), so
one file holds "before" and "after" a kernel change. Resources, not timings: nothing here runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels only: the interpreter has no PTX
# A fresh cache, so compile_s is a real compile and no stale kernel of another source is reused.
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="sidmlp_aot_")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import common  # noqa: E402

# The module, not the function of the same name that sidmlp_kernels.decode.kernels exports.
fused = importlib.import_module("sidmlp_kernels.decode.kernels.fused_step")

# mode -> (heads' storage dtype, dot precision)
MODES = {"fp32": (torch.float32, "fp32"), "tf32": (torch.float32, "tf32"), "bf16": (torch.bfloat16, "bf16")}
TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DEFAULT_OUT = common.RESULTS / "gpu" / "compile.json"


def signature(dtype: torch.dtype, constexprs: dict) -> dict:
    """Triton argument types of _fused_step_kernel for heads of `dtype` (what the launcher passes)."""
    model = "*" + TRITON_TYPES[dtype]
    types = {"PREFIX": "*i64", "BEAM_SCORES": "*fp32", "VALID": "*u8", "SCRATCH": "*i32", "LOGITS": "*fp32",
             "OUT_SCORES": "*fp32",
             "OUT_PARENTS": "*i64", "OUT_TOKENS": "*i64", "W": "i32", "K": "i32", "H": "i32", "beam_size": "i32",
             "eps": "fp32"}
    sig = {}
    for name in fused._fused_step_kernel.arg_names:
        sig[name] = "constexpr" if name in constexprs else types.get(name, model)
    return sig


def specialization(sig: dict, ints: dict) -> dict:
    """The divisibility attributes Triton's launcher would give these arguments (its JIT specializes on them).

    Every pointer is 16-byte aligned (torch allocations), and an int argument whose value is a
    multiple of 16 is marked so: without them the AOT build would be more pessimistic (no
    vectorised loads) than the kernel a launch compiles.
    """
    names = list(sig)
    attrs = {}
    for name, kind in sig.items():
        if kind.startswith("*") or (name in ints and ints[name] % 16 == 0):
            attrs[(names.index(name),)] = [["tt.divisibility", 16]]
    return attrs


def ptxas_report(ptx: str, arch: str) -> dict:
    """Registers, spills and stack frame of the kernel in `ptx`, from `ptxas -v` (Triton's ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas

    tool = get_ptxas(int(re.sub(r"\D", "", arch)))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([tool.path, f"-arch={arch}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed:\n{text[-2000:]}")

    def grab(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    return {"ptxas": f"{Path(tool.path).name} {tool.version}", "n_regs": grab(r"Used (\d+) registers"),
            "spill_stores_bytes": grab(r"(\d+) bytes spill stores"), "spill_loads_bytes": grab(r"(\d+) bytes spill loads"),
            "stack_frame_bytes": grab(r"(\d+) bytes stack frame")}


def compile_one(mode: str, hidden: int, beam: int, k: int, level: int, arch: str) -> dict:
    """One shape (the deepest digit's head: W = beam beams, `level` prefix tables) compiled for `arch`."""
    dtype, precision = MODES[mode]
    config = fused.launch_config(beam, k, hidden, level, beam, precision, "cuda")
    num_warps = config.pop("num_warps")
    names = fused._fused_step_kernel.arg_names
    sig = signature(dtype, config)
    src = ASTSource(fn=fused._fused_step_kernel, signature=sig,
                    constexprs={(names.index(n),): v for n, v in config.items()},
                    attrs=specialization(sig, {"W": beam, "K": k, "H": hidden, "beam_size": beam}))
    capability = int(re.sub(r"\D", "", arch))
    t0 = time.perf_counter()
    kernel = triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})
    seconds = time.perf_counter() - t0
    ptx = kernel.asm["ptx"]
    rec = {"mode": mode, "dtype": TRITON_TYPES[dtype], "precision": precision, "hidden": hidden, "beam": beam, "k": k, "width": beam, "num_prefix": level,
           "num_warps": num_warps, "constexprs": config, "compile_s": round(seconds, 2),
           "shared_bytes": int(kernel.metadata.shared), "ptx_target": re.search(r"\.target (\S+)", ptx).group(1)}
    rec.update(ptxas_report(ptx, arch))
    rec["ptx_ops"] = {"wgmma": ptx.count("wgmma.mma_async"), "mma.sync": ptx.count("mma.sync"),
                      "fma.rn.f32": ptx.count("fma.rn.f32")}
    sass = sass_ops(kernel.asm.get("cubin"))
    if sass is not None:
        rec["sass_ops"] = sass
    return rec


def sass_ops(cubin) -> dict | None:
    """SASS instruction counts: tensor cores (HGMMA = wgmma, HMMA = mma.sync), local memory (LDL, STL = spills).

    `inner_loops`: per innermost loop (a backward branch containing no other), its length and
    local-memory ops, so a spill in a hot loop shows apart from one in once-per-block code. Read
    with the cuobjdump Triton ships; None when there is none (older Triton) or no cubin.
    """
    try:
        from triton import knobs

        tool = knobs.nvidia.cuobjdump.path
    except (ImportError, AttributeError):
        return None
    if not cubin or not tool:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        proc = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    ins = []  # (address, opcode without modifiers, operands)
    for line in proc.stdout.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)\S*\s*([^;]*)", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2), m.group(3)))
    names = ("HGMMA", "HMMA", "LDL", "STL")
    out = {name: sum(op == name for _, op, _ in ins) for name in names}
    loops = []
    for addr, op, rest in ins:
        target = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr:
            loops.append((int(target.group(1), 16), addr))
    inner = [(lo, hi) for lo, hi in loops if not any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in loops)]
    out["inner_loops"] = []
    for lo, hi in sorted(inner):
        body = [op for addr, op, _ in ins if lo <= addr <= hi]
        out["inner_loops"].append({"instructions": len(body), **{n: body.count(n) for n in names}})
    return out


def main(argv=None) -> int:
    """Compile every requested shape, print one line each, merge the records into the JSON under --label."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="current", help="key under runs/ (e.g. before, after)")
    p.add_argument("--modes", nargs="+", default=["fp32", "tf32", "bf16"], choices=sorted(MODES),
                   help="storage dtype + dot precision: fp32, tf32 (fp32 heads), bf16 (bf16 heads)")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    p.add_argument("--beams", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--k", type=int, default=256, help="codebook size of the digit")
    p.add_argument("--level", type=int, default=3, help="prefix digits (the head of digit level+1; 3 = the 4th of L=4)")
    p.add_argument("--arch", default="sm_90a", help="ptxas target (sm_90a = H100/H200)")
    p.add_argument("--note", default="", help="what this run's kernel is (stored with the run)")
    p.add_argument("--quick", action="store_true", help="one small shape (fp32, hidden 64, beam 4, K 16): a smoke run")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if args.quick:
        args.modes, args.hidden, args.beams, args.k = ["fp32"], [64], [4], 16

    records = []
    for mode in args.modes:
        for hidden in args.hidden:
            for beam in args.beams:
                rec = compile_one(mode, hidden, beam, args.k, args.level, args.arch)
                print(json.dumps({k: v for k, v in rec.items() if k != "constexprs"}), flush=True)
                records.append(rec)

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"format_version": 1, "runs": {}}
    report.update(kernel="sidmlp_kernels/decode/kernels/fused_step.py:_fused_step_kernel", arch=args.arch,
                  note="resources from ptxas -v on Triton's PTX (registers, spills, stack) and the compiled "
                       "kernel's metadata (shared memory); compiled ahead of time, never run")
    report["runs"][args.label] = {"triton": triton.__version__, "torch": torch.__version__,
                                  "python": platform.python_version(), "host": common.cpu_model(),
                                  "date": time.strftime("%Y-%m-%d"), "note": args.note, "records": records}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {len(records)} records under runs[{args.label!r}] of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
