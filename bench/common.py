"""Shared pieces of the benchmarks in bench/: machine facts, catalogs, inputs, models, timing, memory.

Used by bench/e2e.py (end to end), bench/breakdown.py (one generate() split into parts), the
component benches (bench_*.py, attention_baselines.py) and bench/micro/ (pytest-benchmark per
op). Nothing here asserts on time: benchmarks report, tests (tests/) check correctness.

bench/ stands alone: its scripts import the installed package (`pip install -e .`) and this
module as `import common` (Python puts a script's own directory on sys.path; for bench/micro,
pytest puts bench/ there when it loads bench/conftest.py). The package never imports bench/.

Timing follows docs/architecture.md, "Measuring speed": providers alternate inside every round (the order
rotates), so each sees the same machine load; medians and IQRs over repeats after warm-up.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from sidmlp_kernels import SIDCatalog, TokenLayout

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"  # default output directory of every bench script

# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def loadavg() -> Optional[list[float]]:
    """1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, threads, library versions, load, accelerator."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "loadavg": loadavg(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        from sidmlp_kernels.decode import constrained

        info["sidmlp_extension"] = constrained.has_extension()
        info["sidmlp_cuda_extension"] = constrained.has_cuda_extension()
    except Exception as err:  # the benchmark still runs (reference backend) without the extension
        info["sidmlp_extension"] = f"unavailable: {err}"
    # The package's decode-backend override (reference | cpu | triton); None: automatic choice.
    info["SIDMLP_BACKEND"] = os.environ.get("SIDMLP_BACKEND") or None
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


# ---------------------------------------------------------------- memory (no psutil: /proc)


