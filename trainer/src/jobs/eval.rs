//! `trainer eval`: computes a checkpoint's encoder features once, then every downstream metric.

use crate::backend::BackendTask;
use crate::backend::TrainBackend;
use crate::checkpoint::Checkpoint;
use crate::cli::EvalArgs;
use crate::eval::features::encode_dataset;
use crate::eval::knn::KnnClassifier;
use crate::eval::standard_linear::{standard_linear_eval, StandardLinearConfig};
use crate::eval::{
    ari, kmeans, knn_top1, linear_probe, nmi, EvalReport, Features, ProbeConfig, ProbeProtocol,
};
use crate::jobs::train::KNN_SUBSET_SEED;
use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use std::time::Instant;

pub struct EvalJob {
    pub args: EvalArgs,
}

impl BackendTask for EvalJob {
    type Output = EvalReport;

    fn run<B: TrainBackend>(self, device: B::Device, name: &str) -> Result<Self::Output> {
        let args = self.args;
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
        let out = ckpt
            .path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("eval.json");
        crate::checkpoint::write_atomically(
            &out,
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )
        .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
        Ok(report)
    }
}
