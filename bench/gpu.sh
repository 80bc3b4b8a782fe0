#!/usr/bin/env bash
# One prepared run for a lent GPU machine: CUDA training benchmark against PyTorch on the same
# card, then a short real training run whose kNN accuracy should rise.
#
# Build here first (the GPU machine has no crates.io): `cargo build --release -p trainer
# --features cuda`, then carry target/release/trainer and a CIFAR-10 binary directory, e.g.
#   bash bench/gpu.sh target/release/trainer data/cifar-10-batches-bin
# Results go to $OUT (or ./gpu-results): bench.json, the run's metrics.csv, nvidia-smi output.
set -euo pipefail
TRAINER=${1:?usage: bench/gpu.sh TRAINER_BINARY CIFAR10_BIN_DIR}
DATA=${2:?usage: bench/gpu.sh TRAINER_BINARY CIFAR10_BIN_DIR}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

# Training step: ours vs PyTorch, batch 128 and 512, peak GPU memory sampled by nvidia-smi.
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/memory.log" &
SMI=$!
"$TRAINER" bench --device cuda --batch-size 128,512 --steps 10 --warmup 3 \
  --torch-script bench/torch_simclr.py --out "$OUT/bench.json" | tee "$OUT/bench.txt"
kill $SMI || true
echo "peak GPU memory (MiB, whole card): $(sort -n "$OUT/memory.log" | tail -1)" | tee -a "$OUT/bench.txt"

# Short real run: kNN on 10k train / 2k test images after every epoch.
"$TRAINER" --device cuda --data "$DATA" --epochs ${EPOCHS:-5} --batch-size 512 \
  --out "$OUT/run" 2>&1 | grep -v '^\s*$' | tail -20
cp "$OUT/run/metrics.csv" "$OUT/metrics.csv"
cat "$OUT/metrics.csv"