def _status_kib(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def rss_mib() -> Optional[float]:
    """Current resident set size (MiB)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def peak_rss_mib() -> Optional[float]:
    """Peak resident set size since start or the last reset_peak_rss() (MiB)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Context manager: peak RSS growth (MiB) over the block, from /proc/self/status.

    `delta_mib` is None where /proc cannot be reset (non-Linux); it counts pages the block
    touched beyond what the process already held, so reused allocator caches show as 0.
    """

    def __init__(self) -> None:
        self.delta_mib: Optional[float] = None
        self._base: Optional[float] = None
        self._ok = False

    def __enter__(self) -> "PeakRSS":
        self._ok = reset_peak_rss()
        self._base = rss_mib()
        return self

    def __exit__(self, *exc) -> None:
        peak = peak_rss_mib()
        if self._ok and peak is not None and self._base is not None:
            self.delta_mib = max(0.0, peak - self._base)


def fresh_page_allocator() -> bool:
    """Make glibc serve every buffer >= 64 KiB from fresh mmap pages and return freed ones to the OS.

    By default glibc raises its mmap threshold after big frees and keeps freed heap memory, so
    a call's peak RSS growth depends on what ran before it. With a fixed low threshold the
    growth measures the call's own big buffers. It costs page faults, so it is switched on
    only for the memory pass after all timing. False where this is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 64 * 1024) == 1  # M_MMAP_THRESHOLD (fixes it: no dynamic raising)
        ok = ok and libc.mallopt(-1, 128 * 1024) == 1  # M_TRIM_THRESHOLD: give freed heap tops back
        libc.malloc_trim(0)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def trim_heap() -> None:
    """Return free heap memory to the OS (glibc), so the next call's RSS growth starts from a lean heap."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class LargestTensors:
    """TorchDispatchMode recording the largest tensors that ops create inside the block.

    Used to check that a decoder makes no per-beam copy of the encoder output: any such copy
    is at least beam x the (B, T, D) encoder output in bytes.
    """

    def __init__(self, keep: int = 5) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                outer._record(func, args, kwargs or {}, out)
                return out

        self._mode = _Mode()
        self.keep = keep
        self.top: list[tuple[int, str, tuple[int, ...]]] = []
        self.total_bytes = 0
        self.num_tensors = 0

    def _record(self, func, args, kwargs, out) -> None:
        from torch.utils._pytree import tree_flatten

        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.numel() == 0:
                continue
            # Views and ops that hand back an input (x.float() of a float tensor) own no new storage.
            if t._is_view() or t.untyped_storage().data_ptr() in inputs:
                continue
            nbytes = t.numel() * t.element_size()
            self.total_bytes += nbytes
            self.num_tensors += 1
            self.top.append((nbytes, str(func), tuple(t.shape)))
            self.top.sort(key=lambda x: -x[0])
            del self.top[self.keep:]

    def __enter__(self) -> "LargestTensors":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    @property
    def largest_bytes(self) -> int:
        """Bytes of the largest tensor created (0 if none)."""
        return self.top[0][0] if self.top else 0

    def report(self) -> list[dict[str, Any]]:
        """The largest tensors as JSON-able dicts."""
        return [{"bytes": b, "op": op, "shape": list(shape)} for b, op, shape in self.top]


# ---------------------------------------------------------------- catalogs and inputs


def synthetic_catalog(n: int, k: int = 256, levels: int = 4, seed: int = 0) -> SIDCatalog:
    """min(n, k**levels) distinct uniform random codes of `levels` digits in [0, k), item ids 0..n-1."""
    g = torch.Generator().manual_seed(seed)
    space = k**levels
    want = min(n, space)
    keys = torch.empty(0, dtype=torch.long)
    while keys.numel() < want:
        extra = torch.randint(0, space, (int(want * 1.05) + 16,), generator=g)
        keys = torch.unique(torch.cat([keys, extra]))
    keys = keys[torch.randperm(keys.numel(), generator=g)[:want]]
    digits = []
    for _ in range(levels):
        digits.append(keys % k)
        keys = keys // k
    codes = torch.stack(digits[::-1], 1)
    return SIDCatalog.from_codes(torch.arange(want), codes, [k] * levels)


def parse_count(text: str) -> int:
    """'100k' -> 100000, '1m' -> 1000000, '300' -> 300."""
    t = text.strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1_000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1_000_000, t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise ValueError(f"cannot read an item count from {text!r} (e.g. 300, 100k, 1m)") from None
    if value < 1 or value != int(value):
        raise ValueError(f"item count must be a positive integer, got {text!r}")
    return int(value)


REAL_DATASETS = ("ml-100k", "ml-1m")


@dataclass
class CatalogCase:
    """One benchmark catalog: its name, the catalog and (real data) the split that gives real histories."""

    name: str
    catalog: SIDCatalog
    split: Any = None
    source: str = ""
    build_s: float = 0.0

    @property
    def synthetic(self) -> bool:
        """True for random-code catalogs (histories are random item sequences)."""
        return self.split is None


def load_catalog_case(spec: str, prepared_root: str | Path = "runs/prepared", syn_k: int = 256,
                      syn_levels: int = 4, seed: int = 0, build_missing: bool = True) -> CatalogCase:
    """A catalog from a spec: 'ml-100k' / 'ml-1m' (optionally '=DIR' of a prepared dataset) or 'syn-<n>'.

    Real datasets load from DIR (default prepared_root/<name>) and are prepared there on the
    fly when missing (build_missing). Synthetic catalogs hold n random unique codes (L=syn_levels, K=syn_k).
    """
    name, _, path = spec.partition("=")
    name = name.strip().lower()
    t0 = time.perf_counter()
    if name.startswith("syn-"):
        if path:
            raise ValueError(f"synthetic catalog {spec!r} takes no directory")
        n = parse_count(name[4:])
        cat = synthetic_catalog(n, syn_k, syn_levels, seed)
        return CatalogCase(name, cat, None, f"random unique codes L={syn_levels} K={syn_k}", time.perf_counter() - t0)
    if name not in REAL_DATASETS:
        raise ValueError(f"catalog must be one of {REAL_DATASETS} (optionally =DIR) or syn-<n>, got {spec!r}")
    from sidmlp_kernels.data.prepare import load_prepared, prepare

    directory = Path(path) if path else Path(prepared_root) / name
    try:
        prepared = load_prepared(directory)
        source = f"prepared {directory}"
    except (FileNotFoundError, ValueError):
        if not build_missing:
            raise
        print(f"[bench] {directory} holds no prepared {name}: preparing it now (one-off)", flush=True)
        prepared = prepare(name, directory)
        source = f"prepared on the fly into {directory}"
    return CatalogCase(name, prepared.catalog, prepared.split, source, time.perf_counter() - t0)


def make_inputs(case: CatalogCase, layout: TokenLayout, batch: int, history: int = 20,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of `batch` users: real test histories, or random `history`-item ones."""
    if case.split is not None:
        from sidmlp_kernels.data.examples import build_examples

        ex = build_examples(case.split, case.catalog, layout, "test")
        idx = torch.arange(batch) % len(ex)  # wraps only if batch exceeds the test users
        ids, mask, _, _ = ex.batch(idx)
        return ids, mask
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, case.catalog.num_items, (batch, history), generator=g)
    items = case.catalog.item_ids[hist].tolist()
    return layout.encode_histories(items, case.catalog)


