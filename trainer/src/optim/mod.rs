//! Optimizers and the learning-rate schedule: Adam (the seed recipe), SGD with momentum, LARS
//! (the published CIFAR-10 presets of BYOL, Barlow Twins and VICReg), linear warm-up + cosine
//! decay, and global gradient-norm clipping.

pub mod clip;
pub mod lars;

use crate::backend::TrainBackend;
use crate::model::SslModel;
use anyhow::Result;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use lars::LarsConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with L2 weight decay (this project's seed recipe).
    Adam,
    /// SGD with momentum and a cosine learning-rate schedule (most published CIFAR results).
    Sgd,
    /// LARS: SGD with momentum and a per-tensor trust ratio (BYOL, Barlow Twins, VICReg presets).
    Lars,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub optimizer: OptimizerKind,
    /// Peak learning rate (with `scale_lr_by_batch`: for a batch of 256).
    pub lr: f64,
    /// Use `lr x batch_size / 256` (solo-learn's linear scaling rule; the presets' `lr` values
    /// are for 256).
    pub scale_lr_by_batch: bool,
    pub weight_decay: f64,
    /// SGD and LARS momentum (ignored by Adam).
    pub momentum: f64,
    /// Clip the global L2 norm of all gradients to this value (as PyTorch's
    /// `clip_grad_norm_`); 0 disables clipping.
    pub grad_clip: f64,
    /// Cosine decay of the learning rate to 0 over the run (on in the SGD and LARS presets);
    /// false: constant after the warm-up.
    pub cosine: bool,
    /// Linear warm-up of the learning rate over this many epochs (from lr / warm-up steps).
    pub warmup_epochs: f64,
    /// LARS trust coefficient.
    pub lars_eta: f64,
    /// LARS: cap the adapted rate at the base learning rate.
    pub lars_clip_lr: bool,
    /// LARS: leave biases and BatchNorm parameters out of adaptation and weight decay.
    pub lars_exclude_bias_and_norm: bool,
    /// The predictor keeps the peak learning rate throughout, without warm-up or decay
    /// (SimSiam: its paper's fixed predictor rate, solo-learn's `static_lr`).
    pub fixed_predictor_lr: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::Adam,
            lr: 3e-4,
            scale_lr_by_batch: false,
            weight_decay: 1e-4,
            momentum: 0.9,
            grad_clip: 1.0,
            cosine: false,
            warmup_epochs: 0.0,
            lars_eta: 0.02,
            lars_clip_lr: true,
            lars_exclude_bias_and_norm: true,
            fixed_predictor_lr: false,
        }
    }
}

impl OptimConfig {
    /// The SGD preset: momentum 0.9, lr 0.06 x batch/256, weight decay 5e-4, cosine schedule.
    pub fn sgd_preset(batch_size: usize) -> Self {
        Self {
            optimizer: OptimizerKind::Sgd,
            lr: 0.06 * batch_size as f64 / 256.0,
            weight_decay: 5e-4,
            cosine: true,
            ..Default::default()
        }
    }

    /// solo-learn's CIFAR-10 LARS settings: `lr` (for batch 256, scaled to the batch), weight
    /// decay `weight_decay`, eta 0.02, clip_lr, biases and norms excluded, 10 warm-up epochs,
    /// cosine decay, no gradient clipping.
    pub fn lars_preset(lr: f64, weight_decay: f64) -> Self {
        Self {
            optimizer: OptimizerKind::Lars,
            lr,
            scale_lr_by_batch: true,
            weight_decay,
            grad_clip: 0.0,
            cosine: true,
            warmup_epochs: 10.0,
            ..Default::default()
        }
    }

    /// Peak learning rate of a run with this batch size.
    pub fn peak_lr(&self, batch_size: usize) -> f64 {
        if self.scale_lr_by_batch {
            self.lr * batch_size as f64 / 256.0
        } else {
            self.lr
        }
    }

    /// Learning rate of step `step` (0-based) of `total_steps`: linear warm-up over the first
    /// `warmup_epochs`, then cosine decay to 0 when enabled, else constant.
    pub fn lr_at(&self, step: usize, schedule: &Schedule) -> f64 {
        let peak = self.peak_lr(schedule.batch_size);
        let warmup = (self.warmup_epochs * schedule.steps_per_epoch as f64).round() as usize;
        let warmup = warmup.min(schedule.total_steps);
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        if !self.cosine || schedule.total_steps <= warmup {
            return peak;
        }
        let progress = ((step - warmup) as f64 / (schedule.total_steps - warmup) as f64).min(1.0);
        peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The learning rates of one step: the schedule's, and the predictor's where it is fixed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLr {
    pub lr: f64,
    /// `None`: the predictor follows the schedule too.
    pub predictor: Option<f64>,
}

impl From<f64> for StepLr {
    fn from(lr: f64) -> Self {
        Self {
            lr,
            predictor: None,
        }
    }
}

impl OptimConfig {
    /// The learning rates of step `step` (0-based): [`OptimConfig::lr_at`], and the peak rate
    /// for the predictor with `fixed_predictor_lr`.
    pub fn step_lr(&self, step: usize, schedule: &Schedule) -> StepLr {
        StepLr {
            lr: self.lr_at(step, schedule),
            predictor: self
                .fixed_predictor_lr
                .then(|| self.peak_lr(schedule.batch_size)),
        }
    }
}

/// Moves the gradients of `part`'s parameters out of `grads` into a set of their own (to
/// update that part with its own learning rate).
pub fn take_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    part: &M,
    grads: &mut GradientsParams,
) -> GradientsParams {
    struct Take<'a> {
        from: &'a mut GradientsParams,
        into: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Take<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.from.remove::<B::InnerBackend, D>(param.id) {
                self.into.register(param.id, grad);
            }
        }
    }
    let mut take = Take {
        from: grads,
        into: GradientsParams::new(),
    };
    part.visit(&mut take);
    take.into
}

