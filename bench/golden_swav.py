#!/usr/bin/env python3
"""Golden loss and gradients of SwAV steps from PyTorch, for the Rust test
tests/tests/golden_step.rs (`every_method_step_matches_pytorch`).

Network and views are bench/golden_dino.py's (the trainer's ResNet-18 at a small width; two
global views of 8 CIFAR-10 images and two local views, the global ones average-pooled to
16 x 16). The SwAV head is solo-learn's at a small width (solo/methods/swav.py): projector
Linear -> BatchNorm -> ReLU -> Linear, L2 normalisation, prototypes
weight_norm(Linear(d, K, bias=False)) with g fixed at 1. The step is solo-learn's
training_step, except that each size's views go through the encoder in one pass (as the
trainer and DINO's MultiCropWrapper do): assignments of each global view by its SinkhornKnopp
(3 iterations, epsilon 0.05, one process), then swav_loss_func (T 0.1) over every view. In
float64, one step per variant:
  swav        two global and two local views, no queue (the first epochs)
  swav_queue  the two global views, with a queue of 24 projections per view (random unit
              vectors, stored in the file) joining the Sinkhorn-Knopp input

Writes one safetensors file (float32), names in the trainer's module paths (Burn layout):
  views.global             [2N, 3, 32, 32]
  views.local              [2N, 3, 16, 16]
  <variant>.loss           [1]
  <variant>.init.<name>    weights and running statistics before the step
  <variant>.grad.<name>    d loss / d parameter
  swav_queue.queue         [2, Q, d]

Regenerate (needs torch, torchvision, safetensors):
  python3 bench/golden_swav.py CIFAR10_BIN_DIR tests/fixtures/golden_swav.safetensors
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_dino import prototype_layout, prototype_name, prototypes_layer, student_logits  # noqa: E402
from golden_methods import Head, Network, burn_layout, burn_name, record_step, write_fixture  # noqa: E402
from golden_simclr import perturb_batchnorm, view_pairs  # noqa: E402

TEMPERATURE = 0.1


@torch.no_grad()
def sinkhorn_knopp(scores, epsilon=0.05, iterations=3):
    """solo-learn's SinkhornKnopp.forward on one process."""
    q = torch.exp(scores / epsilon).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(iterations):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def swav_loss(preds, assignments, temperature=TEMPERATURE):
    """solo-learn's swav_loss_func."""
    losses = []
    for v1 in range(len(assignments)):
        for v2 in np.delete(np.arange(len(preds)), v1):
            a = assignments[v1]
            p = preds[v2] / temperature
            losses.append(-torch.mean(torch.sum(a * torch.log_softmax(p, dim=1), dim=1)))
    return sum(losses) / len(losses)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cifar10_bin", help="cifar-10-batches-bin directory")
    p.add_argument("out", help="safetensors file to write")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--out-dim", type=int, default=16)
    p.add_argument("--prototypes", type=int, default=24)
    p.add_argument("--queue", type=int, default=24)
    p.add_argument("--seed", type=int, default=2)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    global_views = view_pairs(a.cifar10_bin, a.pairs)
    local_views = F.avg_pool2d(global_views, 2)
    tensors = {"views.global": global_views.numpy(), "views.local": local_views.numpy()}

    for variant in ("swav", "swav_queue"):
        model = Network(a.width, Head(8 * a.width, a.hidden, a.out_dim, 2, True))
        prototypes = prototypes_layer(a.out_dim, a.prototypes, True)
        perturb_batchnorm(model)
        init = {burn_name(k): burn_layout(k, v) for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked")}
        init["prototypes.weight_v"] = prototype_layout("weight_v", prototypes.weight_v)
        model, prototypes = model.double().train(), prototypes.double()
        crops = [global_views.double()]
        if variant == "swav":
            crops.append(local_views.double())
        preds = student_logits(model, prototypes, crops).chunk(2 * len(crops))
        queue = None
        if variant == "swav_queue":
            queue = F.normalize(torch.randn(2, a.queue, a.out_dim, dtype=torch.float64), dim=2)
            tensors["swav_queue.queue"] = queue.to(torch.float32).numpy()
            queue = torch.from_numpy(tensors["swav_queue.queue"]).double()
        assignments = []
        with torch.no_grad():
            for i, p_i in enumerate(preds[:2]):
                if queue is not None:
                    p_i = torch.cat((p_i, prototypes(queue[i])))
                assignments.append(sinkhorn_knopp(p_i)[: preds[0].shape[0]])
        loss = swav_loss(preds, assignments)
        loss.backward()
        record_step(tensors, variant, loss, init, model)
        tensors.update({f"{variant}.grad.{prototype_name(k)}": prototype_layout(k, v.grad)
                        for k, v in prototypes.named_parameters() if v.requires_grad})

    write_fixture(tensors, a.out, "golden_swav.py", a.width)


if __name__ == "__main__":
    main()
