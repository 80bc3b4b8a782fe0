//! The training loop: plumbing around the recipe (data -> two views -> model -> the method's
//! loss -> optimizer -> the method's own update), with a checkpoint after every epoch, the kNN
//! and collapse monitors, metrics.csv and resume. It knows no method by name.

use crate::backend::BackendTask;
use crate::backend::TrainBackend;
use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::data::augment::side_of;
use crate::data::loader::{EpochPlan, PairBatch, PrefetchLoader, Shard};
use crate::data::{ImageDataset, Splits};
use crate::distributed::collective::{with_deadline, CollectiveBackend};
use crate::distributed::sync::{self, average_gradients, from_rank0, parameter_spread};
use crate::distributed::{self, Topology};
use crate::eval::features::encode_dataset;
use crate::eval::knn::KnnClassifier;
use crate::methods::{self, is_collapsed, projection_std, Method};
use crate::model::SslModel;
use crate::named_params::{load_named_tensors, read_safetensors};
use crate::optim::clip::clip_grad_norm;
use crate::optim::{with_optimizer, OptimizerTask, Schedule};
use crate::plot;
use crate::precision::{self, GradScaler, Precision};
use crate::progress::steps_bar;
use crate::run_lock::RunLock;
use crate::tensorboard::EventWriter;
use anyhow::{bail, ensure, Context, Result};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

pub const METRICS_HEADER: &str = "epoch,loss,z_std,knn_top1,pairs_per_s,seconds";

/// One line of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub loss: f64,
    /// Mean collapse monitor of the epoch's steps ([`projection_std`]).
    pub z_std: f64,
    pub knn_top1: f64,
    pub pairs_per_s: f64,
    pub seconds: f64,
}

impl EpochMetrics {
    pub fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.5},{:.4},{:.2},{:.1}",
            self.epoch, self.loss, self.z_std, self.knn_top1, self.pairs_per_s, self.seconds
        )
    }

    /// The metrics of a row [`Self::csv_row`] wrote (`None` for anything else).
    pub fn from_csv_row(row: &str) -> Option<Self> {
        let fields: Vec<&str> = row.trim().split(',').collect();
        let [epoch, loss, z_std, knn_top1, pairs_per_s, seconds] = fields[..] else {
            return None;
        };
        Some(Self {
            epoch: epoch.parse().ok()?,
            loss: loss.parse().ok()?,
            z_std: z_std.parse().ok()?,
            knn_top1: knn_top1.parse().ok()?,
            pairs_per_s: pairs_per_s.parse().ok()?,
            seconds: seconds.parse().ok()?,
        })
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
    /// Devices and machines to spread the batch over (default: one device).
    pub topology: Topology,
}

impl TrainJob {
    /// A job on one device.
    pub fn new(config: TrainConfig, out: PathBuf, resume: bool) -> Self {
        Self {
            config,
            out,
            resume,
            stop: Arc::new(AtomicBool::new(false)),
            data: None,
            topology: Topology::default(),
        }
    }
}

impl TrainJob {
    /// Runs the job on `kind`'s backend (`auto`: the best one there is). Not generic, so that
    /// every caller (the CLI, tests, a library user) links the one compiled training loop of
    /// each backend instead of compiling all of them again in its own crate.
    pub fn run_on(self, kind: crate::backend::DeviceKind) -> Result<(Outcome, Vec<EpochMetrics>)> {
        crate::backend::run_on(kind, self)
    }
}

impl BackendTask for TrainJob {
    type Output = (Outcome, Vec<EpochMetrics>);

