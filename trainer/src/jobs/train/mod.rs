//! The training loop, split by role as burn-train splits it: this file runs a job (lock, data,
//! devices) and the epoch loop; [`start`] starts or resumes, [`step`] is one optimizer step,
//! [`epoch_end`] the checks, kNN monitor and checkpoint after each epoch, [`run_log`] every file
//! and console line the run writes, [`data_parallel`] the ranks of one process. It knows no
//! method by name.

mod data_parallel;
mod epoch_end;
pub mod options;
mod run_log;
mod start;
mod step;
pub mod torchrun;

pub use crate::metrics::{EpochMetrics, METRICS_HEADER};
pub use epoch_end::{knn_monitor, KnnSubsets, KNN_SUBSET_SEED};
pub use step::{
    apply_update, batch_tensor, loss_and_gradients, scaled_loss_and_gradients, train_step,
    StepGradients, StepStats,
};

use crate::backend::{BackendTask, TrainBackend};
use crate::config::TrainConfig;
use crate::data::loader::{EpochPlan, PrefetchLoader, Shard};
use crate::data::{ImageDataset, Splits};
use crate::distributed::{self, sync, Topology};
use crate::model::SslModel;
use crate::optim::{with_optimizer, OptimizerTask, Schedule};
use crate::precision::{self, GradScaler, Precision};
use crate::progress::{steps_bar, DurationEstimate};
use crate::run_lock::RunLock;
use anyhow::{bail, ensure, Context, Result};
use burn::optim::Optimizer;
use rand::RngCore;
use run_log::{RunLog, StepRow};
use start::Trainee;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
        let spread = describe_spread(topology, self.config.batch_size);
        let model = &self.config.model;
        eprintln!(
            "data: {}; device: {name}{spread}; method: {}; {}",
            splits.summary(),
            self.config.method.kind(),
            model.backbone.describe(model.stem)
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

/// How the batch is spread over devices and processes, for the run's first line ("" on one).
fn describe_spread(topology: &Topology, batch_size: usize) -> String {
    if topology.is_single() {
        return String::new();
    }
    let per_device = batch_size / topology.world();
    if topology.processes > 1 {
        let how = if topology.is_torchrun() {
            "torchrun-style"
        } else {
            "MPI"
        };
        format!(
            " x {} ({how} process {} of {}; {per_device} images per process)",
            topology.world(),
            topology.process_rank,
            topology.processes,
        )
    } else {
        format!(
            " x {} (devices of this process; {per_device} images per device)",
            topology.devices
        )
    }
}

/// What one rank needs through the epochs, beside what it trains.
struct Epochs<'a, B: TrainBackend> {
    config: &'a TrainConfig,
    train: Arc<ImageDataset>,
    schedule: Schedule,
    shard: Shard,
    device: B::Device,
    main: bool,
    /// The remaining time of a long CPU run, told once after its first steps.
    estimate: Option<DurationEstimate>,
}

/// How an epoch's steps ended.
enum Pass {
    /// Every step ran: `pairs` pairs of views in `seconds`.
    Done { pairs: usize, seconds: f64 },
    /// Stopped (Ctrl-C) inside the epoch, saved as this checkpoint.
    Interrupted(PathBuf),
}

