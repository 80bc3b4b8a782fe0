//! The recipe: every hyper-parameter of a run in one place, with the values it uses by default.
//!
//! A run's config is built as the method's preset < `--config FILE` (TOML) < command-line
//! flags, and saved as `OUT/config.toml`, so `trainer train --config OUT/config.toml`
//! reproduces it. A config file only needs the keys it changes: the rest comes from the preset
//! of the method it names (`[method] name = "byol"`), SimCLR's when it names none.

use crate::backend::DeviceKind;
use crate::data::augment::AugmentConfig;
use crate::data::{LoadOptions, Splits};
use crate::methods::{MethodConfig, MethodKind};
use crate::model::ModelConfig;
use crate::optim::OptimConfig;
use crate::precision::Precision;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// Run the monitor after every `every`-th epoch and after the last one (0: never; the
    /// epochs without it have NaN in metrics.csv).
    pub every: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            bank_size: 10_000,
            query_size: 2_000,
            k: 200,
            temperature: 0.1,
            every: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Dataset: a `cifar-10-batches-bin` directory, `cifar-10-binary.tar.gz`, `stl10:DIR`,
    /// `folder:PATH` (labelled by class folders when it has them), `images:PATH` (never
    /// labelled), or empty for the cached official CIFAR-10 download.
    pub data: String,
    /// Side of the square images the network sees: each image is resized (shorter side) and
    /// centre-cropped to it once, at load. 0: the dataset's own (CIFAR-10 32, STL-10 96, image
    /// folders 224); a run's config.toml records the size it used.
    pub image_size: usize,
    /// A labelled dataset (as `data`) for the kNN monitor when `data` has no labels; empty:
    /// `data`'s own labelled splits, or no monitor.
    pub eval_data: String,
    /// An unreadable image file stops loading with an error, instead of being skipped with a
    /// warning that names it.
    pub strict_data: bool,
    pub epochs: usize,
    /// Epochs the learning-rate and momentum schedules span (0: `epochs`). A run resumed with
    /// a new `--epochs` keeps its original horizon here, so the cosine does not jump, unless
    /// `--extend-schedule` stretches it.
    pub schedule_epochs: usize,
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
    /// Convolutions and linear layers of the training step in `f16` (dynamic loss scaling) or
    /// `bf16` on a GPU; weights, optimizer state, BatchNorm, the loss and reductions stay f32
    /// (`precision`). Evaluation and export compute in f32.
    pub precision: Precision,
    /// Batches prepared ahead of the training step by the augmentation threads.
    pub prefetch_batches: usize,
    /// With several devices (`--devices`, `--nodes`): BatchNorm statistics over the global
    /// batch, summed over all devices (as one device would compute them), instead of over each
    /// device's share. Every preset uses it; no effect on one device.
    pub sync_batchnorm: bool,
    /// CPU convolutions use Winograd F(4x4, 3x3) where it is faster than im2col + GEMM (3x3
    /// stride-1 layers with 16 channels and more). false: im2col + GEMM everywhere, at about
    /// half the speed of those layers; its rounding is closer to PyTorch's (docs/evidence.md).
    pub winograd: bool,
    /// End-of-epoch checkpoints to keep: the newest `keep_last` (0: every one). The one
    /// `latest` names is always kept.
    pub keep_last: usize,
    /// Also keep every checkpoint whose epoch is a multiple of this (0: none), for later
    /// evaluation of the run's history.
    pub keep_every: usize,
    /// Optimizer steps between two rows of per-step scalars (loss, learning rate, z_std,
    /// gradient norm, throughput) in the TensorBoard events under `OUT/tb/` (0: none).
    pub log_every: usize,
    /// The self-supervised method and its settings.
    pub method: MethodConfig,
    pub model: ModelConfig,
    pub augment: AugmentConfig,
    pub optim: OptimConfig,
    pub knn: KnnConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: String::new(),
            image_size: 0,
            eval_data: String::new(),
            strict_data: false,
            epochs: 100,
            schedule_epochs: 0,
            batch_size: 256,
            steps_per_epoch: 0,
            seed: 42,
            init_weights: String::new(),
            device: DeviceKind::Auto,
            precision: Precision::F32,
            prefetch_batches: 4,
            sync_batchnorm: true,
            winograd: true,
            keep_last: 3,
            keep_every: 0,
            log_every: 10,
            method: MethodConfig::default(),
            model: ModelConfig::default(),
            augment: AugmentConfig::default(),
            optim: OptimConfig::default(),
            knn: KnnConfig::default(),
        }
    }
}

