#!/usr/bin/env bash
# Every method at the same small CPU budget, from its preset: same network width, batch size,
# number of steps and data; the warm-up of each preset shortened to WARMUP epochs (default 0.2;
# the presets warm up for 10 of 1000 epochs). Prints a Markdown table of the loss, the collapse
# monitor and the kNN top-1 (bank: 10,000 train images, queries: 2,000 test images) after the
# last epoch. A small budget: the ranking of the methods after a few hundred steps says little
# about their published figures after 1000 epochs.
#
# Usage: bench/methods_short_budget.sh CIFAR10_BIN_DIR [OUT_DIR]
#   TRAINER=target/release/trainer EPOCHS=2 STEPS=100 BATCH=128 WIDTH=16 WARMUP=0.2
#   METHODS="simclr byol ..."
set -euo pipefail
data=${1:?usage: bench/methods_short_budget.sh CIFAR10_BIN_DIR [OUT_DIR]}
out=${2:-runs/short-budget}
trainer=${TRAINER:-target/release/trainer}
epochs=${EPOCHS:-2}
steps=${STEPS:-100}
batch=${BATCH:-128}
width=${WIDTH:-16}
warmup=${WARMUP:-0.2}
methods=${METHODS:-simclr byol mocov2 vicreg barlow}
mkdir -p "$out"
for method in $methods; do
  if [ -f "$out/$method/metrics.csv" ] && [ "$(tail -n1 "$out/$method/metrics.csv" | cut -d, -f1)" = "$epochs" ]; then
    continue  # already measured
  fi
  rm -rf "${out:?}/$method"
  printf '[model]\nwidth = %s\n\n[optim]\nwarmup_epochs = %s\n' "$width" "$warmup" > "$out/$method.toml"
  start=$SECONDS
  if "$trainer" --method "$method" --data "$data" --epochs "$epochs" --steps-per-epoch "$steps" \
    --batch-size "$batch" --config "$out/$method.toml" --out "$out/$method" 2> "$out/$method.log"; then
    echo "$method: $((SECONDS - start)) s, warm-up $warmup epochs" >> "$out/times.txt"
  else
    echo "$method: failed after $((SECONDS - start)) s: $(tail -n1 "$out/$method.log")" >> "$out/times.txt"
  fi
done
echo "| method | steps x batch | loss (last epoch) | z_std | kNN top-1 | pairs/s |"
echo "| --- | --- | --- | --- | --- | --- |"
for method in $methods; do
  [ -f "$out/$method/metrics.csv" ] || { echo "| $method | failed, see $out/$method.log | | | | |"; continue; }
  tail -n1 "$out/$method/metrics.csv" | awk -F, -v m="$method" -v s="$((epochs * steps))" -v b="$batch" \
    '{ printf "| %s | %s x %s | %.4f | %.4f | %.1f %% | %.1f |\n", m, s, b, $2, $3, 100 * $4, $5 }'
done
