#!/usr/bin/env python3
"""Golden loss and gradients of BYOL, MoCo v2, VICReg and Barlow Twins from PyTorch, for the
Rust test tests/tests/golden_step.rs (`every_method_step_matches_pytorch`).

Same network, views and float64 arithmetic as bench/golden_simclr.py; per method, the heads of
its preset at a small width (BYOL: projector and predictor with BatchNorm; MoCo v2: projector
without; VICReg and Barlow Twins: three-layer expander with BatchNorm), and one step as the
trainer takes it: both views in one forward pass (BatchNorm in training mode), the method's
loss as its reference code writes it, backward. BYOL's target and MoCo's key encoder are copies
of the online network at the step (run in training mode, no gradient; MoCo's key encoder takes
each view in its own forward pass, as solo-learn's); MoCo's queues are random unit vectors
stored in the file.

Writes one safetensors file (float32), names in the trainer's module paths (Burn layout):
  views                    [2N, 3, 32, 32]
  <method>.loss            [1]
  <method>.init.<name>     weights and running statistics before the step
  <method>.grad.<name>     d loss / d parameter
  mocov2.queue             [2, K, d] (one queue per view)

Regenerate (needs torch, torchvision, safetensors):
  python3 bench/golden_methods.py CIFAR10_BIN_DIR tests/fixtures/golden_methods.safetensors
"""
import argparse
import copy
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_simclr import burn_name as encoder_burn_name, perturb_batchnorm, view_pairs  # noqa: E402
from torch_simclr import SimCLR  # noqa: E402


class Head(nn.Module):
    """The trainer's MLP head: fc1 -> [bn1] -> relu -> fc2 (-> [bn2] -> relu -> fc3)."""

    def __init__(self, d_in, hidden, out, layers, batchnorm):
        super().__init__()
        three = layers == 3
        self.fc1 = nn.Linear(d_in, hidden)
        self.bn1 = nn.BatchNorm1d(hidden) if batchnorm else None
        self.fc2 = nn.Linear(hidden, hidden if three else out)
        self.bn2 = nn.BatchNorm1d(hidden) if batchnorm and three else None
        self.fc3 = nn.Linear(hidden, out) if three else None

    def forward(self, x):
        x = self.fc1(x)
        x = F.relu(self.bn1(x) if self.bn1 is not None else x)
        x = self.fc2(x)
        if self.fc3 is None:
            return x
        return self.fc3(F.relu(self.bn2(x) if self.bn2 is not None else x))


# Heads of each method's preset, at a small width: (hidden, out, layers, batchnorm).
HEADS = {
    "byol": (32, 16, 2, True),
    "mocov2": (32, 16, 2, False),
    "vicreg": (32, 16, 3, True),
    "barlow": (32, 16, 3, True),
}


def burn_name(name):
    parts = name.split(".")
    if parts[0] in ("head", "predictor"):
        leaf = parts[-1]
        if parts[1].startswith("bn"):
            leaf = {"weight": "gamma", "bias": "beta"}.get(leaf, leaf)
        return ".".join(parts[:-1] + [leaf])
    return encoder_burn_name(name)


def burn_layout(name, tensor):
    array = tensor.detach().to(torch.float32).numpy()
    if name.split(".")[0] in ("head", "predictor") and name.endswith(".weight") and array.ndim == 2:
        array = array.T  # torch Linear weight is [out, in], Burn's is [in, out]
    return np.ascontiguousarray(array)


class Network(nn.Module):
    def __init__(self, width, head, predictor=None):
        super().__init__()
        self.encoder = SimCLR(width, 8, 8).encoder
        self.head = head
        self.predictor = predictor

    def forward(self, x):
        return self.head(self.encoder(x))


def off_diagonal(m):
    return m - torch.diag(torch.diag(m))


def split(z):
    n = z.shape[0] // 2
    return z[:n], z[n:]


def byol_loss(p, t):
    """solo-learn's byol_loss_func, both directions summed."""
    (p_a, p_b), (t_a, t_b) = split(p), split(t)
    cos = lambda x, y: F.cosine_similarity(x, y.detach(), dim=-1).mean()  # noqa: E731
    return (2 - 2 * cos(p_a, t_b)) + (2 - 2 * cos(p_b, t_a))


def nce(q, k, queue, temperature):
    """solo-learn's mocov2plus_loss_func with the queue as rows [K, d]."""
    pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


