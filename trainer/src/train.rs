//! The training loop: plumbing around the recipe (data -> two views -> model -> NT-Xent ->
//! optimizer), with a checkpoint after every epoch, the kNN monitor, metrics.csv and resume.

use crate::backend::BackendTask;
use crate::backend::TrainBackend;
use crate::checkpoint::{self, Checkpoint, TrainState};
use crate::clip::clip_grad_norm;
use crate::config::{OptimConfig, OptimizerKind, TrainConfig};
use crate::data::{self, ImageDataset, Splits, IMAGE_BYTES};
use crate::features::encode_dataset;
use crate::knn::KnnClassifier;
use crate::loader::{EpochPlan, PairBatch, PrefetchLoader};
use crate::loss::NtXentLoss;
use crate::model::SimClrModel;
use crate::named_params::{load_named_tensors, read_safetensors};
use crate::progress::steps_bar;
use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub const METRICS_HEADER: &str = "epoch,loss,knn_top1,pairs_per_s,seconds";

/// One line of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub loss: f64,
    pub knn_top1: f64,
    pub pairs_per_s: f64,
    pub seconds: f64,
}

impl EpochMetrics {
    pub fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.4},{:.2},{:.1}",
            self.epoch, self.loss, self.knn_top1, self.pairs_per_s, self.seconds
        )
    }
}

/// How a training run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    /// Stopped by Ctrl-C (or the stop flag) after saving a checkpoint.
    Interrupted {
        checkpoint: PathBuf,
    },
}

/// A training run: the config, where it writes, and whether it continues an earlier one.
pub struct TrainJob {
    pub config: TrainConfig,
    pub out: PathBuf,
    pub resume: bool,
    /// Set (by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Already loaded data (tests pass it in); `None` loads `config.data`.
    pub data: Option<Splits>,
}

impl BackendTask for TrainJob {
    type Output = (Outcome, Vec<EpochMetrics>);

    fn run<B: TrainBackend>(self, device: B::Device, name: &str) -> Result<Self::Output> {
        let splits = match self.data.clone() {
            Some(splits) => splits,
            None => data::load(&self.config.data)?,
        };
        anyhow::ensure!(
            splits.train.len() >= self.config.batch_size,
            "{}: {} training images, fewer than one batch of {}",
            splits.origin,
            splits.train.len(),
            self.config.batch_size
        );
        eprintln!(
            "data: {} ({} train, {} test images, {} classes); device: {name}",
            splits.origin,
            splits.train.len(),
            splits.test.len(),
            splits.train.classes.len()
        );
        let optim = self.config.optim.clone();
        with_optimizer::<B, _>(
            &optim,
            TrainWithData {
                job: self,
                splits,
                device,
            },
        )
    }
}

/// Work that needs the configured optimizer, whose concrete type differs between presets.
pub trait OptimizerTask<B: TrainBackend> {
    type Output;
    fn run<O: Optimizer<SimClrModel<B>, B>>(self, optimizer: O) -> Result<Self::Output>;
}

