#!/usr/bin/env python3
"""Golden loss and gradients of one DINO step with multi-crop, from PyTorch, for the Rust test
tests/tests/golden_step.rs (`every_method_step_matches_pytorch`).

The network and the global views are bench/golden_methods.py's (the trainer's ResNet-18 at a
small width, two views of 8 CIFAR-10 images); two local views per image are the global views
average-pooled to 16 x 16. The DINO head is solo-learn's `DINOHead` at a small width (three
Linear layers with GELU, no BatchNorm, truncated-normal weights, then L2 normalisation and a
weight-normalised Linear layer of K prototypes without bias), the step as the authors'
`MultiCropWrapper` and `DINOLoss` take it (facebookresearch/dino, main_dino.py): the student
runs each size's views through the encoder in one pass and the head over all views; the
teacher, a copy of the student, runs the two global views (training-mode BatchNorm, no
gradient); the loss is the mean cross-entropy over every pair of a teacher global view and
another student view, with center 0 (the first step) and the teacher temperature of epoch 0.
In float64, one step per variant:
  dino         norm_last_layer=True (the preset): the prototypes' scale g is fixed at 1
  dino_scaled  norm_last_layer=False: g is trained too

Writes one safetensors file (float32), names in the trainer's module paths (Burn layout):
  views.global             [2N, 3, 32, 32]
  views.local              [2N, 3, 16, 16]
  <variant>.loss           [1]
  <variant>.init.<name>    weights and running statistics before the step
  <variant>.grad.<name>    d loss / d parameter

Regenerate (needs torch, torchvision, safetensors):
  python3 bench/golden_dino.py CIFAR10_BIN_DIR tests/fixtures/golden_dino.safetensors
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_methods import Network, burn_layout, burn_name, record_step, write_fixture  # noqa: E402
from golden_simclr import perturb_batchnorm, view_pairs  # noqa: E402

STUDENT_TEMPERATURE = 0.1
TEACHER_TEMPERATURE = 0.07  # solo-learn's, with no warm-up: epoch 0's temperature


class DinoProjector(nn.Module):
    """solo-learn's DINOHead MLP without BatchNorm: fc1 -> GELU -> fc2 -> GELU -> fc3, weights
    trunc_normal(std=0.02), biases 0."""

    def __init__(self, d_in, hidden, bottleneck):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, bottleneck)
        for fc in (self.fc1, self.fc2, self.fc3):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.constant_(fc.bias, 0)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def prototypes_layer(bottleneck, count, normalized):
    """DINOHead's last layer: weight_norm(Linear(bottleneck, count, bias=False)), g = 1."""
    layer = nn.utils.weight_norm(nn.Linear(bottleneck, count, bias=False))
    layer.weight_g.data.fill_(1)
    if normalized:
        layer.weight_g.requires_grad = False
    return layer


def student_logits(model, prototypes, crops):
    """MultiCropWrapper: the encoder once per size, the head over every crop, then DINO's
    L2 normalisation and prototypes."""
    features = torch.cat([model.encoder(x) for x in crops])
    return prototypes(F.normalize(model.head(features), dim=-1))


def dino_loss(student, teacher, center, views):
    """The authors' DINOLoss.forward at one epoch (center given, no update)."""
    student = (student / STUDENT_TEMPERATURE).chunk(views)
    teacher = F.softmax((teacher - center) / TEACHER_TEMPERATURE, dim=-1).detach().chunk(2)
    total, terms = 0, 0
    for iq, q in enumerate(teacher):
        for v in range(len(student)):
            if v == iq:
                continue
            total += torch.sum(-q * F.log_softmax(student[v], dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


def prototype_name(name):
    # weight_v [K, d] -> Burn's [d, K]; weight_g [K, 1] -> [K].
    return "prototypes." + name


def prototype_layout(name, tensor):
    array = tensor.detach().to(torch.float32).numpy()
    array = array.T if name == "weight_v" else array.reshape(-1)
    return np.ascontiguousarray(array)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cifar10_bin", help="cifar-10-batches-bin directory")
    p.add_argument("out", help="safetensors file to write")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--bottleneck", type=int, default=16)
    p.add_argument("--prototypes", type=int, default=24)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    global_views = view_pairs(a.cifar10_bin, a.pairs)
    local_views = F.avg_pool2d(global_views, 2)
    tensors = {"views.global": global_views.numpy(), "views.local": local_views.numpy()}
    views = 4  # two global and two local views per image

    for variant, normalized in (("dino", True), ("dino_scaled", False)):
        head = DinoProjector(8 * a.width, a.hidden, a.bottleneck)
        model = Network(a.width, head)
        prototypes = prototypes_layer(a.bottleneck, a.prototypes, normalized)
        perturb_batchnorm(model)
        init = {burn_name(k): burn_layout(k, v) for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked")}
        init.update({prototype_name(k): prototype_layout(k, v)
                     for k, v in prototypes.state_dict().items()
                     if normalized is False or k == "weight_v"})
        model, prototypes = model.double().train(), prototypes.double()
        # The teacher: a copy of the student (weight_norm modules cannot be deep-copied).
        teacher = Network(a.width, DinoProjector(8 * a.width, a.hidden, a.bottleneck))
        teacher_prototypes = prototypes_layer(a.bottleneck, a.prototypes, normalized)
        teacher.load_state_dict(model.state_dict())
        teacher_prototypes.load_state_dict(prototypes.state_dict())
        teacher, teacher_prototypes = teacher.double().train(), teacher_prototypes.double()
        with torch.no_grad():
            t = student_logits(teacher, teacher_prototypes, [global_views.double()])
        s = student_logits(model, prototypes, [global_views.double(), local_views.double()])
        center = torch.zeros(1, a.prototypes, dtype=torch.float64)
        loss = dino_loss(s, t, center, views)
        loss.backward()
        record_step(tensors, variant, loss, init, model)
        tensors.update({f"{variant}.grad.{prototype_name(k)}": prototype_layout(k, v.grad)
                        for k, v in prototypes.named_parameters() if v.requires_grad})

    write_fixture(tensors, a.out, "golden_dino.py", a.width)


if __name__ == "__main__":
    main()