# ---------------------------------------------------------------- models


@dataclass
class Models:
    """One teacher and everything built from its weights (same weights for every provider)."""

    layout: TokenLayout
    teacher: Any  # HF T5ForConditionalGeneration
    adapter: Any
    student: Any  # SIDMLP (random weights, paper sizes)
    sidmlp: Any  # AcceleratedRecommender on the teacher encoder
    sidmlp_pp: Any  # AcceleratedRecommender on an MLP encoder (SID-MLP++)
    fast_encoder: Any  # FastT5Encoder of the teacher (or None)
    config: dict = field(default_factory=dict)


def build_models(catalog: SIDCatalog, preset: str = "paper", seed: int = 0, head_hidden: int = 512,
                 student_ffn: int = 1024, mlp_ffn: Optional[int] = None, mlp_layers: int = 2,
                 device: str = "cpu", fast_encoder: bool = True) -> Models:
    """A random TIGER T5 teacher (preset), a random paper-size SID-MLP on it, and SID-MLP++ (MLP encoder).

    No training: speed does not depend on the weights' values. Sizes are accelerate()'s
    (AccelerateConfig: StudentSizes, MLPEncoderSizes) with the bench's overrides; the student
    is the package's SIDMLP, served by AcceleratedRecommender as accelerate() returns it. The
    MLP encoder's default width 2*d_model is accelerate()'s default (the shipped SID-MLP++).
    """
    from sidmlp_kernels import AccelerateConfig, AcceleratedRecommender, FastT5Encoder, build_t5_teacher
    from sidmlp_kernels.accelerated import new_mlp_encoder, new_student
    from sidmlp_kernels.teacher.adapters import as_adapter

    sizes = AccelerateConfig().with_overrides(head_hidden=head_hidden, ffn_dim=student_ffn, encoder_ffn_dim=mlp_ffn,
                                              encoder_layers=mlp_layers)
    layout = TokenLayout.for_catalog(catalog)
    teacher = build_t5_teacher(layout, preset, seed=seed).eval()
    adapter = as_adapter(teacher, catalog, layout)
    # The student and MLP encoder accelerate() would start from (its sizes and resolution of unset ones).
    student = new_student(adapter, sizes, seed=seed + 1)
    encoder = new_mlp_encoder(adapter, sizes, seed=seed + 1)
    if device != "cpu":
        teacher.to(device)
        adapter = as_adapter(teacher, catalog, layout)
    sidmlp = AcceleratedRecommender(layout, catalog, student, teacher=adapter)
    sidmlp_pp = AcceleratedRecommender(layout, catalog, student, encoder=encoder)
    if device != "cpu":
        sidmlp.to(device)
        sidmlp_pp.to(device)
    fast = FastT5Encoder.from_hf(teacher) if fast_encoder and device == "cpu" else None
    config = {
        "teacher": f"random T5 preset {preset!r}",
        "teacher_config": {k: getattr(teacher.config, k) for k in (
            "num_layers", "num_decoder_layers", "d_model", "d_ff", "num_heads", "d_kv", "vocab_size")},
        "student": student.config.to_dict(),
        "mlp_encoder": encoder.config.to_dict(),
        "seed": seed,
        "weights": "random (speed does not depend on trained values)",
    }
    return Models(layout, teacher, adapter, student, sidmlp, sidmlp_pp, fast, config)


