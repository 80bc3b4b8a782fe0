#!/usr/bin/env python3
"""PyTorch reference for `trainer bench --method dino`: the same multi-crop DINO step as the
Rust trainer's preset.

ResNet-18 (bench/torch_simclr.py's, torchvision's initialisation), DINO's projector 2048-2048-256
with GELU and no BatchNorm, L2 normalisation, 4,096 weight-normalised prototypes of norm 1, a
momentum teacher (no gradient) on the two global views; the student runs the 2 global views
(S px) and the local views (S/2 px, --local-views of them) through the encoder once per size and
the head over all views (the authors' MultiCropWrapper); DINO's loss over every (teacher
global, other student view) pair with T_s 0.1, T_t 0.07 and the center update; backward;
LARS (lr 0.3 x batch / 256, momentum 0.9, weight decay 1e-6, eta 0.02, clip_lr, biases and
norms excluded: solo-learn's); the teacher's EMA update (tau 0.9995).
Prints one JSON line: {"images_per_s": ..., "views_per_s": ..., "step_ms_median": ...}.
"""
import argparse, json, os, statistics, sys, time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit("torch is not installed (pip install torch)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_simclr import SimCLR, torchvision_init  # noqa: E402


class DinoHead(nn.Module):
    def __init__(self, d_in, hidden=2048, bottleneck=256, prototypes=4096):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.constant_(m.bias, 0)
        self.prototypes = nn.utils.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))
        self.prototypes.weight_g.data.fill_(1)
        self.prototypes.weight_g.requires_grad = False

    def forward(self, x):
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


class Network(nn.Module):
    def __init__(self, width, stem):
        super().__init__()
        self.encoder = SimCLR(width, stem=stem).encoder
        torchvision_init(self)
        self.head = DinoHead(8 * width)

    def forward(self, crops):
        return self.head(torch.cat([self.encoder(x) for x in crops]))


@torch.no_grad()
def lars_step(params, lr, momentum_buffers, wd=1e-6, eta=0.02, momentum=0.9):
    """solo-learn's LARS (clip_lr, exclude_bias_n_norm) followed by SGD with momentum."""
    for p in params:
        if p.grad is None:
            continue
        d_p = p.grad
        if p.ndim != 1:
            p_norm, g_norm = torch.norm(p), torch.norm(d_p)
            if p_norm != 0 and g_norm != 0:
                lars_lr = eta * p_norm / (g_norm + p_norm * wd + 1e-8)
                lars_lr = torch.clamp(lars_lr / lr, max=1.0)
                d_p = (d_p + wd * p) * lars_lr
        buf = momentum_buffers.get(p)
        if buf is None:
            buf = momentum_buffers[p] = d_p.clone()
        else:
            buf.mul_(momentum).add_(d_p)
        p.add_(buf, alpha=-lr)


def dino_loss(student, teacher, center, views):
    student = (student / 0.1).chunk(views)
    targets = F.softmax((teacher - center) / 0.07, dim=-1).chunk(2)
    total, terms = 0, 0
    for g, q in enumerate(targets):
        for v in range(views):
            if v != g:
                total = total + torch.sum(-q * F.log_softmax(student[v], dim=-1), dim=-1).mean()
                terms += 1
    return total / terms


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--local-views", type=int, default=6)
    p.add_argument("--stem", choices=["cifar", "imagenet"], default="cifar")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, or auto (cuda when a GPU is visible, else cpu: the wgpu case)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--amp", choices=["off"], default="off", help="float32 only")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    student = Network(a.width, a.stem).to(device)
    teacher = Network(a.width, a.stem).to(device)
    teacher.load_state_dict(student.state_dict())
    for t in teacher.parameters():
        t.requires_grad = False
    params = [q for q in student.parameters() if q.requires_grad]
    buffers = {}
    lr = 0.3 * a.batch_size / 256
    n, side = a.batch_size, a.image_size
    globals_ = torch.randn(2 * n, 3, side, side, device=device)
    locals_ = torch.randn(a.local_views * n, 3, side // 2, side // 2, device=device)
    views = 2 + a.local_views
    center = torch.zeros(1, 4096, device=device)
    times = []
    for step in range(a.warmup + a.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        s = student([globals_, locals_])
        with torch.no_grad():
            t = teacher([globals_])
        loss = dino_loss(s, t, center, views)
        center = center * 0.9 + t.mean(0, keepdim=True) * 0.1
        for q in params:
            q.grad = None
        loss.backward()
        lars_step(params, lr, buffers)
        with torch.no_grad():
            online = [q for q in student.parameters()]
            target = [q for q in teacher.parameters()]
            torch._foreach_mul_(target, 0.9995)
            torch._foreach_add_(target, online, alpha=0.0005)
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    print(json.dumps({"images_per_s": n / step, "views_per_s": n * views / step,
                      "step_ms_median": step * 1e3, "device": str(device),
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "image_size": side, "local_views": a.local_views, "stem": a.stem}))


if __name__ == "__main__":
    main()
