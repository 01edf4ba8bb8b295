"""Every module of the package imports without faiss: only building Semantic IDs needs it (a GPU
machine that serves a model may not have it), and that step says so by name."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import importlib, pkgutil, sys
sys.modules["faiss"] = None  # `import faiss` now raises ImportError, as where it is not installed
import numpy as np, torch  # noqa: F401  (the extension needs torch's libraries loaded first)
import sidmlp_kernels
failed = []
for m in pkgutil.walk_packages(sidmlp_kernels.__path__, "sidmlp_kernels."):
    if m.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(m.name)
    except ImportError as err:
        failed.append(f"{m.name}: {err}")
assert not failed, failed
assert "faiss" not in [k for k, v in sys.modules.items() if v is not None]
from sidmlp_kernels.data import semantic_ids
from sidmlp_kernels.errors import MissingDependency
try:
    semantic_ids._kmeans(np.zeros((4, 2), np.float32), 2, seed=0, niter=1)
except MissingDependency as err:
    assert "faiss" in str(err), err
else:
    raise AssertionError("k-means ran without faiss")
print("ok", len(list(pkgutil.walk_packages(sidmlp_kernels.__path__, "sidmlp_kernels."))))
"""


def test_package_imports_without_faiss():
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")
