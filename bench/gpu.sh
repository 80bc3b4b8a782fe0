#!/usr/bin/env bash
# One prepared run for a lent GPU machine: the training benchmark on CUDA and on wgpu (Vulkan on
# the same NVIDIA card), each against PyTorch on that card, then a short real training run on each
# whose kNN accuracy should rise.
#
# Build here first (the GPU machine has no crates.io): `cargo build --release -p trainer
# --features cuda,wgpu`, then carry target/release/trainer and a CIFAR-10 binary directory, e.g.
#   bash bench/gpu.sh target/release/trainer data/cifar-10-batches-bin
# Results go to $OUT (or ./gpu-results): bench-<device>.json, each run's metrics.csv, nvidia-smi
# output. DEVICES="cuda" (or "wgpu") limits it to one backend.
set -euo pipefail
TRAINER=${1:?usage: bench/gpu.sh TRAINER_BINARY CIFAR10_BIN_DIR}
DATA=${2:?usage: bench/gpu.sh TRAINER_BINARY CIFAR10_BIN_DIR}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

for DEVICE in ${DEVICES:-cuda wgpu}; do
  echo "== $DEVICE"
  # Training step: ours vs PyTorch, batch 128 and 512, peak GPU memory sampled by nvidia-smi.
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/memory-$DEVICE.log" &
  SMI=$!
  "$TRAINER" bench --device "$DEVICE" --batch-size 128,512 --steps 10 --warmup 3 \
    --torch-script bench/torch_simclr.py --out "$OUT/bench-$DEVICE.json" | tee "$OUT/bench-$DEVICE.txt" || true
  kill $SMI || true
  echo "peak GPU memory (MiB, whole card): $(sort -n "$OUT/memory-$DEVICE.log" | tail -1)" \
    | tee -a "$OUT/bench-$DEVICE.txt"

  # Short real run: kNN on 10k train / 2k test images after every epoch.
  "$TRAINER" --device "$DEVICE" --data "$DATA" --epochs ${EPOCHS:-5} --batch-size 512 \
    --out "$OUT/run-$DEVICE" 2>&1 | grep -v '^\s*$' | tail -20 || true
  cp "$OUT/run-$DEVICE/metrics.csv" "$OUT/metrics-$DEVICE.csv" || true
  cat "$OUT/metrics-$DEVICE.csv" || true
done