# ---------------------------------------------------------------- timing


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, quartiles, IQR, min, max and n of a list of milliseconds."""
    if not values:
        return {"n": 0}
    vs = sorted(values)
    if len(vs) > 1:
        q1, _, q3 = statistics.quantiles(vs, n=4, method="inclusive")
    else:
        q1 = q3 = vs[0]
    return {"median_ms": statistics.median(vs), "p25_ms": q1, "p75_ms": q3, "iqr_ms": q3 - q1,
            "min_ms": vs[0], "max_ms": vs[-1], "n": len(vs)}


def synchronize(device: str) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Phases:
    """Split a provider call into named phases: `with phases('encode'): ...` (wall ms, synced)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.ms: dict[str, float] = {}

    def __call__(self, name: str) -> "_PhaseTimer":
        return _PhaseTimer(self, name)


class _PhaseTimer:
    def __init__(self, owner: Phases, name: str) -> None:
        self.owner, self.name = owner, name

    def __enter__(self) -> None:
        synchronize(self.owner.device)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        synchronize(self.owner.device)
        self.owner.ms[self.name] = self.owner.ms.get(self.name, 0.0) + (time.perf_counter() - self.t0) * 1e3


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1, cuda_events: bool = False) -> list[float]:
    """Wall ms of `repeats` back-to-back calls of fn() after `warmup` untimed ones.

    cuda_events: time each call with CUDA events (then synchronize) instead of perf_counter.
    For one op timed alone; providers compared side by side go through run_interleaved.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


# A provider: fn(phases) -> output; it may time named phases with `with phases("decode"): ...`.
Provider = Callable[[Phases], Any]


@dataclass
class Sample:
    """One timed call."""

    wall_ms: float
    cpu_ms: float
    phases: dict[str, float]
    peak_rss_delta_mib: Optional[float]


def time_call(fn: Provider, device: str = "cpu", track_memory: bool = True) -> tuple[Sample, Any]:
    """Run fn once: wall and process-CPU ms, phase ms, peak RSS growth."""
    phases = Phases(device)
    mem = PeakRSS() if track_memory else None
    synchronize(device)
    if mem is not None:
        mem.__enter__()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(phases)
    synchronize(device)
    wall = (time.perf_counter() - t0) * 1e3
    cpu = (time.process_time() - c0) * 1e3
    if mem is not None:
        mem.__exit__(None, None, None)
    return Sample(wall, cpu, phases.ms, mem.delta_mib if mem else None), out


def run_interleaved(
    providers: dict[str, Provider],
    *,
    repeats: int,
    min_repeats: int = 1,
    warmup: dict[str, int] | int = 1,
    budget_s: Optional[float] = 30.0,
    device: str = "cpu",
    on_sample: Optional[Callable[[str, Sample], None]] = None,
) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """Time providers round-robin (order rotated every round) after warm-up; returns samples and outputs.

    Each provider gets `repeats` timed calls, cut to max(min_repeats, budget_s / first call)
    for slow ones, so one slow provider cannot blow the time budget (budget_s None: no cut). Rounds keep running the
    providers that still need samples, so every provider's samples spread over the same period.
    """
    names = list(providers)
    warm = warmup if isinstance(warmup, dict) else {n: warmup for n in names}
    outputs: dict[str, Any] = {}
    for n in names:
        for _ in range(warm.get(n, 0)):
            outputs[n] = providers[n](Phases(device))
    samples: dict[str, list[Sample]] = {n: [] for n in names}
    want = {n: repeats for n in names}
    rnd = 0
    while any(len(samples[n]) < want[n] for n in names):
        k = rnd % len(names)
        for n in names[k:] + names[:k]:
            if len(samples[n]) >= want[n]:
                continue
            s, outputs[n] = time_call(providers[n], device)
            samples[n].append(s)
            if budget_s is not None and len(samples[n]) == 1 and s.wall_ms > 0:
                fit = int(budget_s * 1e3 // s.wall_ms)
                want[n] = min(repeats, max(min_repeats, fit))
            if on_sample is not None:
                on_sample(n, s)
        rnd += 1
    return samples, outputs


def stats_of(samples: list[Sample]) -> dict[str, Any]:
    """Summary of a provider's samples: wall, CPU, phases, peak RSS."""
    out = summarize([s.wall_ms for s in samples])
    out["times_ms"] = [round(s.wall_ms, 3) for s in samples]
    out["cpu_median_ms"] = statistics.median([s.cpu_ms for s in samples]) if samples else None
    phase_names = sorted({k for s in samples for k in s.phases})
    if phase_names:
        out["phases"] = {p: summarize([s.phases.get(p, math.nan) for s in samples]) for p in phase_names}
    mems = [s.peak_rss_delta_mib for s in samples if s.peak_rss_delta_mib is not None]
    if mems:
        out["peak_rss_delta_mib"] = max(mems)
        out["peak_rss_delta_median_mib"] = statistics.median(mems)
    return out