    fn run<B: TrainBackend>(mut self, device: B::Device, name: &str) -> Result<Self::Output> {
        // One writer per run: the process of rank 0 writes the run's files, so it alone locks
        // the folder, before loading data (a second run is refused at once) and until the end.
        let _lock = if self.topology.process_rank == 0 {
            Some(RunLock::acquire(&self.out)?)
        } else {
            None
        };
        let splits = match self.data.take() {
            Some(splits) => splits,
            None => self.config.load_data()?,
        };
        anyhow::ensure!(
            splits.pretraining().len() >= self.config.batch_size,
            "{}: {} training images, fewer than one batch of {}",
            splits.origin,
            splits.pretraining().len(),
            self.config.batch_size
        );
        self.config.resolve_for(&splits);
        crate::kernels::winograd::set_enabled(self.config.winograd);
        if !self.config.winograd {
            eprintln!("CPU convolutions: im2col + GEMM only (winograd = false)");
        }
        let topology = &self.topology;
        topology.validate(self.config.batch_size)?;
        let spread = if topology.is_single() {
            String::new()
        } else {
            let per_device = self.config.batch_size / topology.world();
            if topology.processes > 1 {
                format!(
                    " x {} ({} process {} of {}; {per_device} images per process)",
                    topology.world(),
                    if topology.is_torchrun() {
                        "torchrun-style"
                    } else {
                        "MPI"
                    },
                    topology.process_rank,
                    topology.processes,
                )
            } else {
                format!(
                    " x {} (devices of this process; {per_device} images per device)",
                    topology.devices
                )
            }
        };
        let stem = match self.config.model.stem {
            crate::model::Stem::Imagenet => "ImageNet stem",
            _ => "CIFAR stem",
        };
        eprintln!(
            "data: {}; device: {name}{spread}; method: {}; ResNet-18 ({stem})",
            splits.summary(),
            self.config.method.kind()
        );
        if !splits.has_labels() {
            eprintln!(
                "kNN monitor: off (the data has no labels; --eval-data DATA names a labelled \
                 dataset to monitor on)"
            );
        } else if self.config.knn.every == 0 {
            eprintln!("kNN monitor: off (--knn-every 0)");
        }
        if topology.is_single() {
            return self.train_on::<B>(splits, device);
        }
        self.train_data_parallel::<B>(splits, device)
    }
}

/// Fresh models are built one rank at a time: Burn's random generator is one per backend, and
/// ranks drawing from it at once would make rank 0's initial weights depend on timing.
static INIT: Mutex<()> = Mutex::new(());

impl TrainJob {
    fn train_on<B: TrainBackend>(
        self,
        splits: Splits,
        device: B::Device,
    ) -> Result<(Outcome, Vec<EpochMetrics>)> {
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

    /// One thread per device of this machine, each a rank; returns this machine's first rank's
    /// outcome, or the first error of any rank (without waiting for the others, which stop at
    /// their next collective call).
    fn train_data_parallel<B: TrainBackend>(
        self,
        splits: Splits,
        device: B::Device,
    ) -> Result<(Outcome, Vec<EpochMetrics>)> {
        let topology = self.topology.clone();
        let collective = topology.collective_config();
        // Forget peers of an earlier run in this process (tests run several).
        burn_collective::reset_collective::<B::InnerBackend>();
        let (sender, receiver) = mpsc::channel();
        for index in 0..topology.devices {
            let peer = topology.peer(index, self.config.sync_batchnorm);
            let job = TrainJob {
                config: self.config.clone(),
                out: self.out.clone(),
                resume: self.resume,
                stop: self.stop.clone(),
                data: None,
                topology: topology.clone(),
            };
            let (splits, collective, sender) = (splits.clone(), collective.clone(), sender.clone());
            let device = crate::backend::peer_device(
                self.config.device,
                &device,
                topology.local_rank + index,
                topology.devices,
            );
            std::thread::Builder::new()
                .name(format!("rank-{}", peer.rank))
                .spawn(move || {
                    distributed::set_current(Some(peer));
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let id = peer.id();
                        // Between processes MPI is already running; the devices of this
                        // process meet in burn-collective.
                        let local = topology.devices > 1;
                        if local {
                            let inner = device.clone();
                            with_deadline(&peer, "registering with the other ranks", move || {
                                burn_collective::register::<B::InnerBackend>(id, inner, collective)
                                    .map_err(|e| format!("{e:?}"))
                            });
                        }
                        // The backend's own engine (NCCL on CUDA), once the ranks can meet.
                        let engine =
                            <B::InnerBackend as CollectiveBackend>::start_engine(&peer, &device)?;
                        let result = job.train_on::<B>(splits, device);
                        drop(engine);
                        if local && result.is_ok() {
                            let _ = burn_collective::finish_collective::<B::InnerBackend>(id);
                        }
                        result
                    }));
                    let result = outcome.unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "a panic".into());
                        Err(anyhow::anyhow!(message))
                    });
                    let _ = sender.send((peer, result));
                })
                .context("cannot start a training thread")?;
        }
        drop(sender);
        let mut first = None;
        for (peer, result) in receiver.iter() {
            let result = result.with_context(|| format!("rank {} of {}", peer.rank, peer.world))?;
            if peer.rank == topology.process_rank * topology.devices {
                first = Some(result);
            }
        }
        first.context("no rank of this machine finished")
    }
}

