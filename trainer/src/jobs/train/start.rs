//! Start or resume: the model, the method with its own state, the optimizer and where training
//! stands, from the config (a fresh run) or from the newest intact checkpoint (`--resume`).

use super::TrainJob;
use crate::backend::TrainBackend;
use crate::checkpoint::{self, TrainState};
use crate::distributed::{self, sync::from_rank0};
use crate::methods::Method;
use crate::model::SslModel;
use crate::named_params::{load_named_tensors, read_safetensors};
use crate::precision::GradScaler;
use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::optim::Optimizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::Mutex;

/// What training changes, step by step: everything a checkpoint holds.
pub(super) struct Trainee<B: TrainBackend, O> {
    pub model: SslModel<B>,
    pub method: Box<dyn Method<B>>,
    pub optimizer: O,
    pub state: TrainState,
}

/// Fresh models are built one rank at a time: Burn's random generator is one per backend, and
/// ranks drawing from it at once would make rank 0's initial weights depend on timing.
static INIT: Mutex<()> = Mutex::new(());

impl TrainJob {
    /// The run's starting point: resumed from its checkpoints with `--resume`, else fresh.
    pub(super) fn start_or_resume<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
        &self,
        optimizer: O,
        device: &B::Device,
    ) -> Result<Trainee<B, O>> {
        let mut trainee = if self.resume {
            self.resume_from_checkpoint(optimizer, device)?
        } else {
            self.start_fresh(optimizer, device)?
        };
        if trainee.state.loss_scaler.precision != self.config.precision {
            // Resumed with another --precision (or from a checkpoint without a loss scale).
            trainee.state.loss_scaler = GradScaler::new(self.config.precision);
        }
        Ok(trainee)
    }

    fn resume_from_checkpoint<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
        &self,
        optimizer: O,
        device: &B::Device,
    ) -> Result<Trainee<B, O>> {
        let config = &self.config;
        // The newest intact checkpoint; rank 0 sets damaged ones aside.
        let dir = self.checkpoints_dir();
        let ckpt = checkpoint::resume_point(&dir, distributed::is_main())?.with_context(|| {
            format!(
                "--resume: no checkpoint in {}; start without --resume",
                dir.display()
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
        let model = ckpt.model::<B>(device)?;
        if distributed::is_main() {
            eprintln!("resuming from {}", ckpt.path.display());
        }
        let optimizer = optimizer.load_record(ckpt.optimizer_record::<B, O::Record>(device)?);
        let mut method = config.method.build(&config.model, &model, device);
        method
            .load_state(&ckpt.method_state)
            .with_context(|| format!("{}: the method state does not load", ckpt.path.display()))?;
        Ok(Trainee {
            model,
            method,
            optimizer,
            state: ckpt.state,
        })
    }

    fn start_fresh<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
        &self,
        optimizer: O,
        device: &B::Device,
    ) -> Result<Trainee<B, O>> {
        let config = &self.config;
        if let Some(existing) = checkpoint::latest_in(&self.checkpoints_dir())? {
            bail!(
                "{} already holds a run (latest checkpoint {}): pass --resume to continue it, or \
                 choose another --out",
                self.out.display(),
                existing.display()
            );
        }
        let guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, config.seed);
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
        let model = self.initial_model::<B>(device)?;
        // Parameters are drawn lazily (in forward order on one device, which stays as it was);
        // ranks draw them all now, in visiting order, under the lock.
        if distributed::current().is_some() {
            model.visit(&mut crate::methods::momentum::Initialise);
        }
        drop(guard);
        let model = from_rank0(model);
        let mut method = config.method.build(&config.model, &model, device);
        method.share_rank0_state();
        Ok(Trainee {
            model,
            method,
            optimizer,
            state,
        })
    }

    /// The configured model, initialised from the seed or read from `init_weights`.
    fn initial_model<B: TrainBackend>(&self, device: &B::Device) -> Result<SslModel<B>> {
        let config = &self.config;
        let model = config.model.init::<B>(device);
        if config.init_weights.is_empty() {
            return Ok(model);
        }
        let path = Path::new(&config.init_weights);
        let (weights, _) = read_safetensors(path)?;
        if distributed::is_main() {
            eprintln!("initial weights: {}", path.display());
        }
        load_named_tensors(model, &weights, device).with_context(|| {
            format!(
                "{} does not fit the configured model {:?}",
                path.display(),
                config.model
            )
        })
    }
}
