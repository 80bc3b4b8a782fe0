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
use std::collections::HashMap;
use std::sync::{mpsc, Mutex, OnceLock};

/// How the message of a failed collective call starts.
pub const PEER_FAILURE: &str = "distributed training stopped";

/// A blocking call handed to a rank's collective thread.
type Job = Box<dyn FnOnce() + Send>;

/// The long-lived thread of each rank that runs its blocking collective calls, by rank. One
/// thread per call would be simpler, but CubeCL gives every new OS thread its own stream and
/// memory pool on the GPU and never frees them (burn issue 4792, fixed after 0.21): with a
/// thread per exchange, GPU memory would grow with every step.
fn collective_thread(rank: usize) -> mpsc::Sender<Job> {
    let mut threads = collective_threads()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    threads
        .entry(rank)
        .or_insert_with(|| {
            let (sender, jobs) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name(format!("collective-{rank}"))
                .spawn(move || jobs.into_iter().for_each(|job| job()))
                .expect("cannot start a collective thread");
            sender
        })
        .clone()
}

fn collective_threads() -> &'static Mutex<HashMap<usize, mpsc::Sender<Job>>> {
    static THREADS: OnceLock<Mutex<HashMap<usize, mpsc::Sender<Job>>>> = OnceLock::new();
    THREADS.get_or_init(Default::default)
}

/// Forgets `rank`'s collective thread (it is stuck in a call or died): the next call starts a
/// new one.
fn retire_collective_thread(rank: usize) {
    collective_threads()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&rank);
}

/// Runs the blocking collective `call` of `peer` on the rank's collective thread, giving up
/// after `peer.timeout`.
pub fn with_deadline<T: Send + 'static>(
    peer: &Peer,
    what: &str,
    call: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> T {
    let (sender, receiver) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = sender.send(call());
    });
    if let Err(mpsc::SendError(job)) = collective_thread(peer.rank).send(job) {
        // The thread ended (a call panicked in it): start another.
        retire_collective_thread(peer.rank);
        let _ = collective_thread(peer.rank).send(job);
    }
    match receiver.recv_timeout(peer.timeout) {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => panic!(
            "{PEER_FAILURE}: rank {} of {}: {what} failed: {error}",
            peer.rank, peer.world
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            retire_collective_thread(peer.rank);
            panic!(
                "{PEER_FAILURE}: rank {} of {}: {what} panicked (see the message above)",
                peer.rank, peer.world
            )
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            retire_collective_thread(peer.rank);
            panic!(
                "{PEER_FAILURE}: rank {} of {} had no answer from the other ranks for {} s \
                 during {what}: a rank stopped, crashed or lost its connection (see its own \
                 output). The last checkpoint is kept; restart every rank with --resume. If a \
                 rank only runs slower (rank 0 also runs the kNN monitor), raise --peer-timeout",
                peer.rank,
                peer.world,
                peer.timeout.as_secs()
            )
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(rank: usize, timeout: Duration) -> Peer {
        Peer {
            rank,
            world: 2,
            sync_batchnorm: true,
            timeout,
        }
    }

    /// Every collective call of a rank runs on one long-lived thread (not a new one per call:
    /// CubeCL keeps a GPU stream and memory pool per OS thread), another rank's on its own.
    #[test]
    fn a_ranks_calls_share_one_thread() {
        let p = peer(1000, Duration::from_secs(10));
        let caller = std::thread::current().id();
        let threads: Vec<_> = (0..50)
            .map(|_| with_deadline(&p, "a test", || Ok(std::thread::current().id())))
            .collect();
        assert!(threads.iter().all(|&t| t == threads[0]), "{threads:?}");
        assert_ne!(threads[0], caller);
        let other = with_deadline(&peer(1001, Duration::from_secs(10)), "a test", || {
            Ok(std::thread::current().id())
        });
        assert_ne!(other, threads[0]);
    }

    /// A call that never returns is an error after the timeout; the rank's next call gets a new
    /// thread instead of queueing behind the stuck one.
    #[test]
    fn a_stuck_call_times_out_and_the_next_call_still_runs() {
        let p = peer(1002, Duration::from_millis(200));
        let stuck = std::panic::catch_unwind(|| {
            with_deadline(&p, "a stuck call", || -> Result<(), String> {
                std::thread::sleep(Duration::from_secs(3));
                Ok(())
            })
        });
        let message = *stuck.unwrap_err().downcast::<String>().unwrap();
        assert!(
            message.starts_with(PEER_FAILURE) && message.contains("a stuck call"),
            "{message}"
        );
        assert_eq!(with_deadline(&p, "the next call", || Ok(7)), 7);
        let failed = std::panic::catch_unwind(|| {
            with_deadline(&p, "a failing call", || -> Result<(), String> {
                Err("refused".into())
            })
        });
        let message = *failed.unwrap_err().downcast::<String>().unwrap();
        assert!(
            message.contains("a failing call failed: refused"),
            "{message}"
        );
    }
}
