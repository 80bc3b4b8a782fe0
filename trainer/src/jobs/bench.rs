//! `trainer bench`: throughput of a method's training step (SimCLR by default; DINO with
//! multi-crop: `--method dino`) and of the augmentation pipeline, side by side with the same step
//! in PyTorch (`bench/torch_simclr.py`, `bench/torch_dino.py`) when `torch` imports;
//! and of inference (the encoder's features, as `eval`, `embed` and the kNN monitor compute
//! them) side by side with ONNX Runtime on the exported encoder (`bench/onnx_throughput.py`).
//!
//! Figures are medians over timed steps after warm-up steps, in image pairs per second (one
//! pair = the two augmented views of one image) for training, images and views per second for a
//! multi-crop step, images per second for inference.

use crate::backend::TrainBackend;
use crate::backend::{BackendTask, DeviceKind};
use crate::config::TrainConfig;
use crate::data::augment::{AugmentConfig, ViewSpec};
use crate::data::loader::{make_batch, make_views, EpochPlan, Shard};
use crate::data::ImageDataset;
use crate::jobs::train::train_step;
use crate::methods::MethodKind;
use crate::model::{ModelConfig, SslModel};
use crate::optim::{with_optimizer, OptimizerTask, Schedule};
use crate::precision::{GradScaler, Precision};
use anyhow::{Context, Result};
use burn::optim::Optimizer;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The method whose step is timed, with its preset's heads, optimizer and augmentations;
    /// DINO and SwAV with multi-crop ([`multi_crop_views`]).
    pub method: MethodKind,
    pub batch_sizes: Vec<usize>,
    pub steps: usize,
    pub warmup: usize,
    pub device: DeviceKind,
    /// The training step's precision (mixed precision on GPUs); PyTorch's reference then runs
    /// under `torch.autocast` with the same dtype.
    pub precision: Precision,
    /// The network; its `stem` is the one for `image_size` (ImageNet's above 64 px).
    pub model: ModelConfig,
    /// Side of the square images (32: CIFAR-10; 96: STL-10).
    pub image_size: usize,
    /// Real images to augment (random bytes when `None`).
    pub data: Option<ImageDataset>,
    pub torch_script: Option<PathBuf>,
    /// ONNX Runtime throughput script (`bench/onnx_throughput.py`); skipped when `None`.
    pub onnx_script: Option<PathBuf>,
    /// Batch sizes of the inference comparison (256: `eval`'s batches; 1: one image).
    pub inference_batch_sizes: Vec<usize>,
    /// Least time spent on the timed passes of each inference batch size.
    pub inference_seconds: f64,
    pub threads: usize,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub device: String,
    pub batch_size: usize,
    pub train_step_pairs_per_s: f64,
    pub train_step_ms_median: f64,
    pub torch_pairs_per_s: Option<f64>,
    pub ours_over_torch: Option<f64>,
    pub data_pairs_per_s: f64,
}

/// One row of the inference comparison: encoder features of normalised images.
#[derive(Debug, Clone, Serialize)]
pub struct InferenceResult {
    pub batch_size: usize,
    pub ours_images_per_s: f64,
    pub onnx_images_per_s: Option<f64>,
    pub ours_over_onnx: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub method: String,
    /// Views per image of the training step (2, or more with multi-crop).
    pub views_per_image: usize,
    pub device: String,
    pub precision: Precision,
    pub threads: usize,
    pub width: usize,
    pub image_size: usize,
    pub stem: String,
    pub steps: usize,
    pub results: Vec<BenchResult>,
    pub inference: Vec<InferenceResult>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    }
}

fn synthetic_images(n: usize, side: usize) -> ImageDataset {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let pixels: Vec<u8> = (0..n * 3 * side * side).map(|_| rng.random()).collect();
    ImageDataset::new(side, pixels, vec![0; n], vec!["synthetic".into()])
}

