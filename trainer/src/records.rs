//! Bytes on disk, shared by checkpoints, the methods' own state and every file a run writes: Burn
//! records as bytes, and files written atomically (a crash or a full disk never leaves a
//! half-written file under the final name).

use anyhow::{bail, Result};
use burn::prelude::Backend;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Record, Recorder};
use std::io::Write;
use std::path::Path;

fn recorder() -> BinBytesRecorder<FullPrecisionSettings> {
    BinBytesRecorder::default()
}

/// A Burn record as bytes (what checkpoints store).
pub fn encode_record<B: Backend, R: Record<B>>(record: R) -> Result<Vec<u8>> {
    recorder()
        .record(record, ())
        .map_err(|e| anyhow::anyhow!("cannot serialise a record: {e:?}"))
}

/// Decodes a record; one of another layout (an older version of this trainer) makes Burn panic,
/// which becomes an error here.
pub fn decode_record<B: Backend, R: Record<B>>(bytes: &[u8], device: &B::Device) -> Result<R> {
    crate::panics::catch_quietly(|| recorder().load(bytes.to_vec(), device))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash or a full disk
/// never leaves a half-written file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent_dir(path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "cannot write {}: {e} (disk full or no permission?)",
            path.display()
        );
    }
    Ok(())
}

/// Makes a rename in `path`'s folder durable: without it a power cut can lose the new name
/// although the file's bytes were synced. Folders cannot be opened for syncing on Windows.
fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
