//! The options of a training run as the command line gives them (`trainer train --help`; clap
//! derives only with the `cli` feature), and the one function that turns them into the run's
//! recipe: the method's preset < config file (or the resumed run's config.toml) < flags.

use crate::backend::DeviceKind;
use crate::config::TrainConfig;
use crate::distributed::Topology;
use crate::methods::MethodKind;
use crate::optim::{OptimConfig, OptimizerKind};
use crate::precision::Precision;
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

/// The flags of `trainer train`; every recipe flag is an `Option` (unset: the config's value).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct TrainOptions {
    /// Dataset: cifar10:PATH (or a bare path; default: the official download), stl10:DIR,
    /// folder:PATH (your images) or images:PATH (never labelled); --help says more.
    #[cfg_attr(feature = "cli", arg(long, long_help = crate::data::data_help()))]
    pub data: Option<String>,
    /// Side of the square images the network sees, in pixels: each image is resized (shorter
    /// side) and centre-cropped once at load [default: the dataset's own: CIFAR-10 32, STL-10
    /// 96, folders 224]. Above 64 the encoder takes ImageNet's stem (model.stem).
    #[cfg_attr(feature = "cli", arg(long))]
    pub image_size: Option<usize>,
    /// A labelled dataset (as --data) for the kNN monitor, when --data has no labels.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DATA"))]
    pub eval_data: Option<String>,
    /// Stop at an unreadable image file instead of skipping it with a warning.
    #[cfg_attr(feature = "cli", arg(long))]
    pub strict_data: bool,
    /// CPU convolutions as im2col + GEMM only, without the faster Winograd kernels
    /// (config key `winograd`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_winograd: bool,
    /// Self-supervised method; each starts from its preset: SimCLR from this project's recipe
    /// (Adam 3e-4), the others from solo-learn's published CIFAR-10 ResNet-18 configurations
    /// (heads, LARS/SGD with warm-up + cosine, augmentations). `--print-config` shows it all
    /// [default: simclr].
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub method: Option<MethodKind>,
    /// Number of epochs [default: 100].
    #[cfg_attr(feature = "cli", arg(long))]
    pub epochs: Option<usize>,
    /// Images per batch; each gives two views, so the loss sees 2x this many [default: 256].
    #[cfg_attr(feature = "cli", arg(long))]
    pub batch_size: Option<usize>,
    /// Cap on optimizer steps per epoch, for quick runs (0 = full epoch) [default: 0].
    #[cfg_attr(feature = "cli", arg(long))]
    pub steps_per_epoch: Option<usize>,
    /// Peak learning rate (optim.lr; with optim.scale_lr_by_batch, for a batch of 256)
    /// [default: the method's].
    #[cfg_attr(feature = "cli", arg(long, value_name = "LR"))]
    pub lr: Option<f64>,
    /// Weight decay (optim.weight_decay) [default: the method's].
    #[cfg_attr(feature = "cli", arg(long, value_name = "WD"))]
    pub weight_decay: Option<f64>,
    /// Linear learning-rate warm-up, in epochs (optim.warmup_epochs) [default: the method's].
    #[cfg_attr(feature = "cli", arg(long, value_name = "EPOCHS"))]
    pub warmup_epochs: Option<f64>,
    /// Loss temperature of SimCLR and MoCo v2 (method.temperature) [default: 0.5 SimCLR, 0.2
    /// MoCo v2].
    #[cfg_attr(feature = "cli", arg(long, value_name = "T"))]
    pub temperature: Option<f64>,
    /// The encoder (model.backbone) [default: resnet18].
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub backbone: Option<crate::model::BackboneKind>,
    /// Backbone width: channels of ResNet-18's first stage (model.width; 64 is the standard
    /// network, 16 trains about 10x faster) [default: 64].
    #[cfg_attr(feature = "cli", arg(long))]
    pub width: Option<usize>,
    /// Run the kNN monitor after every N-th epoch and the last one; 0 turns it off
    /// (knn.every) [default: 1].
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub knn_every: Option<usize>,
    /// Optimizer steps between two rows of per-step TensorBoard scalars under OUT/tb (0:
    /// none) [default: 10].
    #[cfg_attr(feature = "cli", arg(long, value_name = "STEPS"))]
    pub log_every: Option<usize>,
    /// End-of-epoch checkpoints to keep, newest first; older ones are deleted after each save
    /// (0: keep every one) [default: 3].
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub keep_last: Option<usize>,
    /// Also keep the checkpoint of every N-th epoch, whatever --keep-last says [default: 0,
    /// none].
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub keep_every: Option<usize>,
    /// Output directory for checkpoints, metrics.csv, metrics.svg, TensorBoard events (tb/) and
    /// config.toml [default: runs/TIMESTAMP, the start time].
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: Option<PathBuf>,
    /// Where to train: auto (CUDA if the binary has it and a GPU answers, else wgpu if it has
    /// it and the adapter is a real GPU, else the CPU; the choice is printed), cpu, cuda (binary
    /// built with --features cuda), wgpu (any GPU through Vulkan/Metal/DX12; --features wgpu),
    /// or another CPU backend for comparison (ndarray, candle) [default: auto].
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub device: Option<DeviceKind>,
    /// Mixed precision on a GPU: convolutions and linear layers in f16 (with dynamic loss
    /// scaling) or bf16 (CUDA, sm80+), weights, optimizer, BatchNorm and loss in f32, as
    /// torch.autocast [default: f32].
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub precision: Option<Precision>,
    /// Random seed for initialisation, shuffling and augmentation [default: 42].
    #[cfg_attr(feature = "cli", arg(long))]
    pub seed: Option<u64>,
    /// Start from these weights instead of a random initialisation: a safetensors file with
    /// every tensor under its module path (see docs/evidence.md).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub init_weights: Option<String>,
    /// Optimizer, replacing the method's. Between sgd and lars the method's learning rate,
    /// weight decay and schedule stay; from adam: sgd (momentum 0.9, lr 0.06 x batch/256, wd
    /// 5e-4, cosine) or lars (lr 0.3 x batch/256, wd 1e-4, eta 0.02, 10 warm-up epochs,
    /// cosine); adam is lr 3e-4, wd 1e-4. `--print-config` shows the result [default: the
    /// method's].
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub optimizer: Option<OptimizerKind>,
    /// TOML file with any config keys (see `trainer train --print-config`); flags override it.
    #[cfg_attr(feature = "cli", arg(long))]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its newest intact checkpoint, with its recipe (its
    /// config.toml, or --config if it is the same recipe). Flags or config keys that would change
    /// the run are refused, naming each; only --epochs (with --extend-schedule), --knn-every,
    /// --log-every, --keep-last, --keep-every, --device, --devices and --no-winograd may change.
    #[cfg_attr(feature = "cli", arg(long, requires = "out"))]
    pub resume: bool,
    /// With --resume and a new --epochs: stretch the learning-rate and momentum schedules over
    /// the new total, instead of keeping the run's original horizon.
    #[cfg_attr(feature = "cli", arg(long, requires = "resume"))]
    pub extend_schedule: bool,
    /// Print the full config this command would use, as TOML, and exit.
    #[cfg_attr(feature = "cli", arg(long))]
    pub print_config: bool,
    /// Devices of this process to spread each batch over: one rank (thread) per device, each
    /// with batch-size / (devices x processes) images, gradients averaged. Several processes
    /// (one per device, on one machine or many) are started by MPI's launcher instead: `mpirun
    /// -np 4 trainer ...` or `srun trainer ...` (docs/distributed.md). With --device cpu the
    /// ranks share the cores.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            default_value_t = 1,
            help_heading = "Several devices or machines"
        )
    )]
    pub devices: usize,
    /// Seconds a rank waits for the others in one exchange before stopping with an error (a
    /// rank died or hangs). Must exceed rank 0's kNN monitor at the end of an epoch.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            value_name = "SECONDS",
            default_value_t = 600,
            help_heading = "Several devices or machines"
        )
    )]
    pub peer_timeout: u64,
}

