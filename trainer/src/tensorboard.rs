//! TensorBoard event files (`OUT/tb/events.out.tfevents.*`), so `tensorboard --logdir OUT`
//! plots a run as it does a PyTorch one.
//!
//! The format is TensorFlow's TFRecord of `Event` protocol buffers: each record is its length
//! (u64, little-endian), the masked CRC-32C of those 8 bytes, the bytes, and their masked
//! CRC-32C. Scalars need three small messages, written here field by field:
//! `Event { wall_time: double = 1, step: int64 = 2, file_version: string = 3, summary = 5 }`,
//! `Summary { value: repeated Value = 1 }`, `Value { tag: string = 1, simple_value: float = 2 }`.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// One event file, opened for a run (a resumed run opens a new one beside the old).
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new event file in it, named as TensorFlow names them (TensorBoard
    /// reads every file whose name contains `tfevents`).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create TensorBoard directory {}", dir.display()))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let mut path;
        let mut n = 0u32;
        // Two runs started in the same second (a quick resume) must not share a file.
        loop {
            let seconds = wall_time() as u64;
            path = dir.join(format!(
                "events.out.tfevents.{seconds}.{host}.{}.{n}",
                std::process::id()
            ));
            if !path.exists() {
                break;
            }
            n += 1;
        }
        let file = File::create(&path)
            .with_context(|| format!("cannot create TensorBoard event file {}", path.display()))?;
        let mut writer = Self {
            file: BufWriter::new(file),
            path,
        };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the scalars `(tag, value)` at `step` as one event (buffered: [`Self::flush`]).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut entry = Vec::new();
            put_bytes(&mut entry, 1, tag.as_bytes());
            put_key(&mut entry, 2, 5);
            entry.extend_from_slice(&(*value as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &entry);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_key(&mut event, 2, 0);
        put_varint(&mut event, step);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    /// Writes what is buffered to the file, so TensorBoard sees it while the run goes on.
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("cannot write {} (disk full?)", self.path.display()))
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let length = (data.len() as u64).to_le_bytes();
        let mut bytes = Vec::with_capacity(data.len() + 16);
        bytes.extend_from_slice(&length);
        bytes.extend_from_slice(&masked_crc(&length).to_le_bytes());
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&bytes)
            .with_context(|| format!("cannot write {} (disk full?)", self.path.display()))
    }
}

/// TFRecord's checksum: CRC-32C, rotated and offset so that a CRC of CRCs is not trivial.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = CRC32C.checksum(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A protocol-buffer field key: field number and wire type (0 varint, 1 64-bit, 2 bytes,
/// 5 32-bit).
fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_double(out: &mut Vec<u8>, field: u32, value: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value); masked as
        // TensorFlow's `masked_crc32c`: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
        let crc: u32 = 0xE306_9283;
        assert_eq!(CRC32C.checksum(b"123456789"), crc);
        let expected = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), expected);
    }

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
    }
}
