//! NCCL between CUDA GPUs: every all-reduce of a CUDA run (gradients, gathered projections,
//! synchronised BatchNorm statistics, the start-up broadcasts) sums GPU memory into GPU memory,
//! without a copy through the host. Used for `--devices N` (one thread per GPU) and for
//! processes started by `mpirun`/`srun` (one GPU each), the usual MPI + NCCL pattern: rank 0
//! asks NCCL for the run's unique id and the ranks' existing exchange (MPI between processes,
//! burn-collective between threads) carries it to the others, once, before
//! `ncclCommInitRank`.
//!
//! Burn 0.21's own NCCL all-reduce (cubecl-cuda, `burn/distributed`) keeps its NCCL ids inside
//! one process, so it cannot span MPI processes; this module calls NCCL through cudarc's thin
//! bindings (`cudarc::nccl::result`, the library cubecl-cuda itself loads) on the tensor's own
//! device buffer. libnccl is loaded at run time: a build without it runs, and a run whose
//! machines lack it exchanges through the host as before, saying so.

use super::deadline::{with_deadline, PEER_FAILURE};
use super::generic_reduce::all_reduce_inner;
use super::rendezvous::{Published, Rendezvous};
use super::Peer;
use anyhow::{bail, ensure, Context, Result};
use burn::backend::Cuda;
use burn::prelude::*;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, TensorData, TensorMetadata, TensorPrimitive};
use burn_collective::ReduceOperation;
use burn_cubecl::CubeBackend;
use cudarc::driver::result as driver;
use cudarc::nccl::{result as nccl, sys};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The CUDA backend without Burn's fusion layer: the type whose tensors are plain device buffers.
type CudaCube = CubeBackend<burn::cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// One rank's NCCL communicator, the CUDA stream its calls are queued on, and the device's
/// primary context (cubecl's), which the calling thread makes current.
pub struct Communicator {
    comm: sys::ncclComm_t,
    stream: cudarc::driver::sys::CUstream,
    context: cudarc::driver::sys::CUcontext,
    world: usize,
}

// NCCL allows a communicator to be used from any thread as long as calls are not concurrent;
// each rank's calls run one at a time on its collective thread.
unsafe impl Send for Communicator {}
unsafe impl Sync for Communicator {}

impl Drop for Communicator {
    fn drop(&mut self) {
        unsafe {
            let _ = driver::ctx::set_current(self.context);
            // After a failure the other ranks may be gone: abort does not wait for them.
            if std::thread::panicking() {
                let _ = nccl::comm_abort(self.comm);
            } else {
                let _ = nccl::comm_destroy(self.comm);
            }
            let _ = driver::stream::destroy(self.stream);
        }
    }
}

/// How an NCCL call failed, in NCCL's words.
fn nccl_error(what: &str, error: nccl::NcclError) -> String {
    let text = unsafe {
        let message = sys::ncclGetErrorString(error.0);
        if message.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(message)
                .to_string_lossy()
                .into_owned()
        }
    };
    format!("{what}: NCCL error {:?} ({text})", error.0)
}

fn driver_error(what: &str, error: driver::DriverError) -> String {
    format!("{what}: CUDA driver error {:?}", error.0)
}

/// Whether libnccl can be loaded on this machine. cudarc looks for `libnccl.so` (and
/// `libnccl.so.<CUDA major>`), which Debian's `libnccl-dev` and NVIDIA's packages provide; a
/// runtime-only install (`libnccl2`, the pip wheel `nvidia-nccl-cu12`) has only
/// `libnccl.so.2`, which then needs a `libnccl.so` link on `LD_LIBRARY_PATH`.
pub fn library_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// NCCL's version as "2.21.5"; `None` without the library.
pub fn version() -> Option<String> {
    if !library_present() {
        return None;
    }
    let code = nccl::get_nccl_version().ok()?;
    // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
    Some(format!(
        "{}.{}.{}",
        code / 10000,
        code / 100 % 100,
        code % 100
    ))
}

/// The communicators of this process's ranks, by rank.
fn communicators() -> &'static Mutex<HashMap<usize, Arc<Communicator>>> {
    static MAP: OnceLock<Mutex<HashMap<usize, Arc<Communicator>>>> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// `rank`'s communicator while its run exchanges through NCCL.
