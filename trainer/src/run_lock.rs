//! One writer per run: an advisory lock on the run folder (`OUT/.lock`), held for the run's
//! lifetime. Two `trainer train --out DIR` on one folder would overwrite each other's
//! checkpoints and interleave `metrics.csv`; the second is refused instead, naming the process
//! that holds the folder. The OS releases the lock when the holder ends, however it ends, so a
//! crashed run never blocks its own `--resume`; the file itself stays (removing it would let a
//! third run lock a new file while the second still holds the old one).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = ".lock";

/// The lock on a run folder; dropping it releases the folder.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    /// The run folder, when this lock created it: removed again on drop if the run left
    /// nothing in it but the lock file (a run refused for bad input leaves no empty folder).
    created: Option<PathBuf>,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let Some(dir) = &self.created else { return };
        let only_the_lock = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .all(|entry| entry.file_name() == LOCK_FILE)
        });
        if only_the_lock {
            let _ = std::fs::remove_file(dir.join(LOCK_FILE));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl RunLock {
    /// Creates `run_dir` if needed and locks it for this process, or fails naming the PID and
    /// host that hold it.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let created = (!run_dir.exists()).then(|| run_dir.to_path_buf());
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create output directory {}", run_dir.display()))?;
        let path = run_dir.join(LOCK_FILE);
        // Not truncated on open: until the lock is ours, what the file says is the holder.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot create the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "{} is in use by another training run ({}, lock file {}): wait for it to \
                     finish, or stop it (Ctrl-C saves a checkpoint) and continue it with --resume, \
                     or choose another --out",
                    run_dir.display(),
                    describe_holder(&holder),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                // Some network file systems have no locks: train, but say what is not guarded.
                eprintln!(
                    "warning: cannot lock {} ({e}): a second run started on {} would not be \
                     refused",
                    path.display(),
                    run_dir.display()
                );
                return Ok(Self {
                    _file: file,
                    created,
                });
            }
        }
        let me = format!("pid {}\nhost {}\n", std::process::id(), host_name());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()))
            .with_context(|| format!("cannot write {} (disk full?)", path.display()))?;
        Ok(Self {
            _file: file,
            created,
        })
    }
}

/// "PID 1234 on host node7" from the lock file's `pid` and `host` lines.
fn describe_holder(text: &str) -> String {
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key).map(|v| v.trim().to_string()))
            .filter(|v| !v.is_empty())
    };
    match (field("pid "), field("host ")) {
        (Some(pid), Some(host)) => format!("PID {pid} on host {host}"),
        (Some(pid), None) => format!("PID {pid}"),
        // The holder locked the file an instant ago and has not written itself in yet.
        _ => "a process that has not written its PID yet".to_string(),
    }
}

/// This machine's name, without a crate: Linux's, or the shell's `HOSTNAME`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_succeeds_once_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::acquire(&run).unwrap();
        let err = format!("{:#}", RunLock::acquire(&run).unwrap_err());
        let pid = format!("PID {} on host {}", std::process::id(), host_name());
        assert!(
            err.contains(&pid) && err.contains(&run.display().to_string()),
            "{err}"
        );
        assert!(err.contains("--resume") && err.contains("--out"), "{err}");
        drop(first);
        // The folder it created held nothing else: it is gone with the lock.
        assert!(!run.exists());
        let second = RunLock::acquire(&run).unwrap();
        assert!(run.join(LOCK_FILE).is_file());
        std::fs::write(run.join("metrics.csv"), b"epoch\n").unwrap();
        drop(second);
        assert!(run.join("metrics.csv").is_file() && run.join(LOCK_FILE).is_file());
    }

    #[test]
    fn the_holder_is_described_from_the_lock_file() {
        assert_eq!(
            describe_holder("pid 12\nhost node7\n"),
            "PID 12 on host node7"
        );
        assert_eq!(
            describe_holder(""),
            "a process that has not written its PID yet"
        );
    }
}
