//! Data-parallel training on several devices and several processes.
//!
//! Every device is a *peer* (a rank). Each rank takes its rows of the global batch, and the step
//! is made the same on every rank by three collective pieces ([`sync`]): the projections of all
//! ranks are gathered (differentiably) before the loss, so a contrastive loss sees the whole
//! global batch as on one device; BatchNorm statistics are summed over all ranks (synchronised
//! BatchNorm, `sync_batchnorm = true`); and the gradients are averaged before the optimizer step.
//! Parameters then stay identical on every rank, which training checks at every epoch.
//!
//! Two engines carry the exchanges: between processes (one per device, on one machine or many,
//! started by `mpirun` or `srun`), MPI ([`mpi`]); between the devices of one process
//! (`--devices N`, one thread each), burn-collective's local all-reduce. On CUDA, NCCL carries
//! them GPU memory to GPU memory instead ([`nccl`]), its id carried once by the other two. The
//! trainer opens no port of its own.

pub mod collective;
pub mod deadline;
pub mod generic_reduce;
pub mod launch;
pub mod mpi;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rendezvous;
pub mod sync;

use anyhow::{ensure, Result};
use burn_collective::{CollectiveConfig, PeerId};
use std::cell::Cell;
use std::time::Duration;

/// Who this thread is in a data-parallel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Global rank, `0..world`: process rank x devices per process + local device index.
    pub rank: usize,
    /// Number of ranks over all processes.
    pub world: usize,
    /// Sum BatchNorm's statistics over all ranks (what one device over the global batch does).
    pub sync_batchnorm: bool,
    /// Longest wait for the other ranks in one collective call.
    pub timeout: Duration,
}

impl Peer {
    pub fn id(&self) -> PeerId {
        PeerId(self.rank as u32)
    }

    /// The rank that writes checkpoints, metrics and progress.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

thread_local! {
    static CURRENT: Cell<Option<Peer>> = const { Cell::new(None) };
}

/// The peer the calling thread trains as; `None` in a single-device run.
pub fn current() -> Option<Peer> {
    CURRENT.with(|c| c.get()).filter(|p| p.world > 1)
}

/// Makes the calling thread train as `peer` (or as the only device: `None`).
pub fn set_current(peer: Option<Peer>) {
    CURRENT.with(|c| c.set(peer));
}

/// Whether the calling thread writes the run's files (always, on one device).
pub fn is_main() -> bool {
    current().is_none_or(|p| p.is_main())
}

/// How a run is spread: processes (from the MPI launcher) and devices in each. Not part of the
/// run's config: a run can resume on another number of devices or processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Devices (ranks, one thread each) in this process.
    pub devices: usize,
    /// Processes in the run (MPI's world size; 1 without a launcher).
    pub processes: usize,
    /// This process's rank, `0..processes`; process 0 holds rank 0, which writes the run's files.
    pub process_rank: usize,
    /// This process's index among those on its machine: the device it takes (GPU `local_rank`).
    pub local_rank: usize,
    /// Longest wait for the other ranks in one exchange.
    pub timeout: Duration,
    /// The launcher family that started the processes ("none" for one process).
    pub launcher: &'static str,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            devices: 1,
            processes: 1,
            process_rank: 0,
            local_rank: 0,
            timeout: Duration::from_secs(600),
            launcher: "none",
        }
    }
}

impl Topology {
    /// The topology of `devices` devices in this process, within `launch`'s processes.
    pub fn new(devices: usize, launch: &launch::Launch, timeout: Duration) -> Self {
        Self {
            devices,
            processes: launch.processes,
            process_rank: launch.rank,
            local_rank: launch.local_rank,
            timeout,
            launcher: launch.launcher,
        }
    }

    /// Processes started by torchrun (or anything setting its variables), without MPI: they
    /// meet through NCCL only (CUDA).
    pub fn is_torchrun(&self) -> bool {
        self.launcher == launch::TORCHRUN && self.processes > 1
    }

    pub fn world(&self) -> usize {
        self.devices * self.processes
    }

    pub fn is_single(&self) -> bool {
        self.world() == 1
    }

    /// The peer of local device `index`.
    pub fn peer(&self, index: usize, sync_batchnorm: bool) -> Peer {
        Peer {
            rank: self.process_rank * self.devices + index,
            world: self.world(),
            sync_batchnorm,
            timeout: self.timeout,
        }
    }

    /// Checks the topology against a global batch of `batch_size` images.
    pub fn validate(&self, batch_size: usize) -> Result<()> {
        ensure!(self.devices >= 1, "--devices must be at least 1");
        ensure!(
            self.devices == 1 || self.processes == 1,
            "--devices {} in each of {} MPI processes: start one process per device instead \
             (mpirun -np <devices x machines>); each process takes the device of its local rank",
            self.devices,
            self.processes
        );
        let world = self.world();
        ensure!(
            batch_size % world == 0 && batch_size / world >= 1,
            "batch_size {batch_size} does not split evenly over {world} devices: use a multiple \
             of {world} (batch_size is the global batch, each device takes batch_size / {world})"
        );
        Ok(())
    }

    /// burn-collective's configuration for the devices of this process.
    pub fn collective_config(&self) -> CollectiveConfig {
        CollectiveConfig::default().with_num_devices(self.devices)
    }
}

/// This process's launch; with more than one process, MPI is started ([`mpi::start`]),
/// which needs a binary built with `--features mpi` and an MPI launcher.
pub fn detect_launch() -> Result<launch::Launch> {
    let found = launch::from_vars(|name| std::env::var(name).ok())?;
    if found.processes == 1 || found.launcher == launch::TORCHRUN {
        // A torchrun launch is checked against the device by the caller
        // ([`launch::torchrun_needs_cuda`]).
        return Ok(found);
    }
    mpi::start(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_numbered_process_major_and_batches_must_split() {
        let launch = launch::Launch {
            rank: 2,
            processes: 3,
            local_rank: 0,
            launcher: "Open MPI",
        };
        let topology = Topology::new(1, &launch, Duration::from_secs(5));
        assert_eq!(topology.world(), 3);
        assert_eq!(topology.peer(0, true).rank, 2);
        assert!(topology.validate(12).is_ok());
        let err = topology.validate(8).unwrap_err().to_string();
        assert!(err.contains("multiple of 3"), "{err}");
        let threads = Topology::new(2, &launch::Launch::SINGLE, Duration::from_secs(5));
        assert_eq!((threads.world(), threads.peer(1, true).rank), (2, 1));
        let both = Topology::new(2, &launch, Duration::from_secs(5));
        let err = both.validate(12).unwrap_err().to_string();
        assert!(err.contains("one process per device"), "{err}");
    }
}
