//! The all-reduce every backend can use: MPI between processes, burn-collective between the
//! devices of one process (CUDA's NCCL path falls back to it where NCCL is missing).

use super::deadline::with_deadline;
use super::Peer;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorData, TensorMetadata, TensorPrimitive};
use burn_collective::ReduceOperation;

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
