//! SimCLR's augmentations, on square RGB images of any side held as planar `[3][side][side]` f32
//! in [0, 1] (the side is read off the slice's length).
//!
//! Each transform follows torchvision's definition, so numbers from PyTorch recipes carry over:
//! RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter, p) -> RandomGrayscale
//! -> RandomApply(GaussianBlur, p) -> RandomSolarize(p) -> Normalize.
//!
//! Blur and solarization take a probability per view: BYOL, Barlow Twins and VICReg augment
//! their two views differently (e.g. solo-learn's CIFAR-10 presets solarize only the second view).
//!
//! The views of an image are a list ([`AugmentConfig::views`], as lightly's
//! `MultiViewTransform`): groups of views, each with its own output size, crop scale and
//! probabilities (multi-crop: two global views and several small local ones). Without the list,
//! the two views of the keys above, at the input size.

use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use crate::data::cifar10::{CIFAR10_MEAN, CIFAR10_STD, PIXELS, SIDE};
pub use crate::data::transforms::*;

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
    /// The views of each image, as groups (`[[augment.views]]` tables, in order); empty: two
    /// views at the input size with the keys above (`blur_prob` and `solarize_prob` per view).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewSpec>,
}

/// A group of views in `[[augment.views]]`: `count` views of each image at `size` pixels, with
/// its own crop scale and probabilities where given (the shared `[augment]` values otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    /// Views of this kind per image.
    #[serde(default = "one")]
    pub count: usize,
    /// Side of these views in pixels; 0: the input size (the crop is resized back to it).
    #[serde(default)]
    pub size: usize,
    pub crop_scale: Option<[f64; 2]>,
    pub blur_prob: Option<f64>,
    pub solarize_prob: Option<f64>,
}

fn one() -> usize {
    1
}

impl Default for ViewSpec {
    /// One view at the input size with the shared `[augment]` values.
    fn default() -> Self {
        Self {
            count: one(),
            size: 0,
            crop_scale: None,
            blur_prob: None,
            solarize_prob: None,
        }
    }
}

/// One view as drawn: its side (0: the input size), crop scale and probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewRecipe {
    pub size: usize,
    pub crop_scale: [f64; 2],
    pub blur_prob: f64,
    pub solarize_prob: f64,
}

impl ViewRecipe {
    /// The side of this view of an image of `input` pixels.
    pub fn side_for(&self, input: usize) -> usize {
        match self.size {
            0 => input,
            size => size,
        }
    }
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
            views: Vec::new(),
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

    /// Every view of an image, in order: the groups of [`Self::views`] expanded, or the two
    /// views of the per-view keys.
    pub fn view_recipes(&self) -> Vec<ViewRecipe> {
        if self.views.is_empty() {
            return (0..2)
                .map(|which| ViewRecipe {
                    size: 0,
                    crop_scale: self.crop_scale,
                    blur_prob: self.blur_prob.0[which],
                    solarize_prob: self.solarize_prob.0[which],
                })
                .collect();
        }
        let mut recipes = Vec::new();
        for spec in &self.views {
            let recipe = ViewRecipe {
                size: spec.size,
                crop_scale: spec.crop_scale.unwrap_or(self.crop_scale),
                blur_prob: spec.blur_prob.unwrap_or(self.blur_prob.0[0]),
                solarize_prob: spec.solarize_prob.unwrap_or(self.solarize_prob.0[0]),
            };
            recipes.extend(std::iter::repeat_n(recipe, spec.count));
        }
        recipes
    }

    pub fn validate(&self) -> Result<()> {
        for scale in [self.crop_scale]
            .into_iter()
            .chain(self.views.iter().filter_map(|v| v.crop_scale))
        {
            let [s0, s1] = scale;
            ensure!(
                0.0 < s0 && s0 <= s1 && s1 <= 1.0,
                "augment.crop_scale must satisfy 0 < min <= max <= 1, got {scale:?}"
            );
        }
        for (i, view) in self.views.iter().enumerate() {
            ensure!(
                view.count >= 1,
                "augment.views[{i}].count must be at least 1 (leave the group out instead)"
            );
            ensure!(
                view.size == 0 || view.size >= 8,
                "augment.views[{i}].size must be at least 8 pixels (or 0: the input size), got {}",
                view.size
            );
            for (name, p) in [
                ("blur_prob", view.blur_prob),
                ("solarize_prob", view.solarize_prob),
            ] {
                ensure!(
                    p.is_none_or(|p| (0.0..=1.0).contains(&p)),
                    "augment.views[{i}].{name} must be in [0, 1], got {p:?}"
                );
            }
        }
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
    /// `out` (the same size); `which` is 0 for the first view, 1 for the second (of the two
    /// views of the per-view keys).
    pub fn view(&self, image: &[u8], which: usize, rng: &mut impl Rng, out: &mut [f32]) {
        self.sample_view(side_of(image.len()), which, rng)
            .apply(image, self, out);
    }

    /// Draws the random choices of view `which` (0 or 1) of an image of `side` pixels, in the
    /// order torchvision's pipeline draws them.
    pub fn sample_view(&self, side: usize, which: usize, rng: &mut impl Rng) -> ViewParams {
        let recipe = ViewRecipe {
            size: 0,
            crop_scale: self.crop_scale,
            blur_prob: self.blur_prob.0[which],
            solarize_prob: self.solarize_prob.0[which],
        };
        self.sample(side, &recipe, rng)
    }

    /// Draws the random choices of a view made by `recipe` of an image of `side` pixels.
    pub fn sample(&self, side: usize, recipe: &ViewRecipe, rng: &mut impl Rng) -> ViewParams {
        let crop = random_crop_box(side, side, recipe.crop_scale, self.crop_ratio, rng);
        let flip = rng.random_bool(self.flip_prob);
        let jitter = rng
            .random_bool(self.jitter_prob)
            .then(|| JitterParams::sample(self, rng));
        let grayscale = rng.random_bool(self.grayscale_prob);
        let blur_sigma = rng
            .random_bool(recipe.blur_prob)
            .then(|| rng.random_range(self.blur_sigma[0]..=self.blur_sigma[1]) as f32);
        // Drawn only when possible, so runs without solarization keep their random streams.
        let solarize = recipe.solarize_prob > 0.0 && rng.random_bool(recipe.solarize_prob);
        ViewParams {
            side: recipe.side_for(side),
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
    /// Side of the view: the crop is resized to it.
    pub side: usize,
    /// `(top, left, height, width)` of the crop, resized to `side`.
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
    /// The view of `image` (planar RGB bytes) these choices describe, normalised, into `out`
    /// (`3 x side x side` values).
    pub fn apply(&self, image: &[u8], config: &AugmentConfig, out: &mut [f32]) {
        let (top, left, h, w) = self.crop;
        let input = side_of(image.len());
        let side = self.side;
        let mut img = resize_bilinear(&to_float(image), input, input, top, left, h, w, side);
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

/// torchvision's RandomResizedCrop box: `(top, left, height, width)` within an `h x w` image,
/// with `config`'s scale and ratio.
pub fn random_resized_crop_box(
    h: usize,
    w: usize,
    config: &AugmentConfig,
    rng: &mut impl Rng,
) -> (usize, usize, usize, usize) {
    random_crop_box(h, w, config.crop_scale, config.crop_ratio, rng)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::transforms::tests::colorful;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

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
