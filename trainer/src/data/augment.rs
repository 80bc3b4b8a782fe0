//! SimCLR's augmentations, on square RGB images of any side held as planar `[3][side][side]` f32
//! in [0, 1] (the side is read off the slice's length).
//!
//! Each transform follows torchvision's definition, so numbers from PyTorch recipes carry over:
//! RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter, p) -> RandomGrayscale
//! -> RandomApply(GaussianBlur, p) -> RandomSolarize(p) -> Normalize.
//!
//! Blur and solarization take a probability per view: BYOL, Barlow Twins and VICReg augment
//! their two views differently (e.g. solo-learn's CIFAR-10 presets solarize only the second view).

use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// CIFAR-10 per-channel mean and standard deviation (of the training set, in [0, 1]).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Side of CIFAR-10's images.
pub const SIDE: usize = 32;
pub const PIXELS: usize = SIDE * SIDE;

/// Side of a planar square RGB image of `len` values.
pub fn side_of(len: usize) -> usize {
    let side = ((len / 3) as f64).sqrt().round() as usize;
    assert_eq!(3 * side * side, len, "not a planar square RGB image");
    side
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Fraction of the image area a crop covers, drawn uniformly from this range.
    pub crop_scale: [f64; 2],
    /// Aspect ratio of a crop, drawn log-uniformly from this range.
    pub crop_ratio: [f64; 2],
    pub flip_prob: f64,
    /// Probability that color jitter is applied at all.
    pub jitter_prob: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    /// Hue shift, as a fraction of the color wheel, drawn from [-hue, hue]; at most 0.5.
    pub hue: f64,
    pub grayscale_prob: f64,
    /// Probability of Gaussian blur, for [first view, second view] (one number sets both).
    /// Off by default: at 32 px it removes the detail the network needs (the SimCLR CIFAR code
    /// and lightly leave it out; solo-learn's MoCo v2+ preset uses 0.5).
    pub blur_prob: PerView,
    pub blur_sigma: [f64; 2],
    /// Side of the blur kernel (odd); 0: a tenth of the image side, made odd, at least 3 (the
    /// SimCLR paper's rule: 3 at 32 px, 9 at 96 px, 23 at 224 px).
    pub blur_kernel: usize,
    /// Probability of solarization (pixels >= 128/255 inverted, as PIL's `solarize`), for
    /// [first view, second view] (one number sets both).
    pub solarize_prob: PerView,
    /// Per-channel mean and std of `Normalize`, in [0, 1]. Unset: the dataset's published
    /// values (CIFAR-10's), else computed from the training images when a run starts; the run's
    /// `config.toml` then records the values used.
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_scale: [0.08, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_prob: 0.5,
            jitter_prob: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            grayscale_prob: 0.2,
            blur_prob: PerView([0.0; 2]),
            blur_sigma: [0.1, 2.0],
            blur_kernel: 0,
            solarize_prob: PerView([0.0; 2]),
            mean: None,
            std: None,
        }
    }
}

