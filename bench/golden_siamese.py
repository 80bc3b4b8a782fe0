#!/usr/bin/env python3
"""Golden loss and gradients of SimSiam and MoCo v3 from PyTorch, for the Rust test
tests/tests/golden_step.rs (`every_method_step_matches_pytorch`).

Same network, views and float64 arithmetic as bench/golden_methods.py; the heads are
solo-learn's at a small width (solo/methods/simsiam.py, solo/methods/mocov3.py's ResNet heads):

  simsiam  projector Linear(no bias) -> BN -> ReLU -> Linear(no bias) -> BN -> ReLU -> Linear
           -> BatchNorm1d(affine=False); predictor Linear(no bias) -> BN -> ReLU -> Linear.
           solo-learn's projector keeps a bias on its last Linear but freezes it
           (`requires_grad = False`); the BatchNorm after it cancels any bias, so it is left
           out here as in the trainer. Loss: solo-learn's simsiam_loss_func, both directions
           halved: -cos(p_a, sg(z_b)) / 2 - cos(p_b, sg(z_a)) / 2.
  mocov3   projector and predictor Linear(no bias) -> BN -> ReLU -> Linear(no bias), the
           projector ending in BatchNorm1d(affine=False); a momentum copy of encoder and
           projector takes each view in its own forward pass (solo-learn's momentum_forward),
           training-mode BatchNorm, no gradient. Loss: solo-learn's mocov3_loss_func (T 0.2)
           summed over both directions.

The online network takes both views in one forward pass, as the trainer does.

Writes one safetensors file (float32), names in the trainer's module paths (Burn layout):
  views                    [2N, 3, 32, 32]
  <method>.loss            [1]
  <method>.init.<name>     weights and running statistics before the step
  <method>.grad.<name>     d loss / d parameter

Regenerate (needs torch, torchvision, safetensors):
  python3 bench/golden_siamese.py CIFAR10_BIN_DIR tests/fixtures/golden_siamese.safetensors
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_methods import Network, burn_layout, burn_name, record_step, split, write_fixture  # noqa: E402
from golden_simclr import perturb_batchnorm, view_pairs  # noqa: E402

TEMPERATURE = 0.2


class Head(nn.Module):
    """The trainer's MLP head with BatchNorm after each hidden Linear: fc1 -> bn1 -> relu -> fc2
    (-> bn2 -> relu -> fc3) [-> BatchNorm without affine parameters]. `bias`: "last" puts a
    bias on the output Linear only, "none" on no Linear."""

    def __init__(self, d_in, hidden, out, layers, bias, output_norm):
        super().__init__()
        three = layers == 3
        last_bias = bias == "last"
        self.fc1 = nn.Linear(d_in, hidden, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden if three else out, bias=last_bias and not three)
        self.bn2 = nn.BatchNorm1d(hidden) if three else None
        self.fc3 = nn.Linear(hidden, out, bias=last_bias) if three else None
        self.output_norm = output_norm

    def forward(self, x):
        x = self.fc2(F.relu(self.bn1(self.fc1(x))))
        if self.fc3 is not None:
            x = self.fc3(F.relu(self.bn2(x)))
        if self.output_norm:
            x = F.batch_norm(x, None, None, training=True, eps=1e-5)
        return x


def simsiam_loss(p, z):
    """solo-learn's simsiam_loss_func."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def mocov3_loss(query, key, temperature=TEMPERATURE):
    """solo-learn's mocov3_loss_func on one process (rank 0, nothing to gather)."""
    n = query.size(0)
    query, key = F.normalize(query, dim=1), F.normalize(key, dim=1)
    logits = torch.einsum("nc,mc->nm", [query, key]) / temperature
    labels = torch.arange(n, dtype=torch.long)
    return F.cross_entropy(logits, labels) * (2 * temperature)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cifar10_bin", help="cifar-10-batches-bin directory")
    p.add_argument("out", help="safetensors file to write")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--seed", type=int, default=3)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    views = view_pairs(a.cifar10_bin, a.pairs)
    tensors = {"views": views.numpy()}
    d_in, hidden, out, bottleneck = 8 * a.width, 32, 16, 24
    heads = {
        "simsiam": (Head(d_in, hidden, out, 3, "none", True),
                    Head(out, bottleneck, out, 2, "last", False)),
        "mocov3": (Head(d_in, hidden, out, 2, "none", True),
                   Head(out, bottleneck, out, 2, "none", False)),
    }
    for method, (head, predictor) in heads.items():
        model = Network(a.width, head, predictor)
        perturb_batchnorm(model)
        init = {burn_name(k): burn_layout(k, v) for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked")}
        model = model.double().train()
        x = views.double()
        if method == "mocov3":
            target = copy.deepcopy(nn.ModuleDict({"encoder": model.encoder, "head": model.head}))
            with torch.no_grad():
                k_a, k_b = (target["head"](target["encoder"](v)) for v in split(x))
        z = model(x)
        (z_a, z_b), (p_a, p_b) = split(z), split(model.predictor(z))
        if method == "simsiam":
            loss = simsiam_loss(p_a, z_b) / 2 + simsiam_loss(p_b, z_a) / 2
        else:
            loss = mocov3_loss(p_a, k_b) + mocov3_loss(p_b, k_a)
        loss.backward()
        record_step(tensors, method, loss, init, model)

    write_fixture(tensors, a.out, "golden_siamese.py", a.width)


if __name__ == "__main__":
    main()
