//! The collective calls data-parallel training makes, on burn-collective: an all-reduce that
//! gives up after a bounded wait (a dead peer is an error, never a hang), and an all-reduce that
//! autodiff differentiates (its backward pass all-reduces the gradients), which the gather of
//! projections and synchronised BatchNorm are built on.
//!
//! burn-collective's calls block without a deadline, and a failure can surface deep inside a
//! forward or backward pass that cannot return an error, so a failed call panics with a
//! [`PEER_FAILURE`] message; the peer's thread turns that panic back into an error.

pub use super::deadline::{with_deadline, PEER_FAILURE};
pub use super::generic_reduce::all_reduce_inner;
use super::Peer;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;
use burn_collective::ReduceOperation;

/// A rank's own exchange engine for a run (NCCL on CUDA); dropping it ends the engine.
pub type Engine = Box<dyn std::any::Any>;

/// A backend whose float tensors can be summed over all peers, differentiably under autodiff.
pub trait CollectiveBackend: Backend {
    /// Starts the engine this backend's tensors are exchanged through, for `peer` on `device`;
    /// every rank of the run calls it at the same point. `None`: the generic path
    /// ([`all_reduce_inner`]).
    fn start_engine(_peer: &Peer, _device: &Self::Device) -> anyhow::Result<Option<Engine>> {
        Ok(None)
    }

    /// `op` over all peers of `x`, outside autodiff.
    fn all_reduce(
        x: FloatTensor<Self>,
        op: ReduceOperation,
        peer: &Peer,
        what: &str,
    ) -> FloatTensor<Self> {
        all_reduce_inner::<Self>(x, op, peer, what)
    }

    /// The sum over all peers of `x`. Under autodiff, the gradient reaching each peer's `x` is
    /// the sum over all peers of the output's gradient (the adjoint of a sum over peers).
    fn all_reduce_sum(x: FloatTensor<Self>, peer: Peer) -> FloatTensor<Self> {
        Self::all_reduce(x, ReduceOperation::Sum, &peer, "an all-reduce")
    }
}

#[cfg(feature = "flex")]
impl CollectiveBackend for burn::backend::Flex {}
/// CUDA exchanges GPU memory to GPU memory through NCCL when every rank has it.
#[cfg(feature = "cuda")]
impl CollectiveBackend for burn::backend::Cuda {
    fn start_engine(peer: &Peer, device: &Self::Device) -> anyhow::Result<Option<Engine>> {
        Ok(super::nccl::join(peer, device)?.map(|m| Box::new(m) as Engine))
    }

    fn all_reduce(
        x: FloatTensor<Self>,
        op: ReduceOperation,
        peer: &Peer,
        what: &str,
    ) -> FloatTensor<Self> {
        super::nccl::all_reduce(x, op, peer, what)
    }
}
#[cfg(feature = "wgpu")]
impl CollectiveBackend for burn::backend::Wgpu {}
#[cfg(feature = "ndarray")]
impl CollectiveBackend for burn::backend::NdArray {}
#[cfg(feature = "candle")]
#[allow(deprecated)]
impl CollectiveBackend for burn::backend::Candle {}

impl<B: CollectiveBackend, C: CheckpointStrategy> CollectiveBackend for Autodiff<B, C> {
    fn all_reduce_sum(x: FloatTensor<Self>, peer: Peer) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AllReduceBackward;

        impl<B: CollectiveBackend> Backward<B, 1> for AllReduceBackward {
            type State = Peer;

            fn backward(self, ops: Ops<Peer, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                // Every peer runs the same graph, so every peer makes this call here too.
                let summed = B::all_reduce_sum(grad, ops.state);
                if let [Some(node)] = ops.parents {
                    grads.register::<B>(node.id, summed);
                }
            }
        }

        let output = B::all_reduce_sum(x.primitive, peer);
        match AllReduceBackward
            .prepare::<C>([x.node])
            // Never recomputed from a checkpoint: the all-reduce is a call every peer makes once.
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(peer, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// [`CollectiveBackend::all_reduce_sum`] on a tensor.
pub fn all_reduce_sum<B: CollectiveBackend, const D: usize>(
    x: Tensor<B, D>,
    peer: Peer,
) -> Tensor<B, D> {
    let summed = B::all_reduce_sum(x.into_primitive().tensor(), peer);
    Tensor::from_primitive(TensorPrimitive::Float(summed))
}