/// Builds the optimizer `config` describes and hands it to `task`.
pub fn with_optimizer<B: TrainBackend, T: OptimizerTask<B>>(
    config: &OptimConfig,
    task: T,
) -> Result<T::Output> {
    let weight_decay =
        (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    match config.optimizer {
        // Gradient clipping is not the optimizer's (per tensor) but global, in `train_step`.
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
    }
}

struct TrainWithData<B: TrainBackend> {
    job: TrainJob,
    splits: Splits,
    device: B::Device,
}

impl<B: TrainBackend> OptimizerTask<B> for TrainWithData<B> {
    type Output = (Outcome, Vec<EpochMetrics>);
    fn run<O: Optimizer<SimClrModel<B>, B>>(self, optimizer: O) -> Result<Self::Output> {
        self.job.train::<B, O>(optimizer, self.splits, self.device)
    }
}

/// One SimCLR step: both views through the model, NT-Xent, backward, clipping of the global
/// gradient norm to `grad_clip` (0 = off) and the update. Returns the updated model and the loss
/// before the update.
pub fn train_step<B: TrainBackend, O: Optimizer<SimClrModel<B>, B>>(
    model: SimClrModel<B>,
    optimizer: &mut O,
    loss_fn: &NtXentLoss,
    batch: PairBatch,
    lr: f64,
    grad_clip: f64,
    device: &B::Device,
) -> (SimClrModel<B>, f64) {
    let images = batch_tensor::<B>(batch.views, batch.size, device);
    let (loss, grads) = loss_and_gradients(&model, loss_fn, images);
    match grads {
        Some(grads) => (apply_update(model, optimizer, grads, lr, grad_clip).0, loss),
        None => (model, loss), // the caller stops; never step on a NaN gradient
    }
}

/// Forward pass of `images` (`[2N, 3, 32, 32]`, first views then second views; BatchNorm in
/// training mode, so running statistics move), NT-Xent and backward. Returns the loss and the
/// gradient of every parameter, or no gradients when the loss is not finite.
pub fn loss_and_gradients<B: TrainBackend>(
    model: &SimClrModel<B>,
    loss_fn: &NtXentLoss,
    images: Tensor<B, 4>,
) -> (f64, Option<GradientsParams>) {
    let loss = loss_fn.forward(model.forward(images));
    let loss_value = loss.clone().into_scalar().elem::<f64>();
    if !loss_value.is_finite() {
        return (loss_value, None);
    }
    let grads = GradientsParams::from_grads(loss.backward(), model);
    (loss_value, Some(grads))
}

/// Clips the global gradient norm to `grad_clip` (0 = off), then lets `optimizer` update `model`.
/// Returns the updated model and the gradient norm before clipping (NaN when clipping is off).
pub fn apply_update<B: TrainBackend, O: Optimizer<SimClrModel<B>, B>>(
    model: SimClrModel<B>,
    optimizer: &mut O,
    mut grads: GradientsParams,
    lr: f64,
    grad_clip: f64,
) -> (SimClrModel<B>, f64) {
    let norm = if grad_clip > 0.0 {
        clip_grad_norm(&model, &mut grads, grad_clip)
    } else {
        f64::NAN
    };
    (optimizer.step(lr, model, grads), norm)
}

/// Input tensor `[2B, 3, 32, 32]` of a prefetched batch.
pub fn batch_tensor<B: Backend>(views: Vec<f32>, size: usize, device: &B::Device) -> Tensor<B, 4> {
    debug_assert_eq!(views.len(), 2 * size * IMAGE_BYTES);
    Tensor::from_data(TensorData::new(views, [2 * size, 3, 32, 32]), device)
}

impl TrainJob {
    fn checkpoints_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    fn save<B: TrainBackend, O: Optimizer<SimClrModel<B>, B>>(
        &self,
        model: &SimClrModel<B>,
        optimizer: &O,
        state: &TrainState,
    ) -> Result<PathBuf> {
        checkpoint::save(
            &self.checkpoints_dir(),
            model,
            optimizer.to_record(),
            state,
            &self.config,
        )
    }

    fn train<B: TrainBackend, O: Optimizer<SimClrModel<B>, B>>(
        self,
        mut optimizer: O,
        splits: Splits,
        device: B::Device,
    ) -> Result<(Outcome, Vec<EpochMetrics>)> {
        let config = self.config.clone();
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("cannot create output directory {}", self.out.display()))?;
        eprintln!("output: {}", self.out.display());

        let (mut model, mut state) = if self.resume {
            let ckpt = checkpoint::latest_in(&self.checkpoints_dir())?.with_context(|| {
                format!(
                    "--resume: no checkpoint in {}; start without --resume",
                    self.checkpoints_dir().display()
                )
            })?;
            let ckpt = Checkpoint::read(&ckpt)?;
            ckpt.ensure_architecture(&config.model)?;
            anyhow::ensure!(
                ckpt.config.optim.optimizer == config.optim.optimizer,
                "{}: saved with the {:?} optimizer, but this run uses {:?}",
                ckpt.path.display(),
                ckpt.config.optim.optimizer,
                config.optim.optimizer
            );
            let model = ckpt.model::<B>(&device)?;
            optimizer = optimizer.load_record(ckpt.optimizer_record::<B, O::Record>(&device)?);
            eprintln!("resuming from {}", ckpt.path.display());
            (model, ckpt.state)
        } else {
            if let Some(existing) = checkpoint::latest_in(&self.checkpoints_dir())? {
                bail!(
                    "{} already holds a run (latest checkpoint {}): pass --resume to continue it, \
                     or choose another --out",
                    self.out.display(),
                    existing.display()
                );
            }
            B::seed(&device, config.seed);
            let state = TrainState {
                epochs_done: 0,
                global_step: 0,
                step_in_epoch: 0,
                loss_sum_in_epoch: 0.0,
                epoch_seed: 0,
                rng: ChaCha8Rng::seed_from_u64(config.seed),
            };
            let model = config.model.init::<B>(&device);
            let model = if config.init_weights.is_empty() {
                model
            } else {
                let path = Path::new(&config.init_weights);
                let (weights, _) = read_safetensors(path)?;
                eprintln!("initial weights: {}", path.display());
                load_named_tensors(model, &weights, &device).with_context(|| {
                    format!(
                        "{} does not fit the configured model {:?}",
                        path.display(),
                        config.model
                    )
                })?
            };
            (model, state)
        };
        checkpoint::write_atomically(&self.out.join("config.toml"), config.to_toml().as_bytes())?;
        let mut metrics_rows = MetricsFile::open(&self.out.join("metrics.csv"), state.epochs_done)?;

        let train = Arc::new(splits.train);
        let loss_fn = NtXentLoss::new(config.temperature);
        let steps_per_epoch =
            EpochPlan::new(train.len(), config.batch_size, config.steps_per_epoch, 0).steps;
        let total_steps = steps_per_epoch * config.epochs;
        let mut all_metrics = Vec::new();

        while state.epochs_done < config.epochs {
            let epoch = state.epochs_done + 1;
            if state.step_in_epoch == 0 {
                state.epoch_seed = state.rng.next_u64();
                state.loss_sum_in_epoch = 0.0;
            }
            let plan = EpochPlan::new(
                train.len(),
                config.batch_size,
                config.steps_per_epoch,
                state.epoch_seed,
            );
            let loader = PrefetchLoader::spawn(
                train.clone(),
                config.augment.clone(),
                plan.clone(),
                state.step_in_epoch,
                config.prefetch_batches,
            );
            let bar = steps_bar(plan.steps as u64, epoch, config.epochs);
            bar.set_position(state.step_in_epoch as u64);
            let started = Instant::now();
            let mut pairs = 0usize;
            for batch in loader {
                let lr = config.optim.lr_at(state.global_step, total_steps);
                let size = batch.size;
                let (next, loss_value) = train_step(
                    model,
                    &mut optimizer,
                    &loss_fn,
                    batch,
                    lr,
                    config.optim.grad_clip,
                    &device,
                );
                model = next;
                if !loss_value.is_finite() {
                    bar.abandon();
                    bail!(
                        "the loss became {loss_value} at epoch {epoch}, step {}: training stopped. \
                         The last good checkpoint is kept in {}; lower the learning rate (optim.lr) \
                         or keep gradient clipping on (optim.grad_clip) and --resume",
                        state.step_in_epoch + 1,
                        self.checkpoints_dir().display()
                    );
                }
                state.global_step += 1;
                state.step_in_epoch += 1;
                state.loss_sum_in_epoch += loss_value;
                pairs += size;
                let rate = pairs as f64 / started.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4} | {rate:.1} pairs/s",
                    state.loss_sum_in_epoch / state.step_in_epoch as f64
                ));
                bar.inc(1);
                if self.stop.load(Ordering::SeqCst) && state.step_in_epoch < plan.steps {
                    bar.abandon();
                    let path = self.save(&model, &optimizer, &state)?;
                    eprintln!(
                        "interrupted: saved {} (step {} of epoch {epoch}); continue with --resume",
                        path.display(),
                        state.step_in_epoch
                    );
                    return Ok((Outcome::Interrupted { checkpoint: path }, all_metrics));
                }
            }
            let train_seconds = started.elapsed().as_secs_f64();
            bar.finish_and_clear();
            let mean_loss = state.loss_sum_in_epoch / plan.steps.max(1) as f64;
            let knn_top1 = knn_monitor(&model, &train, &splits.test, &config, &device);
            state.epochs_done = epoch;
            state.step_in_epoch = 0;
            let path = self.save(&model, &optimizer, &state)?;
            let metrics = EpochMetrics {
                epoch,
                loss: mean_loss,
                knn_top1,
                pairs_per_s: pairs as f64 / train_seconds,
                seconds: started.elapsed().as_secs_f64(),
            };
            metrics_rows.append(&metrics)?;
            println!(
                "epoch {epoch}/{}: loss {:.4} | kNN top-1 {:.2} % | {:.1} pairs/s | {:.0} s | saved {}",
                config.epochs,
                metrics.loss,
                100.0 * metrics.knn_top1,
                metrics.pairs_per_s,
                metrics.seconds,
                path.display()
            );
            all_metrics.push(metrics);
            if self.stop.load(Ordering::SeqCst) {
                eprintln!("interrupted after epoch {epoch}; continue with --resume");
                return Ok((Outcome::Interrupted { checkpoint: path }, all_metrics));
            }
        }
        Ok((Outcome::Finished, all_metrics))
    }
}