impl AugmentConfig {
    /// solo-learn's CIFAR-10 `asymmetric.yaml` (BYOL and Barlow Twins presets): saturation 0.2,
    /// no blur, solarization on the second view only (p 0.2).
    pub fn asymmetric() -> Self {
        Self {
            saturation: 0.2,
            solarize_prob: PerView([0.0, 0.2]),
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let [s0, s1] = self.crop_scale;
        ensure!(
            0.0 < s0 && s0 <= s1 && s1 <= 1.0,
            "augment.crop_scale must satisfy 0 < min <= max <= 1, got {:?}",
            self.crop_scale
        );
        let [r0, r1] = self.crop_ratio;
        ensure!(
            0.0 < r0 && r0 <= r1,
            "augment.crop_ratio must satisfy 0 < min <= max, got {:?}",
            self.crop_ratio
        );
        for (name, p) in [
            ("flip_prob", self.flip_prob),
            ("jitter_prob", self.jitter_prob),
            ("grayscale_prob", self.grayscale_prob),
            ("blur_prob", self.blur_prob.0[0]),
            ("blur_prob", self.blur_prob.0[1]),
            ("solarize_prob", self.solarize_prob.0[0]),
            ("solarize_prob", self.solarize_prob.0[1]),
        ] {
            ensure!(
                (0.0..=1.0).contains(&p),
                "augment.{name} must be in [0, 1], got {p}"
            );
        }
        ensure!(
            self.brightness >= 0.0 && self.contrast >= 0.0 && self.saturation >= 0.0,
            "augment.brightness, contrast and saturation must be >= 0"
        );
        ensure!(
            (0.0..=0.5).contains(&self.hue),
            "augment.hue must be in [0, 0.5], got {}",
            self.hue
        );
        ensure!(
            self.blur_kernel == 0 || self.blur_kernel % 2 == 1,
            "augment.blur_kernel must be odd (or 0: a tenth of the image side), got {}",
            self.blur_kernel
        );
        ensure!(
            0.0 < self.blur_sigma[0] && self.blur_sigma[0] <= self.blur_sigma[1],
            "augment.blur_sigma must satisfy 0 < min <= max"
        );
        ensure!(
            self.std.is_none_or(|std| std.iter().all(|&s| s > 0.0)),
            "augment.std must be positive"
        );
        ensure!(
            self.mean.is_some() == self.std.is_some(),
            "augment.mean and augment.std go together: give both or neither"
        );
        Ok(())
    }

    /// The `Normalize` mean and std: the configured ones, CIFAR-10's when unset (a run sets
    /// them from its data before training; see [`AugmentConfig::mean`]).
    pub fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        (
            self.mean.unwrap_or(CIFAR10_MEAN),
            self.std.unwrap_or(CIFAR10_STD),
        )
    }

    /// The blur kernel's side for images of `side` pixels.
    pub fn blur_kernel_for(&self, side: usize) -> usize {
        match self.blur_kernel {
            0 => ((side / 10) | 1).max(3),
            k => k,
        }
    }

    /// One random view of `image` (planar RGB bytes, 3 x side x side), normalised, written to
    /// `out` (the same size); `which` is 0 for the first view, 1 for the second.
    pub fn view(&self, image: &[u8], which: usize, rng: &mut impl Rng, out: &mut [f32]) {
        self.sample_view(side_of(image.len()), which, rng)
            .apply(image, self, out);
    }

    /// Draws the random choices of view `which` (0 or 1) of an image of `side` pixels, in the
    /// order torchvision's pipeline draws them.
    pub fn sample_view(&self, side: usize, which: usize, rng: &mut impl Rng) -> ViewParams {
        let crop = random_resized_crop_box(side, side, self, rng);
        let flip = rng.random_bool(self.flip_prob);
        let jitter = rng
            .random_bool(self.jitter_prob)
            .then(|| JitterParams::sample(self, rng));
        let grayscale = rng.random_bool(self.grayscale_prob);
        let blur_sigma = rng
            .random_bool(self.blur_prob.0[which])
            .then(|| rng.random_range(self.blur_sigma[0]..=self.blur_sigma[1]) as f32);
        // Drawn only when possible, so runs without solarization keep their random streams.
        let solarize_prob = self.solarize_prob.0[which];
        let solarize = solarize_prob > 0.0 && rng.random_bool(solarize_prob);
        ViewParams {
            crop,
            flip,
            jitter,
            grayscale,
            blur_sigma,
            solarize,
        }
    }
}

/// A probability for each of the two views; in TOML one number sets both, `[a, b]` each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "OneOrTwo")]
pub struct PerView(pub [f64; 2]);

#[derive(Deserialize)]
#[serde(untagged, expecting = "a probability, or [first view, second view]")]
enum OneOrTwo {
    One(f64),
    Two([f64; 2]),
}

impl From<OneOrTwo> for PerView {
    fn from(value: OneOrTwo) -> Self {
        match value {
            OneOrTwo::One(p) => Self([p, p]),
            OneOrTwo::Two(pair) => Self(pair),
        }
    }
}

/// The random choices of one view (what torchvision's transforms draw in `get_params`).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewParams {
    /// `(top, left, height, width)` of the crop, resized back to the image's side.
    pub crop: (usize, usize, usize, usize),
    pub flip: bool,
    /// `None`: color jitter not applied to this view.
    pub jitter: Option<JitterParams>,
    pub grayscale: bool,
    /// `None`: no blur.
    pub blur_sigma: Option<f32>,
    pub solarize: bool,
}

