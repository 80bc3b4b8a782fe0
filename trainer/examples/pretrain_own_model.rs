//! Pretrains a small CNN of your own with the library's parts, without the `trainer` command:
//! two augmented views of each image, your encoder and a projection head, then either
//!
//! - `simclr`: NT-Xent over the batch, Adam, gradient clipping; or
//! - `byol`: a predictor against a momentum (EMA) copy of the network, LARS, clipping.
//!
//! ```text
//! cargo run --release -p trainer --example pretrain_own_model -- DATA [simclr|byol] [STEPS]
//! ```
//!
//! DATA is anything `trainer --data` reads: a `cifar-10-batches-bin` folder, `stl10:DIR`, or
//! `folder:PATH` of your own images (resized to 32 px here). It prints the loss every 10 steps.

use anyhow::{bail, Context, Result};
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation::relu;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use trainer::data::{channel_stats, load_with, LoadOptions};
use trainer::{
    augment_pairs, byol_loss, clip_grad_norm, momentum_copy, tau_at, update_momentum,
    AugmentConfig, LarsConfig, NtXentLoss,
};

type B = Autodiff<Flex>;

/// Your encoder: three stride-2 conv blocks and global average pooling, 32 x 32 RGB -> 128-d.
#[derive(Module, Debug)]
pub struct SmallCnn<B: Backend> {
    blocks: Vec<ConvBlock<B>>,
    pool: AdaptiveAvgPool2d,
}

/// Conv 3x3 (stride 2) -> BatchNorm -> ReLU.
#[derive(Module, Debug)]
pub struct ConvBlock<B: Backend> {
    conv: Conv2d<B>,
    norm: BatchNorm<B>,
}

impl<B: Backend> SmallCnn<B> {
    pub const FEATURES: usize = 128;

    pub fn new(device: &B::Device) -> Self {
        let block = |c_in, c_out| ConvBlock {
            conv: Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            norm: BatchNormConfig::new(c_out).init(device),
        };
        Self {
            blocks: vec![block(3, 32), block(32, 64), block(64, Self::FEATURES)],
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
        }
    }

    /// `[N, 3, H, W]` -> `[N, FEATURES]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self.blocks.iter().fold(images, |x, block| {
            relu(block.norm.forward(block.conv.forward(x)))
        });
        self.pool.forward(x).flatten(1, 3)
    }
}

/// Linear -> ReLU -> Linear: the projector, and BYOL's predictor.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    hidden: Linear<B>,
    out: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn new(d_in: usize, hidden: usize, d_out: usize, device: &B::Device) -> Self {
        Self {
            hidden: LinearConfig::new(d_in, hidden).init(device),
            out: LinearConfig::new(hidden, d_out).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.out.forward(relu(self.hidden.forward(x)))
    }
}

/// Encoder + projector: what SimCLR trains, and what BYOL's target copies.
#[derive(Module, Debug)]
pub struct Network<B: Backend> {
    pub encoder: SmallCnn<B>,
    pub projector: Mlp<B>,
}

impl<B: Backend> Network<B> {
    pub fn new(device: &B::Device) -> Self {
        Self {
            encoder: SmallCnn::new(device),
            projector: Mlp::new(SmallCnn::<B>::FEATURES, 256, 64, device),
        }
    }

    pub fn forward(&self, views: Tensor<B, 4>) -> Tensor<B, 2> {
        self.projector.forward(self.encoder.forward(views))
    }
}

