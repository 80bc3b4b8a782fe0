//! The command line: `trainer [train]` with flags that override the config file's keys.

use crate::backend::{run_on, DeviceKind};
use crate::config::TrainConfig;
use crate::distributed::Topology;
use crate::eval::ProbeProtocol;
use crate::jobs::train::{Outcome, TrainJob};
use crate::methods::MethodKind;
use crate::optim::{OptimConfig, OptimizerKind};
use crate::precision::Precision;
use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "trainer",
    version,
    about = "Self-supervised pretraining (SimCLR, BYOL, MoCo v2, VICReg, Barlow Twins) of a ResNet-18",
    long_about = "Self-supervised pretraining of a ResNet-18 on CIFAR-10, STL-10 or your own \
                  images (labelled or not, any size), with SimCLR (default), BYOL, MoCo v2, VICReg or Barlow Twins \
                  (--method; each starts from its published CIFAR-10 settings, see \
                  --print-config). `trainer` alone runs `trainer train` with the defaults: it \
                  downloads CIFAR-10 once (or reads --data) and writes checkpoints, metrics.csv \
and config.toml under runs/<timestamp>.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain the encoder (the default command).
    Train(TrainArgs),
    /// Measure training-step and data-pipeline throughput, against PyTorch when it is installed.
    Bench(BenchArgs),
    /// Evaluate a checkpoint's frozen encoder: kNN, linear probe and k-means clustering.
    Eval(EvalArgs),
    /// Export a checkpoint's encoder to a standard ONNX file (images in [0, 1] -> embedding).
    Export(ExportArgs),
    /// Write a checkpoint's encoder embeddings of dataset images as a float32 .npy file, with
    /// a CSV of the images' names (and labels) beside it.
    Embed(EmbedArgs),
}

#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("viewer_files").args(["viewer", "demo"])))]
pub struct ExportArgs {
    /// Checkpoint file, or a run directory / checkpoints directory (its latest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Where to write the ONNX file [default: encoder.onnx, or only DIR/encoder.onnx with --viewer].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fold every BatchNorm into the convolution before it (same outputs within 1e-5).
    #[arg(long)]
    pub fold_bn: bool,
    /// Also write what the browser viewer loads into DIR: encoder.onnx plus a sample of images
    /// (samples.bin, samples.json): class-balanced test images of labelled data, evenly spaced
    /// images of an unlabeled folder. `trunk serve` in viewer/ then shows them.
    #[arg(
        long,
        value_name = "DIR",
        num_args = 0..=1,
        default_missing_value = "viewer/assets",
        conflicts_with = "demo"
    )]
    pub viewer: Option<PathBuf>,
    /// Write a self-contained demo site into DIR for any static host (`python3 -m http.server`
    /// in DIR works): the built viewer page (--page) plus, in DIR/assets, the model, the whole
    /// test split (at most 10,000 images; --samples N) and their f16 embeddings.
    #[arg(long, value_name = "DIR")]
    pub demo: Option<PathBuf>,
    /// The built viewer page that --demo copies (`trunk build --release` in viewer/ writes it).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "viewer/dist",
        requires = "demo"
    )]
    pub page: PathBuf,
    /// Dataset the viewer's sample images come from (test split), as `train --data` (default:
    /// the run's --eval-data, else its --data).
    #[arg(long, requires = "viewer_files")]
    pub data: Option<String>,
    /// Number of sample images for the viewer, balanced over the classes (at most all of an
    /// unlabeled folder) [default: 1000 with --viewer, the whole split up to 10,000 with --demo].
    #[arg(long, requires = "viewer_files")]
    pub samples: Option<usize>,
    /// Also compute the samples' embeddings here (CPU) and write them into DIR/embeddings.bin
    /// as f16 or f32: the page then draws the map at once instead of embedding every image in
    /// the browser, and re-embeds 32 of them there to check they belong to this model
    /// [default with --demo: f16].
    #[arg(long, value_enum, value_name = "DTYPE", requires = "viewer_files")]
    pub embeddings: Option<crate::jobs::viewer_assets::EmbeddingDtype>,
}

