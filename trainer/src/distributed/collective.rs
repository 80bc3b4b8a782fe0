//! The collective calls data-parallel training makes, on burn-collective: an all-reduce that
//! gives up after a bounded wait (a dead peer is an error, never a hang), and an all-reduce that
//! autodiff differentiates (its backward pass all-reduces the gradients), which the gather of
//! projections and synchronised BatchNorm are built on.
//!
//! burn-collective's calls block without a deadline, and a failure can surface deep inside a
//! forward or backward pass that cannot return an error, so a failed call panics with a
//! [`PEER_FAILURE`] message; the peer's thread turns that panic back into an error.

use super::Peer;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorData, TensorMetadata, TensorPrimitive};
use burn_collective::ReduceOperation;
use std::sync::mpsc;

/// How the message of a failed collective call starts.
pub const PEER_FAILURE: &str = "distributed training stopped";

/// Runs the blocking collective `call` of `peer`, giving up after `peer.timeout`.
pub fn with_deadline<T: Send + 'static>(
    peer: &Peer,
    what: &str,
    call: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(call());
    });
    match receiver.recv_timeout(peer.timeout) {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => panic!(
            "{PEER_FAILURE}: rank {} of {}: {what} failed: {error}",
            peer.rank, peer.world
        ),
        Err(_) => panic!(
            "{PEER_FAILURE}: rank {} of {} had no answer from the other ranks for {} s during \
             {what}: a rank stopped, crashed or lost its connection (see its own output). The \
             last checkpoint is kept; restart every rank with --resume. If a rank only runs \
             slower (rank 0 also runs the kNN monitor), raise --peer-timeout",
            peer.rank,
            peer.world,
            peer.timeout.as_secs()
        ),
    }
}

/// `op` over the float tensors of all peers, on a backend without autodiff: MPI between
/// processes ([`mpi`](super::mpi)), burn-collective's local all-reduce between the devices of
/// one process.
pub fn all_reduce_inner<B: Backend>(
    tensor: FloatTensor<B>,
    op: ReduceOperation,
    peer: &Peer,
    what: &str,
) -> FloatTensor<B> {
    if !super::mpi::is_running() {
        let id = peer.id();
        return with_deadline(peer, what, move || {
            burn_collective::all_reduce::<B>(id, tensor, op).map_err(|e| format!("{e:?}"))
        });
    }
    let shape = tensor.shape();
    let device = B::float_device(&tensor);
    let numel = shape.num_elements();
    let flat = B::float_reshape(tensor, Shape::new([numel]));
    let values = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(flat))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("float values");
    // On the host: MPI sends from and receives into host memory (no GPU-aware MPI assumed).
    let mut summed = with_deadline(peer, what, move || Ok(super::mpi::all_reduce_sum(&values)));
    if op == ReduceOperation::Mean {
        let world = peer.world as f32;
        summed.iter_mut().for_each(|v| *v /= world);
    }
    let flat = Tensor::<B, 1>::from_data(TensorData::new(summed, [numel]), &device);
    B::float_reshape(flat.into_primitive().tensor(), shape)
}

/// A backend whose float tensors can be summed over all peers, differentiably under autodiff.
pub trait CollectiveBackend: Backend {
    /// The sum over all peers of `x`. Under autodiff, the gradient reaching each peer's `x` is
    /// the sum over all peers of the output's gradient (the adjoint of a sum over peers).
    fn all_reduce_sum(x: FloatTensor<Self>, peer: Peer) -> FloatTensor<Self> {
        all_reduce_inner::<Self>(x, ReduceOperation::Sum, &peer, "an all-reduce")
    }
}

#[cfg(feature = "flex")]
impl CollectiveBackend for burn::backend::Flex {}
#[cfg(feature = "cuda")]
impl CollectiveBackend for burn::backend::Cuda {}
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
