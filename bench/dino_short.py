#!/usr/bin/env python3
"""A short DINO run in PyTorch, to compare with the trainer's at the same small scale.

The reference recipe on the trainer's network: the ResNet-18 of bench/torch_simclr.py
(torchvision's initialisation) at --width, solo-learn's DINOHead without BatchNorm (GELU,
truncated-normal weights, L2 normalisation, a weight-normalised prototype layer of norm 1,
frozen in the first epoch), a momentum teacher (tau cosine from --tau to 1), the authors'
DINOLoss (student T 0.1, teacher T --teacher-temperature, center momentum 0.9), solo-learn's
LARS (eta 0.02, clip_lr, biases and norms excluded, momentum 0.9) with lr 0.3 x batch / 256,
--warmup epochs of linear warm-up then cosine, weight decay 1e-6; two views per image from
torchvision's SimCLR CIFAR pipeline (the trainer's default `[augment]`). Prints each epoch's
mean loss and the collapse monitor z_std (std over the batch of the L2-normalised
projections, averaged over dimensions, as the trainer's) of its last batch.

  python3 bench/dino_short.py CIFAR10_BIN [--width 8] [--epochs 5] [--steps 16] [--batch 32]

The trainer's run of the same recipe:
  trainer --method dino --config C --data CIFAR10_BIN --epochs 5 --steps-per-epoch 16 \
    --batch-size 32 --knn-every 0 --out OUT
with C setting `[model] width`, `[model.head] hidden / out`, `[optim] warmup_epochs` and the
default `[augment]` (solarize_prob = [0.0, 0.0], saturation = 0.4).
"""
import argparse
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_dino import DinoProjector, prototypes_layer  # noqa: E402
from golden_simclr import cifar_images, simclr_transform  # noqa: E402
from torch_simclr import SimCLR, torchvision_init  # noqa: E402


class Lars(torch.optim.Optimizer):
    """solo-learn's LARS (solo/utils/lars.py) with eta 0.02, clip_lr, exclude_bias_n_norm."""

    def __init__(self, params, lr, weight_decay, momentum=0.9, eta=0.02, eps=1e-8):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))
        self.eta, self.eps = eta, eps

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            wd, lr = group["weight_decay"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if p.ndim != 1:
                    p_norm, g_norm = torch.norm(p), torch.norm(p.grad)
                    if p_norm != 0 and g_norm != 0:
                        lars_lr = p_norm / (g_norm + p_norm * wd + self.eps) * self.eta
                        lars_lr = min(lars_lr / lr, 1)
                        d_p = d_p.add(p, alpha=wd) * lars_lr
                state = self.state[p]
                buf = state.get("momentum_buffer")
                buf = d_p.clone() if buf is None else buf.mul_(group["momentum"]).add_(d_p)
                state["momentum_buffer"] = buf
                p.add_(buf, alpha=-lr)


class Student(nn.Module):
    def __init__(self, width, hidden, bottleneck, prototypes):
        super().__init__()
        self.encoder = SimCLR(width, 8, 8).encoder
        torchvision_init(self)
        self.head = DinoProjector(8 * width, hidden, bottleneck)
        self.prototypes = prototypes_layer(bottleneck, prototypes, True)

    def forward(self, x):
        z = self.head(self.encoder(x))
        return z, self.prototypes(F.normalize(z, dim=-1))


def z_std(z):
    z = F.normalize(z.detach(), dim=1)
    return z.std(0).mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cifar10_bin")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--prototypes", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--tau", type=float, default=0.9995)
    p.add_argument("--teacher-temperature", type=float, default=0.07)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    torch.manual_seed(a.seed)

    images = cifar_images(a.cifar10_bin, 10_000).float() / 255
    transform = simclr_transform()
    student = Student(a.width, a.hidden, a.bottleneck, a.prototypes)
    teacher = Student(a.width, a.hidden, a.bottleneck, a.prototypes)
    teacher.load_state_dict(student.state_dict())
    for q in teacher.parameters():
        q.requires_grad = False
    peak = 0.3 * a.batch / 256
    optimizer = Lars(student.parameters(), lr=peak, weight_decay=1e-6)
    center = torch.zeros(1, a.prototypes)
    total = a.epochs * a.steps
    warmup = int(a.warmup * a.steps)
    step = 0
    for epoch in range(a.epochs):
        losses = []
        for _ in range(a.steps):
            batch = images[torch.randint(len(images), (a.batch,))]
            views = torch.cat([torch.stack([transform(x) for x in batch]) for _ in range(2)])
            lr = peak * (step + 1) / warmup if step < warmup else \
                peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            z, s = student(views)
            with torch.no_grad():
                _, t = teacher(views)
            targets = F.softmax((t - center) / a.teacher_temperature, dim=-1).chunk(2)
            log_p = F.log_softmax(s / 0.1, dim=-1).chunk(2)
            loss = sum(torch.sum(-targets[g] * log_p[1 - g], dim=-1).mean() for g in range(2)) / 2
            center = 0.9 * center + 0.1 * t.mean(0, keepdim=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if epoch < 1:
                for q in student.prototypes.parameters():
                    q.grad = None
            optimizer.step()
            tau = 1 - (1 - a.tau) * (math.cos(math.pi * step / total) + 1) / 2
            with torch.no_grad():
                for q_t, q_s in zip(teacher.parameters(), student.parameters()):
                    q_t.mul_(tau).add_(q_s, alpha=1 - tau)
            losses.append(loss.item())
            step += 1
        print(f"torch epoch {epoch + 1}: loss {sum(losses) / len(losses):.4f} | "
              f"z_std {z_std(z):.4f}", flush=True)


if __name__ == "__main__":
    main()