struct TrainWithData<B: TrainBackend> {
    job: TrainJob,
    splits: Splits,
    device: B::Device,
}

impl<B: TrainBackend> OptimizerTask<B> for TrainWithData<B> {
    type Output = (Outcome, Vec<EpochMetrics>);
    fn run<O: Optimizer<SslModel<B>, B>>(self, optimizer: O) -> Result<Self::Output> {
        self.job.train::<B, O>(optimizer, self.splits, self.device)
    }
}

/// What a step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The loss before the update.
    pub loss: f64,
    /// The collapse monitor of the step's projections ([`projection_std`]).
    pub z_std: f64,
    /// Global L2 norm of the gradients before clipping (NaN with clipping off, or before the
    /// update).
    pub grad_norm: f64,
    /// The update was skipped: f16 gradients overflowed (the loss scale was halved).
    pub skipped: bool,
}

/// The loss of a step and the gradient of every parameter.
pub struct StepGradients {
    pub stats: StepStats,
    /// `None` when the loss is not finite.
    pub grads: Option<GradientsParams>,
}

/// One training step: both views through the method's loss (convolutions and linears in the
/// scaler's precision), backward of the scaled loss, the average of the gradients over all
/// ranks (data-parallel runs), unscaling (an f16 overflow skips the update), clipping of the
/// global gradient norm to `grad_clip` (0 = off), the optimizer's update, then the method's own
/// update (momentum network, queue) for 0-based step `step`. Returns the updated model and what
/// the step measured; a non-finite loss leaves the model as it was (the caller stops).
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
    model: SslModel<B>,
    method: &mut dyn Method<B>,
    optimizer: &mut O,
    scaler: &mut GradScaler,
    batch: PairBatch,
    lr: f64,
    grad_clip: f64,
    (step, schedule): (usize, &Schedule),
    device: &B::Device,
) -> (SslModel<B>, StepStats) {
    let images = batch.into_tensor::<B>(device);
    let StepGradients { stats, grads } = {
        let _autocast = precision::autocast(scaler.precision);
        scaled_loss_and_gradients(&model, method, images, scaler.loss_factor())
    };
    let Some(grads) = grads else {
        return (model, stats); // never step on a NaN gradient
    };
    let mut grads = average_gradients(&model, grads);
    let finite = scaler.unscale(&model, &mut grads);
    scaler.update(finite);
    if !finite {
        return (
            model,
            StepStats {
                skipped: true,
                ..stats
            },
        );
    }
    let (model, grad_norm) = apply_update(model, optimizer, grads, lr, grad_clip);
    method.after_update(&model, step, schedule);
    (model, StepStats { grad_norm, ..stats })
}

/// The method's loss of `images` (`[2N, 3, H, W]`, first views then second views; BatchNorm
/// in training mode, so running statistics move) and backward. Returns the loss, the collapse
/// monitor and the gradient of every parameter (none when the loss is not finite).
pub fn loss_and_gradients<B: TrainBackend>(
    model: &SslModel<B>,
    method: &mut dyn Method<B>,
    images: Tensor<B, 4>,
) -> StepGradients {
    scaled_loss_and_gradients(model, method, images, 1.0)
}

/// [`loss_and_gradients`] with the gradients of `loss_factor` times the loss (loss scaling);
/// the loss reported is the unscaled one.
pub fn scaled_loss_and_gradients<B: TrainBackend>(
    model: &SslModel<B>,
    method: &mut dyn Method<B>,
    images: Tensor<B, 4>,
    loss_factor: f64,
) -> StepGradients {
    let out = method.step(model, images);
    let stats = StepStats {
        loss: out.loss.clone().into_scalar().elem::<f64>(),
        z_std: projection_std(out.projections),
        grad_norm: f64::NAN,
        skipped: false,
    };
    if !stats.loss.is_finite() {
        return StepGradients { stats, grads: None };
    }
    let loss = if loss_factor == 1.0 {
        out.loss
    } else {
        out.loss.mul_scalar(loss_factor)
    };
    let grads = GradientsParams::from_grads(loss.backward(), model);
    StepGradients {
        stats,
        grads: Some(grads),
    }
}