/// Augmented pairs per second of the loader's batch builder on all cores.
pub fn data_pairs_per_s(dataset: &ImageDataset, batch_size: usize, batches: usize) -> f64 {
    let augment = AugmentConfig::default();
    let plan = EpochPlan::new(dataset.len(), batch_size, 0, 1);
    let batches = batches.min(plan.steps).max(1);
    let _ = make_batch(dataset, &augment, &plan, 0); // warm-up
    let started = Instant::now();
    for step in 0..batches {
        std::hint::black_box(make_batch(dataset, &augment, &plan, step % plan.steps));
    }
    (batches * batch_size) as f64 / started.elapsed().as_secs_f64()
}

struct StepBench<B: TrainBackend> {
    device: B::Device,
    config: TrainConfig,
    model: SslModel<B>,
    dataset: ImageDataset,
    steps: usize,
    warmup: usize,
}

impl<B: TrainBackend> OptimizerTask<B> for StepBench<B> {
    type Output = Vec<f64>;

    fn run<O: Optimizer<SslModel<B>, B>>(self, mut optimizer: O) -> Result<Vec<f64>> {
        let config = &self.config;
        let plan = EpochPlan::new(self.dataset.len(), config.batch_size, 0, 7);
        let mut method = config
            .method
            .build(&config.model, &self.model, &self.device);
        let schedule = Schedule {
            batch_size: config.batch_size,
            steps_per_epoch: plan.steps,
            total_steps: self.warmup + self.steps,
        };
        let mut model = self.model;
        let mut scaler = GradScaler::new(config.precision);
        let mut seconds = Vec::new();
        for step in 0..self.warmup + self.steps {
            let batch = make_views(
                &self.dataset,
                &config.augment,
                &plan,
                step % plan.steps,
                Shard::WHOLE,
            );
            let started = Instant::now();
            let (next, stats) = train_step(
                model,
                method.as_mut(),
                &mut optimizer,
                &mut scaler,
                batch,
                config.optim.step_lr(step, &schedule),
                config.optim.grad_clip,
                (step, &schedule),
                &self.device,
            );
            model = next;
            // A GPU queues the optimizer's update asynchronously: wait for it, so the time is
            // the whole step (as PyTorch's timing ends with torch.cuda.synchronize()).
            B::sync(&self.device)
                .map_err(|e| anyhow::anyhow!("benchmark step {step}: the device failed: {e:?}"))?;
            let loss = stats.loss;
            anyhow::ensure!(
                loss.is_finite(),
                "benchmark step {step} produced loss {loss}"
            );
            if step >= self.warmup {
                seconds.push(started.elapsed().as_secs_f64());
            }
        }
        Ok(seconds)
    }
}

/// The multi-crop views of the DINO bench: the two global views at the input size (crops of
/// 40-100 %, DINO's) and six local ones at half the side (5-40 %), as DINO's paper pairs 224
/// and 96 px.
pub fn multi_crop_views(image_size: usize) -> Vec<ViewSpec> {
    vec![
        ViewSpec {
            count: 2,
            crop_scale: Some([0.4, 1.0]),
            ..ViewSpec::default()
        },
        ViewSpec {
            count: 6,
            size: image_size / 2,
            crop_scale: Some([0.05, 0.4]),
            ..ViewSpec::default()
        },
    ]
}

/// The config of the timed step: `options.method`'s preset on `options.model`'s network, with
/// multi-crop where the method takes it.
fn step_config(options: &BenchOptions, batch_size: usize) -> TrainConfig {
    let mut config = TrainConfig::preset(options.method, batch_size);
    config.precision = options.precision;
    config.model.backbone = options.model.backbone;
    config.model.width = options.model.width;
    config.model.stem = options.model.stem;
    if options.method == MethodKind::Simclr {
        config.model.head = options.model.head;
    }
    let multi_crop = AugmentConfig {
        views: multi_crop_views(options.image_size),
        ..config.augment.clone()
    };
    let takes_it = config
        .method
        .validate(batch_size, &config.model, &multi_crop.view_recipes())
        .is_ok();
    if takes_it {
        config.augment = multi_crop;
    }
    config
}

