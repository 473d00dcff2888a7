#!/usr/bin/env bash
# End to end on toy data the package generates: synth -> train -> discover (standard + gems).
# Everything is written under ${DEMO_DIR:-runs/demo} so the repository stays clean.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${DEMO_DIR:-$ROOT/runs/demo}"
mkdir -p "$DIR"
cd "$DIR"
deepvibe synth --out data --seed 0
deepvibe train --config "$ROOT/configs/toy.yaml"
