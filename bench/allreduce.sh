#!/usr/bin/env bash
# The gradient all-reduce's cost per step under MPI, on this machine: N trainer processes under
# `mpirun -np N` train 6 steps of the full-width ResNet-18 (46 MB of gradients) at global batch
# 32, and rank 0 prints the exchange's seconds per step (waiting for slower ranks included).
#
#   bash bench/allreduce.sh TRAINER CIFAR10_BIN [N ...]      (default: 2 4)
#
# TRAINER must be built with --features mpi. Figures: docs/distributed.md.
set -euo pipefail
trainer=${1:?usage: bench/allreduce.sh TRAINER CIFAR10_BIN [N ...]}
data=${2:?usage: bench/allreduce.sh TRAINER CIFAR10_BIN [N ...]}
shift 2
counts=("${@:-2 4}")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for n in ${counts[*]}; do
  log="$out/np$n.log"
  if ! mpirun -np "$n" --oversubscribe --bind-to none "$trainer" train --data "$data" \
      --device cpu --width 64 --batch-size 32 --epochs 1 --steps-per-epoch 6 --knn-every 0 \
      --out "$out/np$n" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  echo "mpirun -np $n: $(grep -h 'gradient all-reduce' "$log")"
done
