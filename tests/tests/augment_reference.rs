//! The trainer's augmentations against torchvision's (`tests/fixtures/augment_reference.safetensors`,
//! written by `bench/augment_reference.py` with torchvision 0.29 on the same real CIFAR-10 images).
//!
//! Pixel by pixel for fixed parameters (each transform, ColorJitter's composition, and
//! GaussianBlur at kernel sides 3 to 23), and in distribution for the random choices (crop area
//! and aspect ratio, jitter factors and order, blur sigma, how often flip, jitter, grayscale and
//! blur apply) and for whole views (per-channel mean and std).
//! Each statistical tolerance is about 5 standard errors of the difference of two samples of
//! these sizes; `statistics_reject_wrong_laws` shows that plausible wrong recipes fail them.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use trainer::data::augment::{self, AugmentConfig, JitterParams, ViewSpec, PIXELS, SIDE};
use trainer::data::{self, Splits};
use trainer::named_params::read_safetensors;

struct Reference {
    ops: BTreeMap<String, Vec<f32>>,
    params: Value,
    stats: Value,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/augment_reference.safetensors"
        );
        let (tensors, metadata) = read_safetensors(std::path::Path::new(path)).unwrap();
        let ops = tensors
            .into_iter()
            .map(|(name, (_, values))| (name.trim_start_matches("op.").to_string(), values))
            .collect();
        Reference {
            ops,
            params: serde_json::from_str(&metadata["ops"]).unwrap(),
            stats: serde_json::from_str(&metadata["stats"]).unwrap(),
        }
    })
}

fn cifar() -> &'static Splits {
    static SPLITS: OnceLock<Splits> = OnceLock::new();
    SPLITS.get_or_init(|| data::load_cifar10_dir(&e2e::cifar10_bin()).unwrap())
}

/// The test image an op of the fixture ran on, as [0, 1] floats, and the op's parameters.
fn input(op: &str) -> (Vec<f32>, &'static Value) {
    let params = &reference().params[op];
    let index = params["image"].as_u64().unwrap() as usize;
    (augment::to_float(cifar().test.image(index)), params)
}

fn assert_pixels(op: &str, ours: &[f32], tolerance: f32) {
    let theirs = &reference().ops[op];
    let diff = e2e::max_abs_diff(ours, theirs);
    eprintln!("{op}: max difference {diff:.2e}");
    assert!(
        diff <= tolerance,
        "{op}: differs from torchvision by up to {diff:.2e} (tolerance {tolerance:.0e})"
    );
}

fn factor(params: &Value, key: &str) -> f32 {
    params[key].as_f64().unwrap() as f32
}

#[test]
fn each_transform_matches_torchvision_pixel_by_pixel() {
    for op in ["crop0", "crop1", "crop2", "crop3"] {
        let (img, p) = input(op);
        let at = |key: &str| p[key].as_u64().unwrap() as usize;
        let out = augment::resize_bilinear(
            &img,
            SIDE,
            SIDE,
            at("top"),
            at("left"),
            at("height"),
            at("width"),
            SIDE,
        );
        assert_pixels(op, &out, 1e-6);
    }
    let (mut img, _) = input("flip");
    augment::flip_horizontal(&mut img);
    assert_pixels("flip", &img, 0.0);

    let adjustments: [(&str, fn(&mut [f32], f32), &str); 6] = [
        ("brightness", augment::adjust_brightness, "factor"),
        ("contrast_low", augment::adjust_contrast, "factor"),
        ("contrast_high", augment::adjust_contrast, "factor"),
        ("saturation", augment::adjust_saturation, "factor"),
        ("hue_plus", augment::adjust_hue, "shift"),
        ("hue_minus", augment::adjust_hue, "shift"),
    ];
    for (op, adjust, key) in adjustments {
        let (mut img, p) = input(op);
        adjust(&mut img, factor(p, key));
        assert_pixels(op, &img, 2e-6);
    }

    let (mut img, _) = input("grayscale");
    augment::grayscale(&mut img);
    assert_pixels("grayscale", &img, 1e-6);

    let (img, _) = input("normalize");
    let mut out = vec![0.0; 3 * PIXELS];
    augment::normalize_into(
        &img,
        &augment::CIFAR10_MEAN,
        &augment::CIFAR10_STD,
        &mut out,
    );
    assert_pixels("normalize", &out, 1e-6);

    let (mut img, p) = input("jitter");
    let order: Vec<usize> = p["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    JitterParams {
        order: order.try_into().unwrap(),
        brightness: Some(factor(p, "brightness")),
        contrast: Some(factor(p, "contrast")),
        saturation: Some(factor(p, "saturation")),
        hue: Some(factor(p, "hue")),
    }
    .apply(&mut img);
    assert_pixels("jitter", &img, 2e-6);

    // Kernel sides 3, 9 and 23 (the trainer's at 32, 96 and 224 px), sigma 0.5 to 2.
    for op in ["blur0", "blur1", "blur2", "blur3"] {
        let (img, p) = input(op);
        let kernel = p["kernel"].as_u64().unwrap() as usize;
        assert_pixels(
            op,
            &augment::gaussian_blur(&img, kernel, factor(p, "sigma")),
            1e-6,
        );
    }
}

