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

use super::collective::{all_reduce_inner, with_deadline};
use super::rendezvous::Rendezvous;
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
    rank: usize,
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
            let _ = nccl::comm_destroy(self.comm);
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
) -> Result<sys::ncclUniqueId> {
    ensure!(
        library_present(),
        "a torchrun-style launch exchanges through NCCL, and libnccl.so was not found on this \
         machine: install NVIDIA's NCCL (Debian/Ubuntu libnccl2 and libnccl-dev), or start the \
         ranks with mpirun (docs/distributed.md)"
    );
    if peer.is_main() {
        let bytes: Vec<u8> = id.internal.iter().map(|&b| b as u8).collect();
        rendezvous.publish(&bytes)?;
        return Ok(id);
    }
    let bytes = rendezvous.wait(128, peer.timeout)?;
    let mut internal = [0 as std::ffi::c_char; 128];
    for (slot, byte) in internal.iter_mut().zip(bytes) {
        *slot = byte as std::ffi::c_char;
    }
    Ok(sys::ncclUniqueId { internal })
}

/// Joins `peer` to the run's NCCL communicator on `device` (CUDA ordinal `device.index`). Every
/// rank of the run calls this at the same point. Returns `None`, and the run exchanges through
/// the host, when some rank's machine has no libnccl (said once, by rank 0) or
/// `SELFSUP_NCCL=0` is set.
pub fn join(peer: &Peer, device: &burn::backend::cuda::CudaDevice) -> Result<Option<Membership>> {
    let rendezvous = RENDEZVOUS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(rendezvous) = rendezvous.filter(|_| peer.world > 1) {
        let id = if peer.is_main() {
            nccl::get_uniqueid().map_err(|e| anyhow::anyhow!(nccl_error("ncclGetUniqueId", e)))?
        } else {
            sys::ncclUniqueId { internal: [0; 128] }
        };
        let id = id_through_file(peer, &rendezvous, id)?;
        let membership = start_communicator(peer, device, id);
        if peer.is_main() {
            // Every rank has joined (ncclCommInitRank returns only then): the id was read.
            rendezvous.remove();
        }
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
    let id = if peer.is_main() {
        nccl::get_uniqueid().map_err(|e| anyhow::anyhow!(nccl_error("ncclGetUniqueId", e)))?
    } else {
        sys::ncclUniqueId { internal: [0; 128] }
    };
    let id = if peer.world > 1 {
        let bytes: Vec<f32> = id.internal.iter().map(|&b| b as u8 as f32).collect();
        let summed = host_sum(bytes, peer, device, "sharing the NCCL id");
        let mut internal = [0 as std::ffi::c_char; 128];
        for (slot, value) in internal.iter_mut().zip(summed) {
            *slot = value as u8 as std::ffi::c_char;
        }
        sys::ncclUniqueId { internal }
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
            rank,
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

/// What NCCL does to the ranks' buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reduction {
    Sum,
    /// Each rank's values times the factor, then summed (NCCL's pre-multiplied sum): the
    /// world-size-1 check's way to see NCCL write the buffer.
    ScaledSum(f32),
}

impl Communicator {
    /// Reduces `count` values of `dtype` at device address `address` in place, and waits for it.
    fn reduce_in_place(
        &self,
        address: u64,
        count: usize,
        dtype: sys::ncclDataType_t,
        reduction: Reduction,
    ) -> Result<(), String> {
        unsafe {
            driver::ctx::set_current(self.context)
                .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
            let mut scale = match reduction {
                Reduction::Sum => None,
                Reduction::ScaledSum(factor) => Some(factor),
            };
            let op = match scale.as_mut() {
                None => sys::ncclRedOp_t::ncclSum,
                Some(factor) => {
                    ensure_f32(dtype)?;
                    let mut op = std::mem::MaybeUninit::uninit();
                    nccl::reduce_op_create_pre_mul_sum(
                        op.as_mut_ptr(),
                        factor as *mut f32 as *mut std::ffi::c_void,
                        dtype,
                        sys::ncclScalarResidence_t::ncclScalarHostImmediate,
                        self.comm,
                    )
                    .map_err(|e| nccl_error("ncclRedOpCreatePreMulSum", e))?;
                    op.assume_init()
                }
            };
            let buffer = address as *mut std::ffi::c_void;
            let result = nccl::all_reduce(
                buffer,
                buffer,
                count,
                dtype,
                op,
                self.comm,
                self.stream as _,
            )
            .map_err(|e| nccl_error("ncclAllReduce", e))
            .and_then(|_| {
                driver::stream::synchronize(self.stream)
                    .map_err(|e| driver_error("cuStreamSynchronize after ncclAllReduce", e))
            });
            if scale.is_some() {
                let _ = nccl::reduce_op_destroy(op, self.comm);
            }
            result
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }
}

fn ensure_f32(dtype: sys::ncclDataType_t) -> Result<(), String> {
    if dtype == sys::ncclDataType_t::ncclFloat32 {
        Ok(())
    } else {
        Err(format!("a scaled sum of {dtype:?} values is not supported"))
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

/// `reduction` of `x` over the ranks of `comm`, through NCCL on the tensor's own device memory:
/// a private contiguous copy of `x` (Burn may share `x`'s buffer with other tensors; the copy
/// costs one pass over GPU memory), its device address from cubecl, a wait for the kernels that
/// wrote it, the NCCL call in place on the rank's collective thread, and a wait for NCCL before
/// Burn reads the result.
pub fn reduce(
    x: FloatTensor<Cuda>,
    reduction: Reduction,
    comm: Arc<Communicator>,
    peer: &Peer,
    what: &str,
) -> Result<FloatTensor<Cuda>> {
    let shape = x.shape();
    let numel = shape.num_elements();
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
    with_deadline(peer, what, move || {
        comm.reduce_in_place(address, numel, dtype, reduction)
    });
    // The buffer (kept alive by `resource` until here) now holds the reduction.
    drop(resource);
    drop(cube);
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
    let summed = match reduce(x, Reduction::Sum, comm, peer, what) {
        Ok(summed) => summed,
        Err(error) => panic!(
            "{}: rank {} of {}: {what} through NCCL: {error:#}",
            super::collective::PEER_FAILURE,
            peer.rank,
            peer.world
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
    /// Largest difference between the sum's result and the input (world size 1: identity).
    pub sum_max_error: f32,
    /// Largest difference between the pre-multiplied sum (x 2) and twice the input: NCCL read
    /// and wrote the tensor's own buffer, after the kernel that computed it.
    pub scaled_sum_max_error: f32,
    /// The same on a transposed (strided) tensor.
    pub strided_max_error: f32,
    pub seconds_per_all_reduce: f64,
    pub gigabytes_per_second: f64,
}

/// A world-size-1 check of the NCCL path on GPU `ordinal` of this machine (the check a lent
/// single-GPU machine can run): the library loads, a communicator starts, and the all-reduce of
/// an `values`-element tensor (ResNet-18's gradients: 11.5 M) writes the right buffer.
pub fn check(ordinal: usize, values: usize, repeats: usize) -> Result<NcclCheck> {
    let Some(nccl_version) = version() else {
        bail!(
            "libnccl.so was not found: install NVIDIA's NCCL (Debian/Ubuntu libnccl2 and \
             libnccl-dev), or link libnccl.so to libnccl.so.2 on LD_LIBRARY_PATH"
        );
    };
    let device = burn::backend::cuda::CudaDevice::new(ordinal);
    let peer = Peer {
        rank: usize::MAX - ordinal,
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
    let fresh = input.clone() + 0.0;
    let scaled = reduce(
        fresh.into_primitive().tensor(),
        Reduction::ScaledSum(2.0),
        comm.clone(),
        &peer,
        "the check",
    )?;
    let scaled_sum_max_error = max_error(
        Tensor::from_primitive(TensorPrimitive::Float(scaled)),
        input.clone() * 2.0,
    );
    let side = 1024.min(values);
    let square = input
        .clone()
        .slice([0..side * (values / side)])
        .reshape([values / side, side]);
    let strided = square.clone().transpose();
    let reduced = reduce(
        strided.into_primitive().tensor(),
        Reduction::ScaledSum(2.0),
        comm.clone(),
        &peer,
        "the check",
    )?;
    let reduced: Tensor<Cuda, 2> = Tensor::from_primitive(TensorPrimitive::Float(reduced));
    let strided_max_error = (reduced - square.transpose() * 2.0)
        .abs()
        .max()
        .into_scalar();
    let started = std::time::Instant::now();
    // Each call waits for NCCL to finish (as training's do).
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
        scaled_sum_max_error,
        strided_max_error,
        seconds_per_all_reduce,
        gigabytes_per_second: (values * 4) as f64 / seconds_per_all_reduce / 1e9,
    })
}