impl KnnConfig {
    /// Whether the monitor runs after `epoch` of a run of `epochs`.
    pub fn runs_after(&self, epoch: usize, epochs: usize) -> bool {
        self.every > 0 && (epoch % self.every == 0 || epoch == epochs)
    }
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let config = Self::load_for(path, None)?;
        config
            .validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    /// The config file at `path` over its method's preset, not yet validated (command-line flags
    /// may still change it). `method` (from `--method`) is the method when the file names none;
    /// a file naming another one is an error.
    pub fn load_for(path: &Path, method: Option<MethodKind>) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml_for(&text, method)
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// The config `text` describes over the preset of the method it names (SimCLR's if none).
    pub fn from_toml(text: &str) -> Result<Self> {
        let config = Self::from_toml_for(text, None)?;
        config.validate()?;
        Ok(config)
    }

    fn from_toml_for(text: &str, method: Option<MethodKind>) -> Result<Self> {
        let table: toml::Table = toml::from_str(text)?;
        let named = match table.get("method").and_then(|m| m.get("name")) {
            None => None,
            Some(toml::Value::String(name)) => {
                Some(MethodKind::from_name(name).with_context(|| {
                    format!(
                        "unknown method \"{name}\" in [method] name; one of: {}",
                        MethodKind::names()
                    )
                })?)
            }
            Some(other) => bail!("[method] name must be a string, got {other}"),
        };
        let kind = match (named, method) {
            (Some(named), Some(method)) if named != method => {
                bail!("it configures {named}, but --method {method} was given: drop one of the two")
            }
            (named, method) => named.or(method).unwrap_or(MethodKind::Simclr),
        };
        let batch_size = match table.get("batch_size") {
            Some(toml::Value::Integer(b)) if *b > 0 => *b as usize,
            _ => Self::default().batch_size,
        };
        let toml::Value::Table(mut merged) = toml::Value::try_from(Self::preset(kind, batch_size))?
        else {
            unreachable!("a TrainConfig serialises to a table")
        };
        merge(&mut merged, table);
        Ok(toml::Value::Table(merged).try_into()?)
    }

    /// The defaults with `kind`'s preset applied (for a run with `batch_size`).
    pub fn preset(kind: MethodKind, batch_size: usize) -> Self {
        let mut config = Self {
            batch_size,
            ..Self::default()
        };
        let preset = kind.preset();
        config.method = preset.method;
        config.model.head = preset.head;
        config.model.predictor = preset.predictor;
        config.model.prototypes = preset.prototypes;
        config.optim = preset.optim;
        config.augment = preset.augment;
        config
    }