/// The run's shape, which the learning rate and momentum schedules follow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub batch_size: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
}

/// Work that needs the configured optimizer, whose concrete type differs between optimizers.
pub trait OptimizerTask<B: TrainBackend> {
    type Output;
    fn run<O: Optimizer<SslModel<B>, B>>(self, optimizer: O) -> Result<Self::Output>;
}

/// Builds the optimizer `config` describes and hands it to `task`.
pub fn with_optimizer<B: TrainBackend, T: OptimizerTask<B>>(
    config: &OptimConfig,
    task: T,
) -> Result<T::Output> {
    let weight_decay =
        (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    match config.optimizer {
        // Gradient clipping is not the optimizer's (per tensor) but global, in the train step.
        // epsilon 1e-8 as PyTorch's Adam (Burn's default is 1e-5, which is not small next to
        // sqrt(v) once clipping has scaled the gradients down: it damps every update).
        OptimizerKind::Adam => task.run(
            AdamConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(weight_decay)
                .init(),
        ),
        OptimizerKind::Sgd => task.run(
            SgdConfig::new()
                .with_weight_decay(weight_decay)
                // PyTorch's SGD has no dampening; Burn's default is 0.1.
                .with_momentum(Some(
                    MomentumConfig::new()
                        .with_momentum(config.momentum)
                        .with_dampening(0.0),
                ))
                .init(),
        ),
        OptimizerKind::Lars => task.run(
            LarsConfig {
                momentum: config.momentum,
                weight_decay: config.weight_decay,
                eta: config.lars_eta,
                clip_lr: config.lars_clip_lr,
                exclude_bias_and_norm: config.lars_exclude_bias_and_norm,
                ..Default::default()
            }
            .init::<B, SslModel<B>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(total_steps: usize) -> Schedule {
        Schedule {
            batch_size: 256,
            steps_per_epoch: 10,
            total_steps,
        }
    }

    #[test]
    fn cosine_schedule_decays_to_zero() {
        let sgd = OptimConfig::sgd_preset(256);
        assert!((sgd.lr_at(0, &schedule(100)) - 0.06).abs() < 1e-12);
        assert!((sgd.lr_at(50, &schedule(100)) - 0.03).abs() < 1e-12);
        assert!(sgd.lr_at(100, &schedule(100)).abs() < 1e-12);
        assert_eq!(OptimConfig::default().lr_at(50, &schedule(100)), 3e-4);
        // cosine = false is honoured by SGD and LARS too: constant after the warm-up.
        for preset in [
            OptimConfig::sgd_preset(256),
            OptimConfig::lars_preset(0.3, 1e-4),
        ] {
            let constant = OptimConfig {
                cosine: false,
                warmup_epochs: 0.0,
                ..preset
            };
            let peak = constant.peak_lr(256);
            assert_eq!(constant.lr_at(0, &schedule(100)), peak);
            assert_eq!(
                constant.lr_at(99, &schedule(100)),
                peak,
                "{:?}",
                constant.optimizer
            );
        }
    }

    #[test]
    fn warmup_rises_linearly_then_cosine_follows() {
        // 1 warm-up epoch of 10 steps, 110 steps in all, lr 0.4 for 256 at batch 128 -> 0.2.
        let lars = OptimConfig {
            warmup_epochs: 1.0,
            ..OptimConfig::lars_preset(0.4, 1e-4)
        };
        let run = Schedule {
            batch_size: 128,
            steps_per_epoch: 10,
            total_steps: 110,
        };
        assert!((lars.lr_at(0, &run) - 0.02).abs() < 1e-12);
        assert!((lars.lr_at(4, &run) - 0.1).abs() < 1e-12);
        assert!((lars.lr_at(9, &run) - 0.2).abs() < 1e-12);
        assert!((lars.lr_at(10, &run) - 0.2).abs() < 1e-12);
        assert!((lars.lr_at(60, &run) - 0.1).abs() < 1e-12);
        assert!(lars.lr_at(110, &run).abs() < 1e-12);
    }
}
