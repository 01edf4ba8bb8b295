#!/usr/bin/env bash
# Configures, builds and runs the csrc C++ unit tests (ctest) in a temp dir.
# Extra arguments go to cmake, e.g. scripts/ctest.sh -DSIDMLP_SANITIZE=address
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
JOBS="${SIDMLP_BUILD_JOBS:-2}"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$BUILD" -j"$JOBS"
ctest --test-dir "$BUILD" --output-on-failure