def vicreg_loss(z):
    """solo-learn's vicreg_loss_func (weights 25 / 25 / 1): the two views' variance hinges are
    summed (facebookresearch/vicreg averages them, halving the term)."""
    x, y = split(z)
    n, d = x.shape
    repr_loss = F.mse_loss(x, y)
    x, y = x - x.mean(0), y - y.mean(0)
    std_x, std_y = torch.sqrt(x.var(0) + 1e-4), torch.sqrt(y.var(0) + 1e-4)
    std_loss = torch.mean(F.relu(1 - std_x)) + torch.mean(F.relu(1 - std_y))
    cov_x, cov_y = x.t() @ x / (n - 1), y.t() @ y / (n - 1)
    cov_loss = off_diagonal(cov_x).pow(2).sum() / d + off_diagonal(cov_y).pow(2).sum() / d
    return 25 * repr_loss + 25 * std_loss + cov_loss


def barlow_loss(z, lambd=0.0051, scale=0.1):
    """facebookresearch/barlowtwins' loss (BatchNorm without affine), solo-learn's scale 0.1."""
    a, b = split(z)
    bn = lambda t: F.batch_norm(t, None, None, training=True, eps=1e-5)  # noqa: E731
    c = bn(a).t() @ bn(b) / a.shape[0]
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = off_diagonal(c).pow(2).sum()
    return scale * (on + lambd * off)


def record_step(tensors, prefix, loss, init, model):
    """One step's loss, the weights before it and every gradient, under `prefix`."""
    tensors[f"{prefix}.loss"] = np.array([loss.item()], np.float32)
    tensors.update({f"{prefix}.init.{k}": v for k, v in init.items()})
    tensors.update({f"{prefix}.grad.{burn_name(k)}": burn_layout(k, v.grad)
                    for k, v in model.named_parameters()})
    print(f"{prefix}: loss {loss.item():.6f}")


def write_fixture(tensors, out, script, width):
    """The fixture file, with the command that regenerates it and the versions that did."""
    metadata = {"command": f"python3 bench/{script} CIFAR10_BIN_DIR OUT " + " ".join(sys.argv[3:]),
                "torch": torch.__version__, "torchvision": torchvision.__version__,
                "width": str(width)}
    save_file(tensors, out, metadata)
    print(f"{out}: {sum(v.size for v in tensors.values())} floats, {os.path.getsize(out)} bytes")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cifar10_bin", help="cifar-10-batches-bin directory")
    p.add_argument("out", help="safetensors file to write")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--queue", type=int, default=24)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    views = view_pairs(a.cifar10_bin, a.pairs)
    tensors = {"views": views.numpy()}

    for method, (hidden, out, layers, batchnorm) in HEADS.items():
        d_in = 8 * a.width
        head = Head(d_in, hidden, out, layers, batchnorm)
        predictor = Head(out, hidden, out, 2, True) if method == "byol" else None
        model = Network(a.width, head, predictor)
        perturb_batchnorm(model)
        init = {burn_name(k): burn_layout(k, v) for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked")}
        model = model.double().train()
        x = views.double()
        if method in ("byol", "mocov2"):
            target = copy.deepcopy(nn.ModuleDict({"encoder": model.encoder, "head": model.head}))
            with torch.no_grad():
                if method == "mocov2":
                    # The key encoder sees each view on its own (solo-learn's momentum_forward
                    # per view), so BatchNorm cannot mix a query's view into its key.
                    t = torch.cat([target["head"](target["encoder"](v)) for v in split(x)])
                else:
                    t = target["head"](target["encoder"](x))
        z = model(x)
        if method == "byol":
            loss = byol_loss(model.predictor(z), t)
        elif method == "mocov2":
            queue = F.normalize(torch.randn(2, a.queue, out, dtype=torch.float64), dim=2)
            tensors["mocov2.queue"] = queue.to(torch.float32).numpy()
            queue = torch.from_numpy(tensors["mocov2.queue"]).double()
            (q_a, q_b), (k_a, k_b) = split(F.normalize(z, dim=1)), split(F.normalize(t, dim=1))
            loss = (nce(q_a, k_b, queue[1], 0.2) + nce(q_b, k_a, queue[0], 0.2)) / 2
        elif method == "vicreg":
            loss = vicreg_loss(z)
        else:
            loss = barlow_loss(z)
        loss.backward()
        record_step(tensors, method, loss, init, model)

    write_fixture(tensors, a.out, "golden_methods.py", a.width)


if __name__ == "__main__":
    main()