pub fn communicator(rank: usize) -> Option<Arc<Communicator>> {
    communicators()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&rank)
        .cloned()
}

/// Ends a rank's NCCL communicator when dropped (at the end of its run).
pub struct Membership {
    rank: usize,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let comm = communicators()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.rank);
        drop(comm);
    }
}

/// A host all-reduce through the run's existing exchange (MPI or burn-collective): how the
/// ranks agree on NCCL before NCCL is up.
fn host_sum(
    values: Vec<f32>,
    peer: &Peer,
    device: &burn::backend::cuda::CudaDevice,
    what: &str,
) -> Vec<f32> {
    let n = values.len();
    let t = Tensor::<Cuda, 1>::from_data(TensorData::new(values, [n]), device);
    let summed = all_reduce_inner::<Cuda>(
        t.into_primitive().tensor(),
        ReduceOperation::Sum,
        peer,
        what,
    );
    Tensor::<Cuda, 1>::from_primitive(TensorPrimitive::Float(summed))
        .into_data()
        .to_vec::<f32>()
        .expect("f32 values")
}

/// Where a torchrun-style launch's ranks meet (set by the launch; `None` under MPI or threads).
static RENDEZVOUS: Mutex<Option<Rendezvous>> = Mutex::new(None);

/// Makes the ranks of this process meet through `rendezvous` (a torchrun-style launch, where
/// NCCL is the only engine: there is no MPI, and the ranks are processes).
pub fn set_rendezvous(rendezvous: Option<Rendezvous>) {
    *RENDEZVOUS.lock().unwrap_or_else(|e| e.into_inner()) = rendezvous;
}

/// Rank 0's NCCL id, carried to the other ranks of a torchrun-style launch through the run
/// folder.
fn id_through_file(
    peer: &Peer,
    rendezvous: &Rendezvous,
    id: sys::ncclUniqueId,
) -> Result<(sys::ncclUniqueId, Option<Published>)> {
    ensure!(
        library_present(),
        "a torchrun-style launch exchanges through NCCL, and libnccl.so was not found on this \
         machine: install NVIDIA's NCCL (Debian/Ubuntu libnccl2 and libnccl-dev), or start the \
         ranks with mpirun (docs/distributed.md)"
    );
    if peer.is_main() {
        let published = rendezvous.publish_until_dropped(&id_bytes(&id))?;
        return Ok((id, Some(published)));
    }
    let bytes = rendezvous.wait(128, peer.timeout)?;
    Ok((id_from_bytes(bytes), None))
}

/// NCCL's unique id on rank 0 (zeros elsewhere: the others receive rank 0's).
fn rank0_id(peer: &Peer) -> Result<sys::ncclUniqueId> {
    if !peer.is_main() {
        return Ok(sys::ncclUniqueId { internal: [0; 128] });
    }
    nccl::get_uniqueid().map_err(|e| anyhow::anyhow!(nccl_error("ncclGetUniqueId", e)))
}

/// An id's 128 bytes, as carried between ranks.
fn id_bytes(id: &sys::ncclUniqueId) -> Vec<u8> {
    id.internal.iter().map(|&b| b as u8).collect()
}

fn id_from_bytes(bytes: impl IntoIterator<Item = u8>) -> sys::ncclUniqueId {
    let mut internal = [0 as std::ffi::c_char; 128];
    for (slot, byte) in internal.iter_mut().zip(bytes) {
        *slot = byte as std::ffi::c_char;
    }
    sys::ncclUniqueId { internal }
}

