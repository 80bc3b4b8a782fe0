//! A blocking collective call with a bounded wait: a dead or stuck peer becomes an error
//! (a [`PEER_FAILURE`] panic that the peer's thread turns back into an error), never a hang.
//! Every exchange engine (burn-collective, MPI, NCCL) runs its blocking calls through it.

use super::Peer;
use std::collections::HashMap;
use std::sync::{mpsc, Mutex, OnceLock};

/// How the message of a failed collective call starts.
pub const PEER_FAILURE: &str = "distributed training stopped";

/// A blocking call handed to a rank's collective thread.
type Job = Box<dyn FnOnce() + Send>;

/// The long-lived thread of each rank that runs its blocking collective calls, by rank. One
/// thread per call would be simpler, but CubeCL gives every new OS thread its own stream and
/// memory pool on the GPU and never frees them (burn issue 4792, fixed after 0.21): with a
/// thread per exchange, GPU memory would grow with every step.
fn collective_thread(rank: usize) -> mpsc::Sender<Job> {
    let mut threads = collective_threads()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    threads
        .entry(rank)
        .or_insert_with(|| {
            let (sender, jobs) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name(format!("collective-{rank}"))
                .spawn(move || jobs.into_iter().for_each(|job| job()))
                .expect("cannot start a collective thread");
            sender
        })
        .clone()
}

fn collective_threads() -> &'static Mutex<HashMap<usize, mpsc::Sender<Job>>> {
    static THREADS: OnceLock<Mutex<HashMap<usize, mpsc::Sender<Job>>>> = OnceLock::new();
    THREADS.get_or_init(Default::default)
}

/// Forgets `rank`'s collective thread (it is stuck in a call or died): the next call starts a
/// new one.
fn retire_collective_thread(rank: usize) {
    collective_threads()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&rank);
}

/// Runs the blocking collective `call` of `peer` on the rank's collective thread, giving up
/// after `peer.timeout`.
pub fn with_deadline<T: Send + 'static>(
    peer: &Peer,
    what: &str,
    call: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> T {
    let (sender, receiver) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = sender.send(call());
    });
    if let Err(mpsc::SendError(job)) = collective_thread(peer.rank).send(job) {
        // The thread ended (a call panicked in it): start another.
        retire_collective_thread(peer.rank);
        let _ = collective_thread(peer.rank).send(job);
    }
    match receiver.recv_timeout(peer.timeout) {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => panic!(
            "{PEER_FAILURE}: rank {} of {}: {what} failed: {error}",
            peer.rank, peer.world
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            retire_collective_thread(peer.rank);
            panic!(
                "{PEER_FAILURE}: rank {} of {}: {what} panicked (see the message above)",
                peer.rank, peer.world
            )
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            retire_collective_thread(peer.rank);
            panic!(
                "{PEER_FAILURE}: rank {} of {} had no answer from the other ranks for {} s \
                 during {what}: a rank stopped, crashed or lost its connection (see its own \
                 output). The last checkpoint is kept; restart every rank with --resume. If a \
                 rank only runs slower (rank 0 also runs the kNN monitor), raise --peer-timeout",
                peer.rank,
                peer.world,
                peer.timeout.as_secs()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(rank: usize, timeout: Duration) -> Peer {
        Peer {
            rank,
            world: 2,
            sync_batchnorm: true,
            timeout,
        }
    }

    /// Every collective call of a rank runs on one long-lived thread (not a new one per call:
    /// CubeCL keeps a GPU stream and memory pool per OS thread), another rank's on its own.
    #[test]
    fn a_ranks_calls_share_one_thread() {
        let p = peer(1000, Duration::from_secs(10));
        let caller = std::thread::current().id();
        let threads: Vec<_> = (0..50)
            .map(|_| with_deadline(&p, "a test", || Ok(std::thread::current().id())))
            .collect();
        assert!(threads.iter().all(|&t| t == threads[0]), "{threads:?}");
        assert_ne!(threads[0], caller);
        let other = with_deadline(&peer(1001, Duration::from_secs(10)), "a test", || {
            Ok(std::thread::current().id())
        });
        assert_ne!(other, threads[0]);
    }

    /// A call that never returns is an error after the timeout; the rank's next call gets a new
    /// thread instead of queueing behind the stuck one.
    #[test]
    fn a_stuck_call_times_out_and_the_next_call_still_runs() {
        let p = peer(1002, Duration::from_millis(200));
        let stuck = std::panic::catch_unwind(|| {
            with_deadline(&p, "a stuck call", || -> Result<(), String> {
                std::thread::sleep(Duration::from_secs(3));
                Ok(())
            })
        });
        let message = *stuck.unwrap_err().downcast::<String>().unwrap();
        assert!(
            message.starts_with(PEER_FAILURE) && message.contains("a stuck call"),
            "{message}"
        );
        assert_eq!(with_deadline(&p, "the next call", || Ok(7)), 7);
        let failed = std::panic::catch_unwind(|| {
            with_deadline(&p, "a failing call", || -> Result<(), String> {
                Err("refused".into())
            })
        });
        let message = *failed.unwrap_err().downcast::<String>().unwrap();
        assert!(
            message.contains("a failing call failed: refused"),
            "{message}"
        );
    }
}
