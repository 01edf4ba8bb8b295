#!/usr/bin/env bash
# One run of the GPU checks on a fresh, offline GPU machine (issue 17), in at most ~8 minutes:
#
#   bash scripts/gpu_check.sh                 # on the GPU machine
#   bash scripts/gpu_check.sh --cpu-dry-run   # here / in CI: every step that needs no GPU
#
# Uses the python3, torch, Triton and nvcc the machine has (scripts/install.sh, which pins torch
# and needs a registry, is never run), builds the extension in place with its CUDA ops, runs the
# `cuda` tests (CUDA ops and the compiled Triton step against the PyTorch reference), the CPU
# parity tests, and a short benchmark (the fused step per digit, and bench/e2e.py: HF generate,
# our attention decode, SID-MLP on every backend, SID-MLP++; batch 32 and 1024; beam 50; the fused step
# in bf16 (the CUDA default), fp32 and TF32).
# The dry run replaces the GPU steps by what this machine can check: syntax, the imports without
# faiss, the interpreter parity tests (marker `interpreter`), the benchmarks in a tiny mode and
# one ahead-of-time sm_90a compile of the fused step (bench/aot_compile.py --quick).
#
# Writes under $OUT (default: a new temporary directory), few files so that all come back:
#   gpu_check.json   per step: command, exit status, seconds, result line; env; fused-step records
#   gpu_check.log    every step's output
#   e2e.json, e2e.csv, e2e_headline.md   bench/e2e.py's report
# Environment: GPU_CHECK_BUDGET_S (total seconds, default 470 on a GPU, 150 dry), PYTHON,
# GPU_CHECK_WORKERS (pytest-xdist workers for the tests on a GPU, default 8, when xdist is there).
# The steps run in order of importance; one the budget cannot fit is recorded as skipped.
# Exit status: 0 when every step ran and passed (a step the budget left out is a failure).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MODE=gpu
case "${1:-}" in
  "") ;;
  --cpu-dry-run) MODE=dry ;;
  *) echo "usage: $0 [--cpu-dry-run]" >&2; exit 2 ;;
esac

PY="${PYTHON:-$(command -v python3 || command -v python)}"
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT"
WORK="$(mktemp -d -t gpu_check_work.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/gpu_check.log"
: >"$LOG"
STEPS="$WORK/steps.tsv"
: >"$STEPS"
if [ "$MODE" = gpu ]; then BUDGET="${GPU_CHECK_BUDGET_S:-470}"; else BUDGET="${GPU_CHECK_BUDGET_S:-150}"; fi
START=$(date +%s)
FAILED=0

# The package from this checkout (built in place), never an installed copy; one thread per
# process on CPU paths; no stale interpreter setting: the conftest decides.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONUNBUFFERED=1
if [ "$MODE" = gpu ]; then unset TRITON_INTERPRET; fi

# step NAME LIMIT_S CMD...: run CMD with at most LIMIT_S seconds (less when the budget is short),
# output to the log, one row in the summary. A step the budget cannot fit is recorded as skipped.
step() {
  local name=$1 limit=$2; shift 2
  local cmd="$*"
  cmd=${cmd//$'\n'/; }
  cmd=${cmd//$'\t'/ }
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 15 ]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "out of the ${BUDGET}s budget" "$cmd" >>"$STEPS"
    echo "== $name: skipped (budget spent)" | tee -a "$LOG"
    FAILED=1  # a check that did not run is not a pass
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0 rc last
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$WORK/step.log" 2>&1
  rc=$?
  cat "$WORK/step.log" >>"$LOG"
  last=$(grep -E '(passed|failed|error|deselected)' "$WORK/step.log" | tail -1 | tr '\t' ' ')
  [ -z "$last" ] && last=$(tail -1 "$WORK/step.log" | tr '\t' ' ')
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && last="timed out after ${limit}s; $last"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$last" "$cmd" >>"$STEPS"
  echo "== $name: exit $rc in $(($(date +%s) - t0))s: $last" | tee -a "$LOG"
  [ "$rc" -ne 0 ] && FAILED=1
  return 0
}

PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
# On the GPU machine (16 cores) the cuda tests spend most of their time compiling Triton variants:
# spread them over workers when pytest-xdist is there (each worker its own CUDA context).
PARALLEL=()
if [ "$MODE" = gpu ] && "$PY" -c "import xdist" 2>/dev/null; then PARALLEL=(-n "${GPU_CHECK_WORKERS:-8}"); fi

# ---- steps that need no GPU (both modes) ----
step env 60 "$PY" - "$WORK/env.json" <<'EOF'
import json, platform, shutil, subprocess, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "nvcc": shutil.which("nvcc")}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                memory_gib=round(p.total_memory / 2**30, 1))
if info["nvcc"]:
    info["nvcc_version"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info))