impl TrainJob {
    fn train<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
        self,
        optimizer: O,
        splits: Splits,
        device: B::Device,
    ) -> Result<(Outcome, Vec<EpochMetrics>)> {
        let config = &self.config;
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
        let mut trainee = self.start_or_resume::<B, O>(optimizer, &device)?;
        let mut log = RunLog::open(&self.out, config, trainee.state.epochs_done, main)?;
        // Drawn once: the monitor classifies the same images after every epoch.
        let knn_subsets = (main && splits.has_labels() && config.knn.every > 0)
            .then(|| KnnSubsets::new(&splits.train, &splits.test, config));
        let train = Arc::new(splits.pretraining().clone());
        let steps_per_epoch =
            EpochPlan::new(train.len(), config.batch_size, config.steps_per_epoch, 0).steps;
        let mut epochs = Epochs {
            config,
            train,
            schedule: Schedule {
                batch_size: config.batch_size,
                steps_per_epoch,
                total_steps: steps_per_epoch * config.horizon_epochs(),
            },
            shard: distributed::current().map_or(Shard::WHOLE, |p| Shard {
                rank: p.rank,
                world: p.world,
            }),
            device,
            main,
            estimate: (main && crate::backend::resolve(config.device).is_cpu())
                .then(DurationEstimate::new),
        };
        let mut all_metrics = Vec::new();
        while trainee.state.epochs_done < config.epochs {
            let epoch = trainee.state.epochs_done + 1;
            let started = Instant::now();
            let (after, pass) = self.epoch_steps(trainee, &mut epochs, &mut log)?;
            trainee = after;
            let (pairs, train_seconds) = match pass {
                Pass::Done { pairs, seconds } => (pairs, seconds),
                Pass::Interrupted(checkpoint) => {
                    return Ok((Outcome::Interrupted { checkpoint }, all_metrics))
                }
            };
            let steps = trainee.state.step_in_epoch.max(1) as f64;
            let (loss, z_std) = (
                trainee.state.loss_sum_in_epoch / steps,
                trainee.state.z_std_sum_in_epoch / steps,
            );
            epoch_end::ensure_ranks_agree(&trainee.model, epoch)?;
            if main {
                epoch_end::warn_if_collapsed(z_std, config.model.head.out, epoch);
            }
            // The monitor and the files are rank 0's; the others wait at their next step.
            let knn_top1 = match &knn_subsets {
                Some(subsets) if config.knn.runs_after(epoch, config.epochs) => {
                    knn_monitor(&trainee.model, subsets, config, &epochs.device)
                }
                _ => f64::NAN,
            };
            trainee.state.epochs_done = epoch;
            trainee.state.step_in_epoch = 0;
            let path = self.save(&trainee)?;
            let metrics = EpochMetrics {
                epoch,
                loss,
                z_std,
                knn_top1,
                pairs_per_s: pairs as f64 / train_seconds,
                seconds: started.elapsed().as_secs_f64(),
            };
            // After the monitor and the save, so the figure covers everything an epoch allocates.
            let gpu_memory = if main {
                B::gpu_memory(&epochs.device)
            } else {
                None
            };
            log.epoch(&metrics, config.epochs, &path, gpu_memory)?;
            all_metrics.push(metrics);
            if sync::any::<B::InnerBackend>(self.stop.load(Ordering::SeqCst), &epochs.device) {
                if main {
                    eprintln!("interrupted after epoch {epoch}; continue with --resume");
                }
                return Ok((Outcome::Interrupted { checkpoint: path }, all_metrics));
            }
        }
        Ok((Outcome::Finished, all_metrics))
    }

    /// The steps of the next epoch (or of its rest, after a mid-epoch resume).
    fn epoch_steps<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
        &self,
        mut trainee: Trainee<B, O>,
        epochs: &mut Epochs<B>,
        log: &mut RunLog,
    ) -> Result<(Trainee<B, O>, Pass)> {
        let config = epochs.config;
        let state = &mut trainee.state;
        let epoch = state.epochs_done + 1;
        if state.step_in_epoch == 0 {
            state.epoch_seed = state.rng.next_u64();
            state.loss_sum_in_epoch = 0.0;
            state.z_std_sum_in_epoch = 0.0;
        }
        let plan = EpochPlan::new(
            epochs.train.len(),
            config.batch_size,
            config.steps_per_epoch,
            state.epoch_seed,
        );
        let loader = PrefetchLoader::spawn(
            epochs.train.clone(),
            config.augment.clone(),
            plan.clone(),
            epochs.shard,
            state.step_in_epoch,
            config.prefetch_batches,
        );
        let bar = steps_bar(plan.steps as u64, epoch, config.epochs);
        if !epochs.main {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_position(state.step_in_epoch as u64);
        log.start_epoch();
        let started = Instant::now();
        let skipped_before = state.loss_scaler.skipped_steps;
        let mut pairs = 0usize;
        let views_per_image = config.augment.view_recipes().len();
        for batch in loader {
            let state = &mut trainee.state;
            let lr = config.optim.step_lr(state.global_step, &epochs.schedule);
            let size = batch.size * epochs.shard.world;
            let (next, stats) = train_step(
                trainee.model,
                trainee.method.as_mut(),
                &mut trainee.optimizer,
                &mut state.loss_scaler,
                batch,
                lr,
                config.optim.grad_clip,
                (state.global_step, &epochs.schedule),
                &epochs.device,
            );
            trainee.model = next;
            if !stats.loss.is_finite() {
                bar.abandon();
                bail!(
                    "the loss became {} at epoch {epoch}, step {}: training stopped. The last \
                     good checkpoint is kept in {}; lower the learning rate (optim.lr) or keep \
                     gradient clipping on (optim.grad_clip) and --resume",
                    stats.loss,
                    state.step_in_epoch + 1,
                    self.checkpoints_dir().display()
                );
            }
            state.global_step += 1;
            state.step_in_epoch += 1;
            state.loss_sum_in_epoch += stats.loss;
            state.z_std_sum_in_epoch += stats.z_std;
            pairs += size;
            log.step(
                config.log_every,
                StepRow {
                    global_step: state.global_step,
                    stats: &stats,
                    lr: lr.lr,
                    pairs,
                    scaler: &state.loss_scaler,
                },
            )?;
            let rate = pairs as f64 / started.elapsed().as_secs_f64();
            bar.set_message(bar_message(&state, lr.lr, rate, views_per_image));
            bar.inc(1);
            if let Some(estimate) = epochs.estimate.as_mut() {
                let total_steps = epochs.schedule.steps_per_epoch * config.epochs;
                if let Some(seconds) = estimate.after_step(state.global_step, total_steps) {
                    bar.suspend(|| {
                        warn_long_cpu_run(seconds, config, epochs.schedule.steps_per_epoch)
                    });
                }
            }
            let stop =
                sync::any::<B::InnerBackend>(self.stop.load(Ordering::SeqCst), &epochs.device);
            if stop && trainee.state.step_in_epoch < plan.steps {
                bar.abandon();
                let path = self.save(&trainee)?;
                if epochs.main {
                    eprintln!(
                        "interrupted: saved {} (step {} of epoch {epoch}); continue with --resume",
                        path.display(),
                        trainee.state.step_in_epoch
                    );
                }
                return Ok((trainee, Pass::Interrupted(path)));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let skipped = trainee.state.loss_scaler.skipped_steps - skipped_before;
        report_epoch_costs(
            epochs.main,
            epoch,
            seconds,
            skipped,
            &trainee.state.loss_scaler,
        );
        Ok((trainee, Pass::Done { pairs, seconds }))
    }
}

/// Tells a CPU user once that the run will take more than an hour, and what to do about it.
fn warn_long_cpu_run(seconds: f64, config: &TrainConfig, steps_per_epoch: usize) {
    if seconds > 3600.0 {
        eprintln!(
            "this run will take about {} on the CPU ({} epochs of {steps_per_epoch} steps). A \
             GPU makes it hours: build with `--features cuda` (NVIDIA) or `--features wgpu` \
             (Vulkan, Metal, DirectX 12); for a quick look on the CPU try --width 16 --epochs 10",
            crate::progress::human_duration(seconds),
            config.epochs,
        );
    }
}

/// The epoch's costs beside its steps (rank 0 prints them; every rank resets its counters):
/// the gradient all-reduce of a data-parallel run and f16 steps skipped on overflow.
fn report_epoch_costs(main: bool, epoch: usize, seconds: f64, skipped: usize, scaler: &GradScaler) {
    let traffic = sync::take_gradient_traffic();
    if !main {
        return;
    }
    if traffic.calls > 0 {
        let per_step = traffic.time.as_secs_f64() / traffic.calls as f64;
        eprintln!(
            "gradient all-reduce: {:.1} MB per step, {per_step:.3} s per step ({:.0} % of the \
             epoch's training time, waiting for slower ranks included)",
            traffic.bytes as f64 / traffic.calls as f64 / 1e6,
            100.0 * traffic.time.as_secs_f64() / seconds
        );
    }
    if skipped > 0 {
        eprintln!(
            "f16: {skipped} step(s) of epoch {epoch} skipped because the gradients overflowed; \
             the loss scale is now {}",
            scaler.scale
        );
    }
}

/// The progress bar's line: the epoch's mean loss and collapse monitor so far, the learning
/// rate and the throughput.
fn bar_message(
    state: &crate::checkpoint::TrainState,
    lr: f64,
    images_per_s: f64,
    views_per_image: usize,
) -> String {
    format!(
        "loss {:.4} | z_std {:.4} | lr {lr:.3e} | {}",
        state.loss_sum_in_epoch / state.step_in_epoch as f64,
        state.z_std_sum_in_epoch / state.step_in_epoch as f64,
        run_log::throughput(images_per_s, views_per_image)
    )
}
