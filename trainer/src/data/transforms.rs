//! The pixel operations of the augmentations, on planar `[3][side][side]` f32 images in [0, 1],
//! each as torchvision defines it: crop box, bilinear resize, flip, grayscale, the colour
//! adjustments, Gaussian blur, solarize, normalise. `augment` draws their random parameters.

use rand::Rng;

/// Side of a planar square RGB image of `len` values.
pub fn side_of(len: usize) -> usize {
    let side = ((len / 3) as f64).sqrt().round() as usize;
    assert_eq!(3 * side * side, len, "not a planar square RGB image");
    side
}

/// Bytes to [0, 1] floats.
pub fn to_float(image: &[u8]) -> Vec<f32> {
    image.iter().map(|&b| b as f32 / 255.0).collect()
}

/// `(x - mean) / std` per channel: what the network is trained on.
pub fn normalize_into(img: &[f32], mean: &[f32; 3], std: &[f32; 3], out: &mut [f32]) {
    let plane = img.len() / 3;
    for c in 0..3 {
        let range = c * plane..(c + 1) * plane;
        for (o, &x) in out[range.clone()].iter_mut().zip(&img[range]) {
            *o = (x - mean[c]) / std[c];
        }
    }
}

/// [`random_resized_crop_box`] with the area fraction drawn from `scale`, the aspect ratio from
/// `ratio`.
pub fn random_crop_box(
    h: usize,
    w: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut impl Rng,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (log_r0, log_r1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale[0]..=scale[1]);
        let aspect = rng.random_range(log_r0..=log_r1).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return (top, left, ch, cw);
        }
    }
    // Fallback, as torchvision: the largest centred crop within the ratio range.
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio[0] {
        ((w as f64 / ratio[0]).round() as usize, w)
    } else if in_ratio > ratio[1] {
        (h, (h as f64 * ratio[1]).round() as usize)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Bilinear resize of the crop `(top, left, h, w)` of a planar image to `side x side`
/// (half-pixel centres, as `align_corners=False`).
#[allow(clippy::too_many_arguments)]
pub fn resize_bilinear(
    img: &[f32],
    src_h: usize,
    src_w: usize,
    top: usize,
    left: usize,
    h: usize,
    w: usize,
    side: usize,
) -> Vec<f32> {
    let plane = side * side;
    let mut out = vec![0.0; 3 * plane];
    let (sy, sx) = (h as f32 / side as f32, w as f32 / side as f32);
    for y in 0..side {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let (y0, dy) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..side {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, dx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(w - 1);
            for c in 0..3 {
                let at =
                    |yy: usize, xx: usize| img[c * src_h * src_w + (top + yy) * src_w + left + xx];
                let v = (1.0 - dy) * ((1.0 - dx) * at(y0, x0) + dx * at(y0, x1))
                    + dy * ((1.0 - dx) * at(y1, x0) + dx * at(y1, x1));
                out[c * plane + y * side + x] = v;
            }
        }
    }
    out
}

/// PIL's `ImageOps.solarize` (threshold 128) on [0, 1] values: bright pixels are inverted.
pub fn solarize(img: &mut [f32]) {
    for v in img.iter_mut() {
        if *v >= 128.0 / 255.0 {
            *v = 1.0 - *v;
        }
    }
}

pub fn flip_horizontal(img: &mut [f32]) {
    for row in img.chunks_mut(side_of(img.len())) {
        row.reverse();
    }
}

/// ITU-R 601 luma with the weights torchvision's `rgb_to_grayscale` uses on tensors.
fn luma(img: &[f32], i: usize) -> f32 {
    let plane = img.len() / 3;
    0.2989 * img[i] + 0.587 * img[plane + i] + 0.114 * img[2 * plane + i]
}

pub fn grayscale(img: &mut [f32]) {
    let plane = img.len() / 3;
    for i in 0..plane {
        let l = luma(img, i);
        for c in 0..3 {
            img[c * plane + i] = l;
        }
    }
}

/// `factor * img + (1 - factor) * other`, clamped to [0, 1] (torchvision's `_blend`).
fn blend(img: &mut [f32], other: impl Fn(usize) -> f32, factor: f32) {
    let plane = img.len() / 3;
    for c in 0..3 {
        for i in 0..plane {
            let v = &mut img[c * plane + i];
            *v = (factor * *v + (1.0 - factor) * other(i)).clamp(0.0, 1.0);
        }
    }
}

pub fn adjust_brightness(img: &mut [f32], factor: f32) {
    blend(img, |_| 0.0, factor);
}

pub fn adjust_contrast(img: &mut [f32], factor: f32) {
    let plane = img.len() / 3;
    let mean = (0..plane).map(|i| luma(img, i)).sum::<f32>() / plane as f32;
    blend(img, |_| mean, factor);
}

pub fn adjust_saturation(img: &mut [f32], factor: f32) {
    let gray: Vec<f32> = (0..img.len() / 3).map(|i| luma(img, i)).collect();
    blend(img, |i| gray[i], factor);
}

/// Rotates the hue of every pixel by `shift` turns of the color wheel (HSV space).
pub fn adjust_hue(img: &mut [f32], shift: f32) {
    let plane = img.len() / 3;
    for i in 0..plane {
        let (r, g, b) = (img[i], img[plane + i], img[2 * plane + i]);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let chroma = max - min;
        if chroma <= 0.0 {
            continue; // gray pixels have no hue
        }
        let hue = if max == r {
            ((g - b) / chroma).rem_euclid(6.0)
        } else if max == g {
            (b - r) / chroma + 2.0
        } else {
            (r - g) / chroma + 4.0
        } / 6.0;
        let h = (hue + shift).rem_euclid(1.0) * 6.0;
        let x = chroma * (1.0 - ((h % 2.0) - 1.0).abs());
        let (r1, g1, b1) = match h as u32 {
            0 => (chroma, x, 0.0),
            1 => (x, chroma, 0.0),
            2 => (0.0, chroma, x),
            3 => (0.0, x, chroma),
            4 => (x, 0.0, chroma),
            _ => (chroma, 0.0, x),
        };
        img[i] = r1 + min;
        img[plane + i] = g1 + min;
        img[2 * plane + i] = b1 + min;
    }
}

/// Separable gaussian blur with reflect padding (as torchvision's `gaussian_blur`).
pub fn gaussian_blur(img: &[f32], kernel: usize, sigma: f32) -> Vec<f32> {
    let half = (kernel / 2) as isize;
    let weights: Vec<f32> = (-half..=half)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    let weights: Vec<f32> = weights.iter().map(|w| w / total).collect();
    let side = side_of(img.len());
    let reflect = |i: isize| -> usize {
        let n = side as isize;
        let i = if i < 0 { -i } else { i };
        (if i >= n { 2 * (n - 1) - i } else { i }) as usize
    };
    let plane_len = side * side;
    let mut tmp = vec![0.0; img.len()];
    let mut out = vec![0.0; img.len()];
    for c in 0..3 {
        let plane = c * plane_len;
        for y in 0..side {
            for x in 0..side {
                tmp[plane + y * side + x] = weights
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        w * img[plane + y * side + reflect(x as isize + k as isize - half)]
                    })
                    .sum();
            }
        }
        for y in 0..side {
            for x in 0..side {
                out[plane + y * side + x] = weights
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        w * tmp[plane + reflect(y as isize + k as isize - half) * side + x]
                    })
                    .sum();
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::cifar10::{CIFAR10_MEAN, CIFAR10_STD, PIXELS, SIDE};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A planar image whose every value is distinct and in (0, 1).
    pub fn ramp() -> Vec<f32> {
        (0..3 * PIXELS)
            .map(|i| (i as f32 + 0.5) / (3 * PIXELS) as f32)
            .collect()
    }

    pub fn colorful(seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..3 * PIXELS).map(|_| rng.random::<f32>()).collect()
    }

    #[test]
    fn flip_reverses_columns() {
        let src = ramp();
        let mut img = src.clone();
        flip_horizontal(&mut img);
        for c in 0..3 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    assert_eq!(
                        img[c * PIXELS + y * SIDE + x],
                        src[c * PIXELS + y * SIDE + SIDE - 1 - x]
                    );
                }
            }
        }
    }

    #[test]
    fn grayscale_gives_equal_channels_with_luma_weights() {
        let mut img = colorful(1);
        let expected = 0.2989 * img[5] + 0.587 * img[PIXELS + 5] + 0.114 * img[2 * PIXELS + 5];
        grayscale(&mut img);
        for i in 0..PIXELS {
            assert_eq!(img[i], img[PIXELS + i]);
            assert_eq!(img[i], img[2 * PIXELS + i]);
        }
        assert!((img[5] - expected).abs() < 1e-6);
    }

    #[test]
    fn factor_one_adjustments_and_full_turn_hue_are_identity() {
        let src = colorful(4);
        let mut img = src.clone();
        adjust_brightness(&mut img, 1.0);
        adjust_contrast(&mut img, 1.0);
        adjust_saturation(&mut img, 1.0);
        adjust_hue(&mut img, 0.0);
        for (a, b) in img.iter().zip(&src) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn hue_shift_of_a_third_rotates_red_to_green() {
        let mut img = vec![0.0; 3 * PIXELS];
        img[..PIXELS].fill(1.0); // pure red
        adjust_hue(&mut img, 1.0 / 3.0);
        assert!(
            img[0].abs() < 1e-6 && (img[PIXELS] - 1.0).abs() < 1e-6 && img[2 * PIXELS].abs() < 1e-6
        );
    }

    #[test]
    fn brightness_zero_is_black_and_saturation_zero_is_gray() {
        let mut img = colorful(5);
        adjust_brightness(&mut img, 0.0);
        assert!(img.iter().all(|&v| v == 0.0));
        let mut img = colorful(6);
        adjust_saturation(&mut img, 0.0);
        for i in 0..PIXELS {
            assert!((img[i] - img[PIXELS + i]).abs() < 1e-6);
        }
    }

    #[test]
    fn resizing_the_whole_image_is_identity() {
        let src = ramp();
        let out = resize_bilinear(&src, SIDE, SIDE, 0, 0, SIDE, SIDE, SIDE);
        for (a, b) in out.iter().zip(&src) {
            assert!((a - b).abs() < 1e-6);
        }
        // A 1-pixel crop upsamples to a constant image of that pixel.
        let out = resize_bilinear(&src, SIDE, SIDE, 3, 4, 1, 1, SIDE);
        assert!(out[..PIXELS].iter().all(|&v| v == src[3 * SIDE + 4]));
    }

    #[test]
    fn blur_keeps_constant_images_and_smooths_an_impulse() {
        let flat = vec![0.25; 3 * PIXELS];
        for v in gaussian_blur(&flat, 3, 1.0) {
            assert!((v - 0.25).abs() < 1e-6);
        }
        let mut impulse = vec![0.0; 3 * PIXELS];
        impulse[16 * SIDE + 16] = 1.0;
        let out = gaussian_blur(&impulse, 3, 1.0);
        assert!(out[16 * SIDE + 16] < 1.0 && out[16 * SIDE + 17] > 0.0);
        let sum: f32 = out[..PIXELS].iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "blur must keep the mass, got {sum}"
        );
    }

    #[test]
    fn normalize_uses_mean_and_std() {
        let img = vec![0.5; 3 * PIXELS];
        let mut out = vec![0.0; 3 * PIXELS];
        normalize_into(&img, &CIFAR10_MEAN, &CIFAR10_STD, &mut out);
        assert!((out[0] - (0.5 - 0.4914) / 0.2470).abs() < 1e-6);
        assert!((out[2 * PIXELS] - (0.5 - 0.4465) / 0.2616).abs() < 1e-6);
    }

    #[test]
    fn solarize_inverts_pixels_from_128_up() {
        let mut img = vec![0.0, 127.0 / 255.0, 128.0 / 255.0, 1.0];
        solarize(&mut img);
        assert_eq!(img, vec![0.0, 127.0 / 255.0, 1.0 - 128.0 / 255.0, 0.0]);
    }
}
