"""Smoke test of the end-to-end benchmark harness (bench/e2e.py, a standalone script).

Checks that `python bench/e2e.py` runs end to end on a tiny config and writes well-formed results,
and that bench/ stands alone: every script answers --help from any directory (it imports the
installed package), none edits sys.path, and the package never imports bench/.
No timing assertions: timing lives in bench/, this only checks the harness.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
E2E = BENCH / "e2e.py"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in ("common.py", "conftest.py"))

TINY = [
    "--catalogs", "syn-200", "syn-400", "--syn-k", "16", "--syn-levels", "3", "--preset", "tiny",
    "--batches", "1", "2", "--beams", "4", "--headline", "syn-200:2:4", "--catalog-cell", "2:4",
    "--top-n", "3", "--repeats", "2", "--warmup", "0", "--head-hidden", "32", "--student-ffn", "64",
    "--threads", "1", "--no-progress", "--tag", "smoke",
]


def _strict_json(text: str):
    def bad(const):
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(text, parse_constant=bad)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, str(E2E), *TINY, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return out, proc.stdout


def test_writes_all_outputs(smoke_run):
    out, stdout = smoke_run
    for name in ("smoke.json", "smoke.csv", "smoke_headline.md", "smoke_latency_vs_batch.png",
                 "smoke_speedup_vs_catalog.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "| provider |" in stdout  # the headline table is printed


def test_json_is_well_formed(smoke_run):
    out, _ = smoke_run
    rep = _strict_json((out / "smoke.json").read_text())
    assert rep["format_version"] == 1
    for key in ("cpu", "logical_cpus", "torch", "torch_threads", "loadavg"):
        assert key in rep["machine"], key
    assert rep["config"]["dtype"] == "float32" and rep["config"]["threads"] == 1
    cells = rep["cells"]
    assert [(c["catalog"], c["batch"], c["beam"]) for c in cells] == [
        ("syn-200", 1, 4), ("syn-200", 2, 4), ("syn-400", 2, 4)]
    assert sum(c["headline"] for c in cells) == 1
    backends = rep["config"]["backends"]
    best = rep["config"]["auto_backend"]
    for cell in cells:
        prov = cell["providers"]
        expected = {"attention_constrained", "hf_encoder", "mlp_encoder", f"sidmlp++[{best}]"}
        expected |= {f"sidmlp[{b}]" for b in backends}
        assert expected <= set(prov), set(prov)
        for name, p in prov.items():
            assert p["n"] >= 1 and len(p["times_ms"]) == p["n"], name
            assert math.isfinite(p["median_ms"]) and p["median_ms"] > 0, name
            assert p["p25_ms"] <= p["median_ms"] <= p["p75_ms"], name
            assert p["users_per_s"] > 0, name
        for b in backends:
            p = prov[f"sidmlp[{b}]"]
            assert set(p["phases"]) == {"encode", "decode"}
            assert p["decode_phase_ms"] == p["phases"]["decode"]["median_ms"]
            assert "speedup_vs_attention" in p and "decode_speedup_vs_attention" in p
    head = next(c for c in cells if c["headline"])
    assert "hf_generate" in head["providers"]
    assert "speedup_vs_hf" in head["providers"][f"sidmlp[{best}]"]
    # HF runs on the headline catalog only by default; the skip is recorded, not silent.
    assert "hf_generate" in cells[2]["skipped"]
    assert {t["target"] for t in rep["targets"] if t["threshold"] is not None} == {
        "sidmlp_e2e_vs_hf_generate", "sidmlp_e2e_vs_attention_constrained",
        "sidmlp_decode_vs_attention_constrained", "sidmlpPP_e2e_vs_attention_constrained"}
    for name, mc in rep["memory_check"].items():
        assert isinstance(mc["no_per_beam_encoder_copy"], bool), name
        assert mc["per_beam_copy_bytes"] == 4 * mc["encoder_output_bytes"]


def test_csv_matches_json(smoke_run):
    out, _ = smoke_run
    rep = _strict_json((out / "smoke.json").read_text())
    with open(out / "smoke.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    timed = [r for r in rows if not r["skipped"]]
    assert len(timed) == sum(len(c["providers"]) for c in rep["cells"])
    assert len(rows) - len(timed) == sum(len(c["skipped"]) for c in rep["cells"])
    for r in timed:
        assert float(r["median_ms"]) > 0 and int(r["batch"]) in (1, 2)


def test_bad_arguments_fail_clearly(tmp_path):
    proc = subprocess.run([sys.executable, str(E2E), *TINY, "--top-n", "9", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--top-n" in proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script, tmp_path):
    # From a foreign directory: the script finds the package installed and bench/common.py next to it.
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]


def test_bench_stands_alone():
    edits = [str(p.relative_to(ROOT)) for p in BENCH.rglob("*.py") if "sys.path.insert" in p.read_text()]
    assert not edits, f"bench scripts must not edit sys.path: {edits}"
    imports = ("import common", "from common import", "import bench", "from bench")
    users = [str(p.relative_to(ROOT)) for p in (ROOT / "sidmlp_kernels").rglob("*.py")
             if any(line.strip().startswith(imports) for line in p.read_text().splitlines())]
    assert not users, f"the package must not import bench/: {users}"


def test_drop_in_generate_quick_run(tmp_path):
    """bench/drop_in_generate.py --quick: the three providers timed, one well-formed JSON written."""
    proc = subprocess.run([sys.executable, str(BENCH / "drop_in_generate.py"), "--quick", "--out", str(tmp_path),
                           "--name", "smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    rep = _strict_json((tmp_path / "smoke.json").read_text())
    assert rep["format_version"] == 1 and "loadavg" in rep["machine"]
    prov = rep["providers"]
    assert set(prov) == {"hf_generate", "constrained_generate", "accelerated_generate"}
    for name, p in prov.items():
        assert math.isfinite(p["median_ms"]) and p["median_ms"] > 0, name
        assert p["sequences_shape"] == prov["hf_generate"]["sequences_shape"], name  # HF's layout, every provider
    # The constrained providers return catalog items only.
    assert prov["constrained_generate"]["valid_returned_share"] == 1.0
    assert prov["accelerated_generate"]["valid_returned_share"] == 1.0
    assert "speedup_vs_hf_generate" in prov["accelerated_generate"]


def test_aot_compile_quick_run(tmp_path):
    """bench/aot_compile.py --quick: the fused step compiled for sm_90a without a GPU, ptxas resources
    recorded under the run's label, other labels in the file kept."""
    out = tmp_path / "compile.json"
    out.write_text(json.dumps({"format_version": 1, "runs": {"before": {"records": []}}}))
    proc = subprocess.run([sys.executable, str(BENCH / "aot_compile.py"), "--quick", "--label", "smoke",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    rep = _strict_json(out.read_text())
    assert set(rep["runs"]) == {"before", "smoke"} and rep["arch"] == "sm_90a"
    (rec,) = rep["runs"]["smoke"]["records"]
    assert rec["ptx_target"] == "sm_90a" and 0 < rec["n_regs"] <= 255 and rec["shared_bytes"] > 0
    assert rec["spill_stores_bytes"] >= 0 and rec["ptx_ops"]["fma.rn.f32"] > 0  # fp32 heads: plain FMA


def test_cornac_tiger_quick_run(tmp_path):
    """bench/cornac_tiger.py --quick: cornac's own TIGER and ours on its imported model, one JSON; our exact
    decode returns cornac's own top-n lists (its scoring rule, renormalize=False)."""
    pytest.importorskip("cornac")
    proc = subprocess.run([sys.executable, str(BENCH / "cornac_tiger.py"), "--quick", "--exact", "--out",
                           str(tmp_path), "--name", "smoke", "--threads", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    rep = _strict_json((tmp_path / "smoke.json").read_text())
    assert rep["format_version"] == 1 and "loadavg" in rep["machine"]
    prov = rep["providers"]
    assert set(prov) == {"cornac_rank", "cornac_exact", "constrained_generate", "accelerated_generate"}
    for name, p in prov.items():
        assert math.isfinite(p["median_ms"]) and p["median_ms"] > 0, name
        assert p["valid_returned_share"] == 1.0, name
    agree = rep["agreement"]
    assert agree["cornac_rank_equals_constrained_generate_users"] == agree["users"] == rep["config"]["batch"]


def test_llm_generate_quick_run(tmp_path):
    """bench/llm_generate.py --quick: HF generate with the MiniOneRec-style per-beam LogitsProcessor (the
    baseline), HF with a trie and sk.constrained_generate timed; both HF runs return our sequences and scores."""
    proc = subprocess.run([sys.executable, str(BENCH / "llm_generate.py"), "--quick", "--threads", "1", "--out",
                           str(tmp_path), "--name", "smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    rep = _strict_json((tmp_path / "smoke.json").read_text())
    assert set(rep["providers"]) == {"hf_minionerec", "hf_trie", "constrained_generate"}
    assert rep["baseline"] == "hf_minionerec" and rep["speedup_vs_hf"]["hf_minionerec"] == 1.0
    for name in ("hf_minionerec", "hf_trie"):
        assert rep["same_sequences_as_constrained_generate"][name], name
        assert rep["max_score_gap_to_constrained_generate"][name] <= 1e-4, name
    for name, p in rep["providers"].items():
        assert math.isfinite(p["median_ms"]) and p["median_ms"] > 0, name
