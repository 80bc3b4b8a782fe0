#!/usr/bin/env python3
"""torchvision reference for the trainer's augmentations (tests/tests/augment_reference.rs).

Writes one safetensors file (float32) with two kinds of reference:

1. Pixel outputs of each transform for given parameters, on real CIFAR-10 test images (the test
   loads the same images): `op.<name>` [3, 32, 32] in [0, 1] or normalised, with the input image
   index and the parameters in the metadata (`ops`, JSON). torchvision's tensor functions:
   resized_crop (bilinear, antialias), hflip, adjust_brightness/contrast/saturation/hue,
   rgb_to_grayscale, normalize, ColorJitter's four adjustments in a given order, and
   gaussian_blur at kernel sides 3, 9 and 23.
2. Statistics of the random choices and of whole views (metadata `stats`, JSON):
   - RandomResizedCrop(32, scale=(0.08, 1), ratio=(3/4, 4/3)).get_params, 50,000 draws: mean and
     deciles of the crop's area fraction and aspect ratio (w/h);
   - ColorJitter(0.4, 0.4, 0.4, 0.1).get_params, 50,000 draws: mean and deciles of each factor,
     and how often each adjustment comes first;
   - GaussianBlur.get_params(0.1, 2), 50,000 draws: mean and deciles of sigma, and the fraction
     of probes that RandomApply(GaussianBlur, 0.5) changes (20,000);
   - the fraction of views that the SimCLR pipeline's RandomHorizontalFlip(0.5),
     RandomApply(ColorJitter, 0.8) and RandomGrayscale(0.2) change, 20,000 probes each;
   - per-channel mean and standard deviation of normalised views of the first 2,000 training
     images, 2 views each, through the whole pipeline.
   - RandomResizedCrop(16, scale=(0.05, 0.4)).get_params on a 32 px image (DINO's local crops),
     50,000 draws: mean and deciles of area fraction and aspect ratio (`local_crop_*`).

Regenerate (needs torch, torchvision, safetensors):
  python3 bench/augment_reference.py CIFAR10_BIN_DIR tests/fixtures/augment_reference.safetensors
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_simclr import MEAN, STD, simclr_transform  # noqa: E402

DECILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def read_batch(path, count):
    raw = np.fromfile(path, np.uint8).reshape(-1, 1 + 3 * 32 * 32)[:count]
    return torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy()).float() / 255


def summary(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "deciles": [float(q) for q in np.quantile(values, DECILES)]}


def pixel_references(test_images):
    """(name, image index, parameters, output) for each transform with fixed parameters."""
    ops = []

    def add(name, index, params, output):
        ops.append((name, index, params, output.to(torch.float32).contiguous()))

    for index, (top, left, h, w) in enumerate([(0, 0, 32, 32), (3, 5, 20, 27), (10, 2, 7, 5), (0, 20, 12, 12)]):
        out = F.resized_crop(test_images[index], top, left, h, w, [32, 32],
                             interpolation=T.InterpolationMode.BILINEAR, antialias=True)
        add(f"crop{index}", index, {"top": top, "left": left, "height": h, "width": w}, out)
    add("flip", 4, {}, F.hflip(test_images[4]))
    add("brightness", 5, {"factor": 1.3}, F.adjust_brightness(test_images[5], 1.3))
    add("contrast_low", 6, {"factor": 0.65}, F.adjust_contrast(test_images[6], 0.65))
    add("contrast_high", 7, {"factor": 1.35}, F.adjust_contrast(test_images[7], 1.35))
    add("saturation", 8, {"factor": 1.4}, F.adjust_saturation(test_images[8], 1.4))
    add("hue_plus", 9, {"shift": 0.08}, F.adjust_hue(test_images[9], 0.08))
    add("hue_minus", 10, {"shift": -0.1}, F.adjust_hue(test_images[10], -0.1))
    add("grayscale", 11, {}, F.rgb_to_grayscale(test_images[11], num_output_channels=3))
    add("normalize", 12, {}, F.normalize(test_images[12], MEAN, STD))
    # ColorJitter's adjustments in a given order (hue, brightness, saturation, contrast).
    img = test_images[13]
    img = F.adjust_hue(img, -0.04)
    img = F.adjust_brightness(img, 0.7)
    img = F.adjust_saturation(img, 1.25)
    img = F.adjust_contrast(img, 1.1)
    add("jitter", 13, {"order": [3, 0, 2, 1], "brightness": 0.7, "contrast": 1.1,
                       "saturation": 1.25, "hue": -0.04}, img)
    # GaussianBlur at the kernel sides the trainer picks for 32, 96 and 224 px images (a tenth
    # of the side, odd: 3, 9, 23), small and large sigma.
    for op, (index, kernel, sigma) in enumerate([(14, 3, 0.5), (15, 3, 2.0), (0, 9, 1.5), (1, 23, 2.0)]):
        add(f"blur{op}", index, {"kernel": kernel, "sigma": sigma},
            F.gaussian_blur(test_images[index], [kernel, kernel], [sigma, sigma]))
    return ops


def applied_fraction(transform, probe, draws):
    """How often `transform` changes `probe`."""
    changed = sum(not torch.equal(transform(probe), probe) for _ in range(draws))
    return changed / draws


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cifar10_bin", help="cifar-10-batches-bin directory")
    p.add_argument("out", help="safetensors file to write")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    test_images = read_batch(os.path.join(a.cifar10_bin, "test_batch.bin"), 16)
    train_images = read_batch(os.path.join(a.cifar10_bin, "data_batch_1.bin"), 2000)

    ops = pixel_references(test_images)

    probe = torch.zeros(3, 32, 32)
    crops = [T.RandomResizedCrop.get_params(probe, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(50_000)]
    area = [h * w / 1024 for (_, _, h, w) in crops]
    aspect = [w / h for (_, _, h, w) in crops]

    jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    draws = [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
             for _ in range(50_000)]
    first = np.bincount([int(d[0][0]) for d in draws], minlength=4) / len(draws)

    # Probes that every application changes: a left-right ramp (flip), a saturated color image
    # (jitter, grayscale).
    ramp = torch.linspace(0, 1, 32).expand(3, 32, 32).contiguous()
    color = test_images[0]
    pipeline = simclr_transform()
    views = torch.stack([pipeline(img) for img in train_images for _ in range(2)])
    # A checkerboard changes under any blur, even sigma 0.1's.
    checkerboard = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2).float().expand(3, 32, 32)
    blur = T.RandomApply([T.GaussianBlur(3, (0.1, 2.0))], p=0.5)

    stats = {
        "crop_area": summary(area),
        "crop_aspect": summary(aspect),
        "brightness": summary([float(d[1]) for d in draws]),
        "contrast": summary([float(d[2]) for d in draws]),
        "saturation": summary([float(d[3]) for d in draws]),
        "hue": summary([float(d[4]) for d in draws]),
        "jitter_first_op": [float(f) for f in first],
        "flip_fraction": applied_fraction(T.RandomHorizontalFlip(0.5), ramp, 20_000),
        "jitter_fraction": applied_fraction(T.RandomApply([jitter], p=0.8), color, 20_000),
        "grayscale_fraction": applied_fraction(T.RandomGrayscale(0.2), color, 20_000),
        "view_channel_mean": views.mean(dim=(0, 2, 3)).tolist(),
        "view_channel_std": views.std(dim=(0, 2, 3)).tolist(),
        "views": len(views),
        # Drawn last, so the draws above keep the random stream of the earlier fixture.
        "blur_sigma": summary([T.GaussianBlur.get_params(0.1, 2.0) for _ in range(50_000)]),
        "blur_fraction": applied_fraction(blur, checkerboard.contiguous(), 20_000),
    }
    # DINO's local crops (scale 0.05 to 0.4 of the 32 px image, resized to 16), drawn after
    # everything above for the same reason.
    local = [T.RandomResizedCrop(16, scale=(0.05, 0.4)).get_params(probe, [0.05, 0.4], [3 / 4, 4 / 3])
             for _ in range(50_000)]
    stats["local_crop_area"] = summary([h * w / 1024 for (_, _, h, w) in local])
    stats["local_crop_aspect"] = summary([w / h for (_, _, h, w) in local])
    tensors = {f"op.{name}": out.numpy() for name, _, _, out in ops}
    metadata = {
        "ops": json.dumps({name: {"image": index, **params} for name, index, params, _ in ops}),
        "stats": json.dumps(stats),
        "command": "python3 bench/augment_reference.py CIFAR10_BIN_DIR OUT",
        "torch": torch.__version__, "torchvision": torchvision.__version__,
    }
    save_file(tensors, a.out, metadata)
    print(json.dumps(stats, indent=1))
    print(f"{a.out}: {len(ops)} transforms, {os.path.getsize(a.out)} bytes")


if __name__ == "__main__":
    main()