#[test]
fn a_three_tap_blur_is_not_torchvisions_at_large_sides() {
    // What the trainer did before its kernel followed the image side: 3 taps at every size.
    // At sigma 2 that is nearly a box filter, far from the 23-tap reference of the same sigma.
    let (img, p) = input("blur3");
    let three_taps = augment::gaussian_blur(&img, 3, factor(p, "sigma"));
    let diff = e2e::max_abs_diff(&three_taps, &reference().ops["blur3"]);
    assert!(
        diff > 1e-2,
        "a 3-tap blur is within {diff:.2e} of the 23-tap one"
    );
}

/// Mean and deciles of a sample, as `bench/augment_reference.py` summarises it.
fn summary(values: &mut [f64]) -> (f64, Vec<f64>) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    // numpy's default (linear) quantile.
    let quantile = |q: f64| {
        let position = q * (values.len() - 1) as f64;
        let (low, frac) = (position.floor() as usize, position.fract());
        values[low] + frac * (values[(low + 1).min(values.len() - 1)] - values[low])
    };
    let deciles = (1..10).map(|d| quantile(d as f64 / 10.0)).collect();
    (mean, deciles)
}

/// Whether a sample's mean and deciles are within `tolerance` of the reference's `key`.
fn compare(key: &str, values: &mut [f64], tolerance: f64) -> Result<(), String> {
    let (mean, deciles) = summary(values);
    let theirs = &reference().stats[key];
    let mut worst = (mean - theirs["mean"].as_f64().unwrap()).abs();
    for (ours, theirs) in deciles.iter().zip(theirs["deciles"].as_array().unwrap()) {
        worst = worst.max((ours - theirs.as_f64().unwrap()).abs());
    }
    eprintln!("{key}: worst difference {worst:.4} (tolerance {tolerance})");
    if worst <= tolerance {
        Ok(())
    } else {
        Err(format!(
            "{key}: mean or a decile differs from torchvision's by {worst:.4} (tolerance {tolerance})"
        ))
    }
}

const DRAWS: usize = 50_000;

fn crop_statistics(
    crop: impl FnMut(&mut ChaCha8Rng) -> (usize, usize, usize, usize),
) -> [Result<(), String>; 2] {
    crop_statistics_of("crop", crop)
}

/// [`crop_statistics`] against the reference's `{key}_area` and `{key}_aspect`.
fn crop_statistics_of(
    key: &str,
    mut crop: impl FnMut(&mut ChaCha8Rng) -> (usize, usize, usize, usize),
) -> [Result<(), String>; 2] {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (mut area, mut aspect): (Vec<f64>, Vec<f64>) = (0..DRAWS)
        .map(|_| {
            let (_, _, h, w) = crop(&mut rng);
            ((h * w) as f64 / PIXELS as f64, w as f64 / h as f64)
        })
        .unzip();
    [
        compare(&format!("{key}_area"), &mut area, 0.015),
        compare(&format!("{key}_aspect"), &mut aspect, 0.015),
    ]
}

