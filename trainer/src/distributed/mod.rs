//! Data-parallel training on several devices and several machines, on burn-collective.
//!
//! Every device is a *peer* (a rank), run by its own thread. Each rank takes its rows of the
//! global batch, and the step is made the same on every rank by three collective pieces
//! ([`sync`]): the projections of all ranks are gathered (differentiably) before the loss, so a
//! contrastive loss sees the whole global batch as on one device; BatchNorm statistics are
//! summed over all ranks (synchronised BatchNorm, `sync_batchnorm = true`); and the gradients are
//! averaged before the optimizer step. Parameters then stay identical on every rank, which
//! training checks at every epoch. On one machine the ranks all-reduce through burn-collective
//! (one thread per device); across machines every rank connects to rank 0 over TCP ([`tcp`]).

pub mod collective;
pub mod sync;
pub mod tcp;

use anyhow::{bail, ensure, Context, Result};
use burn_collective::{CollectiveConfig, PeerId};
use std::cell::Cell;
use std::time::Duration;

/// Who this thread is in a data-parallel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Global rank, `0..world`: node rank x devices per node + local device index.
    pub rank: usize,
    /// Number of ranks over all nodes.
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

/// How a run is spread: devices on this machine, and machines. Not part of the run's config:
/// a run can resume on another number of devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Devices (ranks) on this machine.
    pub devices: usize,
    /// Machines (nodes) in the run.
    pub nodes: usize,
    /// This machine's index, `0..nodes`; node 0 holds rank 0, which the other ranks connect to.
    pub node_rank: usize,
    /// `HOST:PORT` where rank 0 (on node 0) listens; needed with several nodes.
    pub coordinator: Option<String>,
    pub timeout: Duration,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            devices: 1,
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            timeout: Duration::from_secs(600),
        }
    }
}

impl Topology {
    pub fn world(&self) -> usize {
        self.devices * self.nodes
    }

    pub fn is_single(&self) -> bool {
        self.world() == 1
    }

    /// The peer of local device `index`.
    pub fn peer(&self, index: usize, sync_batchnorm: bool) -> Peer {
        Peer {
            rank: self.node_rank * self.devices + index,
            world: self.world(),
            sync_batchnorm,
            timeout: self.timeout,
        }
    }

    /// Checks the topology against a global batch of `batch_size` images.
    pub fn validate(&self, batch_size: usize) -> Result<()> {
        ensure!(self.devices >= 1, "--devices must be at least 1");
        ensure!(self.nodes >= 1, "--nodes must be at least 1");
        ensure!(
            self.node_rank < self.nodes,
            "--node-rank {} is not below --nodes {}",
            self.node_rank,
            self.nodes
        );
        ensure!(
            self.nodes == 1 || self.coordinator.is_some(),
            "--nodes {} needs --coordinator HOST:PORT (node 0's address; node 0 runs it)",
            self.nodes
        );
        let world = self.world();
        ensure!(
            batch_size % world == 0 && batch_size / world >= 1,
            "batch_size {batch_size} does not split evenly over {world} devices: use a multiple \
             of {world} (batch_size is the global batch, each device takes batch_size / {world})"
        );
        Ok(())
    }

    /// How the ranks of this machine reach each other: burn-collective's configuration on one
    /// machine; between machines, every rank connects to rank 0 ([`tcp::connect`]).
    pub fn collective_config(&self) -> CollectiveConfig {
        CollectiveConfig::default().with_num_devices(self.devices)
    }

    /// `HOST:PORT` of rank 0, checked; `None` on one machine.
    pub fn coordinator(&self) -> Result<Option<String>> {
        if self.nodes == 1 {
            return Ok(None);
        }
        let address = self.coordinator.as_deref().context("no --coordinator")?;
        let (host, port) =
            host_port(address).with_context(|| format!("--coordinator {address}"))?;
        Ok(Some(format!("{host}:{port}")))
    }
}

fn host_port(address: &str) -> Result<(String, u16)> {
    let address = address.trim_start_matches("ws://");
    let Some((host, port)) = address.rsplit_once(':') else {
        bail!("expected HOST:PORT, e.g. 10.0.0.1:29500");
    };
    let port = port
        .parse::<u16>()
        .with_context(|| format!("{port:?} is not a port number"))?;
    ensure!(!host.is_empty(), "expected HOST:PORT, the host is empty");
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_numbered_node_major_and_batches_must_split() {
        let topology = Topology {
            devices: 2,
            nodes: 3,
            node_rank: 1,
            coordinator: Some("127.0.0.1:29500".into()),
            ..Default::default()
        };
        assert_eq!(topology.world(), 6);
        assert_eq!(topology.peer(1, true).rank, 3);
        assert!(topology.validate(12).is_ok());
        let err = topology.validate(8).unwrap_err().to_string();
        assert!(err.contains("multiple of 6"), "{err}");
        let missing = Topology {
            coordinator: None,
            ..topology.clone()
        };
        let err = missing.validate(12).unwrap_err().to_string();
        assert!(err.contains("--coordinator"), "{err}");
        assert_eq!(
            topology.coordinator().unwrap().as_deref(),
            Some("127.0.0.1:29500")
        );
        let err = host_port("localhost").unwrap_err().to_string();
        assert!(err.contains("HOST:PORT"), "{err}");
    }
}