/// Views per image of the timed step (2, or 8 with multi-crop).
fn views_per_image(options: &BenchOptions, batch_size: usize) -> usize {
    step_config(options, batch_size)
        .augment
        .view_recipes()
        .len()
}

/// Seconds of each timed training step at `batch_size`, on one backend.
struct TrainStepTiming<'a> {
    options: &'a BenchOptions,
    batch_size: usize,
    dataset: &'a ImageDataset,
}

impl BackendTask for TrainStepTiming<'_> {
    type Output = (String, Vec<f64>);

    fn run<B: TrainBackend>(self, device: B::Device, name: &str) -> Result<Self::Output> {
        B::seed(&device, 0);
        crate::precision::check_supported::<B>(self.options.precision, &device)?;
        let config = step_config(self.options, self.batch_size);
        // The checks a training run makes (MoCo v2's queue against the batch, say).
        config.validate()?;
        let task = StepBench::<B> {
            model: config.model.init::<B>(&device),
            device,
            dataset: self.dataset.clone(),
            steps: self.options.steps,
            warmup: self.options.warmup,
            config: config.clone(),
        };
        Ok((
            name.to_string(),
            with_optimizer::<B, _>(&config.optim, task)?,
        ))
    }
}

/// Seconds of each timed encoder forward pass (no autodiff, BatchNorm on running statistics) on
/// `batch_size` images, on one backend: warm-up passes, then at least `min_passes` and about
/// `min_seconds` of timed passes. The features are read back, as `eval` does.
struct InferenceTiming {
    backbone: crate::model::BackboneKind,
    width: usize,
    stem: crate::model::Stem,
    image_size: usize,
    batch_size: usize,
    warmup: usize,
    min_passes: usize,
    min_seconds: f64,
}

impl BackendTask for InferenceTiming {
    type Output = Vec<f64>;

    fn run<B: TrainBackend>(self, device: B::Device, _name: &str) -> Result<Vec<f64>> {
        use burn::tensor::{Distribution, Tensor};
        B::seed(&device, 0);
        let module = self
            .backbone
            .init::<B::InnerBackend>(self.width, self.stem, &device);
        // As `eval` and `embed` run it: prepared once (on the CPU), then batch after batch.
        let encoder = crate::model::prepared::InferenceEncoder::new(&module);
        let images = Tensor::<B::InnerBackend, 4>::random(
            [self.batch_size, 3, self.image_size, self.image_size],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let mut seconds = Vec::new();
        let started_all = Instant::now();
        for pass in 0.. {
            let started = Instant::now();
            let features = encoder.forward(images.clone()).into_data();
            std::hint::black_box(features);
            if pass >= self.warmup {
                seconds.push(started.elapsed().as_secs_f64());
                let enough_time = started_all.elapsed().as_secs_f64() >= self.min_seconds;
                if seconds.len() >= self.min_passes && enough_time {
                    break;
                }
            }
        }
        Ok(seconds)
    }
}

/// Last line of a Python helper's stdout as JSON; `None` (reason on stderr) when it fails.
fn run_python_json(script: &Path, args: &[String], what: &str) -> Option<serde_json::Value> {
    let python = std::env::var("PYTHON").unwrap_or("python3".into());
    let output = match std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("{what} not measured: cannot start python3 ({e})");
            return None;
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!(
            "{what} not measured: {}",
            stderr.lines().last().unwrap_or("python3 failed")
        );
        return None;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last()?).ok()
}

