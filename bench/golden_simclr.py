#!/usr/bin/env python3
"""Golden SimCLR step from PyTorch, for the Rust test tests/tests/golden_step.rs.

Builds the reference network (bench/torch_simclr.py: CIFAR ResNet-18 + projection head) at a
small width, draws one batch of real CIFAR-10 views with torchvision's SimCLR augmentations,
and runs one training step exactly as the trainer's recipe: both views in one forward pass
(BatchNorm in training mode), NT-Xent (T = 0.5), backward, global gradient-norm clipping at
1.0, Adam (lr 3e-4, weight decay 1e-4, eps 1e-8). The step runs in float64 on float32 inputs
and weights, so the stored values are exact to float32 rounding and the Rust test's tolerance
covers only its own float32 arithmetic.

Writes one safetensors file (float32) with tensor names in the trainer's module paths (Burn
layout: Linear weights are [in, out]; BatchNorm weight/bias are gamma/beta):
  views                 [2N, 3, 32, 32]  normalised, first views then second views
  loss, grad_norm       [1]              before the update; grad_norm before clipping
  init.<name>           weights and BatchNorm running statistics before the step
  grad.<name>           d loss / d parameter (before clipping)
  after.<name>          parameters and running statistics after the step

Regenerate (needs torch, torchvision, safetensors):
  python3 bench/golden_simclr.py CIFAR10_BIN_DIR tests/fixtures/golden_simclr.safetensors
"""
import argparse
import os
import sys

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_simclr import SimCLR, nt_xent  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def cifar_images(directory, count):
    """The first `count` images of data_batch_1.bin as uint8 [count, 3, 32, 32]."""
    raw = np.fromfile(os.path.join(directory, "data_batch_1.bin"), np.uint8)
    rows = raw.reshape(-1, 1 + 3 * 32 * 32)[:count]
    return torch.from_numpy(rows[:, 1:].reshape(count, 3, 32, 32).copy())


def simclr_transform():
    """torchvision's SimCLR CIFAR pipeline on float tensors in [0, 1] (blur off, as the trainer)."""
    return T.Compose([
        T.RandomResizedCrop(32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        T.RandomHorizontalFlip(0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(0.2),
        T.Normalize(MEAN, STD),
    ])


def view_pairs(cifar10_bin, pairs):
    """Two views of each of the first `pairs` images, [2N, 3, 32, 32]: first views, then second."""
    images = cifar_images(cifar10_bin, pairs).float() / 255
    transform = simclr_transform()
    first = torch.stack([transform(img) for img in images])
    second = torch.stack([transform(img) for img in images])
    return torch.cat([first, second]).to(torch.float32)


def perturb_batchnorm(model):
    """Running statistics and affine parameters away from (0, 1), so updates of each show."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)


def burn_name(torch_name):
    """`encoder.3.down.1.weight` -> `encoder.blocks.0.downsample.bn.gamma`, and so on."""
    parts = torch_name.split(".")
    leaf = parts[-1]
    if parts[0] == "head":
        module = ["head", {"0": "fc1", "2": "fc2"}[parts[1]]]
        return ".".join(module + [leaf])
    index = int(parts[1])
    if index == 0:
        module = ["encoder", "stem_conv"]
    elif index == 1:
        module = ["encoder", "stem_bn"]
    else:
        module = ["encoder", "blocks", str(index - 3)]
        sub = parts[2:-1]
        if sub[0] == "down":
            module += ["downsample", {"0": "conv", "1": "bn"}[sub[1]]]
        else:
            module += sub
    is_norm = module[-1].startswith("bn") or module[-1] == "stem_bn"
    if is_norm:
        leaf = {"weight": "gamma", "bias": "beta"}.get(leaf, leaf)
    return ".".join(module + [leaf])


def burn_layout(torch_name, tensor):
    array = tensor.detach().to(torch.float32).numpy()
    if torch_name.startswith("head.") and torch_name.endswith(".weight"):
        array = array.T  # torch Linear weight is [out, in], Burn's is [in, out]
    return np.ascontiguousarray(array)


def state(model):
    """Parameters and running statistics, named as the trainer names them."""
    return {burn_name(k): burn_layout(k, v) for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cifar10_bin", help="cifar-10-batches-bin directory")
    p.add_argument("out", help="safetensors file to write")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--head-hidden", type=int, default=32)
    p.add_argument("--head-out", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    views = view_pairs(a.cifar10_bin, a.pairs)
    model = SimCLR(a.width, a.head_hidden, a.head_out)  # PyTorch's default initialisation
    perturb_batchnorm(model)
    before = state(model)
    model = model.double().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-4, eps=1e-8)

    loss = nt_xent(model(views.double()), 0.5)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = {burn_name(k): burn_layout(k, v.grad) for k, v in model.named_parameters()}
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()

    tensors = {"views": views.numpy(),
               "loss": np.array([loss.item()], np.float32),
               "grad_norm": np.array([grad_norm.item()], np.float32)}
    tensors.update({f"init.{k}": v for k, v in before.items()})
    tensors.update({f"grad.{k}": v for k, v in grads.items()})
    tensors.update({f"after.{k}": v for k, v in state(model).items()})
    metadata = {"command": "python3 bench/golden_simclr.py CIFAR10_BIN_DIR OUT " + " ".join(sys.argv[3:]),
                "torch": torch.__version__, "torchvision": torchvision.__version__,
                "width": str(a.width), "head_hidden": str(a.head_hidden), "head_out": str(a.head_out),
                "temperature": "0.5", "lr": "3e-4", "weight_decay": "1e-4", "eps": "1e-8",
                "grad_clip": "1.0"}
    save_file(tensors, a.out, metadata)
    print(f"{a.out}: loss {loss.item():.6f}, grad norm {grad_norm.item():.4f}, "
          f"{sum(v.size for v in tensors.values())} floats, {os.path.getsize(a.out)} bytes")


if __name__ == "__main__":
    main()
