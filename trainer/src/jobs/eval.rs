//! `trainer eval`: computes a checkpoint's encoder features once, then every downstream metric.

use crate::backend::BackendTask;
use crate::backend::DeviceKind;
use crate::backend::TrainBackend;
use crate::checkpoint::Checkpoint;
use crate::eval::features::encode_dataset;
use crate::eval::knn::KnnClassifier;
use crate::eval::standard_linear::{standard_linear_eval, StandardLinearConfig};
use crate::eval::{
    ari, kmeans, knn_top1, linear_probe, nmi, EvalReport, Features, ProbeConfig, ProbeProtocol,
};
use crate::jobs::train::KNN_SUBSET_SEED;
use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use std::path::PathBuf;
use std::time::Instant;

/// What `trainer eval` computes, and on what (the command's flags; a library user fills it
/// from [`EvalOptions::new`]).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct EvalOptions {
    /// Checkpoint file, or a run directory / checkpoints directory (its latest checkpoint).
    #[cfg_attr(feature = "cli", arg(long))]
    pub checkpoint: PathBuf,
    /// Labelled dataset, as `train --data` (default: the run's --eval-data, else its --data).
    #[cfg_attr(feature = "cli", arg(long))]
    pub data: Option<String>,
    /// Device: auto (CUDA, else a real GPU through wgpu, else the CPU), cpu, cuda, wgpu,
    /// ndarray, candle.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = DeviceKind::Auto))]
    pub device: DeviceKind,
    /// Neighbours that vote in kNN.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_K))]
    pub k: usize,
    /// kNN vote temperature: each neighbour votes exp(similarity / T).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_TEMPERATURE))]
    pub temperature: f64,
    /// Linear evaluation: fast (Adam on features of un-augmented images computed once, a
    /// quick look) or standard (the published protocol, solo-learn's main_linear: SGD momentum
    /// 0.9, cosine, random crop + flip views every epoch; one encoder pass per epoch).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = ProbeProtocol::Fast))]
    pub protocol: ProbeProtocol,
    /// Epochs of linear-probe training (cosine-decayed learning rate).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_PROBE_EPOCHS))]
    pub probe_epochs: usize,
    /// Linear-probe learning rate [default: 1e-3 fast, 0.1 standard].
    #[cfg_attr(feature = "cli", arg(long))]
    pub probe_lr: Option<f64>,
    /// Use only N train images (0 = all), drawn with a fixed seed, each class in proportion:
    /// the same subset on every call.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub limit_train: usize,
    /// Use only N test images (0 = all), drawn as --limit-train's.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub limit_test: usize,
    /// Images per forward pass while computing features.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_BATCH_SIZE))]
    pub batch_size: usize,
}

const DEFAULT_K: usize = 200;
const DEFAULT_TEMPERATURE: f64 = 0.1;
const DEFAULT_PROBE_EPOCHS: usize = 100;
const DEFAULT_BATCH_SIZE: usize = 256;

