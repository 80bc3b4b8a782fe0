#!/usr/bin/env python3
"""Short-budget parity: the trainer and the PyTorch reference, same recipe, same budget, seeds.

For each seed, PyTorch initialises the network (its default initialisation); the trainer starts
from exactly those weights (`--init-weights`), so the kNN accuracy at initialisation is one
number for both. With `--own-init` each side starts from its own default initialisation instead
(the same distributions, torchvision's `resnet18` scheme, different draws): PyTorch's model is
initialised by `torchvision_init`, the trainer by itself, as a user's default run is. Then each trains for the same number of steps on CIFAR-10 with the default
recipe: torchvision's SimCLR augmentations (crop 0.08-1, flip, jitter 0.4/0.4/0.4/0.1 p 0.8,
grayscale 0.2, no blur), NT-Xent T = 0.5, Adam lr 3e-4 / wd 1e-4 / eps 1e-8, global gradient
clipping at 1.0, batches drawn from a fresh permutation of the 50,000 training images every
`--steps-per-epoch` steps. kNN top-1 is computed here for both, the same way (the trainer's
monitor protocol): features h with BatchNorm in inference mode (the trainer's from its final
checkpoint exported to ONNX, run by ONNX Runtime), bank = first 10,000 training images, queries =
first 2,000 test images, cosine similarity, k = 200, votes exp(sim / 0.1). The trainer's own
monitor (a seeded, class-stratified bank of the 50,000) is reported beside it.

  python3 bench/parity.py --trainer target/release/trainer --data CIFAR10_BIN_DIR \\
      --width 16 --epochs 10 --steps-per-epoch 40 --batch-size 128 --seeds 1 2 3

Prints a table and writes --out (JSON: per seed and framework, loss per epoch and kNN).
`--ours-only --keep DIR` runs only the trainer (from PyTorch's initialisation, whose kNN it
reports) and keeps its run directory: how the README's long CPU run was made.
`--trainer-arg=--no-winograd` passes a flag to the trainer: the same seeds with and without it
compare the CPU's Winograd convolutions with im2col over a real budget (docs/evidence.md).
Needs torch, torchvision, safetensors, numpy.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_simclr import MEAN, STD, simclr_transform, state  # noqa: E402
from torch_simclr import SimCLR, nt_xent, torchvision_init  # noqa: E402


def load_split(directory, files):
    raw = np.concatenate([np.fromfile(os.path.join(directory, f), np.uint8) for f in files])
    rows = raw.reshape(-1, 1 + 3 * 32 * 32)
    images = torch.from_numpy(rows[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(rows[:, 0].astype(np.int64))


@torch.no_grad()
def features(model, images, batch=500):
    model.eval()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    out = [model.encoder((images[i:i + batch].float() / 255 - mean) / std) for i in range(0, len(images), batch)]
    model.train()
    return F.normalize(torch.cat(out), dim=1)


def onnx_features(path, images, batch=500):
    """The exported encoder's features of uint8 images (it normalises them itself)."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = [session.run(["embedding"], {"images": images[i:i + batch].float().numpy() / 255})[0]
           for i in range(0, len(images), batch)]
    return F.normalize(torch.from_numpy(np.concatenate(out)), dim=1)


def knn_top1(model, bank, bank_labels, queries, query_labels, k=200, t=0.1, classes=10):
    """`model`: a PyTorch SimCLR, or the path of an exported encoder.onnx."""
    embed = (lambda x: onnx_features(model, x)) if isinstance(model, str) else (lambda x: features(model, x))
    bank_h, query_h = embed(bank), embed(queries)
    sim = query_h @ bank_h.t()
    top, index = sim.topk(k, dim=1)
    votes = torch.zeros(len(queries), classes).scatter_add_(1, bank_labels[index], (top / t).exp())
    return (votes.argmax(1) == query_labels).float().mean().item()


