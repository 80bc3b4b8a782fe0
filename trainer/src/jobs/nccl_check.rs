//! `trainer bench --nccl`: the world-size-1 NCCL check on GPU 0 (a binary built with
//! `--features cuda`), what `bench/gpu.sh` runs first on a lent GPU.

#[cfg(feature = "cuda")]
use anyhow::Context;
use anyhow::Result;
use std::path::Path;

/// `bench --nccl`: the world-size-1 NCCL check on GPU 0, as JSON in `out`.
pub fn nccl_check(out: &Path) -> Result<i32> {
    #[cfg(feature = "cuda")]
    {
        let check = crate::distributed::nccl::check(0, 11_500_000, 20)?;
        eprintln!(
            "NCCL {} on GPU 0, 1 rank: max error in place {:e}, into another tensor {:e}, \
             strided {:e}; all-reduce of {} values: {:.3} ms ({:.1} GB/s)",
            check.nccl_version,
            check.sum_max_error,
            check.copy_max_error,
            check.strided_max_error,
            check.values,
            check.seconds_per_all_reduce * 1e3,
            check.gigabytes_per_second
        );
        let ok = check.sum_max_error == 0.0
            && check.copy_max_error == 0.0
            && check.strided_max_error == 0.0;
        std::fs::write(out, serde_json::to_string_pretty(&check)? + "\n")
            .with_context(|| format!("cannot write {}", out.display()))?;
        anyhow::ensure!(
            ok,
            "the NCCL all-reduce gave wrong values (report in {})",
            out.display()
        );
        Ok(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = out;
        anyhow::bail!(
            "bench --nccl needs a binary built with `--features cuda` (NCCL runs between CUDA GPUs)"
        )
    }
}