/// Clips the global gradient norm to `grad_clip` (0 = off), then lets `optimizer` update `model`.
/// Returns the updated model and the gradient norm before clipping (NaN when clipping is off).
pub fn apply_update<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
    model: SslModel<B>,
    optimizer: &mut O,
    mut grads: GradientsParams,
    lr: f64,
    grad_clip: f64,
) -> (SslModel<B>, f64) {
    let norm = if grad_clip > 0.0 {
        clip_grad_norm(&model, &mut grads, grad_clip)
    } else {
        f64::NAN
    };
    (optimizer.step(lr, model, grads), norm)
}

/// Input tensor `[2B, 3, side, side]` of a prefetched batch of `size` pairs.
pub fn batch_tensor<B: Backend>(views: Vec<f32>, size: usize, device: &B::Device) -> Tensor<B, 4> {
    let side = side_of(views.len() / (2 * size));
    PairBatch { size, side, views }.into_tensor(device)
}

impl TrainJob {
    fn checkpoints_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    fn save<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
        &self,
        model: &SslModel<B>,
        optimizer: &O,
        method: &dyn Method<B>,
        state: &TrainState,
    ) -> Result<PathBuf> {
        if !distributed::is_main() {
            // Rank 0 writes the run's files; the other ranks hold the same state.
            return Ok(self
                .checkpoints_dir()
                .join(checkpoint::checkpoint_name(state)));
        }
        let path = checkpoint::save(
            &self.checkpoints_dir(),
            model,
            optimizer.to_record(),
            &method.save_state()?,
            state,
            &self.config,
        )?;
        checkpoint::prune(
            &self.checkpoints_dir(),
            self.config.keep_last,
            self.config.keep_every,
        )?;
        Ok(path)
    }

    fn train<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
        self,
        mut optimizer: O,
        splits: Splits,
        device: B::Device,
    ) -> Result<(Outcome, Vec<EpochMetrics>)> {
        let config = self.config.clone();
        let peer = distributed::current();
        let main = distributed::is_main();
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("cannot create output directory {}", self.out.display()))?;
        if main {
            eprintln!("output: {}", self.out.display());
        }

        if config.precision != Precision::F32 {
            ensure!(
                !crate::backend::resolve(config.device).is_cpu(),
                "--precision {}: mixed precision is for GPUs (--device cuda or wgpu); the CPU \
                 backends compute in f32",
                config.precision.name()
            );
            precision::check_supported::<B>(config.precision, &device)?;
        }
        let (mut model, mut method, mut state) = if self.resume {
            // The newest intact checkpoint; rank 0 sets damaged ones aside.
            let ckpt =
                checkpoint::resume_point(&self.checkpoints_dir(), main)?.with_context(|| {
                    format!(
                        "--resume: no checkpoint in {}; start without --resume",
                        self.checkpoints_dir().display()
                    )
                })?;
            ckpt.ensure_method(config.method.kind())?;
            ckpt.ensure_architecture(&config.model)?;
            anyhow::ensure!(
                ckpt.config.optim.optimizer == config.optim.optimizer,
                "{}: saved with the {:?} optimizer, but this run uses {:?}",
                ckpt.path.display(),
                ckpt.config.optim.optimizer,
                config.optim.optimizer
            );
            // The whole recipe, against the checkpoint's own (config.toml may have been edited).
            config.ensure_continues(&ckpt.config, &ckpt.path.display().to_string())?;
            let model = ckpt.model::<B>(&device)?;
            if main {
                eprintln!("resuming from {}", ckpt.path.display());
            }
            optimizer = optimizer.load_record(ckpt.optimizer_record::<B, O::Record>(&device)?);
            let mut method = methods::build(&config, &model, &device);
            method.load_state(&ckpt.method_state).with_context(|| {
                format!("{}: the method state does not load", ckpt.path.display())
            })?;
            (model, method, ckpt.state)
        } else {
            if let Some(existing) = checkpoint::latest_in(&self.checkpoints_dir())? {
                bail!(
                    "{} already holds a run (latest checkpoint {}): pass --resume to continue it, \
                     or choose another --out",
                    self.out.display(),
                    existing.display()
                );
            }
            let guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
            B::seed(&device, config.seed);
            let state = TrainState {
                epochs_done: 0,
                global_step: 0,
                step_in_epoch: 0,
                loss_sum_in_epoch: 0.0,
                z_std_sum_in_epoch: 0.0,
                epoch_seed: 0,
                rng: ChaCha8Rng::seed_from_u64(config.seed),
                loss_scaler: GradScaler::new(config.precision),
            };
            let model = config.model.init::<B>(&device);
            let model = if config.init_weights.is_empty() {
                model
            } else {
                let path = Path::new(&config.init_weights);
                let (weights, _) = read_safetensors(path)?;
                if main {
                    eprintln!("initial weights: {}", path.display());
                }
                load_named_tensors(model, &weights, &device).with_context(|| {
                    format!(
                        "{} does not fit the configured model {:?}",
                        path.display(),
                        config.model
                    )
                })?
            };
            // Parameters are drawn lazily (in forward order on one device, which stays as it
            // was); ranks draw them all now, in visiting order, under the lock.
            if peer.is_some() {
                model.visit(&mut crate::methods::momentum::Initialise);
            }
            drop(guard);
            let model = from_rank0(model);
            let mut method = methods::build(&config, &model, &device);
            method.share_rank0_state();
            (model, method, state)
        };
        if state.loss_scaler.precision != config.precision {
            // Resumed with another --precision (or from a checkpoint without a loss scale).
            state.loss_scaler = GradScaler::new(config.precision);
        }
        let mut metrics_rows = if main {
            checkpoint::write_atomically(
                &self.out.join("config.toml"),
                config.to_toml().as_bytes(),
            )?;
            Some(MetricsFile::open(
                &self.out.join("metrics.csv"),
                state.epochs_done,
            )?)
        } else {
            None
        };
        let mut events = if main {
            let writer = EventWriter::create(&self.out.join("tb"))?;
            eprintln!(
                "TensorBoard: tensorboard --logdir {} (events in {})",
                self.out.display(),
                writer.path().display()
            );
            Some(writer)
        } else {
            None
        };
        let shard = peer.map_or(Shard::WHOLE, |p| Shard {
            rank: p.rank,
            world: p.world,
        });

        // Drawn once: the monitor classifies the same images after every epoch.
        let knn_subsets = (main && splits.has_labels() && config.knn.every > 0)
            .then(|| KnnSubsets::new(&splits.train, &splits.test, &config));
        let train = Arc::new(splits.pretraining().clone());
        let steps_per_epoch =
            EpochPlan::new(train.len(), config.batch_size, config.steps_per_epoch, 0).steps;
        let schedule = Schedule {
            batch_size: config.batch_size,
            steps_per_epoch,
            total_steps: steps_per_epoch * config.horizon_epochs(),
        };
        let mut all_metrics = Vec::new();
        let mut estimate = (main && crate::backend::resolve(config.device).is_cpu())
            .then(crate::progress::DurationEstimate::new);

        while state.epochs_done < config.epochs {
            let epoch = state.epochs_done + 1;
            if state.step_in_epoch == 0 {
                state.epoch_seed = state.rng.next_u64();
                state.loss_sum_in_epoch = 0.0;
                state.z_std_sum_in_epoch = 0.0;
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
                shard,
                state.step_in_epoch,
                config.prefetch_batches,
            );
            let bar = steps_bar(plan.steps as u64, epoch, config.epochs);
            if !main {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_position(state.step_in_epoch as u64);
            let started = Instant::now();
            let skipped_before = state.loss_scaler.skipped_steps;
            let mut pairs = 0usize;
            let mut logged = (Instant::now(), 0usize);
            for batch in loader {
                let lr = config.optim.lr_at(state.global_step, &schedule);
                let size = batch.size * shard.world;
                let (next, stats) = train_step(
                    model,
                    method.as_mut(),
                    &mut optimizer,
                    &mut state.loss_scaler,
                    batch,
                    lr,
                    config.optim.grad_clip,
                    (state.global_step, &schedule),
                    &device,
                );
                model = next;
                let loss_value = stats.loss;
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
                state.z_std_sum_in_epoch += stats.z_std;
                pairs += size;
                if let Some(events) = events.as_mut() {
                    if config.log_every > 0 && state.global_step % config.log_every == 0 {
                        let rate = (pairs - logged.1) as f64 / logged.0.elapsed().as_secs_f64();
                        logged = (Instant::now(), pairs);
                        let mut values = vec![
                            ("train/loss", loss_value),
                            ("train/lr", lr),
                            ("train/z_std", stats.z_std),
                            ("train/pairs_per_s", rate),
                        ];
                        if stats.grad_norm.is_finite() {
                            values.push(("train/grad_norm", stats.grad_norm));
                        }
                        if state.loss_scaler.enabled() {
                            values.push(("train/loss_scale", state.loss_scaler.scale));
                        }
                        events.scalars(state.global_step as u64, &values)?;
                        events.flush()?;
                    }
                }
                let rate = pairs as f64 / started.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4} | z_std {:.4} | lr {lr:.3e} | {rate:.1} pairs/s",
                    state.loss_sum_in_epoch / state.step_in_epoch as f64,
                    state.z_std_sum_in_epoch / state.step_in_epoch as f64
                ));
                bar.inc(1);
                let total_steps = steps_per_epoch * config.epochs;
                if let Some(seconds) = estimate
                    .as_mut()
                    .and_then(|e| e.after_step(state.global_step, total_steps))
                {
                    if seconds > 3600.0 {
                        bar.suspend(|| {
                            eprintln!(
                                "this run will take about {} on the CPU ({} epochs of {} steps). \
                                 A GPU makes it hours: build with `--features cuda` (NVIDIA) or \
                                 `--features wgpu` (Vulkan, Metal, DirectX 12); for a quick look \
                                 on the CPU try --width 16 --epochs 10",
                                crate::progress::human_duration(seconds),
                                config.epochs,
                                steps_per_epoch
                            )
                        });
                    }
                }
                let stop = sync::any::<B::InnerBackend>(self.stop.load(Ordering::SeqCst), &device);
                if stop && state.step_in_epoch < plan.steps {
                    bar.abandon();
                    let path = self.save(&model, &optimizer, method.as_ref(), &state)?;
                    if main {
                        eprintln!(
                            "interrupted: saved {} (step {} of epoch {epoch}); continue with \
                             --resume",
                            path.display(),
                            state.step_in_epoch
                        );
                    }
                    return Ok((Outcome::Interrupted { checkpoint: path }, all_metrics));
                }
            }
            let train_seconds = started.elapsed().as_secs_f64();
            bar.finish_and_clear();
            let traffic = sync::take_gradient_traffic();
            if main && traffic.calls > 0 {
                let per_step = traffic.time.as_secs_f64() / traffic.calls as f64;
                eprintln!(
                    "gradient all-reduce: {:.1} MB per step, {:.3} s per step ({:.0} % of the \
                     epoch's training time, waiting for slower ranks included)",
                    traffic.bytes as f64 / traffic.calls as f64 / 1e6,
                    per_step,
                    100.0 * traffic.time.as_secs_f64() / train_seconds
                );
            }
            let skipped = state.loss_scaler.skipped_steps - skipped_before;
            if main && skipped > 0 {
                eprintln!(
                    "f16: {skipped} step(s) of epoch {epoch} skipped because the gradients \
                     overflowed; the loss scale is now {}",
                    state.loss_scaler.scale
                );
            }
            let mean_loss = state.loss_sum_in_epoch / plan.steps.max(1) as f64;
            let z_std = state.z_std_sum_in_epoch / plan.steps.max(1) as f64;
            if let Some(peer) = peer {
                let spread = parameter_spread(&model);
                ensure!(
                    spread <= 1e-5,
                    "after epoch {epoch} the parameters differ between ranks by up to {spread} \
                     (rank {} of {}): the ranks no longer train one model. Resume from the \
                     last checkpoint",
                    peer.rank,
                    peer.world
                );
            }
            if main && is_collapsed(z_std, config.model.head.out) {
                eprintln!(
                    "warning: the projections are collapsing at epoch {epoch} (z_std {z_std:.5}, \
                     about {:.4} when spread): the encoder maps images to nearly the same point. \
                     Early in a run this can recover (watch z_std in metrics.csv); if it stays, \
                     check the method's settings against its preset (BYOL needs its predictor) \
                     or lower the learning rate",
                    1.0 / (config.model.head.out as f64).sqrt()
                );
            }
            // The monitor and the files are rank 0's; the others wait at their next step.
            let knn_top1 = match &knn_subsets {
                Some(subsets) if config.knn.runs_after(epoch, config.epochs) => {
                    knn_monitor(&model, subsets, &config, &device)
                }
                _ => f64::NAN,
            };
            state.epochs_done = epoch;
            state.step_in_epoch = 0;
            let path = self.save(&model, &optimizer, method.as_ref(), &state)?;
            let metrics = EpochMetrics {
                epoch,
                loss: mean_loss,
                z_std,
                knn_top1,
                pairs_per_s: pairs as f64 / train_seconds,
                seconds: started.elapsed().as_secs_f64(),
            };
            if let Some(rows) = metrics_rows.as_mut() {
                rows.append(&metrics)?;
                plot::write_metrics_svg(&self.out.join("metrics.svg"), &rows.rows)?;
            }
            // After the monitor and the save, so the figure covers everything an epoch allocates.
            let gpu_memory = if main { B::gpu_memory(&device) } else { None };
            if let Some(memory) = gpu_memory {
                eprintln!("epoch {epoch}: {}", memory.describe());
            }
            if let Some(events) = events.as_mut() {
                let mut values = vec![
                    ("epoch/loss", metrics.loss),
                    ("epoch/z_std", metrics.z_std),
                    ("epoch/pairs_per_s", metrics.pairs_per_s),
                ];
                if metrics.knn_top1.is_finite() {
                    values.push(("epoch/knn_top1", metrics.knn_top1));
                }
                if let Some(memory) = gpu_memory {
                    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
                    values.push(("gpu/memory_reserved_mib", mib(memory.reserved)));
                    values.push(("gpu/memory_in_use_mib", mib(memory.in_use)));
                }
                events.scalars(epoch as u64, &values)?;
                events.flush()?;
            }
            let stop = sync::any::<B::InnerBackend>(self.stop.load(Ordering::SeqCst), &device);
            if !main {
                all_metrics.push(metrics);
                if stop {
                    return Ok((Outcome::Interrupted { checkpoint: path }, all_metrics));
                }
                continue;
            }
            println!(
                "epoch {epoch}/{}: loss {:.4} | z_std {:.4} | kNN top-1 {:.2} % | {:.1} pairs/s | {:.0} s | saved {}",
                config.epochs,
                metrics.loss,
                metrics.z_std,
                100.0 * metrics.knn_top1,
                metrics.pairs_per_s,
                metrics.seconds,
                path.display()
            );
            all_metrics.push(metrics);
            if stop {
                eprintln!("interrupted after epoch {epoch}; continue with --resume");
                return Ok((Outcome::Interrupted { checkpoint: path }, all_metrics));
            }
        }
        Ok((Outcome::Finished, all_metrics))
    }
}