def fmt_ms(ms: Optional[float]) -> str:
    """Milliseconds with sensible precision."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def fmt_x(ratio: Optional[float]) -> str:
    """A speed-up as '12.3x'."""
    if ratio is None or not math.isfinite(ratio):
        return "-"
    return f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def set_threads(threads: Optional[int]) -> int:
    """Set torch's intra-op threads (None: leave torch's default); returns the count in use."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


# ---------------------------------------------------------------- side-by-side generate scripts


def add_generate_args(p, name: str, repeats: int = 3) -> None:
    """The options of the side-by-side generate benches (drop_in_generate.py, cornac_tiger.py): batch, beam,
    top-n, the one distillation epoch, timing, threads, seed, --quick, where the JSON goes."""
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--train-examples", type=int, default=512, help="random examples of the one distillation epoch")
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=40.0, help="time budget per provider (fewer repeats if slow)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the harness")
    p.add_argument("--name", default=name, help="results file name (without .json)")
    p.add_argument("--out", default=str(RESULTS), help="output directory (default bench/results)")


def parse_generate_args(p, argv: Optional[list[str]], quick: dict[str, Any]):
    """p's parsed arguments (add_generate_args' and the script's own); --quick sets `quick`'s values."""
    args = p.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    if args.top_n > args.beam:
        p.error(f"--top-n ({args.top_n}) must be <= --beam ({args.beam})")
    return args


def command_line(argv: Optional[list[str]]) -> str:
    """How the script was run, for its JSON record."""
    import sys

    return " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])


def generate_record(benchmark: str, argv: Optional[list[str]], config: dict, providers: dict, **extra) -> dict:
    """A side-by-side bench's JSON record: what ran, how, on which machine, the providers' stats (+ extra keys)."""
    return {"benchmark": benchmark, "format_version": 1, "command": command_line(argv), "machine": machine_info(),
            "config": config, **extra, "providers": providers}


def write_record(record: dict, out: str | Path, name: str) -> Path:
    """record as <out>/<name>.json (indented); returns the path."""
    import json

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=1))
    return path


def generate_config(args, input_len: int, threads: int) -> dict:
    """The record's run settings every side-by-side generate bench shares (add_generate_args' options)."""
    return {"batch": args.batch, "beam": args.beam, "top_n": args.top_n, "history_items": args.history,
            "input_len": int(input_len), "threads": threads, "dtype": "float32", "repeats": args.repeats,
            "warmup": args.warmup, "distillation": f"1 epoch on {args.train_examples} random examples (speed only)"}


def print_speed_table(stats: dict, base: str, label: str) -> None:
    """One row per provider: median ms, speed-up over provider `base` (column `label`), share of valid items."""
    ref = stats[base]["median_ms"]
    print(f"{'provider':<24}{'median ms':>12}{label:>11}{'valid':>8}")
    for name, st in stats.items():
        print(f"{name:<24}{fmt_ms(st['median_ms']):>12}{fmt_x(ref / st['median_ms']):>11}"
              f"{st['valid_returned_share']:>8.2f}")
