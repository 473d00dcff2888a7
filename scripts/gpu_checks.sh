#!/usr/bin/env bash
# The device checks of issue 11, in one command for a machine with a CUDA GPU:
#   1. the device tests (tests/model/test_device.py, tests/training/test_train_devices.py),
#      whose CUDA cases skip where torch sees no CUDA and run here;
#   2. Last.fm-2k training speed on the GPU (fp32 and bf16, beside the dense baseline loop on
#      the same GPU) and on this machine's CPU, from scripts/bench_train.py;
#   3. one Last.fm-2k evaluation trained on the GPU (quality on the device, seconds per epoch);
#   4. the rest of the suite (not slow) with device auto, i.e. CUDA wherever a test does not
#      pin the CPU.
# Usage: OUT=folder DEEPVIBE_DATA=folder-holding-lastfm-2k bash scripts/gpu_checks.sh
# Without a GPU the CUDA steps report that and the script goes on.
set -u
OUT=${OUT:-/tmp/gpu_checks}
DATA=${DEEPVIBE_DATA:-../shared/data}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() { echo; echo "== $1 ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
nproc

step "device tests"
timeout 150 $py -m pytest -q -rs -p no:cacheprovider tests/model/test_device.py \
    tests/training/test_train_devices.py 2>&1 | tee "$OUT/device_tests.log" | tail -25

step "Last.fm-2k training speed, cuda"
DEEPVIBE_DATA=$DATA timeout 200 $py scripts/bench_train.py --scenarios lastfm --epochs 3 \
    --repeat 2 --bf16 --device cuda --json "$OUT/bench_train_cuda.json" 2>&1 | tail -9

step "Last.fm-2k training speed, cpu (same machine)"
DEEPVIBE_DATA=$DATA timeout 150 $py scripts/bench_train.py --scenarios lastfm --epochs 2 \
    --repeat 1 --bf16 --device cpu --json "$OUT/bench_train_cpu.json" 2>&1 | tail -8

step "Last.fm-2k evaluate, trained on cuda (seed 98765)"
run=$(mktemp -d)
timeout 240 $py -m deepvibe evaluate --config configs/lastfm.yaml --baselines none \
    --device cuda --json "$OUT/eval_lastfm_cuda.json" \
    --set "data.interactions=$(realpath "$DATA")/lastfm-2k/user_artists.dat" \
    --set "paths.models_dir=$run/models" --set "paths.logs_dir=$run/logs" \
    --set "paths.recommendations_dir=$run/recs" 2>&1 | tail -12
find "$run" -name "*.csv" -path "*logs*" | head -1 | xargs -r cp -t "$OUT" 2>/dev/null

step "suite, not slow, device auto"
timeout 200 $py -m pytest -q -x -m "not slow" -p no:cacheprovider 2>&1 \
    | tee "$OUT/suite.log" | tail -15
step "done"