/// A multi-crop list's local views (16 px from 5-40 % of the image, DINO's) draw their crops as
/// torchvision's `RandomResizedCrop(16, scale=(0.05, 0.4))` does, through the view list.
#[test]
fn local_views_crop_as_torchvision_with_their_own_scale() {
    let config = AugmentConfig {
        views: vec![
            ViewSpec {
                count: 2,
                ..ViewSpec::default()
            },
            ViewSpec {
                count: 6,
                size: 16,
                crop_scale: Some([0.05, 0.4]),
                ..ViewSpec::default()
            },
        ],
        ..AugmentConfig::default()
    };
    let recipes = config.view_recipes();
    assert_eq!(recipes.len(), 8);
    let local = recipes[2];
    assert_eq!((local.size, local.crop_scale), (16, [0.05, 0.4]));
    for result in crop_statistics_of("local_crop", |rng| {
        let view = config.sample(SIDE, &local, rng);
        assert_eq!(view.side, 16);
        view.crop
    }) {
        result.unwrap();
    }
    // The global views keep the shared scale: their crops are the two-view ones.
    assert_eq!(recipes[0].crop_scale, config.crop_scale);
}

#[test]
fn crop_jitter_and_probabilities_follow_torchvision_laws() {
    let config = AugmentConfig::default();
    for result in crop_statistics(|rng| augment::random_resized_crop_box(SIDE, SIDE, &config, rng))
    {
        result.unwrap();
    }

    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let draws: Vec<JitterParams> = (0..DRAWS)
        .map(|_| JitterParams::sample(&config, &mut rng))
        .collect();
    let pick = |f: fn(&JitterParams) -> Option<f32>| -> Vec<f64> {
        draws.iter().map(|d| f(d).unwrap() as f64).collect()
    };
    compare("brightness", &mut pick(|d| d.brightness), 0.015).unwrap();
    compare("contrast", &mut pick(|d| d.contrast), 0.015).unwrap();
    compare("saturation", &mut pick(|d| d.saturation), 0.015).unwrap();
    compare("hue", &mut pick(|d| d.hue), 0.004).unwrap();
    let first = &reference().stats["jitter_first_op"];
    for op in 0..4 {
        let ours = draws.iter().filter(|d| d.order[0] == op).count() as f64 / DRAWS as f64;
        let theirs = first[op].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() < 0.012,
            "adjustment {op} comes first in {ours:.4} of draws, torchvision {theirs:.4}"
        );
    }

    let views: Vec<_> = (0..20_000)
        .map(|_| config.sample_view(SIDE, 0, &mut rng))
        .collect();
    let fraction = |f: fn(&augment::ViewParams) -> bool| {
        views.iter().filter(|v| f(v)).count() as f64 / views.len() as f64
    };
    for (key, ours) in [
        ("flip_fraction", fraction(|v| v.flip)),
        ("jitter_fraction", fraction(|v| v.jitter.is_some())),
        ("grayscale_fraction", fraction(|v| v.grayscale)),
    ] {
        let theirs = reference().stats[key].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() < 0.02,
            "{key}: {ours:.4} of views, torchvision {theirs:.4}"
        );
    }
}

