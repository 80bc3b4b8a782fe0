//! STL-10, the standard benchmark for pretraining without labels: 100,000 unlabeled images
//! (`unlabeled_X.bin`, what the method trains on), 5,000 labelled training images (the kNN
//! bank, the linear probe's training set) and 8,000 labelled test images, 96 x 96, 10 classes.
//!
//! The official binary layout (`stl10_binary/`): `*_X.bin` holds uint8 images of 3 x 96 x 96,
//! each plane stored column-major (MATLAB's order: transposed from our row-major planes);
//! `*_y.bin` one uint8 label per image, 1..10. Images are converted once into memory-mapped
//! cache files (2.8 GB for the unlabeled split at 96 px), so that the 100,000 need not fit in RAM.

use anyhow::{ensure, Context, Result};
use md5::{Digest, Md5};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::data::folder::square_planar;
use crate::data::pixels::{file_fingerprint, CacheWriter, Pixels};
use crate::data::{cache_dir, ImageDataset, LoadOptions, Splits};

pub const STL10_URL: &str = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz";
pub const STL10_MD5: &str = "91f7769df0f17e558f3565bffb0c7dfb";
pub const STL10_SIDE: usize = 96;
pub const STL10_CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];
const IMAGE_BYTES: usize = 3 * STL10_SIDE * STL10_SIDE;

/// Reads `DIR/stl10_binary/` (or `DIR` itself when it holds the `.bin` files) at
/// `options.image_size` (0: 96).
/// `stl10:DIR`: the official binary in `DIR`, or (`DIR` empty) the official download.
pub fn load_source(dir: &str, options: &LoadOptions) -> Result<Splits> {
    let dir = if dir.is_empty() {
        download(&super::cache_dir())?
    } else {
        std::path::PathBuf::from(dir)
    };
    load(&dir, options)
}

pub fn load(dir: &Path, options: &LoadOptions) -> Result<Splits> {
    let dir = if dir.join("stl10_binary").is_dir() {
        dir.join("stl10_binary")
    } else {
        dir.to_path_buf()
    };
    ensure!(
        dir.join("train_X.bin").is_file(),
        "stl10:{}: no train_X.bin here (expected the official stl10_binary folder with \
         train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin; `--data stl10:` \
         alone downloads it)",
        dir.display()
    );
    let side = match options.image_size {
        0 => STL10_SIDE,
        side => side,
    };
    let classes: Vec<String> = STL10_CLASSES.iter().map(|c| c.to_string()).collect();
    let labelled = |split: &str| -> Result<ImageDataset> {
        let pixels = images(&dir.join(format!("{split}_X.bin")), side)?;
        let labels = labels(&dir.join(format!("{split}_y.bin")))?;
        let dataset = ImageDataset {
            side,
            pixels,
            labels,
            classes: classes.clone(),
            names: Vec::new(),
        };
        ensure!(
            dataset.labels.len() == dataset.len(),
            "{}: {} labels for {} images in {split}_X.bin (truncated file?)",
            dir.join(format!("{split}_y.bin")).display(),
            dataset.labels.len(),
            dataset.len()
        );
        Ok(dataset)
    };
    let train = labelled("train")?;
    let test = labelled("test")?;
    let unlabeled_path = dir.join("unlabeled_X.bin");
    ensure!(
        unlabeled_path.is_file(),
        "{}: missing; STL-10 pretrains on its 100,000 unlabeled images",
        unlabeled_path.display()
    );
    let unlabeled = ImageDataset {
        side,
        pixels: images(&unlabeled_path, side)?,
        ..Default::default()
    };
    Ok(Splits {
        unlabeled: Some(unlabeled),
        ..Splits::labelled(train, test, format!("stl10:{}", dir.display()))
    })
}

/// Labels 1..10 of a `*_y.bin` file, as 0..9.
fn labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    for (i, &label) in bytes.iter().enumerate() {
        ensure!(
            (1..=10).contains(&label),
            "{}: label {i} is {label}, but STL-10 labels are 1..10 (corrupt file?)",
            path.display()
        );
    }
    Ok(bytes.into_iter().map(|l| l - 1).collect())
}

