//! The one exchange of a torchrun-style launch before NCCL is up: rank 0 writes NCCL's unique id
//! into the run's folder and the other ranks read it there (PyTorch's `init_method="file://"`),
//! so the trainer opens no socket of its own; NCCL then connects the ranks itself. The folder
//! must be one every rank sees (`--out` on a shared file system for several machines, as for
//! checkpoints). The file's name holds the launch's address, port and torchrun's run id and
//! restart count; rank 0 removes it once every rank has joined NCCL, or when it fails first; a
//! file older than this process by more than [`STALE_AFTER`] is a leftover of an earlier launch
//! (one killed outright) and is not read.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How much older than this process a rendezvous file may be and still be this launch's (ranks
/// of one launch start within this of each other).
pub const STALE_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    path: PathBuf,
    /// Files written before this are an earlier launch's.
    since: SystemTime,
}

impl Rendezvous {
    /// The rendezvous of the launch `key` (MASTER_ADDR, MASTER_PORT) in folder `dir`, for a
    /// process started at `started`.
    pub fn new(dir: &Path, key: &str, started: SystemTime) -> Self {
        let key: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        Rendezvous {
            path: dir.join(format!(".nccl-id-{key}")),
            since: started.checked_sub(STALE_AFTER).unwrap_or(started),
        }
    }

    /// The launch's key from torchrun's variables: its address and port, and (when torchrun
    /// set them) its run id and restart count, so a restarted launch never reads the id of the
    /// attempt before it.
    pub fn key_from(var: impl Fn(&str) -> Option<String>) -> String {
        let mut key = format!(
            "{}-{}",
            var("MASTER_ADDR").unwrap_or_else(|| "localhost".into()),
            var("MASTER_PORT").unwrap_or_else(|| "0".into())
        );
        for name in ["TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"] {
            if let Some(value) = var(name) {
                key.push('-');
                key.push_str(&value);
            }
        }
        key
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rank 0: writes `bytes` (whole, by renaming a finished temporary file).
    pub fn publish(&self, bytes: &[u8]) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let partial = self.path.with_extension("partial");
        std::fs::write(&partial, bytes)
            .and_then(|_| std::fs::rename(&partial, &self.path))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// The other ranks: waits (polling) for this launch's file and returns its `len` bytes.
    pub fn wait(&self, len: usize, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let fresh = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .is_ok_and(|written| written >= self.since);
            if fresh {
                if let Ok(bytes) = std::fs::read(&self.path) {
                    if bytes.len() == len {
                        return Ok(bytes);
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "rank 0 did not write NCCL's id into {} within {} s: is --out the same \
                     folder, on a file system every rank sees, and did rank 0 start?",
                    self.path.display(),
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rank 0, once every rank joined NCCL.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Rank 0: [`Rendezvous::publish`], with the file removed when the guard drops (after NCCL
    /// started, or on the way out of a failed start).
    pub fn publish_until_dropped(&self, bytes: &[u8]) -> Result<Published> {
        self.publish(bytes)?;
        Ok(Published(self.clone()))
    }
}

/// Removes a published rendezvous file when dropped.
pub struct Published(Rendezvous);

impl Drop for Published {
    fn drop(&mut self) {
        self.0.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_ranks_read_what_rank_0_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let key = Rendezvous::key_from(|name| match name {
            "MASTER_ADDR" => Some("node1.cluster".into()),
            "MASTER_PORT" => Some("29500".into()),
            _ => None,
        });
        let rank0 = Rendezvous::new(dir.path(), &key, now);
        assert_eq!(
            rank0.path().file_name().unwrap(),
            ".nccl-id-node1-cluster-29500"
        );
        let restarted = Rendezvous::key_from(|name| match name {
            "MASTER_PORT" => Some("29500".into()),
            "TORCHELASTIC_RUN_ID" => Some("job7".into()),
            "TORCHELASTIC_RESTART_COUNT" => Some("1".into()),
            _ => None,
        });
        assert_eq!(restarted, "localhost-29500-job7-1");
        let rank1 = Rendezvous::new(dir.path(), &key, now);
        let reader = std::thread::spawn(move || rank1.wait(4, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(120));
        rank0.publish(&[1, 2, 3, 4]).unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), vec![1, 2, 3, 4]);
        rank0.remove();
        assert!(!rank0.path().exists());
        // Rank 0's guard removes the file however its start ends.
        let published = rank0.publish_until_dropped(&[5; 4]).unwrap();
        assert!(rank0.path().exists());
        drop(published);
        assert!(!rank0.path().exists());
    }

    #[test]
    fn an_earlier_launchs_file_is_not_read_and_waiting_ends_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let earlier = Rendezvous::new(dir.path(), "a-1", SystemTime::now());
        earlier.publish(&[9; 4]).unwrap();
        // A process started long after the file was written.
        let later = SystemTime::now() + STALE_AFTER + Duration::from_secs(60);
        let rank1 = Rendezvous::new(dir.path(), "a-1", later);
        let err = rank1
            .wait(4, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(".nccl-id-a-1") && err.contains("within 0 s"),
            "{err}"
        );
        // The right length only: a file being written is not taken.
        let now = Rendezvous::new(dir.path(), "a-1", SystemTime::now());
        assert!(now.wait(128, Duration::from_millis(100)).is_err());
        assert_eq!(now.wait(4, Duration::from_millis(100)).unwrap(), vec![9; 4]);
    }
}
