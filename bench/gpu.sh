#!/usr/bin/env bash
# Every GPU check in one run, for a GPU box held for a few minutes: the CUDA tests, then each
# bench on the GPU (each prints its baseline beside it, measured in the same run, and stops if
# its correctness check fails). Ray is optional: without it the actor pool and the sweep
# overhead are skipped.
#
#     bash bench/gpu.sh [LOG_DIR]               # from the repository root; logs in LOG_DIR (default /tmp/gpu-bench)
#     DEVICE=cpu QUICK=1 bash bench/gpu.sh      # a smoke run of the script itself on a CPU
#
# Settings (environment): SKIP, steps to leave out (e.g. "metrics sweep-overhead"); MINUTES, the
# GPU sweep's budget (default 6); PRESETS, its presets (default all four paper presets); DATA,
# the folder holding cifar10/*.tar.gz (default ../shared/data).
set -u
log=${1:-/tmp/gpu-bench}
device=${DEVICE:-cuda}
quick=${QUICK:+--quick}
mkdir -p "$log"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # name, time limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    case " ${SKIP:-} " in *" $name "*) echo "== $name: skipped (SKIP)"; return ;; esac
    echo "== $name ($(date -u +%H:%M:%S))"
    timeout "$limit" "$@" 2>&1 | tee "$log/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

[ "$device" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, os; print('torch', torch.__version__, '| CPUs', os.cpu_count())"
has_ray=$(python3 -c "import ray" 2>/dev/null && echo yes)
# The tests that need CUDA (skipped elsewhere); the GPU sweep needs Ray too.
step cuda-tests 200 python3 -m pytest -q -p no:cacheprovider -rs -k "cuda or gpu" tests/test_population.py \
    tests/test_metrics_jacobian.py tests/test_metrics_convnets.py tests/test_planner.py \
    ${has_ray:+tests/test_scoring.py tests/test_sweep_e2e.py}
# The cost model's rates for this card (paste the printed entry into sweep/plan/calibration.json).
step calibrate 200 python3 bench/calibrate.py --device "$device" $quick
step metrics 240 python3 bench/metrics.py --device "$device" $quick
# Bundles of 64 and of 256 (the planner's size for small shapes on a big card), against 16
# networks trained one at a time; then 16 convolutional networks per family (population, vmap,
# one at a time).
step training 240 python3 bench/training.py --device "$device" $quick $([ "$device" = cpu ] || echo --members 64,256 --alone 16)
step scoring 180 python3 bench/scoring.py --device "$device" $quick
# paper-factors' convergence (issue 16, part 6), on its 10 000 images at its learning rate: every
# shape and nonlinearity with and without flips and random labels at batch 128 within its step
# budget (506 epochs), then the full-batch networks of its smallest shape within its epoch budget.
step convergence 200 python3 bench/convergence.py --device "$device" --widths 200,500 --depths 2,4 \
    --activations relu,tanh,hard_tanh --lrs 0.003 --random-labels 0,0.5 --augmentations none,flips \
    ${DATA:+--data "$DATA"} $([ -n "$quick" ] && echo --train-size 1000 --epochs 3 || echo --epochs 506 --every 50)
step convergence-full 240 python3 bench/convergence.py --device "$device" --batch full --lrs 0.003 \
    --random-labels 0,0.5 --augmentations none,flips ${DATA:+--data "$DATA"} \
    $([ -n "$quick" ] && echo --train-size 1000 --epochs 3 || echo --epochs 20000 --every 1000)
# cnn-factors' networks of seed 0 at batch 128 as its bundles train (cut off at the limit, the
# bench still prints each member's epochs to 100% or where it stands, and the share converged).
step convergence-cnn 150 python3 bench/convergence.py --device "$device" --preset cnn-factors --only seed=0 \
    --only batch_size=128 ${DATA:+--data "$DATA"} \
    $([ -n "$quick" ] && echo --only family=vgg --only depth=1 --train-size 500 --epochs 1 --every 1)
# paper-capacity's seed-0 relu networks 3072→2000×{2,5}, the widest and deepest (widths 50-500 at
# depth 2, width 100 at depths 2-5 and 200 at depth 5 were measured on a CPU), on all 50 000 images at
# its six learning rates and 500-epoch budget (likewise cut off at the limit).
step convergence-capacity 200 python3 bench/convergence.py --device "$device" --preset paper-capacity \
    --only seed=0 --only activation=relu --only width=2000 --only depth=2,5 --every 10 \
    ${DATA:+--data "$DATA"} \
    $([ -n "$quick" ] && echo --train-size 1000 --epochs 2 --every 1)
if [ -n "$has_ray" ]; then
    step sweep-overhead 180 python3 bench/sweep_overhead.py digits --in-process --repeats 1
    # The whole path: a time-boxed slice of each paper preset through `sweep run` (MINUTES, default 6).
    minutes=${MINUTES:-6}
    step sweep-gpu "$(awk "BEGIN {print int($minutes * 60 + 90)}")" python3 bench/sweep_gpu.py --minutes "$minutes" \
        --presets "${PRESETS:-${QUICK:+paper-factors}}" ${DATA:+--data "$DATA"} $([ "$device" = cpu ] && echo --cpu)
fi
