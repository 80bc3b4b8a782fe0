//! The standard offline linear evaluation, as published numbers use it (solo-learn's
//! `main_linear`): a linear classifier on the frozen encoder's features of *augmented* training
//! images (RandomResizedCrop + horizontal flip, drawn again every epoch), SGD with momentum 0.9,
//! no weight decay and a cosine learning rate; the test images un-augmented.
//!
//! Each epoch runs the encoder over the whole training set, so it costs `epochs` passes of
//! inference; the quick probe (`super::linear_probe`) trains on features computed once instead.

use super::Features;
use crate::backend::TrainBackend;
use crate::data::augment::{AugmentConfig, PerView};
use crate::data::ImageDataset;
use crate::model::prepared::InferenceEncoder;
use crate::model::Backbone;
use crate::progress::items_bar;
use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Settings of the standard protocol (solo-learn's CIFAR linear configs: batch 256, lr 0.1).
#[derive(Debug, Clone)]
pub struct StandardLinearConfig {
    pub epochs: usize,
    pub lr: f64,
    pub momentum: f64,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for StandardLinearConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            lr: 0.1,
            momentum: 0.9,
            batch_size: 256,
            seed: 0,
        }
    }
}

/// The training views of the protocol: the run's crop law and normalisation, flips, nothing
/// else (no colour jitter, grayscale, blur or solarization).
pub fn crop_and_flip(augment: &AugmentConfig) -> AugmentConfig {
    AugmentConfig {
        flip_prob: 0.5,
        jitter_prob: 0.0,
        grayscale_prob: 0.0,
        blur_prob: PerView([0.0; 2]),
        solarize_prob: PerView([0.0; 2]),
        ..augment.clone()
    }
}

/// Trains `Linear(dim, classes)` on features of augmented `train` images through `encoder`
/// (an inference module: BatchNorm on its running statistics) and returns its top-1 accuracy
/// on `test_features` (features of the un-augmented test images).
#[allow(clippy::too_many_arguments)]
pub fn standard_linear_eval<B: TrainBackend>(
    encoder: &Backbone<B::InnerBackend>,
    train: &ImageDataset,
    test_features: &Features,
    test_labels: &[u8],
    num_classes: usize,
    augment: &AugmentConfig,
    config: &StandardLinearConfig,
    device: &B::Device,
) -> Result<f64> {
    ensure!(
        !train.is_empty() && !test_features.is_empty(),
        "the linear evaluation needs train images and test features"
    );
    ensure!(
        config.epochs > 0,
        "the linear evaluation needs 1 epoch or more"
    );
    B::seed(device, config.seed);
    let views = crop_and_flip(augment);
    let inference = InferenceEncoder::new(encoder);
    let (n, side, bytes) = (train.len(), train.side, train.image_bytes());
    let mut probe: Linear<B> = LinearConfig::new(test_features.dim, num_classes).init(device);
    let mut optimizer = SgdConfig::new()
        // PyTorch's SGD has no dampening; Burn's default is 0.1.
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(config.momentum)
                .with_dampening(0.0),
        ))
        .init::<B, Linear<B>>();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let batch = config.batch_size.clamp(1, n);
    let bar = items_bar(
        (config.epochs * n) as u64,
        "linear evaluation (standard protocol)",
    );
    for epoch in 0..config.epochs {
        order.shuffle(&mut rng);
        // Cosine over the epochs, as solo-learn's cosine scheduler steps per epoch.
        let lr = config.lr
            * 0.5
            * (1.0 + (std::f64::consts::PI * epoch as f64 / config.epochs as f64).cos());
        for chunk in order.chunks(batch) {
            let mut pixels = vec![0.0f32; chunk.len() * bytes];
            for (out, &i) in pixels.chunks_mut(bytes).zip(chunk) {
                views.view(train.image(i), 0, &mut rng, out);
            }
            let images = Tensor::<B::InnerBackend, 4>::from_data(
                TensorData::new(pixels, [chunk.len(), 3, side, side]),
                device,
            );
            let features = Tensor::<B, 2>::from_inner(inference.forward(images));
            let labels = Tensor::<B, 1, Int>::from_data(
                TensorData::new(
                    chunk.iter().map(|&i| train.labels[i] as i64).collect(),
                    [chunk.len()],
                ),
                device,
            );
            let loss = loss_fn.forward(probe.forward(features), labels);
            let grads = GradientsParams::from_grads(loss.backward(), &probe);
            probe = optimizer.step(lr, probe, grads);
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    let logits = probe
        .valid()
        .forward(test_features.to_tensor::<B::InnerBackend>(device));
    Ok(super::logits_top1(logits, test_labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::model::ModelConfig;
    use burn::backend::Autodiff;
    use rand::Rng;

    /// `n` images of `side` pixels: class 0 reddish, class 1 bluish, with pixel noise.
    fn two_colours(n: usize, side: usize, seed: u64) -> ImageDataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let plane = side * side;
        let mut pixels = Vec::with_capacity(n * 3 * plane);
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        for &label in &labels {
            let [r, b] = if label == 0 { [200, 40] } else { [40, 200] };
            for base in [r, 90, b] {
                pixels.extend((0..plane).map(|_| base + rng.random_range(0..40u8)));
            }
        }
        ImageDataset::new(side, pixels, labels, vec!["red".into(), "blue".into()])
    }

    #[test]
    fn views_are_crops_and_flips_only() {
        let views = crop_and_flip(&AugmentConfig::default());
        assert_eq!(
            (views.jitter_prob, views.grayscale_prob, views.flip_prob),
            (0.0, 0.0, 0.5)
        );
        assert_eq!(
            (views.blur_prob.0, views.solarize_prob.0),
            ([0.0; 2], [0.0; 2])
        );
        assert_eq!(views.crop_scale, AugmentConfig::default().crop_scale);
    }

    /// Top-1 of the protocol on two colours through a random width-4 encoder.
    fn two_colour_top1() -> f64 {
        type B = Autodiff<CpuBackend>;
        let device = Default::default();
        let encoder = ModelConfig::small(4, 16, 8)
            .init::<B>(&device)
            .encoder
            .valid();
        let (train, test) = (two_colours(64, 16, 1), two_colours(32, 16, 2));
        let augment = AugmentConfig::default();
        let test_features = Features::from_tensor(crate::eval::features::encode_dataset(
            &encoder, &test, &augment, 32, &device, "test",
        ));
        // A random encoder's features are far smaller than a trained one's (|f|^2 about 1e-2:
        // its BatchNorm running statistics are the initial ones): lr = 1 / |f|^2 moves the
        // logits by about 1 per step.
        let squared_norm = test_features.values.iter().map(|v| v * v).sum::<f32>() as f64
            / test_features.len() as f64;
        let config = StandardLinearConfig {
            epochs: 30,
            batch_size: 16,
            lr: 1.0 / squared_norm.max(1e-6),
            ..Default::default()
        };
        standard_linear_eval::<B>(
            &encoder,
            &train,
            &test_features,
            &test.labels,
            2,
            &augment,
            &config,
            &device,
        )
        .unwrap()
    }

    #[test]
    fn learns_a_linearly_separable_task_through_a_random_encoder() {
        // Some random width-4 encoders map the two colours almost alike (about 1 in 4 here:
        // dead ReLUs), so the test takes the best of five; a protocol that does not learn
        // stays at 50 % with every one.
        let tops: Vec<f64> = (0..5).map(|_| two_colour_top1()).collect();
        assert!(
            tops.iter().any(|&top1| top1 >= 0.9),
            "top-1 on two colours with five random encoders: {tops:?}"
        );
    }
}