/// BYOL's online side: the network and a predictor on top.
#[derive(Module, Debug)]
pub struct Online<B: Backend> {
    pub network: Network<B>,
    pub predictor: Mlp<B>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recipe {
    SimClr,
    Byol,
}

pub struct Settings {
    pub data: String,
    pub recipe: Recipe,
    pub steps: usize,
    pub batch_size: usize,
    pub seed: u64,
}

/// What a run learned: the loss of every step, and the trained encoder.
pub struct Report {
    pub losses: Vec<f32>,
    pub encoder: SmallCnn<Flex>,
    /// BYOL only: the target network's largest distance from the online one's weights at the
    /// end (it follows, but lags behind).
    pub target_lag: Option<f32>,
}

pub fn pretrain(settings: &Settings) -> Result<Report> {
    let options = LoadOptions {
        image_size: 32,
        ..Default::default()
    };
    let splits = load_with(&settings.data, &options)?;
    let images = splits.pretraining();
    if images.len() < settings.batch_size {
        bail!(
            "{} has {} images, fewer than one batch of {}",
            settings.data,
            images.len(),
            settings.batch_size
        );
    }
    // Normalise with the images' own channel statistics, as the trainer does for a folder.
    let (mean, std) = channel_stats(images);
    let augment = AugmentConfig {
        mean: Some(mean),
        std: Some(std),
        ..Default::default()
    };
    B::seed(&Default::default(), settings.seed);
    let device = Default::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(settings.seed);
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.shuffle(&mut rng);
    // Step `s`'s batch: the views of the next `batch_size` images of a shuffled order.
    let batch = |step: usize| {
        let start = (step * settings.batch_size) % (order.len() - settings.batch_size + 1);
        let pixels: Vec<&[u8]> = order[start..start + settings.batch_size]
            .iter()
            .map(|&i| images.image(i))
            .collect();
        augment_pairs(&pixels, &augment, settings.seed + step as u64).into_tensor::<B>(&device)
    };

    let mut losses = Vec::with_capacity(settings.steps);
    let mut log = |step: usize, loss: Tensor<B, 1>| {
        let loss = loss.into_scalar();
        if step % 10 == 0 || step + 1 == settings.steps {
            println!("step {step:4}  loss {loss:.4}");
        }
        losses.push(loss);
    };
    match settings.recipe {
        Recipe::SimClr => {
            let mut model = Network::<B>::new(&device);
            let mut optimizer = AdamConfig::new().init::<B, Network<B>>();
            let ntxent = NtXentLoss::new(0.5);
            for step in 0..settings.steps {
                let loss = ntxent.forward(model.forward(batch(step)));
                let mut grads = GradientsParams::from_grads(loss.backward(), &model);
                clip_grad_norm(&model, &mut grads, 1.0);
                model = optimizer.step(1e-3, model, grads);
                log(step, loss);
            }
            Ok(Report {
                losses,
                encoder: model.encoder.valid(),
                target_lag: None,
            })
        }
        Recipe::Byol => {
            let mut online = Online {
                network: Network::<B>::new(&device),
                predictor: Mlp::new(64, 256, 64, &device),
            };
            // The target starts as a copy of the online network and is never trained directly.
            let mut target = momentum_copy(&online.network, Network::new(&device));
            let mut optimizer = LarsConfig::default().init::<B, Online<B>>();
            for step in 0..settings.steps {
                let views = batch(step);
                let predictions = online
                    .predictor
                    .forward(online.network.forward(views.clone()));
                let targets = target.forward(views).detach();
                let loss = byol_loss(predictions, targets);
                let mut grads = GradientsParams::from_grads(loss.backward(), &online);
                clip_grad_norm(&online, &mut grads, 1.0);
                online = optimizer.step(0.5, online, grads);
                let tau = tau_at(0.99, 1.0, step, settings.steps);
                target = update_momentum(target, &online.network, tau);
                log(step, loss);
            }
            let lag = (online.network.projector.out.weight.val()
                - target.projector.out.weight.val())
            .abs()
            .max()
            .into_scalar();
            Ok(Report {
                losses,
                encoder: online.network.encoder.valid(),
                target_lag: Some(lag),
            })
        }
    }
}

/// `DATA [simclr|byol] [STEPS]`, read by hand: a library user need not bring a CLI framework.
fn settings_from_args() -> Result<Settings> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pretrain_own_model DATA [simclr|byol] [STEPS]";
    let data = args.first().context(usage)?.clone();
    let recipe = match args.get(1).map(String::as_str) {
        None | Some("simclr") => Recipe::SimClr,
        Some("byol") => Recipe::Byol,
        Some(other) => bail!("unknown recipe {other:?}; {usage}"),
    };
    let steps = match args.get(2) {
        Some(n) => n.parse().with_context(|| format!("STEPS {n:?}; {usage}"))?,
        None => 200,
    };
    Ok(Settings {
        data,
        recipe,
        steps,
        batch_size: 64,
        seed: 1,
    })
}

fn main() -> Result<()> {
    let settings = settings_from_args()?;
    let report = pretrain(&settings)?;
    let first = report.losses.first().copied().unwrap_or(f32::NAN);
    let last = report.losses.last().copied().unwrap_or(f32::NAN);
    println!(
        "{:?}: loss {first:.4} -> {last:.4} over {} steps",
        settings.recipe, settings.steps
    );
    Ok(())
}