def train_torch(model, train, args, seed):
    """The reference loop; returns the mean loss of every epoch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    transform = simclr_transform()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-4, eps=1e-8)
    losses = []
    for _ in range(args.epochs):
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for step in range(args.steps_per_epoch):
            batch = train[order[step * args.batch_size:(step + 1) * args.batch_size]].float() / 255
            views = torch.cat([torch.stack([transform(x) for x in batch]),
                               torch.stack([transform(x) for x in batch])])
            loss = nt_xent(model(views), 0.5)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item()
        losses.append(total / args.steps_per_epoch)
        print(f"  torch epoch {len(losses)}: loss {losses[-1]:.4f}", flush=True)
    return losses


def train_ours(weights, args, seed, scratch):
    """The trainer from `weights` (None: its own initialisation); returns (loss per epoch, its
    monitor's final kNN, its monitor's kNN per epoch, the exported encoder.onnx)."""
    config = os.path.join(scratch, "parity.toml")
    with open(config, "w") as f:
        f.write(f"[model]\nwidth = {args.width}\n\n[model.head]\nhidden = {args.head_hidden}\nout = {args.head_out}\n")
    out = os.path.join(args.keep or scratch, f"ours-{seed}")
    init = ["--init-weights", weights] if weights else []
    subprocess.run([args.trainer, "--data", args.data, "--config", config, *init,
                    "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
                    "--batch-size", str(args.batch_size), "--seed", str(seed), "--out", out,
                    *args.trainer_arg],
                   check=True, stderr=subprocess.DEVNULL)
    onnx = os.path.join(out, "encoder.onnx")
    subprocess.run([args.trainer, "export", "--checkpoint", out, "--out", onnx], check=True,
                   stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return ([float(r["loss"]) for r in rows], float(rows[-1]["knn_top1"]),
            [float(r["knn_top1"]) for r in rows], onnx)


def mean_spread(values):
    return f"{100 * statistics.mean(values):.2f} ± {100 * (statistics.stdev(values) if len(values) > 1 else 0):.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainer", required=True)
    p.add_argument("--data", required=True, help="cifar-10-batches-bin directory")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--head-hidden", type=int, default=512)
    p.add_argument("--head-out", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="parity.json")
    p.add_argument("--ours-only", action="store_true", help="train only the trainer")
    p.add_argument("--keep", help="directory that keeps the trainer's runs (ours-SEED)")
    p.add_argument("--own-init", action="store_true",
                   help="each side starts from its own default initialisation (no --init-weights)")
    p.add_argument("--trainer-arg", action="append", default=[],
                   help="an extra trainer flag, repeatable (--trainer-arg=--no-winograd)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train, _ = load_split(args.data, [f"data_batch_{i}.bin" for i in range(1, 6)])
    test, test_labels = load_split(args.data, ["test_batch.bin"])
    bank, bank_labels = load_split(args.data, ["data_batch_1.bin"])
    bank, bank_labels, queries, query_labels = bank[:10_000], bank_labels[:10_000], test[:2_000], test_labels[:2_000]

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = SimCLR(args.width, args.head_hidden, args.head_out)
            if args.own_init:
                torchvision_init(model)
                weights = None
            else:
                weights = os.path.join(scratch, f"init-{seed}.safetensors")
                save_file(state(model), weights)
            init = knn_top1(model, bank, bank_labels, queries, query_labels)
            print(f"seed {seed}: kNN at initialisation {100 * init:.2f} % (PyTorch's draw)", flush=True)
            start = time.time()
            ours_loss, monitor_knn, ours_curve, onnx = train_ours(weights, args, seed, scratch)
            ours_s = time.time() - start
            ours_knn = knn_top1(onnx, bank, bank_labels, queries, query_labels)
            print(f"  ours: kNN {100 * ours_knn:.2f} % (monitor {100 * monitor_knn:.2f} %), "
                  f"losses {ours_loss}, {ours_s:.0f} s", flush=True)
            result = {"seed": seed, "knn_init": init,
                      "ours": {"knn": ours_knn, "monitor_knn": monitor_knn, "knn_by_epoch": ours_curve,
                               "loss_by_epoch": ours_loss, "seconds": ours_s}}
            if not args.ours_only:
                start = time.time()
                torch_loss = train_torch(model, train, args, seed)
                torch_knn = knn_top1(model, bank, bank_labels, queries, query_labels)
                torch_s = time.time() - start
                print(f"  torch: kNN {100 * torch_knn:.2f} %, {torch_s:.0f} s", flush=True)
                result["torch"] = {"knn": torch_knn, "loss_by_epoch": torch_loss, "seconds": torch_s}
            results.append(result)
    report = {"args": vars(args), "torch": torch.__version__, "results": results}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)

    steps = args.epochs * args.steps_per_epoch
    print(f"\nwidth {args.width}, {steps} steps at batch {args.batch_size}, seeds {args.seeds}")
    print("| | kNN top-1 % (mean ± sd) | final epoch loss |")
    print("|---|---:|---:|")
    start = "PyTorch's draw; the trainer's own" if args.own_init else "same weights"
    print(f"| initialisation ({start}) | {mean_spread([r['knn_init'] for r in results])} | |")
    for name in ["ours"] + ([] if args.ours_only else ["torch"]):
        losses = [r[name]["loss_by_epoch"][-1] for r in results]
        print(f"| {name} | {mean_spread([r[name]['knn'] for r in results])} | "
              f"{statistics.mean(losses):.4f} |")


if __name__ == "__main__":
    main()
