#!/usr/bin/env bash
# Import -> distil -> evaluate, end to end, for a teacher saved by the official SID-MLP code.
#
#   bash scripts/import_official_demo.sh OUT
#
# 1. a small ML-100K catalog with K=256 (our Semantic IDs, only to have SIDs to write);
# 2. a paper-size official-format TIGER checkpoint + .sem_ids + config.yaml, random weights
#    (scripts/write_official_tiger.py; with a real checkpoint, start at step 3);
# 3. the dataset prepared from that .sem_ids file, the teacher imported with it;
# 4. SID-MLP distilled from the imported teacher; 5. teacher vs student on the test split.
# The teacher's weights are random: the run shows the path and the student's fidelity to that
# teacher (top-10 overlap), not recommendation quality.
set -euo pipefail
OUT="${1:?usage: bash scripts/import_official_demo.sh OUT}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT"
sidmlp prepare --dataset ml-100k --out "$OUT/sids_source" --codebook-size 256 --overwrite
python "$HERE/write_official_tiger.py" --prepared "$OUT/sids_source" --out "$OUT/official"
sidmlp prepare --dataset ml-100k --out "$OUT/prepared" --sids "$OUT/official/ml.sem_ids" --codebook-size 256 --overwrite
rm -rf "$OUT/teacher"
sidmlp import --format sidmlp-official --checkpoint "$OUT/official/TIGER-ml.pth" --sids "$OUT/official/ml.sem_ids" \
    --config "$OUT/official/config.yaml" --prepared "$OUT/prepared" --out "$OUT/teacher"
sidmlp distill --prepared "$OUT/prepared" --teacher "$OUT/teacher" --out "$OUT/sidmlp" --work-dir "$OUT/work" \
    --max-prefixes-per-user 10 --alpha 1.0 --epochs "${EPOCHS:-4}" --eval-beam 20 --select-by teacher --no-progress
sidmlp compare --prepared "$OUT/prepared" --teacher "$OUT/teacher" --accelerated "$OUT/sidmlp" \
    --json-out "$OUT/compare.json"