#[derive(Args, Debug, Clone)]
pub struct EmbedArgs {
    /// Checkpoint file, or a run directory / checkpoints directory (its latest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset, as `train --data` (default: the run's own); a folder of images works too.
    #[arg(long)]
    pub data: Option<String>,
    /// Which split to embed (data without labels: all its images).
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// Embed only the first N images of the split (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Output file: float32 [N, 512] in NumPy .npy format, in dataset order; OUT with .csv
    /// in place of .npy lists each row's image (file name for image folders) and label.
    #[arg(long, default_value = "embeddings.npy")]
    pub out: PathBuf,
    /// An unreadable image file is an error instead of a skipped file with a warning.
    #[arg(long)]
    pub strict_data: bool,
    /// Device: auto (CUDA, else a real GPU through wgpu, else the CPU), cpu, cuda, wgpu,
    /// ndarray, candle.
    #[arg(long, value_enum, default_value_t = DeviceKind::Auto)]
    pub device: DeviceKind,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Train,
    Test,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Checkpoint file, or a run directory / checkpoints directory (its latest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Labelled dataset, as `train --data` (default: the run's --eval-data, else its --data).
    #[arg(long)]
    pub data: Option<String>,
    /// Device: auto (CUDA, else a real GPU through wgpu, else the CPU), cpu, cuda, wgpu,
    /// ndarray, candle.
    #[arg(long, value_enum, default_value_t = DeviceKind::Auto)]
    pub device: DeviceKind,
    /// Neighbours that vote in kNN.
    #[arg(long, default_value_t = 200)]
    pub k: usize,
    /// kNN vote temperature: each neighbour votes exp(similarity / T).
    #[arg(long, default_value_t = 0.1)]
    pub temperature: f64,
    /// Linear evaluation: fast (Adam on features of un-augmented images computed once, a
    /// quick look) or standard (the published protocol, solo-learn's main_linear: SGD momentum
    /// 0.9, cosine, random crop + flip views every epoch; one encoder pass per epoch).
    #[arg(long, value_enum, default_value_t = ProbeProtocol::Fast)]
    pub protocol: ProbeProtocol,
    /// Epochs of linear-probe training (cosine-decayed learning rate).
    #[arg(long, default_value_t = 100)]
    pub probe_epochs: usize,
    /// Linear-probe learning rate [default: 1e-3 fast, 0.1 standard].
    #[arg(long)]
    pub probe_lr: Option<f64>,
    /// Use only N train images (0 = all), drawn with a fixed seed, each class in proportion:
    /// the same subset on every call.
    #[arg(long, default_value_t = 0)]
    pub limit_train: usize,
    /// Use only N test images (0 = all), drawn as --limit-train's.
    #[arg(long, default_value_t = 0)]
    pub limit_test: usize,
    /// Images per forward pass while computing features.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32,128")]
    pub batch_size: Vec<usize>,
    /// Timed steps per batch size (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps before them.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Device to measure: auto (CUDA, else a real GPU through wgpu, else the CPU), cpu, cuda,
    /// wgpu, ndarray, candle.
    #[arg(long, value_enum, default_value_t = DeviceKind::Auto)]
    pub device: DeviceKind,
    /// Precision of the training step (as train's --precision); PyTorch's reference runs under
    /// torch.autocast with the same dtype.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// ResNet-18 width (64 is the standard network).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Side of the images in pixels (32: CIFAR-10, 96: STL-10); above 64 the network has
    /// ImageNet's stem (7x7 stride 2 + max-pool), as `train` picks it, and so does PyTorch's.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Dataset whose images are augmented (as `train --data`); random images when omitted.
    #[arg(long)]
    pub data: Option<String>,
    /// PyTorch reference script; skipped when python3 cannot import torch.
    #[arg(long, default_value = "bench/torch_simclr.py")]
    pub torch_script: PathBuf,
    /// Do not run the PyTorch reference.
    #[arg(long)]
    pub no_torch: bool,
    /// ONNX Runtime throughput script; skipped when python3 cannot import onnxruntime.
    #[arg(long, default_value = "bench/onnx_throughput.py")]
    pub onnx_script: PathBuf,
    /// Do not measure ONNX Runtime.
    #[arg(long)]
    pub no_onnx: bool,
    /// Batch sizes of the inference comparison with ONNX Runtime (256: `eval`'s batches, 1: one
    /// image).
    #[arg(long, value_delimiter = ',', default_value = "256,1")]
    pub inference_batch_size: Vec<usize>,
    /// Instead of the training step: check NCCL on CUDA GPU 0 with a world of one rank (the
    /// library loads, a communicator starts, an all-reduce of ResNet-18's 11.5 M gradient values
    /// reads and writes the tensor's own GPU buffer) and time that all-reduce. Needs a binary
    /// built with `--features cuda` and libnccl.
    #[arg(long)]
    pub nccl: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench.json")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// Dataset: a cifar-10-batches-bin directory, cifar-10-binary.tar.gz, stl10:DIR (the
    /// official stl10_binary; `stl10:` alone downloads it), folder:PATH (your images, any size:
    /// labelled when `PATH/<class>/*.jpg` or PATH/train + PATH/val, else unlabeled) or
    /// images:PATH (never labelled). Default: download the official CIFAR-10 archive once into
    /// ~/.cache/selfsup (or $SELFSUP_CACHE), MD5-checked.
    #[arg(long)]
    pub data: Option<String>,
    /// Side of the square images the network sees, in pixels: each image is resized (shorter
    /// side) and centre-cropped once at load [default: the dataset's own: CIFAR-10 32, STL-10
    /// 96, folders 224]. Above 64 the encoder takes ImageNet's stem (model.stem).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// A labelled dataset (as --data) for the kNN monitor, when --data has no labels.
    #[arg(long, value_name = "DATA")]
    pub eval_data: Option<String>,
    /// Stop at an unreadable image file instead of skipping it with a warning.
    #[arg(long)]
    pub strict_data: bool,
    /// CPU convolutions as im2col + GEMM only, without the faster Winograd kernels
    /// (config key `winograd`).
    #[arg(long)]
    pub no_winograd: bool,
    /// Self-supervised method; each starts from its preset: SimCLR from this project's recipe
    /// (Adam 3e-4), the others from solo-learn's published CIFAR-10 ResNet-18 configurations
    /// (heads, LARS/SGD with warm-up + cosine, augmentations). `--print-config` shows it all
    /// [default: simclr].
    #[arg(long, value_enum)]
    pub method: Option<MethodKind>,
    /// Number of epochs [default: 100].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per batch; each gives two views, so the loss sees 2x this many [default: 256].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Cap on optimizer steps per epoch, for quick runs (0 = full epoch) [default: 0].
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    /// Peak learning rate (optim.lr; with optim.scale_lr_by_batch, for a batch of 256)
    /// [default: the method's].
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Weight decay (optim.weight_decay) [default: the method's].
    #[arg(long, value_name = "WD")]
    pub weight_decay: Option<f64>,
    /// Linear learning-rate warm-up, in epochs (optim.warmup_epochs) [default: the method's].
    #[arg(long, value_name = "EPOCHS")]
    pub warmup_epochs: Option<f64>,
    /// Loss temperature of SimCLR and MoCo v2 (method.temperature) [default: 0.5 SimCLR, 0.2
    /// MoCo v2].
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// ResNet-18 width: channels of the first stage (model.width; 64 is the standard network,
    /// 16 trains about 10x faster) [default: 64].
    #[arg(long)]
    pub width: Option<usize>,
    /// Run the kNN monitor after every N-th epoch and the last one; 0 turns it off
    /// (knn.every) [default: 1].
    #[arg(long, value_name = "N")]
    pub knn_every: Option<usize>,
    /// Optimizer steps between two rows of per-step TensorBoard scalars under OUT/tb (0:
    /// none) [default: 10].
    #[arg(long, value_name = "STEPS")]
    pub log_every: Option<usize>,
    /// End-of-epoch checkpoints to keep, newest first; older ones are deleted after each save
    /// (0: keep every one) [default: 3].
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Also keep the checkpoint of every N-th epoch, whatever --keep-last says [default: 0,
    /// none].
    #[arg(long, value_name = "N")]
    pub keep_every: Option<usize>,
    /// Output directory for checkpoints, metrics.csv, metrics.svg, TensorBoard events (tb/) and
    /// config.toml [default: runs/TIMESTAMP, the start time].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to train: auto (CUDA if the binary has it and a GPU answers, else wgpu if it has
    /// it and the adapter is a real GPU, else the CPU; the choice is printed), cpu, cuda (binary
    /// built with --features cuda), wgpu (any GPU through Vulkan/Metal/DX12; --features wgpu),
    /// or another CPU backend for comparison (ndarray, candle) [default: auto].
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    /// Mixed precision on a GPU: convolutions and linear layers in f16 (with dynamic loss
    /// scaling) or bf16 (CUDA, sm80+), weights, optimizer, BatchNorm and loss in f32, as
    /// torch.autocast [default: f32].
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Random seed for initialisation, shuffling and augmentation [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start from these weights instead of a random initialisation: a safetensors file with
    /// every tensor under its module path (see docs/evidence.md).
    #[arg(long, value_name = "FILE")]
    pub init_weights: Option<String>,
    /// Optimizer, replacing the method's. Between sgd and lars the method's learning rate,
    /// weight decay and schedule stay; from adam: sgd (momentum 0.9, lr 0.06 x batch/256, wd
    /// 5e-4, cosine) or lars (lr 0.3 x batch/256, wd 1e-4, eta 0.02, 10 warm-up epochs,
    /// cosine); adam is lr 3e-4, wd 1e-4. `--print-config` shows the result [default: the
    /// method's].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// TOML file with any config keys (see `trainer train --print-config`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its newest intact checkpoint, with its recipe (its
    /// config.toml, or --config if it is the same recipe). Flags or config keys that would change
    /// the run are refused, naming each; only --epochs (with --extend-schedule), --knn-every,
    /// --log-every, --keep-last, --keep-every, --device, --devices and --no-winograd may change.
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// With --resume and a new --epochs: stretch the learning-rate and momentum schedules over
    /// the new total, instead of keeping the run's original horizon.
    #[arg(long, requires = "resume")]
    pub extend_schedule: bool,
    /// Print the full config this command would use, as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Devices of this process to spread each batch over: one rank (thread) per device, each
    /// with batch-size / (devices x processes) images, gradients averaged. Several processes
    /// (one per device, on one machine or many) are started by MPI's launcher instead: `mpirun
    /// -np 4 trainer ...` or `srun trainer ...` (docs/distributed.md). With --device cpu the
    /// ranks share the cores.
    #[arg(
        long,
        default_value_t = 1,
        help_heading = "Several devices or machines"
    )]
    pub devices: usize,
    /// Seconds a rank waits for the others in one exchange before stopping with an error (a
    /// rank died or hangs). Must exceed rank 0's kNN monitor at the end of an epoch.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 600,
        help_heading = "Several devices or machines"
    )]
    pub peer_timeout: u64,
}

impl TrainArgs {
    /// How this run is spread over devices and processes. Under an MPI launcher (`mpirun`,
    /// `srun`) this starts MPI: the launcher's processes are the ranks.
    pub fn topology(&self) -> Result<Topology> {
        let launch = crate::distributed::launch::detect()?;
        let timeout = std::time::Duration::from_secs(self.peer_timeout);
        Ok(Topology::new(self.devices, &launch, timeout))
    }

