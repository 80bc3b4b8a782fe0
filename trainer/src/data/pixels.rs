//! Where a dataset's image bytes live: in memory (CIFAR-10, test sets) or in a memory-mapped
//! cache file (image folders, STL-10), so that a dataset larger than RAM trains with the
//! operating system paging images in and out instead of the process holding them all.
//!
//! A cache file is written once, image after image, under a temporary name and renamed into
//! place when complete: a crash mid-way leaves no half cache that a later run would trust.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Image bytes, shared between the clones of a dataset (the loader's thread, the ranks).
#[derive(Clone, Default)]
pub struct Pixels(Arc<Storage>);

#[derive(Default)]
enum Storage {
    #[default]
    Empty,
    Memory(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl Pixels {
    /// Maps the file at `path` (read-only). The file must not change while it is mapped: cache
    /// files are only ever replaced by a rename, never written in place.
    pub fn map(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        if file.metadata()?.len() == 0 {
            return Ok(Self::default()); // mapping an empty file fails on Linux
        }
        // SAFETY: the cache file is private to this program and replaced only by rename, so
        // its mapped pages never change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        Ok(Self(Arc::new(Storage::Mapped(map))))
    }

    /// Whether the bytes are a mapped file (paged in on demand) rather than held in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(*self.0, Storage::Mapped(_))
    }
}

impl Deref for Pixels {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &*self.0 {
            Storage::Empty => &[],
            Storage::Memory(bytes) => bytes,
            Storage::Mapped(map) => map,
        }
    }
}

impl From<Vec<u8>> for Pixels {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Arc::new(Storage::Memory(bytes)))
    }
}

impl PartialEq for Pixels {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_mapped() {
            "mapped"
        } else {
            "in memory"
        };
        write!(f, "Pixels({} bytes, {kind})", self.len())
    }
}

/// What a cache key records of a source file: its size and modification time (`len\tmtime_ns`,
/// zeros when it cannot be read), so that a rewritten file makes a new cache.
pub fn file_fingerprint(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    let modified = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{len}\t{modified}")
}

/// Writes a cache file image by image; [`CacheWriter::finish`] renames it into place and maps it.
pub struct CacheWriter {
    partial: PathBuf,
    target: PathBuf,
    /// `None` once finished.
    file: Option<BufWriter<File>>,
}

impl CacheWriter {
    pub fn create(target: &Path) -> Result<Self> {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        }
        // A name of its own per process: two runs filling the same cache do not mix bytes.
        let partial = target.with_extension(format!("part-{}", std::process::id()));
        let file = File::create(&partial)
            .with_context(|| format!("cannot write cache file {}", partial.display()))?;
        Ok(Self {
            partial,
            target: target.to_path_buf(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub fn write(&mut self, image: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("not finished");
        file.write_all(image).with_context(|| {
            format!(
                "cannot write cache file {} (disk full? set SELFSUP_CACHE to a larger disk)",
                self.partial.display()
            )
        })
    }

    pub fn finish(mut self) -> Result<Pixels> {
        let file = self
            .file
            .take()
            .expect("not finished")
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write cache file {}", self.partial.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write cache file {}", self.partial.display()))?;
        drop(file);
        std::fs::rename(&self.partial, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.partial.display(),
                self.target.display()
            )
        })?;
        Pixels::map(&self.target)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // Left unfinished (an error on the way): leave no partial file behind.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_cache_is_mapped_with_every_byte_and_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub").join("x.pixels");
        let mut writer = CacheWriter::create(&target).unwrap();
        writer.write(&[1, 2, 3]).unwrap();
        writer.write(&[4, 5]).unwrap();
        let pixels = writer.finish().unwrap();
        assert!(pixels.is_mapped());
        assert_eq!(&*pixels, &[1, 2, 3, 4, 5]);
        let names: Vec<_> = std::fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["x.pixels"]);
    }

    #[test]
    fn an_abandoned_cache_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("y.pixels");
        let mut writer = CacheWriter::create(&target).unwrap();
        writer.write(&[9; 10]).unwrap();
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(Pixels::from(vec![7u8, 8]), Pixels::from(vec![7u8, 8]));
    }
}