/// Joins `peer` to the run's NCCL communicator on `device` (CUDA ordinal `device.index`). Every
/// rank of the run calls this at the same point. Returns `None`, and the run exchanges through
/// the host, when some rank's machine has no libnccl (said once, by rank 0) or
/// `SELFSUP_NCCL=0` is set.
pub fn join(peer: &Peer, device: &burn::backend::cuda::CudaDevice) -> Result<Option<Membership>> {
    let rendezvous = RENDEZVOUS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(rendezvous) = rendezvous.filter(|_| peer.world > 1) {
        let (id, published) = id_through_file(peer, &rendezvous, rank0_id(peer)?)?;
        let membership = start_communicator(peer, device, id);
        // Every rank has joined (ncclCommInitRank returns only then): the id was read. A failed
        // start removes the file too, on the way out.
        drop(published);
        return Ok(Some(membership));
    }
    let wanted = std::env::var("SELFSUP_NCCL").map_or(true, |v| v != "0");
    let here = wanted && library_present();
    // All ranks must take the same path: NCCL only if every rank can.
    let able = if peer.world > 1 {
        host_sum(vec![here as u8 as f32], peer, device, "agreeing on NCCL")[0] as usize
    } else {
        here as usize
    };
    if able < peer.world {
        if peer.is_main() {
            eprintln!(
                "NCCL: not used ({}); GPU tensors are exchanged through host memory",
                if !wanted {
                    "SELFSUP_NCCL=0".to_string()
                } else {
                    format!(
                        "{} of {} ranks found no libnccl.so: install NVIDIA's NCCL (Debian/Ubuntu \
                         libnccl2 and libnccl-dev), or link libnccl.so to libnccl.so.2 on \
                         LD_LIBRARY_PATH",
                        peer.world - able,
                        peer.world
                    )
                }
            );
        }
        return Ok(None);
    }
    // Rank 0's unique id, carried to the others as a sum (they contribute zeros).
    let id = rank0_id(peer)?;
    let id = if peer.world > 1 {
        let bytes: Vec<f32> = id_bytes(&id).into_iter().map(f32::from).collect();
        let summed = host_sum(bytes, peer, device, "sharing the NCCL id");
        id_from_bytes(summed.into_iter().map(|v| v as u8))
    } else {
        id
    };
    Ok(Some(start_communicator(peer, device, id)))
}

/// `ncclCommInitRank` for `peer` with the run's `id`, on the rank's collective thread.
fn start_communicator(
    peer: &Peer,
    device: &burn::backend::cuda::CudaDevice,
    id: sys::ncclUniqueId,
) -> Membership {
    let (rank, world, ordinal) = (peer.rank, peer.world, device.index);
    // ncclCommInitRank blocks until every rank has called it: on the rank's collective thread,
    // under the peer timeout.
    let comm = with_deadline(peer, "starting NCCL", move || unsafe {
        driver::init().map_err(|e| driver_error("cuInit", e))?;
        let cu_device =
            driver::device::get(ordinal as i32).map_err(|e| driver_error("cuDeviceGet", e))?;
        let context = driver::primary_ctx::retain(cu_device)
            .map_err(|e| driver_error("cuDevicePrimaryCtxRetain", e))?;
        driver::ctx::set_current(context).map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking)
            .map_err(|e| driver_error("cuStreamCreate", e))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        nccl::comm_init_rank(comm.as_mut_ptr(), world as i32, id, rank as i32)
            .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(Communicator {
            comm: comm.assume_init(),
            stream,
            context,
            world,
        })
    });
    if peer.is_main() {
        eprintln!(
            "NCCL {}: {} rank(s) all-reduce GPU memory to GPU memory",
            version().unwrap_or_default(),
            world
        );
    }
    communicators()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(rank, Arc::new(comm));
    Membership { rank }
}

impl Communicator {
    /// Sums `count` values of `dtype` at device address `send` over the ranks into `receive`
    /// (the same address: in place), and waits for it.
    fn all_reduce_sum(
        &self,
        send: u64,
        receive: u64,
        count: usize,
        dtype: sys::ncclDataType_t,
    ) -> Result<(), String> {
        unsafe {
            driver::ctx::set_current(self.context)
                .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
            nccl::all_reduce(
                send as *const std::ffi::c_void,
                receive as *mut std::ffi::c_void,
                count,
                dtype,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream as _,
            )
            .map_err(|e| nccl_error("ncclAllReduce", e))?;
            driver::stream::synchronize(self.stream)
                .map_err(|e| driver_error("cuStreamSynchronize after ncclAllReduce", e))
        }
    }

    pub fn world(&self) -> usize {
        self.world
    }
}

/// NCCL's name for a tensor's element type; `None` for types NCCL does not reduce here.
fn nccl_dtype(dtype: DType) -> Option<sys::ncclDataType_t> {
    match dtype {
        DType::F32 | DType::Flex32 => Some(sys::ncclDataType_t::ncclFloat32),
        DType::F16 => Some(sys::ncclDataType_t::ncclFloat16),
        DType::BF16 => Some(sys::ncclDataType_t::ncclBfloat16),
        _ => None,
    }
}