    /// The method's preset < config file (or the run's own config.toml on --resume) < flags.
    pub fn to_config(&self) -> Result<TrainConfig> {
        let mut config = match (&self.config, &self.out) {
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
        };
        // The run being resumed, as its config.toml records it, whether this recipe comes from
        // there or from --config.
        let saved = match (&self.out, self.resume) {
            (Some(_), true) if self.config.is_none() => Some(config.clone()),
            // Without one (a run that never started) the checkpoint, if any, is checked at load.
            (Some(out), true) if out.join("config.toml").exists() => Some(
                TrainConfig::load(&out.join("config.toml"))
                    .context("--resume reads the run's recipe")?,
            ),
            _ => None,
        };
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
        if let Some(data) = &self.data {
            config.data = data.clone();
        }
        if let Some(v) = self.image_size {
            config.image_size = v;
        }
        if let Some(v) = &self.eval_data {
            config.eval_data = v.clone();
        }
        if self.strict_data {
            config.strict_data = true;
        }
        if self.no_winograd {
            config.winograd = false;
        }
        if let Some(v) = self.epochs {
            config.epochs = v;
        }
        if let Some(v) = self.batch_size {
            config.batch_size = v;
        }
        if let Some(v) = self.keep_last {
            config.keep_last = v;
        }
        if let Some(v) = self.keep_every {
            config.keep_every = v;
        }
        if let Some(v) = self.steps_per_epoch {
            config.steps_per_epoch = v;
        }
        if let Some(v) = self.device {
            config.device = v;
        }
        if let Some(v) = self.precision {
            config.precision = v;
        }
        if let Some(v) = self.seed {
            config.seed = v;
        }
        if let Some(v) = &self.init_weights {
            config.init_weights = v.clone();
        }
        if let Some(v) = self.lr {
            config.optim.lr = v;
        }
        if let Some(v) = self.weight_decay {
            config.optim.weight_decay = v;
        }
        if let Some(v) = self.warmup_epochs {
            config.optim.warmup_epochs = v;
        }
        if let Some(v) = self.temperature {
            config.method.set_temperature(v)?;
        }
        if let Some(v) = self.width {
            config.model.width = v;
        }
        if let Some(v) = self.knn_every {
            config.knn.every = v;
        }
        if let Some(v) = self.log_every {
            config.log_every = v;
        }
        if let Some(saved) = &saved {
            self.continue_the_run(saved, &mut config)?;
        }
        config.validate()?;
        Ok(config)
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

/// Runs the command; returns the process exit code (130 after Ctrl-C, as shells expect).
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Some(Command::Train(args)) => train(args),
        Some(Command::Bench(args)) => bench(args),
        Some(Command::Eval(args)) => eval(args),
        Some(Command::Export(args)) => export(args),
        Some(Command::Embed(args)) => {
            let device = crate::backend::resolve(args.device);
            run_on(device, EmbedJob { args })?;
            Ok(0)
        }
        None => train(cli.train),
    }
}

fn train(args: TrainArgs) -> Result<i32> {
    let mut config = args.to_config()?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(0);
    }
    // The run's config.toml records the device it ran on, not "auto".
    config.device = crate::backend::resolve(config.device);
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string())
    });
    let topology = args.topology()?;
    topology.validate(config.batch_size)?;
    if topology.is_torchrun() {
        start_torchrun_rendezvous(&topology, &config, args.out.as_deref())?;
    }
    let process_rank = topology.process_rank;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to quit now)"
        );
    })
    .context("cannot install the Ctrl-C handler")?;
    let job = TrainJob {
        config: config.clone(),
        out: out.clone(),
        resume: args.resume,
        stop,
        data: None,
        topology,
    };
    let (outcome, _) = job.run_on(config.device)?;
    Ok(match outcome {
        Outcome::Finished if process_rank != 0 => 0,
        Outcome::Finished => {
            let data = if config.data.is_empty() {
                String::new()
            } else {
                format!(" --data {}", config.data)
            };
            eprintln!(
                "next: trainer eval --checkpoint {run}{data}\n      \
trainer export --checkpoint {run} --viewer{data}   (then `trunk serve` in viewer/)",
                run = out.display()
            );
            0
        }
        Outcome::Interrupted { .. } => 130,
    })
}