impl ViewParams {
    /// The view of `image` (planar RGB bytes) these choices describe, normalised, into `out`.
    pub fn apply(&self, image: &[u8], config: &AugmentConfig, out: &mut [f32]) {
        let (top, left, h, w) = self.crop;
        let side = side_of(image.len());
        let mut img = resize_bilinear(&to_float(image), side, side, top, left, h, w, side);
        if self.flip {
            flip_horizontal(&mut img);
        }
        if let Some(jitter) = &self.jitter {
            jitter.apply(&mut img);
        }
        if self.grayscale {
            grayscale(&mut img);
        }
        if let Some(sigma) = self.blur_sigma {
            img = gaussian_blur(&img, config.blur_kernel_for(side), sigma);
        }
        if self.solarize {
            solarize(&mut img);
        }
        let (mean, std) = config.normalization();
        normalize_into(&img, &mean, &std, out);
    }
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

/// torchvision's RandomResizedCrop box: `(top, left, height, width)` within an `h x w` image.
pub fn random_resized_crop_box(
    h: usize,
    w: usize,
    config: &AugmentConfig,
    rng: &mut impl Rng,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (log_r0, log_r1) = (config.crop_ratio[0].ln(), config.crop_ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.random_range(config.crop_scale[0]..=config.crop_scale[1]);
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
    let (ch, cw) = if in_ratio < config.crop_ratio[0] {
        ((w as f64 / config.crop_ratio[0]).round() as usize, w)
    } else if in_ratio > config.crop_ratio[1] {
        (h, (h as f64 * config.crop_ratio[1]).round() as usize)
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

/// torchvision's ColorJitter: the four adjustments in a random order, each with a random factor
/// (`None` where its strength is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct JitterParams {
    /// 0 brightness, 1 contrast, 2 saturation, 3 hue.
    pub order: [usize; 4],
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    /// Shift in turns of the color wheel.
    pub hue: Option<f32>,
}

impl JitterParams {
    /// Factors uniform in `[max(0, 1 - s), 1 + s]`, hue shift uniform in `[-hue, hue]`; drawn
    /// in the (shuffled) order they are applied.
    pub fn sample(config: &AugmentConfig, rng: &mut impl Rng) -> Self {
        let mut order = [0, 1, 2, 3];
        order.shuffle(rng);
        let mut params = Self {
            order,
            brightness: None,
            contrast: None,
            saturation: None,
            hue: None,
        };
        fn factor(strength: f64, rng: &mut impl Rng) -> Option<f32> {
            (strength > 0.0)
                .then(|| rng.random_range((1.0 - strength).max(0.0)..=1.0 + strength) as f32)
        }
        for op in order {
            match op {
                0 => params.brightness = factor(config.brightness, rng),
                1 => params.contrast = factor(config.contrast, rng),
                2 => params.saturation = factor(config.saturation, rng),
                _ => {
                    params.hue = (config.hue > 0.0)
                        .then(|| rng.random_range(-config.hue..=config.hue) as f32)
                }
            }
        }
        params
    }

    pub fn apply(&self, img: &mut [f32]) {
        for op in self.order {
            match (
                op,
                self.brightness,
                self.contrast,
                self.saturation,
                self.hue,
            ) {
                (0, Some(f), ..) => adjust_brightness(img, f),
                (1, _, Some(f), ..) => adjust_contrast(img, f),
                (2, _, _, Some(f), _) => adjust_saturation(img, f),
                (3, .., Some(shift)) => adjust_hue(img, shift),
                _ => {}
            }
        }
    }
}

/// A random color jitter of `img` (see [`JitterParams`]).
pub fn color_jitter(img: &mut [f32], config: &AugmentConfig, rng: &mut impl Rng) {
    JitterParams::sample(config, rng).apply(img);
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
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A planar image whose every value is distinct and in (0, 1).
    fn ramp() -> Vec<f32> {
        (0..3 * PIXELS)
            .map(|i| (i as f32 + 0.5) / (3 * PIXELS) as f32)
            .collect()
    }

    fn colorful(seed: u64) -> Vec<f32> {
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
    fn jitter_at_strength_zero_is_identity() {
        let config = AugmentConfig {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            ..Default::default()
        };
        let src = colorful(2);
        let mut img = src.clone();
        color_jitter(&mut img, &config, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(img, src);
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
    fn crops_stay_in_bounds_and_respect_scale() {
        let config = AugmentConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..10_000 {
            let (top, left, h, w) = random_resized_crop_box(SIDE, SIDE, &config, &mut rng);
            assert!(h >= 1 && w >= 1 && top + h <= SIDE && left + w <= SIDE);
        }
        let whole = AugmentConfig {
            crop_scale: [1.0, 1.0],
            crop_ratio: [1.0, 1.0],
            ..Default::default()
        };
        assert_eq!(
            random_resized_crop_box(SIDE, SIDE, &whole, &mut rng),
            (0, 0, SIDE, SIDE)
        );
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
    fn views_are_reproducible_from_the_seed_and_differ_between_draws() {
        let config = AugmentConfig::default();
        let image: Vec<u8> = (0..3 * PIXELS).map(|i| (i * 7 % 256) as u8).collect();
        let view = |seed| {
            let mut out = vec![0.0; 3 * PIXELS];
            config.view(&image, 0, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
            out
        };
        assert_eq!(view(11), view(11));
        assert_ne!(view(11), view(12));
    }

    #[test]
    fn views_keep_the_image_side_and_blur_scales_with_it() {
        let config = AugmentConfig {
            blur_prob: PerView([1.0, 1.0]),
            ..Default::default()
        };
        assert_eq!([32, 96, 224].map(|s| config.blur_kernel_for(s)), [3, 9, 23]);
        let side = 96;
        let image: Vec<u8> = (0..3 * side * side).map(|i| (i * 13 % 256) as u8).collect();
        let mut out = vec![f32::NAN; 3 * side * side];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        config.view(&image, 0, &mut rng, &mut out);
        assert!(out.iter().all(|v| v.is_finite()));
        // A whole-image crop and nothing else is the normalised image itself, at any side.
        let plain = AugmentConfig {
            crop_scale: [1.0, 1.0],
            crop_ratio: [1.0, 1.0],
            flip_prob: 0.0,
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            mean: Some([0.5, 0.4, 0.3]),
            std: Some([0.2, 0.25, 0.5]),
            ..Default::default()
        };
        plain.view(&image, 0, &mut rng, &mut out);
        let plane = side * side;
        for i in [0, 5000, plane + 17, 3 * plane - 1] {
            let c = i / plane;
            let expected = (image[i] as f32 / 255.0 - [0.5, 0.4, 0.3][c]) / [0.2, 0.25, 0.5][c];
            assert!(
                (out[i] - expected).abs() < 1e-5,
                "{i}: {} vs {expected}",
                out[i]
            );
        }
    }

    #[test]
    fn solarize_inverts_pixels_from_128_up() {
        let mut img = vec![0.0, 127.0 / 255.0, 128.0 / 255.0, 1.0];
        solarize(&mut img);
        assert_eq!(img, vec![0.0, 127.0 / 255.0, 1.0 - 128.0 / 255.0, 0.0]);
    }

    #[test]
    fn per_view_probabilities_apply_to_their_view_only() {
        #[derive(Deserialize)]
        struct T {
            p: PerView,
        }
        let one: T = toml::from_str("p = 0.3").unwrap();
        assert_eq!(one.p, PerView([0.3, 0.3]));
        let two: T = toml::from_str("p = [0.0, 0.2]").unwrap();
        assert_eq!(two.p, PerView([0.0, 0.2]));
        let err = toml::from_str::<T>("p = \"high\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("[first view, second view]"), "{err}");

        // Solarization on the second view only (solo-learn's asymmetric CIFAR-10 preset, with
        // p 1): the first view never is solarized, the second always.
        let config = AugmentConfig {
            solarize_prob: PerView([0.0, 1.0]),
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            assert!(!config.sample_view(SIDE, 0, &mut rng).solarize);
            assert!(config.sample_view(SIDE, 1, &mut rng).solarize);
        }
    }
}