/// A tensor's device buffer lent to NCCL: its address stays valid (the allocation cannot be
/// reused) while this lives.
struct DeviceBuffer {
    address: u64,
    count: usize,
    dtype: sys::ncclDataType_t,
    /// Holds the allocation.
    _resource: Box<dyn std::any::Any>,
}

/// A private flat contiguous copy of `x` (Burn may share `x`'s buffer with other tensors; the
/// copy costs one pass over GPU memory) and its device buffer, once the kernels that wrote it
/// have finished: cubecl's `get_resource` makes this thread's stream wait for the stream that
/// owns the buffer, and `sync` waits for this thread's stream.
fn device_copy(x: FloatTensor<Cuda>) -> Result<(FloatTensor<Cuda>, DeviceBuffer)> {
    let numel = x.shape().num_elements();
    let flat = <Cuda>::float_reshape(x, Shape::new([numel]));
    let own = <Cuda>::float_mul_scalar(flat, 1.0f32.into());
    let cube = own.client.resolve_tensor_float::<CudaCube>(own.clone());
    let Some(dtype) = nccl_dtype(cube.dtype) else {
        bail!("NCCL cannot reduce {:?} tensors", cube.dtype);
    };
    let resource = cube
        .client
        .get_resource(cube.handle.clone())
        .map_err(|e| anyhow::anyhow!("cubecl gave no device buffer for NCCL: {e:?}"))?;
    let (address, bytes) = (resource.resource().ptr, resource.resource().size);
    ensure!(
        cube.is_contiguous() && bytes as usize >= numel * cube.dtype.size(),
        "the copy for NCCL is not one contiguous buffer ({bytes} bytes for {numel} values)"
    );
    burn::cubecl::future::block_on(cube.client.sync())
        .map_err(|e| anyhow::anyhow!("waiting for the GPU before NCCL: {e:?}"))?;
    let buffer = DeviceBuffer {
        address,
        count: numel,
        dtype,
        _resource: Box::new((resource, cube)),
    };
    Ok((own, buffer))
}

/// Runs NCCL's sum from `send` into `receive` on the rank's collective thread. If the other
/// ranks never answer, NCCL may still write into the buffers later: they are then leaked, never
/// handed back to the allocator.
fn sum_between(
    comm: Arc<Communicator>,
    send: DeviceBuffer,
    receive: Option<DeviceBuffer>,
    peer: &Peer,
    what: &str,
) {
    let (from, to, count, dtype) = (
        send.address,
        receive.as_ref().map_or(send.address, |r| r.address),
        send.count,
        send.dtype,
    );
    let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_deadline(peer, what, move || {
            comm.all_reduce_sum(from, to, count, dtype)
        })
    }));
    if let Err(panic) = call {
        std::mem::forget(send);
        std::mem::forget(receive);
        std::panic::resume_unwind(panic);
    }
}

/// The sum over the ranks of `comm` of `x`, through NCCL in place on a private copy of `x` on
/// the GPU, waited for before Burn reads it.
pub fn reduce(
    x: FloatTensor<Cuda>,
    comm: Arc<Communicator>,
    peer: &Peer,
    what: &str,
) -> Result<FloatTensor<Cuda>> {
    let shape = x.shape();
    let (own, buffer) = device_copy(x)?;
    sum_between(comm, buffer, None, peer, what);
    Ok(<Cuda>::float_reshape(own, shape))
}

/// `op` over all ranks of a CUDA tensor: NCCL when this rank joined it, the host path otherwise.
pub fn all_reduce(
    x: FloatTensor<Cuda>,
    op: ReduceOperation,
    peer: &Peer,
    what: &str,
) -> FloatTensor<Cuda> {
    let Some(comm) = communicator(peer.rank) else {
        return all_reduce_inner::<Cuda>(x, op, peer, what);
    };
    let world = comm.world();
    let summed = match reduce(x, comm, peer, what) {
        Ok(summed) => summed,
        Err(error) => panic!(
            "{}: rank {} of {}: {what} through NCCL: {error:#}",
            PEER_FAILURE, peer.rank, peer.world
        ),
    };
    match op {
        ReduceOperation::Mean => <Cuda>::float_div_scalar(summed, (world as f32).into()),
        _ => summed,
    }
}

