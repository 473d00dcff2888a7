#!/usr/bin/env bash
# Last.fm-2k benchmark and ablation under `deepvibe evaluate` (strong generalization, 3 seeds).
# Run from the repository root, where ../shared/data/lastfm-2k exists:
#
#   bash scripts/lastfm_ablation.sh OUT_DIR              # everything (hours on 2 busy cores)
#   bash scripts/lastfm_ablation.sh OUT_DIR main multinomial pw40   # chosen runs only
#   python scripts/evaluation_table.py --label-from-set OUT_DIR/main.json OUT_DIR/*.json
#
# `main` is deepvibe's default configuration beside TopPop, EASE and Mult-VAE in one process
# (so seconds per epoch compare on the same machine state); every other run changes one or two
# keys of the default and skips the baselines. Each writes OUT_DIR/NAME.json and NAME.txt.
set -euo pipefail
OUT=${1:?usage: lastfm_ablation.sh OUT_DIR [run ...]}
shift
mkdir -p "$OUT"
CONFIG=configs/lastfm.yaml
SEEDS=3

# name | extra arguments
RUNS=(
  "main|--baselines toppop,ease,multvae"
  "multinomial|--baselines none --set train.likelihood=multinomial"
  "original|--baselines none --set train.positive_weight=40 --set train.epochs=50"
  "pw40|--baselines none --set train.positive_weight=40"
  "pw20|--baselines none --set train.positive_weight=20"
  "pw5|--baselines none --set train.positive_weight=5"
  "dropout0.5|--baselines none --set train.input_dropout=0.5"
  "beta0.2|--baselines none --set train.kl.beta_max=0.2"
  "cycles1|--baselines none --set train.kl.cycles=1"
  "hidden600-latent200|--baselines none --set model.hidden=[600] --set model.latent=200"
  "latent64|--baselines none --set model.latent=64"
  "lr3e-4|--baselines none --set train.lr=0.0003"
  "epochs50|--baselines none --set train.epochs=50"
  "tanh|--baselines none --set model.activation=tanh"
  "alphadropout0.2|--baselines none --set model.dropout=0.2"
  "multinomial-dropout0.5-beta0.2|--baselines none --set train.likelihood=multinomial --set train.input_dropout=0.5 --set train.kl.beta_max=0.2"
)

for entry in "${RUNS[@]}"; do
  name=${entry%%|*}
  args=${entry#*|}
  if [ "$#" -gt 0 ] && [[ " $* " != *" $name "* ]]; then
    continue
  fi
  echo "== $name: deepvibe evaluate --config $CONFIG --seeds $SEEDS $args" >&2
  # shellcheck disable=SC2086  # args is a list of words on purpose
  deepvibe evaluate --config "$CONFIG" --seeds "$SEEDS" $args --json "$OUT/$name.json" \
    > "$OUT/$name.txt"
done
