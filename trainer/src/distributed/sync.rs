//! What keeps the ranks of a data-parallel run doing one step over the global batch: gathered
//! projections, synchronised BatchNorm statistics, averaged gradients, and parameters that start
//! and stay identical. Each is a no-op in a single-device run.
//!
//! Every rank computes the same global loss L. Under the differentiable all-reduce, the
//! gradients of rank r then sum all ranks' copies of L (`world x` the gradient flowing through
//! rank r's images), so averaging them over ranks gives exactly the one-device gradient of L.

use super::collective::{all_reduce_sum, CollectiveBackend};
use super::{current, Peer};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;
use burn_collective::ReduceOperation;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// What the gradient all-reduces of this thread's rank cost since the last
/// [`take_gradient_traffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    pub calls: usize,
    /// Gradient bytes each rank puts into the all-reduce (f32).
    pub bytes: usize,
    /// Time in the all-reduce calls, waiting for slower ranks included.
    pub time: Duration,
}

thread_local! {
    static TRAFFIC: Cell<Traffic> = Cell::new(Traffic::default());
}

/// The gradient all-reduce traffic of this rank since the last call, and a fresh count.
pub fn take_gradient_traffic() -> Traffic {
    TRAFFIC.with(|t| t.take())
}

/// Projections `[2n, d]` of this rank's images (first views, then second views) -> the
/// projections of the global batch `[2N, d]`: every rank's first views in rank order, then every
/// rank's second views, the layout one device has for the same images. Gradients flow back to
/// each rank's own rows.
pub fn gather_views<B: CollectiveBackend>(z: Tensor<B, 2>) -> Tensor<B, 2> {
    gather_view_rows(z, 2)
}

/// [`gather_views`] for rows of `views` views (multi-crop): `[views * n, d]`, view-major, ->
/// `[views * N, d]`, each view's rows of every rank in rank order.
pub fn gather_view_rows<B: CollectiveBackend>(z: Tensor<B, 2>, views: usize) -> Tensor<B, 2> {
    let Some(peer) = current() else {
        return z;
    };
    let [rows, d] = z.dims();
    let n = rows / views;
    let device = z.device();
    // All-gather as an all-reduce: each rank fills its own slot of a zero tensor.
    let mut slots = Vec::with_capacity(3);
    if peer.rank > 0 {
        slots.push(Tensor::zeros([views, peer.rank, n, d], &device));
    }
    slots.push(z.reshape([views, 1, n, d]));
    if peer.rank + 1 < peer.world {
        slots.push(Tensor::zeros(
            [views, peer.world - peer.rank - 1, n, d],
            &device,
        ));
    }
    all_reduce_sum(Tensor::cat(slots, 1), peer).reshape([views * peer.world * n, d])
}

/// Batch mean and (biased) variance per channel, `[1, C]` each, over the images of all ranks
/// when BatchNorm is synchronised (`None` otherwise), and how many values they cover. Two
/// all-reduces, as the exact two-pass variance: the global mean first, then the squared
/// deviations from it (a one-pass `E[x^2] - mean^2` loses digits where a channel's mean is large
/// next to its spread, and those errors grow through the backward pass).
pub fn synced_moments<B: CollectiveBackend>(
    rows: Tensor<B, 2>,
    images: usize,
) -> Option<(Tensor<B, 2>, Tensor<B, 2>, usize)> {
    let peer = current().filter(|p| p.sync_batchnorm)?;
    let [nc, plane] = rows.dims();
    let c = nc / images;
    let count = images * plane * peer.world;
    let per_channel = |t: Tensor<B, 2>| t.sum_dim(1).reshape([images, c]).sum_dim(0);
    let per_row = |t: Tensor<B, 2>| t.repeat_dim(0, images).reshape([nc, 1]);
    let mean = all_reduce_sum(per_channel(rows.clone()), peer) / count as f64;
    // Deviations from the mean's value; the gradient reaches the mean through the last term
    // (which is 0 in value), so the variance's gradient is the exact 2 (x - mean) / count.
    let centre = mean.clone().detach();
    let squares = per_channel((rows - per_row(centre.clone())).square());
    let var = all_reduce_sum(squares, peer) / count as f64 - (mean.clone() - centre).square();
    Some((mean, var, count))
}

/// Float parameters of a module flattened into one vector, in the module's visiting order (the
/// same on every rank), and put back.
struct Flatten<'a, B: AutodiffBackend> {
    /// What to flatten: the gradients, or else the values.
    grads: Option<&'a GradientsParams>,
    /// Values of trainable parameters only (not BatchNorm's running statistics).
    trainable_only: bool,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = match self.grads {
            Some(grads) => grads.get::<B::InnerBackend, D>(param.id),
            None => {
                let value = param.val();
                (!self.trainable_only || value.is_require_grad()).then(|| value.inner())
            }
        };
        if let Some(value) = value {
            let numel = value.shape().num_elements();
            self.parts.push(value.reshape([numel]));
        }
    }
}

struct Scatter<'a, B: AutodiffBackend> {
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
    grads: Option<&'a mut GradientsParams>,
}

