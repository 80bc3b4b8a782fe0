#!/usr/bin/env bash
# One call on a lent GPU machine (it may be lent for 15 minutes, with no network): in under 8
# minutes it prints the card, then for each backend (cuda, wgpu on the same card):
#   - the training step against PyTorch on the same machine (fp32 with cudnn.benchmark, AMP bf16,
#     channels_last; skipped with the reason when torch is not installed there), ours in f32 and
#     with --precision bf16 / f16 (CUDA) or f16 (wgpu),
#   - peak GPU memory (nvidia-smi, sampled),
#   - a 2-epoch real run with the kNN monitor, its export, and ONNX Runtime's embeddings of 64
#     test images against the trainer's on the GPU (when onnxruntime is installed),
# then the NCCL check (`trainer bench --nccl`: one rank on GPU 0),
# and writes $OUT/gpu.json and $OUT/gpu.md (a Markdown table for the README).
#
# Build here (the GPU machine has no crates.io), carry the binary and a CIFAR-10 binary folder:
#   cargo build --release -p trainer --features cuda,wgpu
#   bash bench/gpu.sh target/release/trainer path/to/cifar-10-batches-bin
# Rehearsal without a GPU (wgpu on lavapipe, tiny budget; every path and flag is exercised):
#   REHEARSAL=1 bash bench/gpu.sh target/release/trainer path/to/cifar-10-batches-bin
# Knobs: OUT (gpu-results), DEVICES ("cuda wgpu"), PYTHON (python3), WIDTH (64), BATCHES
# (128,512), STEPS (10), RUN_BATCH (512), RUN_STEPS (40 per epoch), KNN_BANK (10000), KNN_QUERY
# (2000).
set -uo pipefail
TRAINER=${1:?usage: bench/gpu.sh TRAINER_BINARY CIFAR10_BIN_DIR}
DATA=${2:?usage: bench/gpu.sh TRAINER_BINARY CIFAR10_BIN_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-gpu-results}
PYTHON=${PYTHON:-python3}
if [ "${REHEARSAL:-0}" = 1 ]; then
  DEVICES=${DEVICES:-wgpu}; WIDTH=${WIDTH:-8}; BATCHES=${BATCHES:-8}; STEPS=${STEPS:-2}
  RUN_BATCH=${RUN_BATCH:-16}; RUN_STEPS=${RUN_STEPS:-3}; KNN_BANK=${KNN_BANK:-256}
  KNN_QUERY=${KNN_QUERY:-64}
fi
DEVICES=${DEVICES:-cuda wgpu}; WIDTH=${WIDTH:-64}; BATCHES=${BATCHES:-128,512}; STEPS=${STEPS:-10}
RUN_BATCH=${RUN_BATCH:-512}; RUN_STEPS=${RUN_STEPS:-40}
KNN_BANK=${KNN_BANK:-10000}; KNN_QUERY=${KNN_QUERY:-2000}
mkdir -p "$OUT"
# The kNN monitor's bank and queries (the defaults on a GPU; small on lavapipe, where encoding
# 12,000 images takes minutes).
printf '[knn]\nbank_size = %d\nquery_size = %d\n' "$KNN_BANK" "$KNN_QUERY" > "$OUT/run.toml"
start=$SECONDS
say() { echo "== gpu.sh: $* ($((SECONDS - start)) s)"; }
# Each part gets a time limit, so one hung backend cannot eat the machine's 15 minutes.
limited() { local limit=$1; shift; timeout --kill-after=10 "$limit" "$@"; }

say "card"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT/card.txt"
else
  echo "no nvidia-smi: no NVIDIA driver on this machine" | tee "$OUT/card.txt"
fi
"$TRAINER" --version | tee -a "$OUT/card.txt"

torch_ok=0
if "$PYTHON" -c "import torch" 2>/dev/null; then torch_ok=1; fi
ort_ok=0
if "$PYTHON" -c "import onnxruntime, numpy" 2>/dev/null; then ort_ok=1; fi