#[test]
fn blur_sigma_and_probability_follow_torchvision_laws() {
    // MoCo v2's blur: p 0.5, sigma uniform in [0.1, 2] (torchvision's GaussianBlur.get_params).
    let config = AugmentConfig {
        blur_prob: augment::PerView([0.5, 0.5]),
        ..AugmentConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let views: Vec<_> = (0..DRAWS)
        .map(|i| config.sample_view(SIDE, i % 2, &mut rng))
        .collect();
    let mut sigmas: Vec<f64> = views
        .iter()
        .filter_map(|v| v.blur_sigma.map(f64::from))
        .collect();
    let ours = sigmas.len() as f64 / DRAWS as f64;
    let theirs = reference().stats["blur_fraction"].as_f64().unwrap();
    assert!(
        (ours - theirs).abs() < 0.02,
        "blur applies to {ours:.4} of views, torchvision's to {theirs:.4}"
    );
    // About 25,000 sigmas against 50,000: 5 standard errors of a decile's difference is 0.03.
    compare("blur_sigma", &mut sigmas, 0.03).unwrap();
    // A log-uniform sigma (a plausible wrong law) fails the same check.
    let mut log_uniform: Vec<f64> = (0..DRAWS)
        .map(|_| rng.random_range(0.1f64.ln()..=2.0f64.ln()).exp())
        .collect();
    assert!(compare("blur_sigma", &mut log_uniform, 0.03).is_err());
}

#[test]
fn whole_views_have_torchvision_channel_statistics() {
    // The same 2,000 training images, 2 views each, as the reference.
    let config = AugmentConfig::default();
    let train = &cifar().train;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut sums = [[0.0f64; 2]; 3];
    let mut view = vec![0.0; 3 * PIXELS];
    let views = 4000;
    for i in 0..views {
        config.view(train.image(i / 2), i % 2, &mut rng, &mut view);
        for (c, sum) in sums.iter_mut().enumerate() {
            for &v in &view[c * PIXELS..(c + 1) * PIXELS] {
                sum[0] += v as f64;
                sum[1] += (v as f64).powi(2);
            }
        }
    }
    let stats = &reference().stats;
    let count = (views * PIXELS) as f64;
    for (c, [sum, squares]) in sums.iter().enumerate() {
        let mean = sum / count;
        let std = (squares / count - mean * mean).sqrt();
        let their_mean = stats["view_channel_mean"][c].as_f64().unwrap();
        let their_std = stats["view_channel_std"][c].as_f64().unwrap();
        eprintln!("channel {c}: mean {mean:.4} vs {their_mean:.4}, std {std:.4} vs {their_std:.4}");
        assert!(
            (mean - their_mean).abs() < 0.05,
            "channel {c}: views have mean {mean:.4}, torchvision's {their_mean:.4}"
        );
        assert!(
            (std - their_std).abs() < 0.03,
            "channel {c}: views have std {std:.4}, torchvision's {their_std:.4}"
        );
    }
}

#[test]
fn statistics_reject_wrong_laws() {
    // Crop scale drawn uniformly in side length instead of area.
    let [area, _] = crop_statistics(|rng| {
        let side = rng.random_range(0.08f64.sqrt()..=1.0);
        let aspect = rng
            .random_range((3.0f64 / 4.0).ln()..=(4.0f64 / 3.0).ln())
            .exp();
        let area = side * side * PIXELS as f64;
        let w = ((area * aspect).sqrt().round() as usize).clamp(1, SIDE);
        let h = ((area / aspect).sqrt().round() as usize).clamp(1, SIDE);
        (0, 0, h, w)
    });
    assert!(area.is_err(), "a crop scale uniform in side must fail");
    // Aspect ratio uniform instead of log-uniform.
    let config = AugmentConfig::default();
    let [_, aspect] = crop_statistics(|rng| {
        let area = rng.random_range(0.08..=1.0) * PIXELS as f64;
        let aspect: f64 = rng.random_range(0.75..=4.0 / 3.0);
        let w = (area * aspect).sqrt().round() as usize;
        let h = (area / aspect).sqrt().round() as usize;
        if w <= SIDE && h <= SIDE {
            (0, 0, h, w)
        } else {
            augment::random_resized_crop_box(SIDE, SIDE, &config, rng)
        }
    });
    assert!(aspect.is_err(), "a uniform aspect ratio must fail");
    // Jitter factors drawn from [1 - s/2, 1 + s/2].
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut narrow: Vec<f64> = (0..DRAWS).map(|_| rng.random_range(0.8..=1.2)).collect();
    assert!(compare("brightness", &mut narrow, 0.015).is_err());
}
