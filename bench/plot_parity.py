#!/usr/bin/env python3
"""Plots the loss curves and kNN of a bench/parity.py report: the trainer against PyTorch.

  python3 bench/plot_parity.py bench/results/parity-width16.json docs/parity.png

Needs matplotlib.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="JSON written by bench/parity.py")
    p.add_argument("out", help="PNG to write")
    a = p.parse_args()
    with open(a.report) as f:
        report = json.load(f)
    args, results = report["args"], report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, color in [("ours", "tab:blue"), ("torch", "tab:orange")]:
        for i, r in enumerate(results):
            losses = r[name]["loss_by_epoch"]
            steps = [(e + 1) * args["steps_per_epoch"] for e in range(len(losses))]
            left.plot(steps, losses, color=color, alpha=0.7,
                      label=f"{'trainer (Burn)' if name == 'ours' else 'PyTorch'}" if i == 0 else None)
    left.set(xlabel="step", ylabel=f"NT-Xent loss (mean of {args['steps_per_epoch']} steps)", title="loss, 3 seeds each")
    left.legend()
    labels = ["initialisation", "trainer (Burn)", "PyTorch"]
    values = [[r["knn_init"] for r in results], [r["ours"]["knn"] for r in results],
              [r["torch"]["knn"] for r in results]]
    for x, v in enumerate(values):
        right.scatter([x] * len(v), [100 * k for k in v], color=["gray", "tab:blue", "tab:orange"][x])
    right.set_xticks(range(3), labels)
    right.set(ylabel="kNN top-1 (%)", title="kNN (bank 10,000 / queries 2,000)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle(f"width {args['width']}, {args['epochs'] * args['steps_per_epoch']} steps at batch "
                 f"{args['batch_size']}, same initial weights")
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    print(a.out)


if __name__ == "__main__":
    main()
