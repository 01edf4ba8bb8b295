"""A real package: the built wheel (with the compiled extension inside) installs into a fresh
virtual environment and runs a short `sidmlp` job there, away from the source checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, timeout=900, env=None):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_runs_a_job_without_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "--no-deps", "-w", dist, REPO],
         cwd=tmp_path)
    wheel = next(dist.glob("sidmlp_kernels-*.whl"))
    # The environment's torch, transformers, ... serve the venv (installing them again takes minutes);
    # the package itself comes only from the wheel.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", wheel], cwd=tmp_path)
    work = tmp_path / "job"  # no source checkout anywhere near
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = _run([python, "-c", "import sidmlp_kernels, json; from sidmlp_kernels.decode import dispatch; "
                  "print(json.dumps([sidmlp_kernels.__file__, dispatch.has_extension()]))"], cwd=work, env=env)
    where, has_ext = json.loads(probe.stdout)
    assert where.startswith(str(venv)) and has_ext, (where, has_ext)
    sidmlp = venv / "bin" / "sidmlp"
    _run([sidmlp, "--version"], cwd=work, env=env)
    _run([sidmlp, "prepare", "--dataset", "ml-100k", "--out", "prep", "--codebook-size", "32", "--levels", "4"],
         cwd=work, env=env)
    _run([sidmlp, "train-teacher", "--prepared", "prep", "--out", "teacher", "--preset", "tiny", "--epochs", "1",
          "--max-prefixes-per-user", "2", "--eval-users", "50", "--eval-beam", "5", "--threads", "2", "--no-progress"],
         cwd=work, env=env)
    _run([sidmlp, "eval", "--teacher", "teacher", "--prepared", "prep", "--decode", "constrained", "--beam", "5",
          "--top-n", "5", "--max-users", "50", "--no-progress", "--json-out", "eval.json"], cwd=work, env=env)
    report = json.loads((work / "eval.json").read_text())
    assert report["users"] == 50 and "teacher" in report["models"] and report["provenance"]["git_commit"] is None