/// kNN top-1 of the current encoder (BatchNorm in inference mode) on the configured subsets.
pub fn knn_monitor<B: TrainBackend>(
    model: &SimClrModel<B>,
    train: &ImageDataset,
    test: &ImageDataset,
    config: &TrainConfig,
    device: &B::Device,
) -> f64 {
    let encoder = model.encoder.valid();
    let bank = train.head(config.knn.bank_size);
    let queries = test.head(config.knn.query_size);
    if bank.is_empty() || queries.is_empty() {
        return f64::NAN;
    }
    let batch = config.batch_size.max(64);
    let bank_features = encode_dataset(&encoder, &bank, &config.augment, batch, device, "kNN bank");
    let query_features = encode_dataset(
        &encoder,
        &queries,
        &config.augment,
        batch,
        device,
        "kNN queries",
    );
    KnnClassifier {
        k: config.knn.k,
        temperature: config.knn.temperature,
    }
    .accuracy(
        bank_features,
        &bank.labels,
        query_features,
        &queries.labels,
        train.classes.len(),
    )
}

/// `metrics.csv`, kept consistent with the checkpoints: rows past the resumed epoch (written
/// by a run that died before its next checkpoint) are dropped.
struct MetricsFile {
    path: PathBuf,
}

impl MetricsFile {
    fn open(path: &Path, epochs_done: usize) -> Result<Self> {
        let mut rows = vec![METRICS_HEADER.to_string()];
        if epochs_done > 0 {
            if let Ok(text) = std::fs::read_to_string(path) {
                rows.extend(
                    text.lines()
                        .skip(1)
                        .filter(|line| {
                            line.split(',')
                                .next()
                                .and_then(|e| e.parse::<usize>().ok())
                                .is_some_and(|e| e <= epochs_done)
                        })
                        .map(String::from),
                );
            }
        }
        checkpoint::write_atomically(path, (rows.join("\n") + "\n").as_bytes())?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    fn append(&mut self, metrics: &EpochMetrics) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        writeln!(file, "{}", metrics.csv_row())
            .with_context(|| format!("cannot write {} (disk full?)", self.path.display()))
    }
}
