//! What the GPU's allocator holds, so a run can show that its GPU memory stays flat.
//!
//! CubeCL (under burn-wgpu and burn-cuda) keeps one memory pool per stream, and a stream per OS
//! thread that touched the device (up to `max_streams`, 128 by default), never freed (burn issue
//! 4792). Its own report covers only the calling thread's stream, which would miss exactly the
//! leak worth catching, so [`GpuMemoryReport::gpu_memory`] adds up every stream's pool.

use burn::tensor::backend::Backend;

/// The device's memory as CubeCL's allocator sees it, summed over all its streams' pools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuMemory {
    /// Bytes of live tensors.
    pub in_use: u64,
    /// Bytes the pools hold on the device (live tensors, padding and free pages kept for reuse):
    /// what the device has lost to this process.
    pub reserved: u64,
    /// Streams whose pool holds any memory (about one per thread that used the device).
    pub pools: usize,
}

impl GpuMemory {
    /// `in_use` and `reserved` in MiB, for logs.
    pub fn describe(&self) -> String {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        format!(
            "GPU memory: {:.1} MiB in use, {:.1} MiB reserved in {} pool(s)",
            mib(self.in_use),
            mib(self.reserved),
            self.pools
        )
    }
}

/// A backend that can say how much device memory it holds (`None`: not a GPU backend).
pub trait GpuMemoryReport: Backend {
    fn gpu_memory(_device: &Self::Device) -> Option<GpuMemory> {
        None
    }
}

#[cfg(feature = "flex")]
impl GpuMemoryReport for burn::backend::Flex {}
#[cfg(feature = "ndarray")]
impl GpuMemoryReport for burn::backend::NdArray {}
#[cfg(feature = "candle")]
#[allow(deprecated)]
impl GpuMemoryReport for burn::backend::Candle {}

#[cfg(feature = "wgpu")]
impl GpuMemoryReport for burn::backend::Wgpu {
    fn gpu_memory(device: &Self::Device) -> Option<GpuMemory> {
        Some(cube_memory::<burn::backend::wgpu::WgpuRuntime>(device))
    }
}

#[cfg(feature = "cuda")]
impl GpuMemoryReport for burn::backend::Cuda {
    fn gpu_memory(device: &Self::Device) -> Option<GpuMemory> {
        Some(cube_memory::<burn::cubecl::cuda::CudaRuntime>(device))
    }
}

impl<B: GpuMemoryReport, C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy>
    GpuMemoryReport for burn::backend::Autodiff<B, C>
{
    fn gpu_memory(device: &Self::Device) -> Option<GpuMemory> {
        B::gpu_memory(device)
    }
}

/// The sum over every stream index of CubeCL's per-stream report: the client answers for the
/// calling thread's stream, so the query runs under each stream id in turn.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn cube_memory<R: burn::cubecl::Runtime>(device: &R::Device) -> GpuMemory {
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    use burn::cubecl::stream_id::StreamId;
    let client = R::client(device);
    let streams = CubeClRuntimeConfig::get().streaming.max_streams as u64;
    let mut total = GpuMemory::default();
    for value in 0..streams {
        let Ok(usage) = StreamId { value }.executes(|| client.memory_usage()) else {
            continue;
        };
        total.in_use += usage.bytes_in_use;
        total.reserved += usage.bytes_reserved;
        total.pools += usize::from(usage.bytes_reserved > 0);
    }
    total
}
