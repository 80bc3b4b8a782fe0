//! Who started this process: a launcher's ranks, read from the environment it sets. The trainer
//! never opens a port of its own: several processes (on one machine or many) form one run only
//! when MPI started them (`mpirun`/`mpiexec`, or `srun` under Slurm), and then MPI carries
//! every exchange (`mpi`); [`super::detect_launch`] starts it.

use anyhow::{bail, Result};

/// This process's place among the launcher's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// Global rank of this process, `0..processes`.
    pub rank: usize,
    /// Number of processes in the run.
    pub processes: usize,
    /// Index of this process among those on its machine (picks its GPU).
    pub local_rank: usize,
    /// The launcher family whose variables said so (for messages).
    pub launcher: &'static str,
}

impl Launch {
    /// A process on its own.
    pub const SINGLE: Launch = Launch {
        rank: 0,
        processes: 1,
        local_rank: 0,
        launcher: "none",
    };
}

/// The launcher family of `RANK` / `WORLD_SIZE` / `LOCAL_RANK` (torchrun and its imitators).
pub const TORCHRUN: &str = "torchrun";

/// The variables each launcher sets: (family, rank, size, local rank), in the order they are
/// trusted. Open MPI's and MPICH's name the MPI job itself; torchrun's come before Slurm's, since
/// torchrun runs inside a Slurm job (`sbatch`, or `srun torchrun` with one task per machine) and
/// its ranks are the real ones; Slurm's name the step's tasks (equal to MPI's ranks under
/// `srun`). torchrun's start a run that exchanges through NCCL
/// alone (CUDA), its ranks meeting in the run folder ([`super::rendezvous`]).
const LAUNCHERS: [(&str, &str, &str, &str); 4] = [
    (
        "Open MPI",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    ),
    ("MPICH (Hydra)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    (TORCHRUN, "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
];

/// The launch the environment `var` describes (`std::env::var` in the trainer).
pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Launch> {
    for (launcher, rank_var, size_var, local_var) in LAUNCHERS {
        let (Some(rank), Some(size)) = (var(rank_var), var(size_var)) else {
            continue;
        };
        let number = |name: &str, value: &str| -> Result<usize> {
            match value.trim().parse::<usize>() {
                Ok(n) => Ok(n),
                Err(_) => bail!("{name}={value:?} (set by {launcher}) is not a number"),
            }
        };
        let rank = number(rank_var, &rank)?;
        let processes = number(size_var, &size)?;
        let local_rank = match var(local_var) {
            Some(value) => number(local_var, &value)?,
            None => 0,
        };
        if processes == 0 || rank >= processes {
            bail!("{rank_var}={rank} is not below {size_var}={processes} (set by {launcher})");
        }
        return Ok(Launch {
            rank,
            processes,
            local_rank,
            launcher,
        });
    }
    Ok(Launch::SINGLE)
}

/// A torchrun-style launch runs on CUDA GPUs through NCCL only: anything else is refused with
/// the MPI launch to use instead.
pub fn torchrun_needs_cuda(processes: usize, rank: usize, cuda: bool) -> Result<()> {
    if cuda {
        return Ok(());
    }
    bail!(
        "WORLD_SIZE={processes} and RANK={rank} are set (a torchrun-style launch): such a launch \
         runs with `--device cuda` on a build with `--features cuda`, whose GPUs meet through \
         NCCL; on other devices the processes exchange through MPI, which needs its own \
         launcher: start the same command with `mpirun -np {processes}` (or `srun -n \
         {processes}` under Slurm) instead; unset WORLD_SIZE to train this process alone \
         (docs/distributed.md)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn each_launchers_variables_give_the_rank() {
        assert_eq!(launch(&[]).unwrap(), Launch::SINGLE);
        let open_mpi = launch(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            // srun inside an mpirun job: MPI's own variables win.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ])
        .unwrap();
        assert_eq!(
            (open_mpi.rank, open_mpi.processes, open_mpi.local_rank),
            (3, 4, 1)
        );
        assert_eq!(open_mpi.launcher, "Open MPI");
        let slurm = launch(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
        ])
        .unwrap();
        assert_eq!((slurm.rank, slurm.processes, slurm.local_rank), (5, 8, 1));
        let torchrun = launch(&[("RANK", "1"), ("WORLD_SIZE", "2")]).unwrap();
        assert_eq!((torchrun.launcher, torchrun.local_rank), ("torchrun", 0));
        // torchrun inside a Slurm job (one task per machine): torchrun's ranks.
        let nested = launch(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
        ])
        .unwrap();
        assert_eq!(
            (
                nested.launcher,
                nested.rank,
                nested.processes,
                nested.local_rank
            ),
            ("torchrun", 5, 8, 1)
        );
    }

    #[test]
    fn torchrun_style_launches_run_on_cuda_only() {
        assert!(torchrun_needs_cuda(4, 1, true).is_ok());
        let err = torchrun_needs_cuda(4, 1, false).unwrap_err().to_string();
        assert!(
            err.contains("--device cuda") && err.contains("mpirun -np 4"),
            "{err}"
        );
    }

    #[test]
    fn nonsense_is_an_error_naming_the_variable() {
        let err = launch(&[("PMI_RANK", "x"), ("PMI_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PMI_RANK") && err.contains("MPICH"), "{err}");
        let err = launch(&[("SLURM_PROCID", "2"), ("SLURM_NTASKS", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not below SLURM_NTASKS=2"), "{err}");
    }
}