for DEVICE in $DEVICES; do
  say "$DEVICE: training step, ours (trainer bench)"
  SMI=
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/memory-$DEVICE.log" &
    SMI=$!
  fi
  limited 150 "$TRAINER" bench --device "$DEVICE" --width "$WIDTH" --batch-size "$BATCHES" \
    --steps "$STEPS" --warmup 3 --no-torch --no-onnx --out "$OUT/bench-$DEVICE.json" \
    2>&1 | tee "$OUT/bench-$DEVICE.txt"
  echo "exit ${PIPESTATUS[0]}" >> "$OUT/bench-$DEVICE.txt"
  if [ -n "$SMI" ]; then
    kill "$SMI" 2>/dev/null
    echo "peak GPU memory (MiB, whole card): $(sort -n "$OUT/memory-$DEVICE.log" | tail -1)" \
      | tee "$OUT/memory-$DEVICE.txt"
  fi

  # Mixed precision (--precision): bf16 and f16 on CUDA, f16 on wgpu (no bf16 in wgpu).
  case "$DEVICE" in cuda) LOW="bf16 f16" ;; *) LOW="f16" ;; esac
  for PREC in $LOW; do
    say "$DEVICE: training step in $PREC (mixed precision), ours"
    limited 120 "$TRAINER" bench --device "$DEVICE" --precision "$PREC" --width "$WIDTH" \
      --batch-size "$BATCHES" --steps "$STEPS" --warmup 3 --no-torch --no-onnx \
      --out "$OUT/bench-$DEVICE-$PREC.json" 2>&1 | tee "$OUT/bench-$DEVICE-$PREC.txt"
    echo "exit ${PIPESTATUS[0]}" >> "$OUT/bench-$DEVICE-$PREC.txt"
  done

  say "$DEVICE: short real run (2 epochs, kNN monitor), export, ONNX Runtime check"
  rm -rf "$OUT/run-$DEVICE"
  limited 180 "$TRAINER" --device "$DEVICE" --data "$DATA" --width "$WIDTH" --epochs 2 \
    --steps-per-epoch "$RUN_STEPS" --batch-size "$RUN_BATCH" --config "$OUT/run.toml" \
    --out "$OUT/run-$DEVICE" \
    > "$OUT/run-$DEVICE.log" 2>&1
  echo "exit $?" >> "$OUT/run-$DEVICE.log"
  tail -4 "$OUT/run-$DEVICE.log"
  "$TRAINER" export --checkpoint "$OUT/run-$DEVICE" --out "$OUT/run-$DEVICE/encoder.onnx" \
    > "$OUT/export-$DEVICE.log" 2>&1
  limited 60 "$TRAINER" embed --checkpoint "$OUT/run-$DEVICE" --device "$DEVICE" --data "$DATA" \
    --split test --limit 64 --out "$OUT/run-$DEVICE/embeddings.npy" >> "$OUT/export-$DEVICE.log" 2>&1
  if [ $ort_ok = 1 ]; then
    "$PYTHON" "$HERE/gpu_report.py" ort-check "$OUT/run-$DEVICE" "$DATA" | tee "$OUT/ort-$DEVICE.json"
  else
    echo '{"skipped": "onnxruntime is not installed here"}' | tee "$OUT/ort-$DEVICE.json"
  fi
done

if [ $torch_ok = 1 ]; then
  TORCH_DEVICE=cuda
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || TORCH_DEVICE=cpu
  for BATCH in ${BATCHES//,/ }; do
    for VARIANT in "fp32:" "bf16:--amp bf16" "fp32-channels-last:--channels-last" "bf16-channels-last:--amp bf16 --channels-last"; do
      NAME=${VARIANT%%:*}; ARGS=${VARIANT#*:}
      say "PyTorch ($TORCH_DEVICE) batch $BATCH, $NAME"
      # shellcheck disable=SC2086
      limited 90 "$PYTHON" "$HERE/torch_simclr.py" --device "$TORCH_DEVICE" --width "$WIDTH" \
        --batch-size "$BATCH" --steps "$STEPS" --warmup 3 $ARGS | tail -1 \
        > "$OUT/torch-$BATCH-$NAME.json"
      cat "$OUT/torch-$BATCH-$NAME.json"
    done
  done
else
  say "PyTorch: not installed for $PYTHON on this machine; no PyTorch column"
fi

# NCCL (the all-reduce between CUDA GPUs): a world-size-1 check on GPU 0 (the library loads, a
# communicator starts, the all-reduce reads and writes the tensor's own GPU buffer) and its time
# for ResNet-18's 11.5 M gradient values. cudarc opens libnccl.so; where only libnccl.so.2 is
# installed (Debian libnccl2, PyTorch's pip wheel nvidia-nccl-cu*), a link to it is made.
if [[ " $DEVICES " == *" cuda "* ]]; then
  say "cuda: NCCL check (1 rank, trainer bench --nccl)"
  NCCL_LINKS="$OUT/nccl-lib"
  mkdir -p "$NCCL_LINKS"
  NCCL_SO=$(ldconfig -p 2>/dev/null | awk '/libnccl\.so/ {print $NF; exit}')
  if [ -z "$NCCL_SO" ]; then
    NCCL_SO=$("$PYTHON" -c "import nvidia.nccl, os, glob; print(glob.glob(os.path.join(list(nvidia.nccl.__path__)[0], 'lib', 'libnccl.so*'))[0])" 2>/dev/null)
  fi
  [ -n "$NCCL_SO" ] && ln -sf "$NCCL_SO" "$NCCL_LINKS/libnccl.so"
  echo "libnccl: ${NCCL_SO:-not found}" | tee "$OUT/nccl.txt"
  LD_LIBRARY_PATH="$NCCL_LINKS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" limited 90 "$TRAINER" bench \
    --nccl --out "$OUT/nccl.json" 2>&1 | tee -a "$OUT/nccl.txt"
  status=${PIPESTATUS[0]}
  echo "exit $status" >> "$OUT/nccl.txt"
  if [ "$status" != 0 ] || [ ! -s "$OUT/nccl.json" ]; then
    printf '{"skipped": "trainer bench --nccl failed (exit %s): %s"}\n' "$status" \
      "$(grep -v '^exit' "$OUT/nccl.txt" | tail -1 | tr -d '"\\')" > "$OUT/nccl.json"
  fi
else
  echo '{"skipped": "no cuda in DEVICES"}' > "$OUT/nccl.json"
fi

say "report"
"$PYTHON" "$HERE/gpu_report.py" report "$OUT" | tee "$OUT/gpu.md"
say "done: $OUT/gpu.json, $OUT/gpu.md"
