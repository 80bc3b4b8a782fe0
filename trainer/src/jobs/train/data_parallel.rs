//! Data-parallel training within one process: one thread per device, each a rank of the run,
//! meeting in burn-collective (and the backend's own engine: NCCL on CUDA).

use super::{EpochMetrics, Outcome, TrainJob};
use crate::backend::TrainBackend;
use crate::data::Splits;
use crate::distributed;
use crate::distributed::collective::{with_deadline, CollectiveBackend};
use anyhow::{Context, Result};
use std::sync::mpsc;

impl TrainJob {
    /// One thread per device of this machine, each a rank; returns this machine's first rank's
    /// outcome, or the first error of any rank (without waiting for the others, which stop at
    /// their next collective call).
    pub(super) fn train_data_parallel<B: TrainBackend>(
        self,
        splits: Splits,
        device: B::Device,
    ) -> Result<(Outcome, Vec<EpochMetrics>)> {
        let topology = self.topology.clone();
        let collective = topology.collective_config();
        // Forget peers of an earlier run in this process (tests run several).
        burn_collective::reset_collective::<B::InnerBackend>();
        let (sender, receiver) = mpsc::channel();
        for index in 0..topology.devices {
            let peer = topology.peer(index, self.config.sync_batchnorm);
            let job = TrainJob {
                config: self.config.clone(),
                out: self.out.clone(),
                resume: self.resume,
                stop: self.stop.clone(),
                data: None,
                topology: topology.clone(),
            };
            let (splits, collective, sender) = (splits.clone(), collective.clone(), sender.clone());
            let device = crate::backend::peer_device(
                self.config.device,
                &device,
                topology.local_rank + index,
                topology.devices,
            );
            std::thread::Builder::new()
                .name(format!("rank-{}", peer.rank))
                .spawn(move || {
                    distributed::set_current(Some(peer));
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let id = peer.id();
                        // Between processes MPI is already running; the devices of this
                        // process meet in burn-collective.
                        let local = topology.devices > 1;
                        if local {
                            let inner = device.clone();
                            with_deadline(&peer, "registering with the other ranks", move || {
                                burn_collective::register::<B::InnerBackend>(id, inner, collective)
                                    .map_err(|e| format!("{e:?}"))
                            });
                        }
                        // The backend's own engine (NCCL on CUDA), once the ranks can meet.
                        let engine =
                            <B::InnerBackend as CollectiveBackend>::start_engine(&peer, &device)?;
                        let result = job.train_on::<B>(splits, device);
                        drop(engine);
                        if local && result.is_ok() {
                            let _ = burn_collective::finish_collective::<B::InnerBackend>(id);
                        }
                        result
                    }));
                    let result = outcome.unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "a panic".into());
                        Err(anyhow::anyhow!(message))
                    });
                    let _ = sender.send((peer, result));
                })
                .context("cannot start a training thread")?;
        }
        drop(sender);
        let mut first = None;
        for (peer, result) in receiver.iter() {
            let result = result.with_context(|| format!("rank {} of {}", peer.rank, peer.world))?;
            if peer.rank == topology.process_rank * topology.devices {
                first = Some(result);
            }
        }
        first.context("no rank of this machine finished")
    }
}
