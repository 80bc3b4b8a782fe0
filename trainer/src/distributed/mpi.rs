//! The exchange between processes: MPI (rsmpi, over Open MPI or MPICH), started by its
//! launcher (`mpirun -np 4 trainer ...`, `srun trainer ...`). Every collective of a
//! data-parallel run (gradients, gathered projections, synchronised BatchNorm statistics, the
//! broadcast of the initial weights and of MoCo's queue, the end-of-epoch parameter check) is
//! one `MPI_Allreduce` of float32 values: the library picks its algorithm (recursive doubling,
//! ring, ...) for the message size and the network, and every rank gets the same sum.
//!
//! A process that fails calls `MPI_Abort`, so the launcher stops the others; one that dies is
//! noticed by the launcher (mpirun ends the job). A rank whose peers stop answering for
//! `--peer-timeout` seconds stops with an error too ([`super::deadline::with_deadline`]).

use super::launch::Launch;
use anyhow::Result;

#[cfg(feature = "mpi")]
mod engine {
    use super::Launch;
    use anyhow::{bail, ensure, Result};
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    use mpi::environment::Universe;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::Threading;
    use std::sync::Mutex;

    /// MPI's environment while it runs (dropping it calls `MPI_Finalize`).
    static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);
    /// One MPI call at a time: collectives come from whichever thread autodiff or the deadline
    /// watchdog runs them on, which MPI's `MPI_THREAD_SERIALIZED` level allows when serialised.
    static CALLS: Mutex<()> = Mutex::new(());

    pub fn start(launch: Launch) -> Result<Launch> {
        let mut universe = UNIVERSE.lock().unwrap();
        ensure!(
            universe.is_none(),
            "MPI was already started in this process"
        );
        let Some((started, threading)) = mpi::initialize_with_threading(Threading::Multiple) else {
            bail!("MPI_Init_thread failed (MPI was initialised before?)");
        };
        let world = started.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        *universe = Some(started);
        ensure!(
            threading == Threading::Multiple || threading == Threading::Serialized,
            "this MPI library offers only {threading:?} threading; the trainer needs \
             MPI_THREAD_SERIALIZED (Open MPI and MPICH builds of Debian/Ubuntu have it)"
        );
        ensure!(
            (rank, size) == (launch.rank, launch.processes),
            "{} says this is rank {} of {}, but MPI says rank {rank} of {size}: the launcher \
             and the MPI library the trainer was built with differ (e.g. MPICH's mpiexec with \
             an Open MPI build); launch with the mpirun of the same MPI",
            launch.launcher,
            launch.rank,
            launch.processes
        );
        Ok(launch)
    }

    pub fn is_running() -> bool {
        UNIVERSE.lock().unwrap().is_some()
    }

    pub fn all_reduce_sum(values: &[f32]) -> Vec<f32> {
        let _serial = CALLS.lock().unwrap_or_else(|e| e.into_inner());
        let mut sum = vec![0.0f32; values.len()];
        SimpleCommunicator::world().all_reduce_into(values, &mut sum[..], SystemOperation::sum());
        sum
    }

    pub fn finish() {
        // Dropping the universe calls MPI_Finalize, which every rank must reach.
        let universe = UNIVERSE.lock().unwrap().take();
        drop(universe);
    }

    pub fn abort(code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
}

#[cfg(not(feature = "mpi"))]
mod engine {
    use super::Launch;
    use anyhow::{bail, Result};

    pub fn start(launch: Launch) -> Result<Launch> {
        bail!(
            "{} started {} processes, but this trainer was built without MPI: build it with \
             `cargo build --release -p trainer --features mpi` (needs an MPI library such as \
             Debian's libopenmpi-dev, and libclang-dev), or run one process",
            launch.launcher,
            launch.processes
        )
    }

    pub fn is_running() -> bool {
        false
    }

    pub fn all_reduce_sum(_values: &[f32]) -> Vec<f32> {
        unreachable!("MPI is never running in a build without the `mpi` feature")
    }

    pub fn finish() {}

    pub fn abort(code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Starts MPI for `launch` (a launcher started several processes) and checks that MPI agrees
/// on the ranks.
pub fn start(launch: Launch) -> Result<Launch> {
    engine::start(launch)
}

/// Whether this process exchanges through MPI.
pub fn is_running() -> bool {
    engine::is_running()
}

/// The element-wise sum of `values` over all processes (the same bits on every one).
pub fn all_reduce_sum(values: &[f32]) -> Vec<f32> {
    engine::all_reduce_sum(values)
}

/// Ends MPI (`MPI_Finalize`) after a run that every rank finished; does nothing without MPI.
pub fn finish() {
    engine::finish()
}

/// Ends the whole job with `code` (`MPI_Abort`): a rank that failed takes the others down
/// with it instead of leaving them waiting.
pub fn abort(code: i32) -> ! {
    engine::abort(code)
}