/// The seed of the kNN monitor's subsets: one for every run and epoch, so that the monitor of
/// two runs (of any `--seed`) classifies the same images against the same bank.
pub const KNN_SUBSET_SEED: u64 = 0;

/// The kNN monitor's images: `bank_size` training and `query_size` test images, each drawn once
/// per run with [`KNN_SUBSET_SEED`], stratified by class ([`ImageDataset::sample`]).
pub struct KnnSubsets {
    pub bank: ImageDataset,
    pub queries: ImageDataset,
}

impl KnnSubsets {
    pub fn new(train: &ImageDataset, test: &ImageDataset, config: &TrainConfig) -> Self {
        Self {
            bank: train.sample(config.knn.bank_size, KNN_SUBSET_SEED),
            queries: test.sample(config.knn.query_size, KNN_SUBSET_SEED),
        }
    }
}

/// kNN top-1 of the current encoder (BatchNorm in inference mode) on the monitor's subsets.
pub fn knn_monitor<B: TrainBackend>(
    model: &SslModel<B>,
    subsets: &KnnSubsets,
    config: &TrainConfig,
    device: &B::Device,
) -> f64 {
    let encoder = model.encoder.valid();
    let KnnSubsets { bank, queries } = subsets;
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
        bank.classes.len(),
    )
}

/// `metrics.csv`, kept consistent with the checkpoints: rows past the resumed epoch (written
/// by a run that died before its next checkpoint) are dropped.
struct MetricsFile {
    path: PathBuf,
    /// Every row of the file, the resumed run's earlier epochs first (for `metrics.svg`).
    rows: Vec<EpochMetrics>,
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
            rows: rows[1..]
                .iter()
                .filter_map(|row| EpochMetrics::from_csv_row(row))
                .collect(),
        })
    }

    fn append(&mut self, metrics: &EpochMetrics) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        writeln!(file, "{}", metrics.csv_row())
            .with_context(|| format!("cannot write {} (disk full?)", self.path.display()))?;
        self.rows.push(metrics.clone());
        Ok(())
    }
}
