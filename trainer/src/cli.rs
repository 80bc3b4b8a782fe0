//! The command line: `trainer [train]` with flags that override the config file's keys.

use crate::backend::{run_on, DeviceKind};
use crate::jobs::eval::EvalOptions;
use crate::jobs::train::options::TrainOptions;
use crate::jobs::train::{Outcome, TrainJob};
use crate::methods::MethodKind;
use crate::precision::Precision;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
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
    pub train: TrainOptions,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain the encoder (the default command).
    Train(TrainOptions),
    /// Measure training-step and data-pipeline throughput, against PyTorch when it is installed.
    Bench(BenchArgs),
    /// Evaluate a checkpoint's frozen encoder: kNN, linear probe and k-means clustering.
    Eval(EvalOptions),
    /// Export a checkpoint's encoder to a standard ONNX file (images in [0, 1] -> embedding).
    Export(crate::jobs::export::ExportJobOptions),
    /// Write a checkpoint's encoder embeddings of dataset images as a float32 .npy file, with
    /// a CSV of the images' names (and labels) beside it.
    Embed(crate::jobs::embed::EmbedOptions),
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
    /// The encoder to measure.
    #[arg(long, value_enum, default_value_t = crate::model::BackboneKind::Resnet18)]
    pub backbone: crate::model::BackboneKind,
    /// Backbone width (64 is the standard ResNet-18).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Side of the images in pixels (32: CIFAR-10, 96: STL-10); above 64 the network has
    /// ImageNet's stem (7x7 stride 2 + max-pool), as `train` picks it, and so does PyTorch's.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Dataset whose images are augmented (as `train --data`); random images when omitted.
    #[arg(long)]
    pub data: Option<String>,
    /// The method whose training step is timed, with its preset (heads, optimizer,
    /// augmentations): simclr (two views), or dino (multi-crop: two global views and six local
    /// ones of half the side); any other method is timed without a PyTorch reference.
    #[arg(long, value_enum, default_value_t = MethodKind::Simclr)]
    pub method: MethodKind,
    /// PyTorch reference script (default: bench/torch_simclr.py, bench/torch_dino.py for
    /// --method dino); skipped when python3 cannot import torch.
    #[arg(long)]
    pub torch_script: Option<PathBuf>,
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

/// Runs the command; returns the process exit code (130 after Ctrl-C, as shells expect).
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Some(Command::Train(args)) => train(args),
        Some(Command::Bench(args)) => bench(args),
        Some(Command::Eval(args)) => eval(args),
        Some(Command::Export(args)) => {
            crate::jobs::export::run_export(args)?;
            Ok(0)
        }
        Some(Command::Embed(args)) => {
            let device = crate::backend::resolve(args.device);
            run_on(device, crate::jobs::embed::EmbedJob { options: args })?;
            Ok(0)
        }
        None => train(cli.train),
    }
}

fn train(args: TrainOptions) -> Result<i32> {
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
        crate::jobs::train::torchrun::start_torchrun_rendezvous(
            &topology,
            &config,
            args.out.as_deref(),
        )?;
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
        return crate::jobs::nccl_check::nccl_check(&args.out);
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
    let default_script = match args.method {
        MethodKind::Simclr => Some("bench/torch_simclr.py"),
        MethodKind::Dino => Some("bench/torch_dino.py"),
        _ => None,
    };
    let torch_script = match (&args.torch_script, default_script) {
        _ if args.no_torch => None,
        (Some(script), _) => Some(script.clone()),
        (None, Some(script)) => Some(PathBuf::from(script)),
        (None, None) => {
            eprintln!(
                "PyTorch reference: none for {} (bench/ has SimCLR's and DINO's steps)",
                args.method
            );
            None
        }
    };
    if let Some(script) = &torch_script {
        anyhow::ensure!(
            script.is_file(),
"PyTorch reference {} not found: run from the repository root, pass --torch-script, or --no-torch",
            script.display()
        );
    }
    let options = crate::jobs::bench::BenchOptions {
        method: args.method,
        batch_sizes: args.batch_size.clone(),
        steps: args.steps,
        warmup: args.warmup,
        device: crate::backend::resolve(args.device),
        precision: args.precision,
        model: crate::model::ModelConfig {
            backbone: args.backbone,
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

fn eval(args: EvalOptions) -> Result<i32> {
    run_on(
        crate::backend::resolve(args.device),
        crate::jobs::eval::EvalJob { options: args },
    )?;
    Ok(0)
}
