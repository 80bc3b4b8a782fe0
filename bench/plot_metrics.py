#!/usr/bin/env python3
"""Plots a run's metrics.csv (loss and kNN top-1 per epoch) as a PNG.

  python3 bench/plot_metrics.py runs/NAME/metrics.csv docs/run.png [--title TEXT] [--knn-init 0.25]

Needs matplotlib.
"""
import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", help="metrics.csv written by the trainer")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--title", default="")
    p.add_argument("--knn-init", type=float, help="kNN top-1 at initialisation, drawn as epoch 0")
    a = p.parse_args()
    with open(a.metrics) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    knn = [100 * float(r["knn_top1"]) for r in rows]
    knn_epochs = epochs
    if a.knn_init is not None:
        knn_epochs, knn = [0] + epochs, [100 * a.knn_init] + knn

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, loss, marker="o")
    left.set(xlabel="epoch", ylabel="NT-Xent loss (epoch mean)", title="training loss")
    right.plot(knn_epochs, knn, marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
