//! Backend choice, made once at the binary's edge: everything else is generic over `B: Backend`.
//!
//! The CPU default is Burn's `flex` backend (pure Rust, SIMD GEMM, multi-threaded): it ran the
//! SimCLR step fastest of the CPU backends that build here (see README, "Why flex").

use crate::model::NetworkOps;
use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

#[cfg(feature = "flex")]
pub type CpuBackend = burn::backend::Flex;
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type CpuBackend = burn::backend::NdArray;

/// Where training and inference run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The default CPU backend (flex).
    #[default]
    Cpu,
    /// An NVIDIA GPU through burn-cuda (binary built with `--features cuda`).
    Cuda,
    /// Burn's ndarray CPU backend, kept for comparison in benchmarks.
    Ndarray,
    /// Burn's candle CPU backend (binary built with `--features candle`), for comparison.
    Candle,
}

/// What training and evaluation need of a backend: autodiff, and the network's ops
/// ([`NetworkOps`]) both on it and on its inner (inference) backend.
pub trait TrainBackend: AutodiffBackend<InnerBackend: NetworkOps> + NetworkOps {}
impl<B> TrainBackend for B
where
    B: AutodiffBackend + NetworkOps,
    B::InnerBackend: NetworkOps,
{
}

/// A piece of work that runs on any autodiff backend, handed the device it runs on.
pub trait BackendTask {
    type Output;
    fn run<B: TrainBackend>(self, device: B::Device, name: &str) -> Result<Self::Output>;
}

/// Runs `task` on the backend `kind` names, or says how to get that backend.
pub fn run_on<T: BackendTask>(kind: DeviceKind, task: T) -> Result<T::Output> {
    use burn::backend::Autodiff;
    match kind {
        DeviceKind::Cpu => task.run::<Autodiff<CpuBackend>>(Default::default(), "cpu (flex)"),
        DeviceKind::Ndarray => {
            #[cfg(feature = "ndarray")]
            return task.run::<Autodiff<burn::backend::NdArray>>(Default::default(), "ndarray");
            #[cfg(not(feature = "ndarray"))]
            bail!("this binary was built without the ndarray backend: rebuild with `--features ndarray`")
        }
        DeviceKind::Candle => {
            #[cfg(feature = "candle")]
            #[allow(deprecated)]
            // compared in benchmarks only; flex is the CPU default
            return task.run::<Autodiff<burn::backend::Candle>>(Default::default(), "candle");
            #[cfg(not(feature = "candle"))]
            bail!("this binary was built without the candle backend: rebuild with `--features candle`")
        }
        DeviceKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let device = burn::backend::cuda::CudaDevice::default();
                check_cuda(&device)?;
                return task.run::<Autodiff<burn::backend::Cuda>>(device, "cuda");
            }
            #[cfg(not(feature = "cuda"))]
            bail!(
                "this binary was built without CUDA support: build it with \
                 `cargo build --release -p trainer --features cuda` (needs an NVIDIA driver at run time)"
            )
        }
    }
}

/// cubecl panics deep inside when no driver or GPU is present; turn that into an error.
#[cfg(feature = "cuda")]
fn check_cuda(device: &burn::backend::cuda::CudaDevice) -> Result<()> {
    use burn::tensor::Tensor;
    let device = device.clone();
    let probe = crate::panics::catch_quietly(move || {
        let t = Tensor::<burn::backend::Cuda, 1>::ones([4], &device);
        t.sum().into_scalar()
    });
    match probe {
        Ok(sum) if sum == 4.0 => Ok(()),
        Ok(sum) => bail!("the CUDA device computed 1+1+1+1 = {sum}; the GPU or driver is broken"),
        Err(reason) => bail!(
            "no usable CUDA GPU ({reason}): the NVIDIA driver (libcuda) or a GPU was not \
             found. Run on a machine with an NVIDIA GPU, or use `--device cpu`"
        ),
    }
}