/// The images of a `*_X.bin` file as row-major planes at `side`, through a cache file.
fn images(path: &Path, side: usize) -> Result<Pixels> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        meta.len() > 0 && meta.len() % IMAGE_BYTES as u64 == 0,
        "{}: {} bytes is not a whole number of {IMAGE_BYTES}-byte STL-10 images (truncated?)",
        path.display(),
        meta.len()
    );
    let count = (meta.len() / IMAGE_BYTES as u64) as usize;
    let mut hasher = Md5::new();
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    hasher.update(format!(
        "selfsup-stl10/1\n{}\n{}\n{side}\n",
        canonical.display(),
        file_fingerprint(path)
    ));
    let target = cache_dir()
        .join("stl10")
        .join(format!("{:x}.pixels", hasher.finalize()));
    let out_bytes = 3 * side * side;
    if std::fs::metadata(&target).is_ok_and(|m| m.len() == (count * out_bytes) as u64) {
        return Pixels::map(&target);
    }
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let bar = crate::progress::items_bar(count as u64, &format!("converting {name}"));
    let mut writer = CacheWriter::create(&target)?;
    let mut record = vec![0u8; IMAGE_BYTES];
    for _ in 0..count {
        file.read_exact(&mut record)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let planar = row_major(&record);
        if side == STL10_SIDE {
            writer.write(&planar)?;
        } else {
            writer.write(&square_planar(&to_rgb(&planar), side))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.finish()
}

/// One STL-10 record (three column-major planes) as three row-major planes.
pub fn row_major(record: &[u8]) -> Vec<u8> {
    let n = STL10_SIDE;
    let mut out = vec![0u8; record.len()];
    for c in 0..3 {
        let plane = c * n * n;
        for x in 0..n {
            for y in 0..n {
                out[plane + y * n + x] = record[plane + x * n + y];
            }
        }
    }
    out
}

fn to_rgb(planar: &[u8]) -> image::RgbImage {
    let n = STL10_SIDE;
    image::RgbImage::from_fn(n as u32, n as u32, |x, y| {
        let i = y as usize * n + x as usize;
        image::Rgb([planar[i], planar[n * n + i], planar[2 * n * n + i]])
    })
}

/// Downloads and extracts the official archive into `cache` once (2.6 GB, MD5-checked), and
/// returns the folder holding the `.bin` files.
pub fn download(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("stl10_binary");
    if dir.join("unlabeled_X.bin").is_file() && dir.join("test_y.bin").is_file() {
        return Ok(dir);
    }
    let archive = crate::data::download(
        STL10_URL,
        STL10_MD5,
        &cache.join("stl10_binary.tar.gz"),
        "STL-10 (2.6 GB)",
        "if this machine is offline, download stl10_binary.tar.gz elsewhere, extract it and \
         pass --data stl10:DIR",
    )?;
    eprintln!("extracting {}", archive.display());
    let file = std::fs::File::open(&archive)
        .with_context(|| format!("cannot open {}", archive.display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(cache)
        .with_context(|| format!("{}: corrupt archive, or disk full", archive.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `n` images in the official layout: image `i`'s pixel (y, x) of channel c is
    /// `(i + c * 50 + y + 2 * x) % 256`, stored column-major.
    pub fn write_bin(path: &Path, n: usize) {
        let s = STL10_SIDE;
        let mut bytes = Vec::with_capacity(n * IMAGE_BYTES);
        for i in 0..n {
            for c in 0..3 {
                for x in 0..s {
                    for y in 0..s {
                        bytes.push(((i + c * 50 + y + 2 * x) % 256) as u8);
                    }
                }
            }
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn reads_the_column_major_layout_as_rows_with_labels_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("stl10_binary");
        std::fs::create_dir(&bin).unwrap();
        write_bin(&bin.join("train_X.bin"), 3);
        std::fs::write(bin.join("train_y.bin"), [1u8, 10, 4]).unwrap();
        write_bin(&bin.join("test_X.bin"), 2);
        std::fs::write(bin.join("test_y.bin"), [2u8, 3]).unwrap();
        write_bin(&bin.join("unlabeled_X.bin"), 4);
        let splits = load(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(splits.train.labels, vec![0, 9, 3]);
        assert_eq!(splits.train.classes[9], "truck");
        assert_eq!(
            (splits.test.len(), splits.unlabeled.as_ref().unwrap().len()),
            (2, 4)
        );
        assert_eq!(splits.pretraining().len(), 4);
        assert!(splits.has_labels());
        let image = splits.train.image(2);
        let s = STL10_SIDE;
        // Row-major: pixel (y = 5, x = 7) of channel 1 of image 2.
        assert_eq!(image[s * s + 5 * s + 7] as usize, (2 + 50 + 5 + 14) % 256);

        let small = load(
            dir.path(),
            &LoadOptions {
                image_size: 32,
                strict: false,
            },
        )
        .unwrap();
        assert_eq!(
            (small.train.side, small.train.image(0).len()),
            (32, 3 * 32 * 32)
        );
    }

    #[test]
    fn truncated_files_and_bad_labels_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write_bin(&dir.path().join("train_X.bin"), 2);
        std::fs::write(dir.path().join("train_y.bin"), [1u8]).unwrap();
        let err = load(dir.path(), &LoadOptions::default()).unwrap_err();
        assert!(
            format!("{err:#}").contains("1 labels for 2 images"),
            "{err:#}"
        );
        std::fs::write(dir.path().join("train_y.bin"), [1u8, 11]).unwrap();
        let err = load(dir.path(), &LoadOptions::default()).unwrap_err();
        assert!(format!("{err:#}").contains("label 1 is 11"), "{err:#}");
        let mut bytes = std::fs::read(dir.path().join("train_X.bin")).unwrap();
        bytes.pop();
        std::fs::write(dir.path().join("train_X.bin"), bytes).unwrap();
        let err = load(dir.path(), &LoadOptions::default()).unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    }
}
