#!/usr/bin/env bash
# The GPU checks of jimunet in one run, at most 9 minutes whatever happens (each step has its own
# limit, so a hang in one still leaves the others' results): the GPU tests, the 10-epoch MNIST
# recipe on the GPU, and the side-by-side benchmark against PyTorch CUDA (TF32 off, then on).
# Results go to OUT_DIR (default gpu-check/); the training run's directory to RUN_DIR (default
# OUT_DIR/run).
#
#   JIMUNET_DATA=/path/to/mnist-cache [RUN_DIR=...] bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Needs: an NVIDIA GPU, CuPy (pip install "jimunet[gpu]" or "jimunet[gpu-cuda13]") and PyTorch
# with CUDA. Run it from the repository root; jimunet is used from src/ (no install). On a
# machine without network, put wheels of what is missing (pytest, tqdm, threadpoolctl) in .whl/
# and a copy of ~/.cache/jimunet/mnist where JIMUNET_DATA points.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
run_dir=${RUN_DIR:-$out/run}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if [ -d .whl ]; then python -m pip install -q --no-index --find-links .whl pytest tqdm threadpoolctl; fi
status=0  # with pipefail, "cmd | tee" fails when cmd does
python -c "import cupy, numpy, torch; print('cupy', cupy.__version__, '| numpy', numpy.__version__, '| torch',
torch.__version__, '|', torch.cuda.get_device_name())" 2>&1 | tee "$out/env.txt"
timeout 150 python -m pytest -q -rA -p no:cacheprovider -m gpu tests/test_gpu.py \
    2>&1 | tee "$out/gpu-tests.txt" || status=1
timeout 150 python -m jimunet train --device cuda --no-report --out "$run_dir" \
    2>&1 | tee "$out/train.txt" || status=1
timeout 180 python benchmarks/bench.py --device cuda --rounds 3 --json "$out/bench.json" \
    2>&1 | tee "$out/bench.txt" || status=1
timeout 60 python benchmarks/bench.py --device cuda --rounds 1 --tf32 --tasks train512 infer10000 \
    --json "$out/bench-tf32.json" 2>&1 | tee "$out/bench-tf32.txt" || status=1
exit $status