impl<B: AutodiffBackend> Scatter<'_, B> {
    fn take<const D: usize>(&mut self, shape: Shape) -> Tensor<B::InnerBackend, D> {
        let numel = shape.num_elements();
        let part = self.flat.clone().slice([self.offset..self.offset + numel]);
        self.offset += numel;
        part.reshape(shape)
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scatter<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(grads) = self.grads.as_deref() else {
            return;
        };
        if let Some(grad) = grads.get::<B::InnerBackend, D>(param.id) {
            let value = self.take::<D>(grad.shape());
            let grads = self.grads.as_deref_mut().expect("checked above");
            grads.remove::<B::InnerBackend, D>(param.id);
            grads.register(param.id, value);
        }
    }
}

impl<B: AutodiffBackend> ModuleMapper<B> for Scatter<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|tensor| {
            let tracked = tensor.is_require_grad();
            let value = Tensor::from_inner(self.take::<D>(tensor.shape()));
            if tracked {
                value.require_grad()
            } else {
                value
            }
        })
    }
}

fn flatten<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: Option<&GradientsParams>,
    trainable_only: bool,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let mut visitor = Flatten::<B> {
        grads,
        trainable_only,
        parts: Vec::new(),
    };
    module.visit(&mut visitor);
    (!visitor.parts.is_empty()).then(|| Tensor::cat(visitor.parts, 0))
}

fn reduce<B: CollectiveBackend>(
    flat: Tensor<B, 1>,
    op: ReduceOperation,
    peer: &Peer,
    what: &str,
) -> Tensor<B, 1> {
    let reduced = B::all_reduce(flat.into_primitive().tensor(), op, peer, what);
    Tensor::from_primitive(TensorPrimitive::Float(reduced))
}

/// Averages `model`'s gradients over all ranks: one all-reduce of all of them, flattened.
pub fn average_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut grads: GradientsParams,
) -> GradientsParams
where
    B::InnerBackend: CollectiveBackend,
{
    let Some(peer) = current() else {
        return grads;
    };
    let Some(flat) = flatten(model, Some(&grads), true) else {
        return grads;
    };
    let bytes = flat.shape().num_elements() * std::mem::size_of::<f32>();
    let started = Instant::now();
    let flat = reduce(
        flat,
        ReduceOperation::Mean,
        &peer,
        "the gradient all-reduce",
    );
    TRAFFIC.with(|t| {
        let mut traffic = t.get();
        traffic.calls += 1;
        traffic.bytes += bytes;
        traffic.time += started.elapsed();
        t.set(traffic);
    });
    model.visit(&mut Scatter::<B> {
        flat,
        offset: 0,
        grads: Some(&mut grads),
    });
    grads
}

/// `module` with rank 0's parameters on every rank (how a run starts: ranks built their own).
pub fn from_rank0<B: AutodiffBackend, M: Module<B>>(module: M) -> M
where
    B::InnerBackend: CollectiveBackend,
{
    let Some(peer) = current() else {
        return module;
    };
    let Some(flat) = flatten(&module, None, false) else {
        return module;
    };
    // A broadcast as a sum: the other ranks contribute zeros.
    let flat = if peer.is_main() {
        flat
    } else {
        flat.zeros_like()
    };
    let flat = reduce(
        flat,
        ReduceOperation::Sum,
        &peer,
        "sharing rank 0's parameters",
    );
    module.map(&mut Scatter::<B> {
        flat,
        offset: 0,
        grads: None,
    })
}

/// The largest difference between `module`'s trainable parameters on this rank and their mean
/// over all ranks (on any rank): 0 when every rank holds the same parameters. (BatchNorm's
/// running statistics are the same only under synchronised BatchNorm.)
pub fn parameter_spread<B: AutodiffBackend, M: Module<B>>(module: &M) -> f64
where
    B::InnerBackend: CollectiveBackend,
{
    let Some(peer) = current() else {
        return 0.0;
    };
    let Some(flat) = flatten(module, None, true) else {
        return 0.0;
    };
    let mean = reduce(
        flat.clone(),
        ReduceOperation::Mean,
        &peer,
        "the parameter check",
    );
    let device = flat.device();
    let local = (flat - mean).abs().max().into_scalar().elem::<f64>();
    // Every rank learns the largest spread, so all of them stop together if it is not zero.
    let spread = Tensor::<B::InnerBackend, 1>::from_floats([local as f32], &device);
    reduce(spread, ReduceOperation::Sum, &peer, "the parameter check")
        .into_scalar()
        .elem::<f64>()
}

/// Whether `flag` is set on any rank (a Ctrl-C on one machine stops every rank at one step).
pub fn any<B: Backend>(flag: bool, device: &B::Device) -> bool
where
    B: CollectiveBackend,
{
    let Some(peer) = current() else {
        return flag;
    };
    let t = Tensor::<B, 1>::from_floats([flag as u8 as f32], device);
    reduce(t, ReduceOperation::Sum, &peer, "agreeing to stop")
        .into_scalar()
        .elem::<f64>()
        > 0.0
}