/// What the NCCL check found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NcclCheck {
    pub nccl_version: String,
    pub world: usize,
    pub values: usize,
    /// Largest difference between training's all-reduce (in place) and its input (one rank:
    /// the identity).
    pub sum_max_error: f32,
    /// Largest difference between NCCL's sum written into a second, zeroed tensor and the
    /// input: NCCL read the input's own buffer after the kernel that computed it, and wrote the
    /// other tensor's.
    pub copy_max_error: f32,
    /// The same from a transposed (strided) tensor.
    pub strided_max_error: f32,
    pub seconds_per_all_reduce: f64,
    pub gigabytes_per_second: f64,
}

/// A world-size-1 check of the NCCL path on GPU `ordinal` of this machine (the check a lent
/// single-GPU machine can run): the library loads, a communicator starts, and the all-reduce of
/// a `values`-element tensor (ResNet-18's gradients: 11.5 M) reads and writes the right buffers.
pub fn check(ordinal: usize, values: usize, repeats: usize) -> Result<NcclCheck> {
    let Some(nccl_version) = version() else {
        bail!(
            "libnccl.so was not found: install NVIDIA's NCCL (Debian/Ubuntu libnccl2 and \
             libnccl-dev), or link libnccl.so to libnccl.so.2 on LD_LIBRARY_PATH"
        );
    };
    let device = burn::backend::cuda::CudaDevice::new(ordinal);
    // The only rank of its communicator: NCCL rank 0 (which also makes the id).
    let peer = Peer {
        rank: 0,
        world: 1,
        sync_batchnorm: false,
        timeout: std::time::Duration::from_secs(60),
    };
    let membership = join(&peer, &device)?.context("NCCL was not started")?;
    let comm = communicator(peer.rank).context("no communicator after joining")?;
    let max_error =
        |a: Tensor<Cuda, 1>, b: Tensor<Cuda, 1>| -> f32 { (a - b).abs().max().into_scalar() };
    let input = Tensor::<Cuda, 1>::random(
        [values],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    // Computed by a kernel just before the call: NCCL must see its result, not stale memory.
    let fresh = input.clone() * 3.0 - input.clone() * 2.0;
    let summed = all_reduce(
        fresh.clone().into_primitive().tensor(),
        ReduceOperation::Sum,
        &peer,
        "the check",
    );
    let sum_max_error = max_error(
        Tensor::from_primitive(TensorPrimitive::Float(summed)),
        fresh,
    );

    // Out of place, into a zeroed tensor: shows which buffers NCCL read and wrote.
    let into_zeros = |source: FloatTensor<Cuda>| -> Result<FloatTensor<Cuda>> {
        let shape = source.shape();
        let (_source_copy, send) = device_copy(source)?;
        let zeros = Tensor::<Cuda, 1>::zeros([shape.num_elements()], &device);
        let (target, receive) = device_copy(zeros.into_primitive().tensor())?;
        sum_between(comm.clone(), send, Some(receive), &peer, "the check");
        Ok(<Cuda>::float_reshape(target, shape))
    };
    let fresh = input.clone() * 2.0 - input.clone();
    let copied = into_zeros(fresh.clone().into_primitive().tensor())?;
    let copy_max_error = max_error(
        Tensor::from_primitive(TensorPrimitive::Float(copied)),
        fresh,
    );
    let side = 1024.min(values);
    let square = input
        .clone()
        .slice([0..side * (values / side)])
        .reshape([values / side, side]);
    let copied = into_zeros(square.clone().transpose().into_primitive().tensor())?;
    let copied: Tensor<Cuda, 2> = Tensor::from_primitive(TensorPrimitive::Float(copied));
    let strided_max_error = (copied - square.transpose()).abs().max().into_scalar();

    // Each call waits for NCCL to finish (as training's do).
    let started = std::time::Instant::now();
    for _ in 0..repeats {
        let t = input.clone().into_primitive().tensor();
        let _ = all_reduce(t, ReduceOperation::Mean, &peer, "the timing");
    }
    let seconds_per_all_reduce = started.elapsed().as_secs_f64() / repeats.max(1) as f64;
    drop(membership);
    Ok(NcclCheck {
        nccl_version,
        world: 1,
        values,
        sum_max_error,
        copy_max_error,
        strided_max_error,
        seconds_per_all_reduce,
        gigabytes_per_second: (values * 4) as f64 / seconds_per_all_reduce / 1e9,
    })
}