    /// How `data` (and `eval_data`) are loaded.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            image_size: self.image_size,
            strict: self.strict_data,
        }
    }

    /// Side of the images the encoder takes: `image_size`, 32 for a config of a run from before
    /// sizes could be chosen.
    pub fn input_size(&self) -> usize {
        match self.image_size {
            0 => crate::data::augment::SIDE,
            side => side,
        }
    }

    /// Loads `data` at `image_size`, with the labelled splits of `eval_data` when given.
    pub fn load_data(&self) -> Result<Splits> {
        let splits = crate::data::load_with(&self.data, &self.load_options())?;
        if self.eval_data.is_empty() {
            return Ok(splits);
        }
        let options = LoadOptions {
            image_size: splits.side(),
            ..self.load_options()
        };
        splits.with_eval_data(crate::data::load_with(&self.eval_data, &options)?)
    }

    /// The data a trained run's encoder is evaluated or embedded on, at its image size:
    /// `source` when given, else the run's own (`eval_data` if it had one, else `data`).
    pub fn load_data_for(&self, source: Option<&str>) -> Result<Splits> {
        let mut config = self.clone();
        config.image_size = self.input_size();
        if let Some(source) = source {
            config.data = source.to_string();
            config.eval_data.clear();
        }
        config.load_data()
    }

    /// Makes every choice left to the data concrete: the image size, the stem, and the
    /// normalisation (the dataset's published mean and std, else computed from its images), so
    /// that the saved config.toml, checkpoints and exports say what was used.
    pub fn resolve_for(&mut self, splits: &Splits) {
        self.image_size = splits.side();
        self.model.stem = self.model.stem.for_size(self.image_size);
        if self.augment.mean.is_none() {
            let (mean, std) = splits
                .known_stats
                .unwrap_or_else(|| crate::data::channel_stats(splits.pretraining()));
            let round = |v: [f32; 3]| v.map(|x| (x * 1e4).round() / 1e4);
            self.augment.mean = Some(round(mean));
            self.augment.std = Some(round(std));
        }
    }

    /// Epochs the learning-rate and momentum schedules span.
    pub fn horizon_epochs(&self) -> usize {
        match self.schedule_epochs {
            0 => self.epochs,
            n => n,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises")
    }

    /// Rejects values that would only fail later, deep in training.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.epochs >= 1, "epochs must be at least 1");
        anyhow::ensure!(
            self.batch_size >= 2,
            "batch_size must be at least 2: every method compares images within a batch"
        );
        anyhow::ensure!(self.optim.lr > 0.0, "optim.lr must be positive");
        anyhow::ensure!(
            self.optim.weight_decay >= 0.0,
            "optim.weight_decay must be >= 0"
        );
        anyhow::ensure!(
            self.optim.warmup_epochs >= 0.0,
            "optim.warmup_epochs must be >= 0"
        );
        anyhow::ensure!(
            matches!(self.model.head.layers, 2 | 3)
                && self
                    .model
                    .predictor
                    .is_none_or(|p| matches!(p.layers, 2 | 3)),
            "model.head.layers and model.predictor.layers must be 2 or 3"
        );
        anyhow::ensure!(
            self.model
                .predictor
                .is_none_or(|p| p.out == self.model.head.out),
            "model.predictor.out must equal model.head.out (it predicts a projection)"
        );
        self.method
            .validate(self.batch_size, &self.model, &self.augment.view_recipes())?;
        anyhow::ensure!(self.model.width >= 1, "model.width must be at least 1");
        anyhow::ensure!(
            self.image_size == 0 || self.image_size >= 8,
            "image_size must be at least 8 pixels (or 0: the dataset's own), got {}",
            self.image_size
        );
        anyhow::ensure!(self.knn.k >= 1, "knn.k must be at least 1");
        anyhow::ensure!(
            self.prefetch_batches >= 1,
            "prefetch_batches must be at least 1"
        );
        self.augment.validate()
    }
}

/// `base` with every key of `over` written over it; tables merge key by key.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Keys of the recipe that a resumed run may change: how long it runs and how it is watched,
/// kept and executed, never what it trains (`schedule_epochs` follows `--epochs` and
/// `--extend-schedule`; `device`, `winograd` and `prefetch_batches` change where and how fast
/// the same arithmetic runs).
pub const CHANGEABLE_ON_RESUME: [&str; 9] = [
    "epochs",
    "schedule_epochs",
    "knn.every",
    "log_every",
    "keep_last",
    "keep_every",
    "device",
    "winograd",
    "prefetch_batches",
];

/// The command-line flag that sets a recipe key, for messages.
fn flag_of(key: &str) -> Option<&'static str> {
    Some(match key {
        "data" => "--data",
        "image_size" => "--image-size",
        "eval_data" => "--eval-data",
        "strict_data" => "--strict-data",
        "batch_size" => "--batch-size",
        "steps_per_epoch" => "--steps-per-epoch",
        "seed" => "--seed",
        "init_weights" => "--init-weights",
        "precision" => "--precision",
        "method.name" => "--method",
        "method.temperature" => "--temperature",
        "model.backbone" => "--backbone",
        "model.width" => "--width",
        "optim.optimizer" => "--optimizer",
        "optim.lr" => "--lr",
        "optim.weight_decay" => "--weight-decay",
        "optim.warmup_epochs" => "--warmup-epochs",
        _ => return None,
    })
}

/// Every leaf of `value` as `dotted.key = value`.
fn flatten(
    prefix: &str,
    value: &toml::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.to_string());
        }
    }
}

impl TrainConfig {
    /// What the data decides (`image_size` 0, `model.stem` auto, `augment.mean`/`std` unset),
    /// taken from `saved`, the run being resumed: "auto" in a config file is the value the run
    /// resolved.
    pub fn adopt_resolved(&mut self, saved: &TrainConfig) {
        if self.image_size == 0 {
            self.image_size = saved.image_size;
        }
        if self.model.stem == crate::model::Stem::Auto {
            self.model.stem = saved.model.stem;
        }
        if self.augment.mean.is_none() && self.augment.std.is_none() {
            self.augment.mean = saved.augment.mean;
            self.augment.std = saved.augment.std;
        }
    }

