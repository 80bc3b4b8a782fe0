//! The torchrun hand-over: a torchrun-style launch (`RANK`, `WORLD_SIZE`, ...) runs on CUDA only,
//! its ranks meeting through NCCL, NCCL's id carried in the run folder.

use crate::backend::DeviceKind;
use crate::distributed::Topology;
use anyhow::Result;
use std::path::Path;

/// A torchrun-style launch: CUDA only, its ranks meeting through NCCL, NCCL's id carried in the
/// run folder, which every rank must name the same (`--out`).
pub fn start_torchrun_rendezvous(
    topology: &Topology,
    config: &crate::config::TrainConfig,
    out: Option<&Path>,
) -> Result<()> {
    let cuda = config.device == DeviceKind::Cuda;
    crate::distributed::launch::torchrun_needs_cuda(
        topology.processes,
        topology.process_rank,
        cuda,
    )?;
    let Some(out) = out else {
        anyhow::bail!(
            "a torchrun-style launch needs --out: the run folder where the ranks meet (on a file \
             system every rank sees, when they are on several machines)"
        );
    };
    #[cfg(feature = "cuda")]
    {
        use crate::distributed::rendezvous::Rendezvous;
        let key = Rendezvous::key_from(|name| std::env::var(name).ok());
        crate::distributed::nccl::set_rendezvous(Some(Rendezvous::new(
            out,
            &key,
            std::time::SystemTime::now(),
        )));
    }
    #[cfg(not(feature = "cuda"))]
    let _ = out;
    Ok(())
}