/// Images per second of ONNX Runtime on the exported encoder of this width (random weights).
fn onnx_images_per_s(script: &Path, options: &BenchOptions, batch_size: usize) -> Option<f64> {
    use crate::backend::CpuBackend;
    let device = Default::default();
    let stem = options.model.stem.for_size(options.image_size);
    let encoder = options
        .model
        .backbone
        .init::<CpuBackend>(options.model.width, stem, &device);
    let proto = crate::jobs::export::encoder_to_onnx(
        &encoder,
        options.model.embedding_dim(),
        options.image_size,
        &AugmentConfig::default(),
        crate::methods::MethodKind::Simclr,
        "",
        &onnx::ExportOptions::default(),
    );
    let path = std::env::temp_dir().join(format!("selfsup-bench-{}.onnx", std::process::id()));
    onnx::write_model(&proto, &path).ok()?;
    let args = [
        path.display().to_string(),
        "--batch-size".into(),
        batch_size.to_string(),
        "--threads".into(),
        options.threads.to_string(),
        // The statistic and warm-up of our own inference timing (InferenceTiming).
        "--warmup".into(),
        "2".into(),
        "--min-passes".into(),
        options.steps.max(3).to_string(),
        "--seconds".into(),
        options.inference_seconds.to_string(),
    ];
    let json = run_python_json(script, &args, "ONNX Runtime throughput");
    let _ = std::fs::remove_file(&path);
    json?["images_per_s"].as_f64()
}

/// `cifar` or `imagenet`: the stem the network at this size has.
fn stem_name(options: &BenchOptions) -> &'static str {
    match options.model.stem.for_size(options.image_size) {
        crate::model::Stem::Imagenet => "imagenet",
        _ => "cifar",
    }
}

