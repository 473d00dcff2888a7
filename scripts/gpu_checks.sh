#!/usr/bin/env bash
# The device checks, in one command for a machine with a CUDA GPU:
#   device    the device tests (tests/model/test_device.py, tests/training/test_train_devices.py),
#             whose CUDA cases skip where torch sees no CUDA and run here;
#   train     Last.fm-2k training speed on the GPU (fp32 and bf16, beside the dense baseline
#             loop on the same GPU) and on this machine's CPU, from scripts/bench_train.py;
#   evaluate  one Last.fm-2k evaluation trained on the GPU (quality on the device, s per epoch);
#   suite     the whole suite (slow checks included) with device auto, i.e. CUDA wherever a
#             test does not pin the CPU; spread over 8 workers where pytest-xdist is present;
#   discover  discovery throughput with the model on the GPU: the hybrid against the DNA-only
#             scan, 2,000 users over a 1,000,000-track toy database (scripts/bench_discover.py;
#             about 5 minutes with DISCOVER_REPEAT=1, the default).
# Usage: OUT=folder DEEPVIBE_DATA=folder-holding-lastfm-2k [GPU_STEPS="device suite"] \
#            bash scripts/gpu_checks.sh
# GPU_STEPS picks steps (default: all, in the order above). Without a GPU the CUDA steps report
# that and the script goes on.
set -u
OUT=${OUT:-/tmp/gpu_checks}
DATA=${DEEPVIBE_DATA:-../shared/data}
STEPS=" ${GPU_STEPS:-device train evaluate suite discover} "
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() { echo; echo "== $1 ($(date +%T))"; }
want() { [[ $STEPS == *" $1 "* ]]; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
nproc

if want device; then
    step "device tests"
    timeout 150 $py -m pytest -q -rs -p no:cacheprovider tests/model/test_device.py \
        tests/training/test_train_devices.py 2>&1 | tee "$OUT/device_tests.log" | tail -25
fi

if want train; then
    step "Last.fm-2k training speed, cuda"
    DEEPVIBE_DATA=$DATA timeout 200 $py scripts/bench_train.py --scenarios lastfm --epochs 3 \
        --repeat 2 --bf16 --device cuda --json "$OUT/bench_train_cuda.json" 2>&1 | tail -9
    step "Last.fm-2k training speed, cpu (same machine)"
    DEEPVIBE_DATA=$DATA timeout 150 $py scripts/bench_train.py --scenarios lastfm --epochs 2 \
        --repeat 1 --bf16 --device cpu --json "$OUT/bench_train_cpu.json" 2>&1 | tail -8
fi

if want evaluate; then
    step "Last.fm-2k evaluate, trained on cuda (seed 98765)"
    run=$(mktemp -d)
    timeout 240 $py -m deepvibe evaluate --config configs/lastfm.yaml --baselines none \
        --device cuda --json "$OUT/eval_lastfm_cuda.json" \
        --set "data.interactions=$(realpath "$DATA")/lastfm-2k/user_artists.dat" \
        --set "paths.models_dir=$run/models" --set "paths.logs_dir=$run/logs" \
        --set "paths.recommendations_dir=$run/recs" 2>&1 | tail -12
fi

if want suite; then
    step "suite, slow included, device auto"
    workers=$($py -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
    timeout 300 $py -m pytest -q $workers -p no:cacheprovider 2>&1 \
        | tee "$OUT/suite.log" | tail -25
fi

if want discover; then
    step "discover --all, hybrid against DNA-only, model on $($py -c "import torch;
print('cuda' if torch.cuda.is_available() else 'cpu')")"
    timeout 420 $py scripts/bench_discover.py --tracks 1000000 --batch 2000 --hybrid-only \
        --repeat "${DISCOVER_REPEAT:-1}" --check-users 4 --baseline-rev none \
        --out "$OUT/bench_discover.json" 2>&1 | grep -E "^(generated|batch)" | tail -6
fi
step "done"
