#!/usr/bin/env python3
"""PyTorch's own mixed-precision error on the golden SimCLR step, to judge the trainer's.

Loads the golden step's views and initial weights (tests/fixtures/golden_simclr.safetensors,
written by bench/golden_simclr.py), runs the same step in PyTorch under torch.autocast (fp16 with
the loss scaled by 2^16 as GradScaler's first step, and bf16), and prints each precision's
errors against the stored float64 step: loss, global gradient norm, and the five parameters with
the largest relative L2 gradient error. The trainer's f16 step is held to the same figures in
tests/tests/golden_step.rs (f16_step_on_wgpu_matches_pytorch_loss_and_gradient_norm).

  python3 bench/amp_golden.py [--device cpu|cuda] [FIXTURE]
"""
import argparse
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_simclr import burn_layout, burn_name  # noqa: E402
from torch_simclr import SimCLR, nt_xent  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def load_init(model, golden):
    """The fixture's initial weights and running statistics, back in PyTorch's layout."""
    state = model.state_dict()
    for name in state:
        if name.endswith("num_batches_tracked"):
            continue
        value = golden[f"init.{burn_name(name)}"]
        if name.startswith("head.") and name.endswith(".weight"):
            value = value.T
        state[name] = torch.from_numpy(np.ascontiguousarray(value))
    model.load_state_dict(state)


def step(golden, width, hidden, out, precision, device):
    """One forward and backward pass; the loss and the unscaled gradients in Burn's names."""
    model = SimCLR(width, hidden, out)
    load_init(model, golden)
    model = model.to(device).train()
    views = torch.from_numpy(golden["views"]).to(device)
    scale = 2.0**16 if precision == "fp16" else 1.0
    if precision == "fp32":
        loss = nt_xent(model(views), 0.5)
    else:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        with torch.autocast(device, dtype=dtype):
            z = model(views)
        loss = nt_xent(z.float(), 0.5)
    (loss * scale).backward()
    grads = {burn_name(k): burn_layout(k, v.grad.cpu() / scale) for k, v in model.named_parameters()}
    return loss.item(), grads


def relative_l2(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fixture", nargs="?",
                   default=os.path.join(HERE, "..", "tests", "fixtures", "golden_simclr.safetensors"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--head-hidden", type=int, default=32)
    p.add_argument("--head-out", type=int, default=16)
    a = p.parse_args()
    golden = load_file(a.fixture)
    reference = {k[len("grad."):]: v for k, v in golden.items() if k.startswith("grad.")}
    ref_loss = float(golden["loss"][0])
    ref_norm = float(golden["grad_norm"][0])
    print(f"PyTorch {torch.__version__} on {a.device}, against the float64 golden step")
    for precision in ["fp32", "fp16", "bf16"]:
        try:
            loss, grads = step(golden, a.width, a.head_hidden, a.head_out, precision, a.device)
        except RuntimeError as e:  # a precision this device's kernels lack
            print(f"{precision}: not available here ({str(e).splitlines()[0]})")
            continue
        norm = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())))
        errors = sorted(((relative_l2(grads[n], r), n) for n, r in reference.items()), reverse=True)
        worst = ", ".join(f"{n} {e:.2e}" for e, n in errors[:5])
        print(f"{precision}: loss relative {abs(loss - ref_loss) / ref_loss:.2e}, gradient norm "
              f"relative {abs(norm - ref_norm) / ref_norm:.2e}; largest gradient errors "
              f"(relative L2): {worst}")


if __name__ == "__main__":
    main()