impl TrainOptions {
    /// How this run is spread over devices and processes. Under an MPI launcher (`mpirun`,
    /// `srun`) this starts MPI: the launcher's processes are the ranks.
    pub fn topology(&self) -> Result<Topology> {
        let launch = crate::distributed::detect_launch()?;
        let timeout = std::time::Duration::from_secs(self.peer_timeout);
        Ok(Topology::new(self.devices, &launch, timeout))
    }

    /// The method's preset < config file (or the run's own config.toml on --resume) < flags.
    pub fn to_config(&self) -> Result<TrainConfig> {
        let mut config = self.base_config()?;
        let saved = self.saved_recipe(&config)?;
        self.switch_optimizer(&mut config);
        self.apply_overrides(&mut config)?;
        if let Some(saved) = &saved {
            self.continue_the_run(saved, &mut config)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// The recipe the flags start from: --config, the resumed run's config.toml, or the
    /// method's preset.
    fn base_config(&self) -> Result<TrainConfig> {
        Ok(match (&self.config, &self.out) {
            (Some(path), _) => TrainConfig::load_for(path, self.method)?,
            (None, Some(out)) if self.resume => {
                let config = TrainConfig::load(&out.join("config.toml"))
                    .context("--resume needs the run's config.toml")?;
                if let Some(method) = self.method {
                    ensure!(
                        method == config.method.kind(),
                        "{} was trained with {}; --method {method} cannot resume it: drop \
--method, or start a new run with another --out",
                        out.display(),
                        config.method.kind()
                    );
                }
                config
            }
            _ => TrainConfig::preset(
                self.method.unwrap_or(MethodKind::Simclr),
                self.batch_size.unwrap_or(TrainConfig::default().batch_size),
            ),
        })
    }

    /// The run being resumed, as its config.toml records it, whether `config` comes from there
    /// or from --config.
    fn saved_recipe(&self, config: &TrainConfig) -> Result<Option<TrainConfig>> {
        Ok(match (&self.out, self.resume) {
            (Some(_), true) if self.config.is_none() => Some(config.clone()),
            // Without one (a run that never started) the checkpoint, if any, is checked at load.
            (Some(out), true) if out.join("config.toml").exists() => Some(
                TrainConfig::load(&out.join("config.toml"))
                    .context("--resume reads the run's recipe")?,
            ),
            _ => None,
        })
    }

    /// --optimizer: another optimizer with the settings that go with it.
    fn switch_optimizer(&self, config: &mut TrainConfig) {
        if let Some(optimizer) = self.optimizer {
            if optimizer != config.optim.optimizer {
                let batch = self.batch_size.unwrap_or(config.batch_size);
                use OptimizerKind::{Adam, Lars, Sgd};
                config.optim = match (config.optim.optimizer, optimizer) {
                    // SGD and LARS share learning-rate scales: keep the method's learning rate,
                    // weight decay, warm-up, schedule and clipping, and change only the update.
                    (Sgd | Lars, Sgd | Lars) => OptimConfig {
                        optimizer,
                        ..config.optim
                    },
                    (Adam, Sgd) => OptimConfig::sgd_preset(batch),
                    (Adam, Lars) => OptimConfig::lars_preset(0.3, 1e-4),
                    (_, Adam) => OptimConfig::default(),
                };
            }
        }
    }

    /// The flags that set one value of the recipe each.
    fn apply_overrides(&self, config: &mut TrainConfig) -> Result<()> {
        fn set<T: Clone>(slot: &mut T, flag: &Option<T>) {
            if let Some(v) = flag {
                *slot = v.clone();
            }
        }
        set(&mut config.data, &self.data);
        set(&mut config.image_size, &self.image_size);
        set(&mut config.eval_data, &self.eval_data);
        config.strict_data |= self.strict_data;
        config.winograd &= !self.no_winograd;
        set(&mut config.epochs, &self.epochs);
        set(&mut config.batch_size, &self.batch_size);
        set(&mut config.keep_last, &self.keep_last);
        set(&mut config.keep_every, &self.keep_every);
        set(&mut config.steps_per_epoch, &self.steps_per_epoch);
        set(&mut config.device, &self.device);
        set(&mut config.precision, &self.precision);
        set(&mut config.seed, &self.seed);
        set(&mut config.init_weights, &self.init_weights);
        set(&mut config.optim.lr, &self.lr);
        set(&mut config.optim.weight_decay, &self.weight_decay);
        set(&mut config.optim.warmup_epochs, &self.warmup_epochs);
        if let Some(v) = self.temperature {
            config.method.set_temperature(v)?;
        }
        set(&mut config.model.backbone, &self.backbone);
        set(&mut config.model.width, &self.width);
        set(&mut config.knn.every, &self.knn_every);
        set(&mut config.log_every, &self.log_every);
        Ok(())
    }

    /// On --resume: flags that would make another run than the saved one are refused, and a new
    /// --epochs keeps the schedules' horizon unless --extend-schedule.
    fn continue_the_run(&self, saved: &TrainConfig, config: &mut TrainConfig) -> Result<()> {
        let out = self.out.as_deref().unwrap_or(Path::new("")).display();
        config.adopt_resolved(saved);
        config.ensure_continues(saved, &out.to_string())?;
        if config.epochs != saved.epochs || self.extend_schedule {
            let horizon = saved.horizon_epochs();
            if self.extend_schedule {
                config.schedule_epochs = config.epochs;
                eprintln!(
                    "--extend-schedule: the learning-rate and momentum schedules now span {} \
                    epochs (were {horizon})",
                    config.epochs
                );
            } else {
                config.schedule_epochs = horizon;
                eprintln!(
                    "--epochs {}: the learning-rate and momentum schedules keep their horizon of \
                    {horizon} epochs{} (--extend-schedule stretches them over the new total)",
                    config.epochs,
                    if config.epochs > horizon {
                        "; the epochs after it run at the schedules' final values"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::MethodConfig;

    /// The flags over the method's preset, as `trainer train --method byol --width 16 ...` would
    /// give them, without clap.
    #[test]
    fn flags_override_the_methods_preset() {
        let options = TrainOptions {
            method: Some(MethodKind::Byol),
            width: Some(16),
            epochs: Some(3),
            lr: Some(0.5),
            ..Default::default()
        };
        let config = options.to_config().unwrap();
        let preset = TrainConfig::preset(MethodKind::Byol, TrainConfig::default().batch_size);
        assert!(matches!(config.method, MethodConfig::Byol(_)));
        assert_eq!(
            (config.model.width, config.epochs, config.optim.lr),
            (16, 3, 0.5)
        );
        assert_eq!(config.model.head, preset.model.head);
        assert_eq!(config.model.predictor, preset.model.predictor);
        assert_eq!(config.augment, preset.augment);
    }

    #[test]
    fn another_optimizer_takes_its_preset_and_a_flag_the_method_lacks_is_refused() {
        let sgd = TrainOptions {
            optimizer: Some(OptimizerKind::Sgd),
            batch_size: Some(512),
            ..Default::default()
        }
        .to_config()
        .unwrap();
        assert_eq!(sgd.optim, OptimConfig::sgd_preset(512));
        let err = TrainOptions {
            method: Some(MethodKind::Byol),
            temperature: Some(0.1),
            ..Default::default()
        }
        .to_config()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--temperature") && err.contains("byol"),
            "{err}"
        );
    }
}
