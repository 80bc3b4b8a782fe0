//! One optimizer step, the same in training, the golden-step tests and `bench`: the method's loss
//! of a batch of views, backward, the average over ranks, loss scaling, clipping, the
//! optimizer's update and the method's own update.

use crate::backend::TrainBackend;
use crate::data::augment::side_of;
use crate::data::loader::{PairBatch, ViewBatch, Views};
use crate::distributed::sync::average_gradients;
use crate::methods::{projection_std, Method};
use crate::model::SslModel;
use crate::optim::clip::clip_grad_norm;
use crate::optim::{take_gradients, Schedule, StepLr};
use crate::precision::{self, GradScaler};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;

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
    batch: impl Into<ViewBatch>,
    lr: impl Into<StepLr>,
    grad_clip: f64,
    (step, schedule): (usize, &Schedule),
    device: &B::Device,
) -> (SslModel<B>, StepStats) {
    let views = batch.into().into_views::<B>(device);
    method.begin_step(step, schedule);
    let StepGradients { stats, grads } = {
        let _autocast = precision::autocast(scaler.precision);
        scaled_loss_and_gradients(&model, method, views, scaler.loss_factor())
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
    method.adjust_gradients(&model, &mut grads);
    let (model, grad_norm) = apply_update(model, optimizer, grads, lr, grad_clip);
    method.after_update(&model, step, schedule);
    (model, StepStats { grad_norm, ..stats })
}

/// The method's loss of `views` (a `[2N, 3, H, W]` tensor: first views then second views; BatchNorm
/// in training mode, so running statistics move) and backward. Returns the loss, the collapse
/// monitor and the gradient of every parameter (none when the loss is not finite).
pub fn loss_and_gradients<B: TrainBackend>(
    model: &SslModel<B>,
    method: &mut dyn Method<B>,
    views: impl Into<Views<B>>,
) -> StepGradients {
    scaled_loss_and_gradients(model, method, views, 1.0)
}

/// [`loss_and_gradients`] with the gradients of `loss_factor` times the loss (loss scaling);
/// the loss reported is the unscaled one.
pub fn scaled_loss_and_gradients<B: TrainBackend>(
    model: &SslModel<B>,
    method: &mut dyn Method<B>,
    views: impl Into<Views<B>>,
    loss_factor: f64,
) -> StepGradients {
    let out = method.step(model, views.into());
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

/// Clips the global gradient norm to `grad_clip` (0 = off), then lets `optimizer` update `model`
/// (a predictor with a fixed rate in an update of its own). Returns the updated model and the
/// gradient norm before clipping (NaN when clipping is off).
pub fn apply_update<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
    model: SslModel<B>,
    optimizer: &mut O,
    mut grads: GradientsParams,
    lr: impl Into<StepLr>,
    grad_clip: f64,
) -> (SslModel<B>, f64) {
    let norm = if grad_clip > 0.0 {
        clip_grad_norm(&model, &mut grads, grad_clip)
    } else {
        f64::NAN
    };
    let lr = lr.into();
    let fixed = match (lr.predictor, &model.predictor) {
        (Some(rate), Some(predictor)) => Some((rate, take_gradients(predictor, &mut grads))),
        _ => None,
    };
    let model = optimizer.step(lr.lr, model, grads);
    let model = match fixed {
        Some((rate, predictor_grads)) => optimizer.step(rate, model, predictor_grads),
        None => model,
    };
    (model, norm)
}

/// Input tensor `[2B, 3, side, side]` of a prefetched batch of `size` pairs.
pub fn batch_tensor<B: Backend>(views: Vec<f32>, size: usize, device: &B::Device) -> Tensor<B, 4> {
    let side = side_of(views.len() / (2 * size));
    PairBatch { size, side, views }.into_tensor(device)
}