impl EvalOptions {
    /// The command's defaults, for `checkpoint`.
    pub fn new(checkpoint: PathBuf) -> Self {
        Self {
            checkpoint,
            data: None,
            device: DeviceKind::Auto,
            k: DEFAULT_K,
            temperature: DEFAULT_TEMPERATURE,
            protocol: ProbeProtocol::Fast,
            probe_epochs: DEFAULT_PROBE_EPOCHS,
            probe_lr: None,
            limit_train: 0,
            limit_test: 0,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

pub struct EvalJob {
    pub options: EvalOptions,
}

impl BackendTask for EvalJob {
    type Output = EvalReport;

    fn run<B: TrainBackend>(self, device: B::Device, name: &str) -> Result<Self::Output> {
        let args = self.options;
        let ckpt = Checkpoint::read(&args.checkpoint)?;
        let splits = ckpt.config.load_data_for(args.data.as_deref())?;
        anyhow::ensure!(
            splits.has_labels(),
            "{}: no labelled train and test images, and kNN, the linear probe and k-means need \
             labels: give --data with a labelled dataset (class folders PATH/<class>/*.jpg, \
             PATH/train + PATH/val, CIFAR-10 or STL-10)",
            splits.origin
        );
        // Seeded, class-stratified subsets (the kNN monitor's seed): every class is in them.
        let train = splits.train.sample(args.limit_train, KNN_SUBSET_SEED);
        let test = splits.test.sample(args.limit_test, KNN_SUBSET_SEED);
        let classes = splits.train.classes.len();
        eprintln!(
            "evaluating {} (epoch {}) on {} ({} train, {} test images), device {name}",
            ckpt.path.display(),
            ckpt.state.epochs_done,
            splits.origin,
            train.len(),
            test.len()
        );
        let encoder = ckpt.model::<B>(&device)?.encoder.valid();
        let augment = &ckpt.config.augment; // the normalisation the encoder was trained with
        let started = Instant::now();
        let train_features = Features::from_tensor(encode_dataset(
            &encoder,
            &train,
            augment,
            args.batch_size,
            &device,
            "train features",
        ));
        let test_features = Features::from_tensor(encode_dataset(
            &encoder,
            &test,
            augment,
            args.batch_size,
            &device,
            "test features",
        ));
        eprintln!("features: {:.0} s", started.elapsed().as_secs_f64());

        let knn = KnnClassifier {
            k: args.k,
            temperature: args.temperature,
        };
        let knn_acc = knn_top1::<B::InnerBackend>(
            &knn,
            &train_features,
            &train.labels,
            &test_features,
            &test.labels,
            classes,
            &device,
        );
        let lr = args.probe_lr.unwrap_or(args.protocol.default_lr());
        let probe_acc = match args.protocol {
            ProbeProtocol::Fast => linear_probe::<B>(
                &train_features,
                &train.labels,
                &test_features,
                &test.labels,
                classes,
                &ProbeConfig {
                    epochs: args.probe_epochs,
                    lr,
                    ..Default::default()
                },
                &device,
            )?,
            ProbeProtocol::Standard => standard_linear_eval::<B>(
                &encoder,
                &train,
                &test_features,
                &test.labels,
                classes,
                augment,
                &StandardLinearConfig {
                    epochs: args.probe_epochs,
                    lr,
                    ..Default::default()
                },
                &device,
            )?,
        };
        let clusters = kmeans(&test_features.l2_normalized(), classes, 100, 0);
        let truth: Vec<usize> = test.labels.iter().map(|&l| l as usize).collect();
        let report = EvalReport {
            checkpoint: ckpt.path.display().to_string(),
            train_images: train.len(),
            test_images: test.len(),
            knn_k: args.k,
            knn_temperature: args.temperature,
            knn_top1: knn_acc,
            linear_probe_top1: probe_acc,
            linear_probe_epochs: args.probe_epochs,
            linear_probe_protocol: args.protocol.name().to_string(),
            kmeans_nmi: nmi(&clusters, &truth),
            kmeans_ari: ari(&clusters, &truth),
        };
        print_and_save(&report, &args, &ckpt.path)?;
        Ok(report)
    }
}

/// The report as a table on stdout and as `eval.json` beside the checkpoint.
fn print_and_save(
    report: &EvalReport,
    args: &EvalOptions,
    checkpoint: &std::path::Path,
) -> Result<()> {
    println!("| metric | value |\n|---|---:|");
    println!(
        "| kNN top-1 (k={}, T={}) | {:.2} % |",
        args.k,
        args.temperature,
        100.0 * report.knn_top1
    );
    println!(
        "| linear probe top-1 ({} protocol, {} epochs) | {:.2} % |",
        args.protocol.name(),
        args.probe_epochs,
        100.0 * report.linear_probe_top1
    );
    println!("| k-means NMI | {:.4} |", report.kmeans_nmi);
    println!("| k-means ARI | {:.4} |", report.kmeans_ari);
    let out = checkpoint
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("eval.json");
    crate::records::write_atomically(&out, serde_json::to_string_pretty(&report)?.as_bytes())
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
