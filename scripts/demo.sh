#!/usr/bin/env bash
# End to end on toy data the package generates: synth -> train -> discover (standard with an
# HTML report, hidden gems, new artists). Training curves: logs/training_curves.png.
# Everything is written under ${DEMO_DIR:-runs/demo} so the repository stays clean.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${DEMO_DIR:-$ROOT/runs/demo}"
mkdir -p "$DIR"
cd "$DIR"
deepvibe synth --out data --seed 0
deepvibe train --config "$ROOT/configs/toy.yaml"
# Discover for one user in both modes; the model, its config and the database are found from
# the best checkpoint (models/hybrid_deepvibe_best.pth), so no flags are needed.
deepvibe discover user_1 --html
deepvibe discover user_1 --gems
deepvibe discover user_1 --new-artists
echo
echo "reports written to $DIR/recommendations/user_1/:"
ls -1 recommendations/user_1
