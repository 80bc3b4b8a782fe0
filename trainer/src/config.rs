//! The recipe: every hyper-parameter of a run in one place, with the values it uses by default.
//!
//! A run's config is built as defaults < `--config FILE` (TOML) < command-line flags, and saved as
//! `OUT/config.toml`, so `trainer train --config OUT/config.toml` reproduces it.

use crate::augment::AugmentConfig;
use crate::backend::DeviceKind;
use crate::model::ModelConfig;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with L2 weight decay (this project's seed recipe).
    Adam,
    /// SGD with momentum and a cosine learning-rate schedule (most published CIFAR results).
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub optimizer: OptimizerKind,
    /// Peak learning rate. Adam: 3e-4. SGD: 0.06 x batch/256 is the usual choice.
    pub lr: f64,
    pub weight_decay: f64,
    /// SGD momentum (ignored by Adam).
    pub momentum: f64,
    /// Clip the global L2 norm of all gradients to this value (as PyTorch's
    /// `clip_grad_norm_`); 0 disables clipping.
    pub grad_clip: f64,
    /// Cosine decay of the learning rate to 0 over the whole run (always on for SGD).
    pub cosine: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::Adam,
            lr: 3e-4,
            weight_decay: 1e-4,
            momentum: 0.9,
            grad_clip: 1.0,
            cosine: false,
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
            momentum: 0.9,
            grad_clip: 1.0,
            cosine: true,
        }
    }

    /// Learning rate for `step` of `total_steps` (cosine decay when enabled, else constant).
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        if !(self.cosine || self.optimizer == OptimizerKind::Sgd) || total_steps == 0 {
            return self.lr;
        }
        let progress = (step as f64 / total_steps as f64).min(1.0);
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// kNN monitor run at the end of every epoch (the lightly / MoCo-demo protocol).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnConfig {
    /// Train images in the memory bank (0 = the whole train split).
    pub bank_size: usize,
    /// Test images classified (0 = the whole test split).
    pub query_size: usize,
    pub k: usize,
    pub temperature: f64,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            bank_size: 10_000,
            query_size: 2_000,
            k: 200,
            temperature: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Dataset: a `cifar-10-batches-bin` directory, `cifar-10-binary.tar.gz`, `folder:PATH`,
    /// or empty for the cached official download.
    pub data: String,
    pub epochs: usize,
    pub batch_size: usize,
    /// Cap on optimizer steps per epoch (0 = a full pass over the data).
    pub steps_per_epoch: usize,
    pub seed: u64,
    /// A safetensors file with the initial weights: every parameter and BatchNorm running
    /// statistic under its module path (`encoder.stem_conv.weight`, `head.fc1.weight` as
    /// [in, out], ...; `bench/golden_simclr.py` writes PyTorch's this way). Empty: Burn's
    /// initialisation from the seed.
    pub init_weights: String,
    pub device: DeviceKind,
    /// NT-Xent temperature (0.5 as in the SimCLR CIFAR code; solo-learn uses 0.2).
    pub temperature: f64,
    /// Batches prepared ahead of the training step by the augmentation threads.
    pub prefetch_batches: usize,
    pub model: ModelConfig,
    pub augment: AugmentConfig,
    pub optim: OptimConfig,
    pub knn: KnnConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: String::new(),
            epochs: 100,
            batch_size: 256,
            steps_per_epoch: 0,
            seed: 42,
            init_weights: String::new(),
            device: DeviceKind::Cpu,
            temperature: 0.5,
            prefetch_batches: 4,
            model: ModelConfig::default(),
            augment: AugmentConfig::default(),
            optim: OptimConfig::default(),
            knn: KnnConfig::default(),
        }
    }
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises")
    }

    /// Rejects values that would only fail later, deep in training.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.epochs >= 1, "epochs must be at least 1");
        anyhow::ensure!(
            self.batch_size >= 2,
            "batch_size must be at least 2: NT-Xent needs other images as negatives"
        );
        anyhow::ensure!(self.temperature > 0.0, "temperature must be positive");
        anyhow::ensure!(self.optim.lr > 0.0, "optim.lr must be positive");
        anyhow::ensure!(self.model.width >= 1, "model.width must be at least 1");
        anyhow::ensure!(self.knn.k >= 1, "knn.k must be at least 1");
        anyhow::ensure!(
            self.prefetch_batches >= 1,
            "prefetch_batches must be at least 1"
        );
        self.augment.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_keeps_every_value() {
        let mut config = TrainConfig::default();
        config.epochs = 7;
        config.model.width = 16;
        config.augment.blur_prob = 0.5;
        let back = TrainConfig::from_toml(&config.to_toml()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        let err = TrainConfig::from_toml("epocs = 3").unwrap_err();
        assert!(format!("{err:#}").contains("epocs"), "{err:#}");
    }

    #[test]
    fn invalid_value_is_rejected() {
        let err = TrainConfig::from_toml("batch_size = 1").unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
    }

    #[test]
    fn cosine_schedule_decays_to_zero() {
        let sgd = OptimConfig::sgd_preset(256);
        assert!((sgd.lr_at(0, 100) - 0.06).abs() < 1e-12);
        assert!((sgd.lr_at(50, 100) - 0.03).abs() < 1e-12);
        assert!(sgd.lr_at(100, 100).abs() < 1e-12);
        assert_eq!(OptimConfig::default().lr_at(50, 100), 3e-4);
    }
}
