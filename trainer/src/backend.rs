//! Backend choice, made once at the binary's edge: everything else is generic over `B: Backend`.
//!
//! The CPU default is Burn's `flex` backend (pure Rust, SIMD GEMM, multi-threaded): it ran the
//! SimCLR step fastest of the CPU backends that build here (see docs/cpu.md).

use crate::model::NetworkOps;
use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

#[cfg(feature = "flex")]
pub type CpuBackend = burn::backend::Flex;
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type CpuBackend = burn::backend::NdArray;

/// The GPU backend of `--device wgpu` (without autodiff).
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu;

/// Where training and inference run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The best this binary and machine have: CUDA when built with it and a GPU answers, else
    /// wgpu when built with it and its adapter is a GPU (not a CPU rasteriser such as lavapipe),
    /// else the CPU.
    #[default]
    Auto,
    /// The default CPU backend (flex).
    Cpu,
    /// An NVIDIA GPU through burn-cuda (binary built with `--features cuda`).
    Cuda,
    /// Any GPU through wgpu: Vulkan, Metal or DirectX 12 (binary built with `--features wgpu`).
    Wgpu,
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
        DeviceKind::Auto => run_on(resolve(kind), task),
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
        DeviceKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let adapter = wgpu_adapter()?;
                let name = format!("wgpu ({adapter})");
                return task.run::<Autodiff<WgpuBackend>>(Default::default(), &name);
            }
            #[cfg(not(feature = "wgpu"))]
            bail!(
                "this binary was built without wgpu support: build it with \
                 `cargo build --release -p trainer --features wgpu` (needs a Vulkan, Metal or \
                 DirectX 12 driver at run time)"
            )
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

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
            Self::Ndarray => "ndarray",
            Self::Candle => "candle",
        }
    }

    /// A CPU backend (the default one or a comparison backend).
    pub fn is_cpu(self) -> bool {
        matches!(self, Self::Cpu | Self::Ndarray | Self::Candle)
    }
}

/// `--device auto` made concrete, once per process and said once on stderr with the reason;
/// any other kind is returned as it is.
pub fn resolve(kind: DeviceKind) -> DeviceKind {
    if kind != DeviceKind::Auto {
        return kind;
    }
    static CHOICE: std::sync::OnceLock<DeviceKind> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| {
        let (choice, why) = auto_choice();
        eprintln!("device: auto -> {} ({why})", choice.name());
        choice
    })
}

/// CUDA, else a real GPU through wgpu, else the CPU; with what was passed over and why.
fn auto_choice() -> (DeviceKind, String) {
    let mut passed_over: Vec<String> = Vec::new();
    #[cfg(feature = "cuda")]
    match check_cuda(&Default::default()) {
        Ok(()) => return (DeviceKind::Cuda, "a CUDA GPU answered".into()),
        Err(e) => passed_over.push(format!("no CUDA GPU answered: {e}")),
    }
    #[cfg(not(feature = "cuda"))]
    passed_over.push("built without --features cuda".into());
    #[cfg(feature = "wgpu")]
    match wgpu_adapter() {
        Ok(adapter) if !is_cpu_adapter(&adapter) => {
            return (DeviceKind::Wgpu, format!("wgpu adapter: {adapter}"))
        }
        // A Vulkan driver that runs on the CPU is several times slower than the CPU backend.
        Ok(adapter) => passed_over.push(format!("wgpu's adapter runs on the CPU: {adapter}")),
        Err(_) => passed_over.push("wgpu found no GPU adapter".into()),
    }
    #[cfg(not(feature = "wgpu"))]
    passed_over.push("built without --features wgpu".into());
    (DeviceKind::Cpu, passed_over.join("; "))
}

/// Whether a wgpu adapter (as `wgpu_adapter` describes it: name, API, device type) is a
/// rasteriser on the CPU rather than a GPU.
pub fn is_cpu_adapter(description: &str) -> bool {
    let d = description.to_lowercase();
    d.ends_with(", cpu")
        || ["llvmpipe", "lavapipe", "swiftshader", "softpipe"]
            .iter()
            .any(|name| d.contains(name))
}

/// The device of local rank `index` in a run on `devices` devices of `kind`: the GPU with that
/// index (CUDA's numbering; wgpu's discrete GPUs), or the one CPU, which all CPU ranks share.
pub fn peer_device<D: burn::tensor::backend::DeviceOps>(
    kind: DeviceKind,
    base: &D,
    index: usize,
    devices: usize,
) -> D {
    use burn::tensor::backend::DeviceId;
    match kind {
        DeviceKind::Cuda => D::from_id(DeviceId::new(base.to_id().type_id, index as u16)),
        DeviceKind::Wgpu if devices > 1 || index > 0 => D::from_id(DeviceId::new(0, index as u16)),
        _ => base.clone(),
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

/// Starts wgpu on the default device once per process and returns the adapter's description,
/// or an error naming the missing driver. cubecl-wgpu panics when no adapter exists, and a
/// device can be set up only once, so the outcome is kept.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapter() -> Result<String> {
    use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup, RuntimeOptions, WgpuDevice};
    use std::sync::OnceLock;
    static ADAPTER: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let outcome = ADAPTER.get_or_init(|| {
        crate::panics::catch_quietly(|| {
            let setup =
                init_setup::<AutoGraphicsApi>(&WgpuDevice::default(), RuntimeOptions::default());
            let info = setup.adapter.get_info();
            format!("{}, {:?}, {:?}", info.name, info.backend, info.device_type)
        })
    });
    match outcome {
        Ok(adapter) => Ok(adapter.clone()),
        Err(reason) => bail!(
            "no GPU adapter for wgpu ({}). wgpu needs a Vulkan driver on Linux (e.g. \
             `apt-get install mesa-vulkan-drivers` for Mesa's drivers, lavapipe included, or the \
             NVIDIA/AMD driver), Metal on macOS, DirectX 12 on Windows. Check VK_ICD_FILENAMES \
             and `vulkaninfo --summary`, or use `--device cpu`",
            // cubecl's message continues with a long debug dump of wgpu's search.
            reason.split(". ").next().unwrap_or(reason)
        ),
    }
}