fn bench(args: BenchArgs) -> Result<i32> {
    if args.nccl {
        return nccl_check(&args.out);
    }
    anyhow::ensure!(
        args.batch_size.iter().all(|&b| b >= 2),
        "--batch-size values must be at least 2"
    );
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1");
    anyhow::ensure!(
        args.inference_batch_size.iter().all(|&b| b >= 1),
        "--inference-batch-size values must be at least 1"
    );
    anyhow::ensure!(
        args.image_size >= 8,
        "--image-size must be at least 8 pixels, got {}",
        args.image_size
    );
    let data = match &args.data {
        Some(source) => {
            let options = crate::data::LoadOptions {
                image_size: args.image_size,
                strict: false,
            };
            Some(
                crate::data::load_with(source, &options)?
                    .pretraining()
                    .clone(),
            )
        }
        None => None,
    };
    let torch_script = (!args.no_torch).then(|| args.torch_script.clone());
    if let Some(script) = &torch_script {
        anyhow::ensure!(
            script.is_file(),
"PyTorch reference {} not found: run from the repository root, pass --torch-script, or --no-torch",
            script.display()
        );
    }
    let options = crate::jobs::bench::BenchOptions {
        batch_sizes: args.batch_size.clone(),
        steps: args.steps,
        warmup: args.warmup,
        device: crate::backend::resolve(args.device),
        precision: args.precision,
        model: crate::model::ModelConfig {
            width: args.width,
            stem: crate::model::Stem::Auto.for_size(args.image_size),
            ..Default::default()
        },
        image_size: args.image_size,
        data,
        torch_script,
        onnx_script: (!args.no_onnx && args.onnx_script.is_file())
            .then(|| args.onnx_script.clone()),
        inference_batch_sizes: args.inference_batch_size.clone(),
        inference_seconds: 3.0,
        threads: rayon::current_num_threads(),
    };
    let report = crate::jobs::bench::run(&options)?;
    print!("{}", crate::jobs::bench::table(&report));
    crate::jobs::bench::write_json(&report, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(0)
}

fn eval(args: EvalArgs) -> Result<i32> {
    run_on(
        crate::backend::resolve(args.device),
        crate::jobs::eval::EvalJob { args },
    )?;
    Ok(0)
}

fn export(args: ExportArgs) -> Result<i32> {
    use crate::backend::CpuBackend;
    use crate::jobs::viewer_assets as va;
    // Check the viewer folder and the page before the slow part, so a typo costs nothing.
    if let Some(dir) = &args.viewer {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            ensure!(
                parent.is_dir(),
                "--viewer {}: {} does not exist (run from the repository root, or give \
--viewer DIR with an existing parent folder)",
                dir.display(),
                parent.display()
            );
        }
    }
    if args.demo.is_some() {
        va::check_page(&args.page)?;
    }
    // The demo ships embeddings (the map at once) of as many images as make a useful map.
    let viewer_dir = match (&args.viewer, &args.demo) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(demo)) => Some(demo.join("assets")),
        (None, None) => None,
    };
    let embeddings = args
        .embeddings
        .or(args.demo.as_ref().map(|_| va::EmbeddingDtype::F16));
    let ckpt = crate::checkpoint::Checkpoint::read(&args.checkpoint)?;
    let model = ckpt.model::<CpuBackend>(&Default::default())?;
    let proto = crate::jobs::export::encoder_to_onnx(
        &model.encoder,
        ckpt.config.model.embedding_dim(),
        ckpt.config.input_size(),
        &ckpt.config.augment,
        ckpt.config.method.kind(),
        &ckpt.config.to_toml(),
        &onnx::ExportOptions {
            fold_batch_norm: args.fold_bn,
        },
    );
    let nodes = proto.graph.as_ref().map_or(0, |g| g.node.len());
    let report = |path: &Path| {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!(
            "wrote {} ({:.1} MB, {nodes} nodes, opset {}) from {}",
            path.display(),
            size as f64 / 1e6,
            onnx::OPSET,
            ckpt.path.display()
        );
    };
    let out = match (&args.out, &viewer_dir) {
        (Some(out), _) => Some(out.clone()),
        (None, None) => Some(PathBuf::from("encoder.onnx")),
        (None, Some(_)) => None,
    };
    if let Some(out) = &out {
        onnx::write_model(&proto, out)?;
        report(out);
    }
    if let Some(dir) = &viewer_dir {
        let splits = ckpt.config.load_data_for(args.data.as_deref())?;
        // Labelled data: a class-balanced sample of the test split (a demo: the whole split,
        // when it is small enough). An unlabeled folder: evenly spaced images of the folder.
        let (images, indices) = match (splits.has_labels(), args.samples) {
            (true, None) if args.demo.is_some() && splits.test.len() <= va::DEMO_SAMPLES => {
                (&splits.test, (0..splits.test.len()).collect())
            }
            (true, samples) => {
                let n = samples.unwrap_or(match args.demo {
                    Some(_) => va::DEMO_SAMPLES,
                    None => va::VIEWER_SAMPLES,
                });
                (&splits.test, va::balanced_sample(&splits.test, n)?)
            }
            (false, samples) => {
                let images = splits.pretraining();
                let n = samples.unwrap_or(match args.demo {
                    Some(_) => va::DEMO_SAMPLES,
                    None => va::VIEWER_SAMPLES,
                });
                (images, va::evenly_spaced(images.len(), n)?)
            }
        };
        if let Some(demo) = &args.demo {
            let files = va::copy_page(&args.page, demo)?;
            println!(
                "copied the viewer page ({files} files) from {} into {}",
                args.page.display(),
                demo.display()
            );
        }
        let values = embeddings.map(|_| {
            let encoder = &model.encoder;
            let features = crate::eval::features::encode_dataset(
                encoder,
                &va::picked(images, &indices),
                &ckpt.config.augment,
                64,
                &Default::default(),
                "embedding the samples",
            );
            onnx::values(features)
        });
        let dim = ckpt.config.model.embedding_dim();
        let shipped = embeddings
            .zip(values.as_deref())
            .map(|(dtype, values)| va::Embeddings { values, dim, dtype });
        va::write(
            dir,
            &proto.to_bytes(),
            images,
            &indices,
            &splits.origin,
            &ckpt.path,
            shipped,
        )?;
        report(&dir.join(va::MODEL_FILE));
        if let Some(dtype) = embeddings {
            println!(
                "wrote their embeddings ({} x {dim}, {}) into {}",
                indices.len(),
                dtype.name(),
                dir.join(va::EMBEDDINGS_FILE).display()
            );
        }
        println!(
            "wrote {} sample images ({}) from {} into {}{}",
            indices.len(),
            match images.is_labelled() {
                true => format!("{} classes", images.classes.len()),
                false => "unlabeled".to_string(),
            },
            splits.origin,
            dir.display(),
            match args.demo {
                Some(_) => "",
                None => "; view them with `trunk serve` in viewer/",
            }
        );
        if let Some(demo) = &args.demo {
            println!(
                "the demo site is ready: `python3 -m http.server -d {}` (or any static host) \
                 serves it",
                demo.display()
            );
        }
    }
    Ok(0)
}