    /// Fails unless this recipe continues `saved` (a run's config.toml, or a checkpoint's
    /// recipe): every key other than [`CHANGEABLE_ON_RESUME`] must be the same. The error names
    /// each key that differs, with its flag, old and new value.
    pub fn ensure_continues(&self, saved: &TrainConfig, run: &str) -> Result<()> {
        let as_keys = |config: &TrainConfig| {
            let value = toml::Value::try_from(config).expect("a TrainConfig always serialises");
            let mut keys = std::collections::BTreeMap::new();
            flatten("", &value, &mut keys);
            keys
        };
        let (was, now) = (as_keys(saved), as_keys(self));
        let unset = "(unset)".to_string();
        let differences: Vec<String> = was
            .keys()
            .chain(now.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|key| !CHANGEABLE_ON_RESUME.contains(&key.as_str()))
            .filter_map(|key| {
                let (old, new) = (
                    was.get(key).unwrap_or(&unset),
                    now.get(key).unwrap_or(&unset),
                );
                (old != new).then(|| match flag_of(key) {
                    Some(flag) => format!("  {key} ({flag}): {old} -> {new}"),
                    None => format!("  {key}: {old} -> {new}"),
                })
            })
            .collect();
        if differences.is_empty() {
            return Ok(());
        }
        bail!(
            "{run} was trained with another recipe; resuming continues a run as it was, and \
             these would change it:\n{}\ndrop those flags (or config-file changes), or start a \
             new run with another --out. A resumed run may change only: --epochs (with \
             --extend-schedule), --knn-every, --log-every, --keep-last, --keep-every, --device, \
             --devices, --no-winograd",
            differences.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_monitor_runs_every_n_epochs_and_after_the_last() {
        let knn = |every| KnnConfig {
            every,
            ..KnnConfig::default()
        };
        let epochs_run = |every| {
            (1..=10)
                .filter(|&e| knn(every).runs_after(e, 10))
                .collect::<Vec<_>>()
        };
        assert_eq!(epochs_run(1), (1..=10).collect::<Vec<_>>());
        assert_eq!(epochs_run(4), [4, 8, 10]);
        assert!(epochs_run(0).is_empty());
    }

    #[test]
    fn toml_round_trip_keeps_every_value() {
        let mut config = TrainConfig::default();
        config.epochs = 7;
        config.model.width = 16;
        config.image_size = 96;
        config.model.stem = crate::model::Stem::Imagenet;
        config.augment.mean = Some([0.5, 0.25, 0.125]);
        config.augment.std = Some([0.2, 0.3, 0.4]);
        config.augment.blur_prob = crate::data::augment::PerView([0.5, 0.0]);
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
    fn a_file_changes_only_its_keys_over_its_methods_preset() {
        let config = TrainConfig::from_toml(
            "batch_size = 128\n[method]\nname = \"byol\"\ntau_base = 0.9\n[optim]\nlr = 2.0",
        )
        .unwrap();
        let mut want = TrainConfig::preset(MethodKind::Byol, 128);
        want.optim.lr = 2.0;
        if let MethodConfig::Byol(byol) = &mut want.method {
            byol.tau_base = 0.9;
        }
        assert_eq!(config, want);
        assert_eq!(config.model.head.hidden, 4096);
        assert_eq!(config.optim.peak_lr(128), 1.0);
        let err = TrainConfig::from_toml("[method]\nname = \"mae\"").unwrap_err();
        assert!(format!("{err:#}").contains("mae"), "{err:#}");
    }

    #[test]
    fn every_preset_is_valid_and_round_trips() {
        for &kind in MethodKind::ALL {
            let preset = TrainConfig::preset(kind, 256);
            preset.validate().unwrap();
            assert_eq!(preset.method.kind(), kind);
            assert_eq!(TrainConfig::from_toml(&preset.to_toml()).unwrap(), preset);
        }
    }

    #[test]
    fn a_queue_that_is_not_a_multiple_of_the_batch_is_rejected() {
        let err =
            TrainConfig::from_toml("batch_size = 100\n[method]\nname = \"mocov2\"").unwrap_err();
        assert!(format!("{err:#}").contains("queue_size (32768)"), "{err:#}");
    }
}
