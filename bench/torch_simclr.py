#!/usr/bin/env python3
"""PyTorch reference for `trainer bench`: the same SimCLR step as the Rust trainer.

ResNet-18 with the CIFAR stem (3x3, stride 1, no max-pool) or, with --stem imagenet,
torchvision's (7x7 stride 2 + 3x3 stride-2 max-pool), + projection head 512-512-128, two views of
each image concatenated in one forward pass, NT-Xent (T=0.5), backward, global gradient-norm
clipping at 1.0, Adam lr 3e-4 with weight decay 1e-4.
Prints one JSON line: {"pairs_per_s": ..., "step_ms_median": ..., "device": ...}.
"""
import argparse, json, statistics, sys, time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit("torch is not installed (pip install torch)")


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class SimCLR(nn.Module):
    def __init__(self, width=64, hidden=512, out=128, stem="cifar"):
        super().__init__()
        if stem == "imagenet":
            layers = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                      nn.MaxPool2d(3, 2, 1)]
        else:
            layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        c_in = width
        for stage, stride in enumerate([1, 2, 2, 2]):
            c_out = width << stage
            layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x):
        return self.head(self.encoder(x))


def torchvision_init(model):
    """torchvision's `resnet18` initialisation, which the trainer uses: every convolution
    `kaiming_normal_(mode="fan_out", nonlinearity="relu")` but the CIFAR stem's 3x3 (it replaces
    torchvision's `conv1` after construction, so it keeps PyTorch's default, as the Linear layers
    do); BatchNorm weight 1 and bias 0 (already PyTorch's default)."""
    stem = model.encoder[0]
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and not (module is stem and module.kernel_size == (3, 3)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def nt_xent(z, temperature):
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(-1e9)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--stem", choices=["cifar", "imagenet"], default="cifar")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, or auto (cuda when a GPU is visible, else cpu: the wgpu case)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                   help="automatic mixed precision (torch.autocast) for the forward pass")
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC memory format for the network and the images (faster with cuDNN)")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(a.device)
    if device.type == "cuda":
        # cuDNN picks the fastest convolution algorithm per shape, as our backend autotunes.
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = SimCLR(a.width, stem=a.stem).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-4)
    views = torch.randn(2 * a.batch_size, 3, a.image_size, a.image_size, device=device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        views = views.contiguous(memory_format=torch.channels_last)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)
    # fp16 needs loss scaling, as GradScaler does; bf16 has float32's range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=a.amp == "fp16")
    times = []
    for step in range(a.warmup + a.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            z = model(views)
        loss = nt_xent(z.float(), 0.5)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    result = {"pairs_per_s": a.batch_size / step, "step_ms_median": step * 1e3, "device": str(device),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "image_size": a.image_size, "stem": a.stem, "amp": a.amp,
              "channels_last": a.channels_last}
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result))


if __name__ == "__main__":
    main()