struct EmbedJob {
    args: EmbedArgs,
}

impl crate::backend::BackendTask for EmbedJob {
    type Output = ();

    fn run<B: crate::backend::TrainBackend>(self, device: B::Device, _name: &str) -> Result<()> {
        use burn::module::AutodiffModule;
        let args = self.args;
        let ckpt = crate::checkpoint::Checkpoint::read(&args.checkpoint)?;
        let mut config = ckpt.config.clone();
        config.strict_data |= args.strict_data;
        let splits = config.load_data_for(args.data.as_deref())?;
        let (split, dataset) = match args.split {
            _ if !splits.has_labels() => ("all", splits.pretraining()),
            Split::Train => ("train", &splits.train),
            Split::Test => ("test", &splits.test),
        };
        if split == "all" {
            eprintln!(
                "{}: no labelled splits; embedding all its images",
                splits.origin
            );
        }
        let dataset = dataset.head(args.limit);
        let encoder = ckpt.model::<B>(&device)?.encoder.valid();
        let features = crate::eval::features::encode_dataset(
            &encoder,
            &dataset,
            &ckpt.config.augment,
            args.batch_size.max(1),
            &device,
            "embedding",
        );
        let [rows, cols] = features.dims();
        let values = onnx::values(features);
        crate::jobs::export::write_npy(&args.out, &values, rows, cols)?;
        let csv = args.out.with_extension("csv");
        crate::jobs::export::write_rows_csv(&csv, &dataset, split)?;
        println!(
            "wrote {} (float32 {rows} x {cols}) and {} (each row's image)",
            args.out.display(),
            csv.display()
        );
        Ok(())
    }
}