/// Runs the PyTorch reference; `None` (with the reason on stderr) when torch is unavailable.
fn torch_pairs_per_s(script: &Path, options: &BenchOptions, batch_size: usize) -> Option<f64> {
    let device = match options.device {
        DeviceKind::Cuda => "cuda",
        // Vulkan/Metal/DX12 GPUs: PyTorch's CUDA where the card is NVIDIA, else its CPU step.
        DeviceKind::Wgpu => "auto",
        _ => "cpu",
    };
    let amp = match options.precision {
        Precision::F32 => "off",
        Precision::Bf16 => "bf16",
        Precision::F16 => "fp16",
    };
    let mut args: Vec<String> = [
        ("--batch-size", batch_size.to_string()),
        ("--steps", options.steps.to_string()),
        ("--warmup", options.warmup.to_string()),
        ("--width", options.model.width.to_string()),
        ("--image-size", options.image_size.to_string()),
        ("--stem", stem_name(options).to_string()),
        ("--device", device.to_string()),
        ("--threads", options.threads.to_string()),
        ("--amp", amp.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect();
    let views = views_per_image(options, batch_size);
    if views > 2 {
        args.extend(["--local-views".to_string(), (views - 2).to_string()]);
    }
    // Pairs per second of a two-view step, images per second of a multi-crop one.
    let json = run_python_json(script, &args, "PyTorch reference")?;
    json["pairs_per_s"]
        .as_f64()
        .or_else(|| json["images_per_s"].as_f64())
}

pub fn run(options: &BenchOptions) -> Result<BenchReport> {
    let largest = options.batch_sizes.iter().copied().max().unwrap_or(32);
    let dataset = match &options.data {
        Some(data) => data.head(largest * 4).resized(options.image_size),
        None => synthetic_images(largest * 4, options.image_size),
    };
    let mut results = Vec::new();
    let mut device_name = String::new();
    for &batch_size in &options.batch_sizes {
        eprintln!(
            "batch {batch_size}: {} warm-up + {} timed steps",
            options.warmup, options.steps
        );
        let (name, seconds) = crate::backend::run_on(
            options.device,
            TrainStepTiming {
                options,
                batch_size,
                dataset: &dataset,
            },
        )?;
        device_name = name;
        let step = median(seconds);
        let ours = batch_size as f64 / step;
        let torch = options
            .torch_script
            .as_deref()
            .and_then(|script| torch_pairs_per_s(script, options, batch_size));
        results.push(BenchResult {
            device: device_name.clone(),
            batch_size,
            train_step_pairs_per_s: ours,
            train_step_ms_median: step * 1e3,
            torch_pairs_per_s: torch,
            ours_over_torch: torch.map(|t| ours / t),
            data_pairs_per_s: data_pairs_per_s(&dataset, batch_size, 4),
        });
    }
    let mut inference = Vec::new();
    for &batch_size in &options.inference_batch_sizes {
        eprintln!("inference, batch {batch_size}");
        let seconds = crate::backend::run_on(
            options.device,
            InferenceTiming {
                backbone: options.model.backbone,
                width: options.model.width,
                stem: options.model.stem.for_size(options.image_size),
                image_size: options.image_size,
                batch_size,
                warmup: 2,
                min_passes: options.steps.max(3),
                min_seconds: options.inference_seconds,
            },
        )?;
        let ours = batch_size as f64 / median(seconds);
        let onnx = options
            .onnx_script
            .as_deref()
            .and_then(|script| onnx_images_per_s(script, options, batch_size));
        inference.push(InferenceResult {
            batch_size,
            ours_images_per_s: ours,
            onnx_images_per_s: onnx,
            ours_over_onnx: onnx.map(|o| ours / o),
        });
    }
    Ok(BenchReport {
        method: options.method.name().into(),
        views_per_image: views_per_image(options, largest),
        device: device_name,
        precision: options.precision,
        threads: options.threads,
        width: options.model.width,
        image_size: options.image_size,
        stem: stem_name(options).into(),
        steps: options.steps,
        results,
        inference,
    })
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The table printed to the terminal (and pasted in the README).
pub fn table(report: &BenchReport) -> String {
    let mut out = format!(
        "device: {} | precision: {} | threads: {} | ResNet-18 width {} ({} stem) at {} px | median \
         of {} steps\n\n",
        report.device,
        report.precision.name(),
        report.threads, report.width, report.stem, report.image_size, report.steps
    );
    let views = report.views_per_image;
    if views == 2 {
        out += &format!("training step ({}, its preset)\n\n", report.method);
        out += "| batch | ours pairs/s | step ms | PyTorch pairs/s | ours / PyTorch | data pairs/s |\n";
    } else {
        out += &format!(
            "training step ({}, its preset, multi-crop: {views} views per image)\n\n",
            report.method
        );
        out += "| batch | ours images/s (views/s) | step ms | PyTorch images/s (views/s) | ours / \
                PyTorch | data pairs/s |\n";
    }
    out += "|---:|---:|---:|---:|---:|---:|\n";
    let rate = |images: f64| match views {
        2 => format!("{images:.2}"),
        _ => format!("{images:.2} ({:.1})", images * views as f64),
    };
    for r in &report.results {
        out += &format!(
            "| {} | {} | {:.0} | {} | {} | {:.0} |\n",
            r.batch_size,
            rate(r.train_step_pairs_per_s),
            r.train_step_ms_median,
            r.torch_pairs_per_s.map_or("-".into(), rate),
            fmt_opt(r.ours_over_torch, 2),
            r.data_pairs_per_s,
        );
    }
    if !report.inference.is_empty() {
        out += "\ninference (encoder features)\n\n";
        out += "| batch | ours img/s | ONNX Runtime img/s | ours / ONNX Runtime |\n";
        out += "|---:|---:|---:|---:|\n";
        for r in &report.inference {
            out += &format!(
                "| {} | {:.1} | {} | {} |\n",
                r.batch_size,
                r.ours_images_per_s,
                fmt_opt(r.onnx_images_per_s, 1),
                fmt_opt(r.ours_over_onnx, 2),
            );
        }
    }
    out
}

pub fn write_json(report: &BenchReport, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    crate::records::write_atomically(path, json.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    /// SimCLR's step at width 2 on random images, batch 4, no references.
    fn tiny_options() -> BenchOptions {
        BenchOptions {
            method: MethodKind::Simclr,
            batch_sizes: vec![4],
            steps: 2,
            warmup: 1,
            device: DeviceKind::Cpu,
            precision: Precision::F32,
            model: ModelConfig::small(2, 8, 4),
            image_size: 32,
            data: None,
            torch_script: None,
            onnx_script: None,
            inference_batch_sizes: vec![3],
            inference_seconds: 0.0,
            threads: 1,
        }
    }

    #[test]
    fn tiny_bench_reports_positive_rates_and_json_fields() {
        let options = tiny_options();
        let report = run(&options).unwrap();
        assert_eq!(report.results.len(), 1);
        let r = &report.results[0];
        assert!(r.train_step_pairs_per_s > 0.0 && r.data_pairs_per_s > 0.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.json");
        write_json(&report, &path).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let row = &json["results"][0];
        for key in [
            "device",
            "batch_size",
            "train_step_pairs_per_s",
            "data_pairs_per_s",
        ] {
            assert!(!row[key].is_null(), "{key} missing");
        }
        assert!(row["torch_pairs_per_s"].is_null());
        let inference = &json["inference"][0];
        assert_eq!(inference["batch_size"], 3);
        assert!(inference["ours_images_per_s"].as_f64().unwrap() > 0.0);
        assert!(inference["onnx_images_per_s"].is_null());
        let printed = table(&report);
        assert!(
            printed.contains("| 4 |") && printed.contains("| 3 |"),
            "{printed}"
        );
        assert_eq!(
            (json["image_size"].as_u64(), json["stem"].as_str()),
            (Some(32), Some("cifar"))
        );
    }

    #[test]
    fn the_dino_bench_times_its_multi_crop_step_in_images_and_views() {
        let options = BenchOptions {
            method: MethodKind::Dino,
            steps: 1,
            warmup: 0,
            inference_batch_sizes: vec![],
            ..tiny_options()
        };
        let config = step_config(&options, 4);
        let sizes: Vec<usize> = config
            .augment
            .view_recipes()
            .iter()
            .map(|v| v.side_for(32))
            .collect();
        assert_eq!(sizes, [32, 32, 16, 16, 16, 16, 16, 16]);
        // DINO's preset on the bench's network: its head, prototypes and LARS.
        assert_eq!(config.model.width, 2);
        assert_eq!(config.model.prototypes.map(|p| p.count), Some(4096));
        assert_eq!(config.optim.optimizer, crate::optim::OptimizerKind::Lars);
        let report = run(&options).unwrap();
        assert_eq!(
            (report.method.as_str(), report.views_per_image),
            ("dino", 8)
        );
        let images = report.results[0].train_step_pairs_per_s;
        assert!(images > 0.0);
        let printed = table(&report);
        assert!(
            printed.contains("multi-crop: 8 views per image")
                && printed.contains(&format!("({:.1})", images * 8.0)),
            "{printed}"
        );
        // SimCLR keeps two views and its own head.
        let simclr = step_config(
            &BenchOptions {
                method: MethodKind::Simclr,
                ..options
            },
            4,
        );
        assert_eq!(simclr.augment.view_recipes().len(), 2);
        assert_eq!(simclr.model.head, ModelConfig::small(2, 8, 4).head);
    }

    #[test]
    fn above_64_px_the_bench_measures_the_imagenet_stem_network() {
        let model = ModelConfig {
            stem: crate::model::Stem::Auto.for_size(72),
            ..ModelConfig::small(2, 8, 4)
        };
        let options = BenchOptions {
            batch_sizes: vec![2],
            steps: 1,
            warmup: 0,
            model,
            image_size: 72,
            data: Some(synthetic_images(4, 32)), // upsampled to 72 px as `--data` is
            inference_batch_sizes: vec![1],
            ..tiny_options()
        };
        let report = run(&options).unwrap();
        assert_eq!((report.image_size, report.stem.as_str()), (72, "imagenet"));
        assert!(report.results[0].train_step_pairs_per_s > 0.0);
        assert!(
            table(&report).contains("(imagenet stem) at 72 px"),
            "{}",
            table(&report)
        );
    }
}