EOF
step syntax 60 bash -c 'for f in scripts/*.sh .ci/run; do bash -n "$f" || exit 1; done
  "$1" -m compileall -q sidmlp_kernels bench tests >/dev/null && echo "syntax ok"' syntax "$PY"
step imports_without_faiss 120 "${PYTEST[@]}" tests/test_imports.py

if [ "$MODE" = gpu ]; then
  # ---- the GPU run ----
  step build_extension 180 env SIDMLP_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py -q build_ext --inplace
  step extension_has_cuda 60 "$PY" -c "import torch, sidmlp_kernels._C as C; assert C.compiled_with_cuda(), 'built without CUDA ops'; print('cuda ops: yes')"
  step cuda_tests 200 "${PYTEST[@]}" "${PARALLEL[@]}" -m cuda tests/decode
  step cpu_parity_tests 60 "${PYTEST[@]}" "${PARALLEL[@]}" -m "not cuda and not slow" tests/decode
  # fp32 heads in each GEMM precision: exact fp32, TF32, and bf16 (the CUDA default: bf16 heads).
  for precision in bf16 fp32 tf32; do
    for batch in 32 1024; do
      step "bench_fused_step_${precision}_b${batch}" 40 "$PY" bench/bench_fused_step.py --batch "$batch" --beam 50 \
        --k 256 --levels 4 --hidden 512 --dtype fp32 --precision "$precision" --reps 20 --warmup 3 \
        --out "$WORK/fused_${precision}_${batch}.json"
    done
  done
  step bench_e2e 120 "$PY" bench/e2e.py --device cuda --catalogs syn-100k --batches 32 1024 --beams 50 \
    --headline syn-100k:32:50 --catalog-cell 32:50 --repeats 5 --min-repeats 3 --warmup 1 --budget-s 4 \
    --max-call-s 20 --threads 8 --no-plots --no-memory-check --no-progress --out "$OUT" --tag e2e
else
  # ---- the dry run: the same steps where they need no GPU ----
  step interpreter_parity_tests 120 "${PYTEST[@]}" -m interpreter tests/decode
  step bench_fused_step_quick 60 "$PY" bench/bench_fused_step.py --batch 2 --beam 4 --k 16 --levels 2 \
    --hidden 32 --reps 2 --warmup 1 --out "$WORK/fused_fp32_2.json"
  step aot_compile_quick 60 "$PY" bench/aot_compile.py --quick --label dry-run --out "$WORK/compile.json"
  step bench_e2e_quick 120 "$PY" bench/e2e.py --device cpu --catalogs syn-200 --syn-k 16 --syn-levels 3 \
    --preset tiny --batches 2 --beams 4 --headline syn-200:2:4 --catalog-cell 2:4 --top-n 3 --repeats 1 \
    --warmup 0 --head-hidden 32 --student-ffn 64 --threads 1 --no-plots --no-memory-check --no-progress \
    --out "$OUT" --tag e2e
fi

"$PY" - "$STEPS" "$WORK" "$OUT/gpu_check.json" "$MODE" "$BUDGET" "$(($(date +%s) - START))" <<'EOF'
import glob, json, os, sys
steps_tsv, work, out, mode, budget, wall = sys.argv[1:]
steps = []
for line in open(steps_tsv):
    name, rc, secs, result, cmd = line.rstrip("\n").split("\t", 4)
    steps.append({"step": name, "exit": rc if rc == "skipped" else int(rc), "seconds": int(secs),
                  "result": result, "command": cmd})
env = json.load(open(os.path.join(work, "env.json"))) if os.path.exists(os.path.join(work, "env.json")) else None
fused = []
for path in sorted(glob.glob(os.path.join(work, "fused_*.json"))):
    fused.extend(json.load(open(path)))
report = {"format_version": 1, "mode": mode, "budget_s": int(budget), "wall_s": int(wall), "env": env,
          "passed": all(s["exit"] == 0 for s in steps), "steps": steps, "fused_step": fused}
json.dump(report, open(out, "w"), indent=1)
print(f"gpu_check ({mode}): {'passed' if report['passed'] else 'FAILED'} in {wall}s; wrote {out}")
EOF
[ $? -ne 0 ] && FAILED=1
echo "outputs in $OUT"
exit "$FAILED"
