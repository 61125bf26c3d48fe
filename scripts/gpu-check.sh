#!/usr/bin/env bash
# GPU check, for a machine with torch 2.11.0 (CUDA 13) and Python but no Rust.
#
# Build here first (`make gpu-check-build` lists what to carry), then on the GPU machine,
# from the repository root:  bash scripts/gpu-check.sh
# It prints: whether CUDA is visible; the PyTorch cross-check cases on CUDA in float32;
# steps/s and peak memory of a MeanFlow and a flow-matching step of DiT-B/2 at batch 64 on
# 32x32x4, float32 and bf16 autocast (JVP kept in float32), here and in the PyTorch
# reference. Without CUDA every part falls back to the CPU and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${MEANFLOW_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || command -v python )}
export MEANFLOW_PYTHON=$PYTHON MEANFLOW_ROOT=$PWD MEANFLOW_DEVICE=cuda
# The binaries were linked against another machine's torch/lib: point them at this one's.
TORCH_LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
  echo "gpu-check: $PYTHON cannot import torch"; exit 1; }
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

find_bin() { ls -t target/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -n 1; }
MEANFLOW=target/release/meanflow
CROSSCHECK=$(find_bin crosscheck)
BENCH=$(find_bin train_step)
status=0

echo "== 1. device"
"$MEANFLOW" info || status=1
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda visible:", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'

echo "== 2. cross-check against PyTorch (float32)"
if [ -n "$CROSSCHECK" ]; then
  "$CROSSCHECK" --nocapture --test-threads=1 || status=1
else
  echo "no crosscheck binary under target/release/deps (build it with: make gpu-check-build)"; status=1
fi

echo "== 3. training step speed and memory"
if [ -n "$BENCH" ]; then
  "$BENCH" --bench || status=1
else
  echo "no train_step bench binary under target/release/deps (build it with: make gpu-check-build)"; status=1
fi
echo "== 4. data parallel on NCCL, world size 1 (a binary built with --features nccl)"
# Build it where Rust is (needs the CUDA 13.0 header wheels, see README "Data-parallel
# training"):  cargo build --release --features nccl --target-dir target/nccl
# and carry target/nccl/release/meanflow. Unrun on a GPU so far.
DIST_BIN=${MEANFLOW_NCCL_BIN:-target/nccl/release/meanflow}
TORCHRUN=$(dirname "$PYTHON")/torchrun
[ -x "$TORCHRUN" ] || TORCHRUN="$PYTHON -m torch.distributed.run"
if [ -x "$DIST_BIN" ]; then
  # Bucketed all-reduce mean, broadcast and barrier on CUDA tensors through NCCL.
  $TORCHRUN --standalone --nproc_per_node=1 --no-python "$DIST_BIN" dist-check --device cuda --mb 64 || status=1
  FMNIST=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
  if [ -d "$FMNIST" ]; then
    RUN=$(mktemp -d)
    $TORCHRUN --standalone --nproc_per_node=1 --no-python "$DIST_BIN" train --config configs/fashion_mnist.yaml \
      --set data.root="$FMNIST" --set train.device=cuda --set train.steps=50 --set dist.sanity_every=10 \
      --set train.run_dir="$RUN/run" --set sample.nfe=[1] || status=1
    rm -rf "$RUN"
  else
    echo "no Fashion-MNIST in $FMNIST: NCCL training run skipped"
  fi
else
  echo "no NCCL build at $DIST_BIN: skipped"
fi
exit $status