/// `bench --nccl`: the world-size-1 NCCL check on GPU 0, as JSON in `out`.
fn nccl_check(out: &Path) -> Result<i32> {
    #[cfg(feature = "cuda")]
    {
        let check = crate::distributed::nccl::check(0, 11_500_000, 20)?;
        eprintln!(
            "NCCL {} on GPU 0, 1 rank: max error in place {:e}, into another tensor {:e}, \
             strided {:e}; all-reduce of {} values: {:.3} ms ({:.1} GB/s)",
            check.nccl_version,
            check.sum_max_error,
            check.copy_max_error,
            check.strided_max_error,
            check.values,
            check.seconds_per_all_reduce * 1e3,
            check.gigabytes_per_second
        );
        let ok = check.sum_max_error == 0.0
            && check.copy_max_error == 0.0
            && check.strided_max_error == 0.0;
        std::fs::write(out, serde_json::to_string_pretty(&check)? + "\n")
            .with_context(|| format!("cannot write {}", out.display()))?;
        anyhow::ensure!(
            ok,
            "the NCCL all-reduce gave wrong values (report in {})",
            out.display()
        );
        Ok(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = out;
        anyhow::bail!(
            "bench --nccl needs a binary built with `--features cuda` (NCCL runs between CUDA GPUs)"
        )
    }
}

/// A torchrun-style launch: CUDA only, its ranks meeting through NCCL, NCCL's id carried in the
/// run folder, which every rank must name the same (`--out`).
fn start_torchrun_rendezvous(
    topology: &Topology,
    config: &crate::config::TrainConfig,
    out: Option<&Path>,
) -> Result<()> {
    let cuda = config.device == DeviceKind::Cuda;
    crate::distributed::launch::torchrun_needs_cuda(
        topology.processes,
        topology.process_rank,
        cuda,
    )?;
    let Some(out) = out else {
        anyhow::bail!(
            "a torchrun-style launch needs --out: the run folder where the ranks meet (on a file \
             system every rank sees, when they are on several machines)"
        );
    };
    #[cfg(feature = "cuda")]
    {
        use crate::distributed::rendezvous::Rendezvous;
        let key = Rendezvous::key_from(|name| std::env::var(name).ok());
        crate::distributed::nccl::set_rendezvous(Some(Rendezvous::new(
            out,
            &key,
            std::time::SystemTime::now(),
        )));
    }
    #[cfg(not(feature = "cuda"))]
    let _ = out;
    Ok(())
}
