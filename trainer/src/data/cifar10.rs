//! CIFAR-10 in its official binary layout: `cifar-10-batches-bin/`, the `.tar.gz` read without
//! extracting it, or the official download (cached, MD5-checked).

use anyhow::{ensure, Context, Result};
use flate2::read::GzDecoder;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::data::{ImageDataset, Splits};

/// Side of CIFAR-10's images.
pub const SIDE: usize = 32;
pub const PIXELS: usize = SIDE * SIDE;
/// Bytes of one CIFAR-10 image: 3 planes of 32 x 32.
pub const IMAGE_BYTES: usize = 3 * PIXELS;
/// CIFAR-10's per-channel mean and standard deviation (of the training set, in [0, 1]).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
const RECORDS_PER_BATCH: usize = 10_000;
const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const TEST_FILE: &str = "test_batch.bin";
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

/// Images and labels as they are read, before they become an [`ImageDataset`].
#[derive(Debug, Default)]
pub struct Records {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Records {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn into_dataset(self) -> ImageDataset {
        let classes = CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect();
        ImageDataset::new(SIDE, self.pixels, self.labels, classes)
    }
}

/// Parses one CIFAR-10 binary batch file's bytes into `into`, checking every record.
pub fn parse_cifar10_batch(bytes: &[u8], name: &str, into: &mut Records) -> Result<()> {
    ensure!(
        !bytes.is_empty() && bytes.len() % RECORD_BYTES == 0,
        "{name}: {} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records \
         (truncated or not a CIFAR-10 binary batch)",
        bytes.len()
    );
    for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        ensure!(
            (label as usize) < CIFAR10_CLASSES.len(),
            "{name}: record {i} has label {label}, but CIFAR-10 labels are 0..9 (corrupt file?)"
        );
        into.pixels.extend_from_slice(&record[1..]);
        into.labels.push(label);
    }
    Ok(())
}

/// Reads `cifar-10-batches-bin/` (or a directory that contains it).
pub fn load_cifar10_dir(dir: &Path) -> Result<Splits> {
    let dir = if dir.join("cifar-10-batches-bin").is_dir() {
        dir.join("cifar-10-batches-bin")
    } else {
        dir.to_path_buf()
    };
    let read = |name: &str, into: &mut Records| -> Result<()> {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read {} (is {} a cifar-10-batches-bin directory?)",
                path.display(),
                dir.display()
            )
        })?;
        parse_cifar10_batch(&bytes, &path.display().to_string(), into)
    };
    let mut train = Records::default();
    for name in TRAIN_FILES {
        read(name, &mut train)?;
    }
    let mut test = Records::default();
    read(TEST_FILE, &mut test)?;
    cifar10_splits(train, test, &dir.display().to_string())
}

/// Reads the batches straight out of `cifar-10-binary.tar.gz`, without extracting it.
pub fn load_cifar10_archive(path: &Path) -> Result<Splits> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(GzDecoder::new(file));
    let mut batches = BTreeMap::new();
    let entries = archive
        .entries()
        .with_context(|| format!("{}: not a readable .tar.gz archive", path.display()))?;
    for entry in entries {
        let mut entry =
            entry.with_context(|| format!("{}: corrupt or truncated archive", path.display()))?;
        let name = entry
            .path()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name.filter(|n| TRAIN_FILES.contains(&n.as_str()) || n == TEST_FILE) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).with_context(|| {
                format!("{}: corrupt or truncated archive at {name}", path.display())
            })?;
            batches.insert(name, bytes);
        }
    }
    let mut train = Records::default();
    let mut test = Records::default();
    for name in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        let bytes = batches.get(*name).with_context(|| {
            format!(
                "{}: archive has no {name}; is it cifar-10-binary.tar.gz?",
                path.display()
            )
        })?;
        let into = if *name == TEST_FILE {
            &mut test
        } else {
            &mut train
        };
        parse_cifar10_batch(bytes, &format!("{}:{name}", path.display()), into)?;
    }
    cifar10_splits(train, test, &path.display().to_string())
}

/// The two splits, checked for their official sizes, with CIFAR-10's published statistics.
fn cifar10_splits(train: Records, test: Records, origin: &str) -> Result<Splits> {
    ensure!(
        train.len() == TRAIN_FILES.len() * RECORDS_PER_BATCH && test.len() == RECORDS_PER_BATCH,
        "{origin}: expected 50000 train and 10000 test images, found {} and {} (truncated batch files?)",
        train.len(),
        test.len()
    );
    let mut splits = Splits::labelled(train.into_dataset(), test.into_dataset(), origin);
    splits.known_stats = Some((CIFAR10_MEAN, CIFAR10_STD));
    Ok(splits)
}

/// Downloads the official archive into `cache` once, checks its MD5, and returns its path.
pub fn download_cifar10(cache: &Path) -> Result<PathBuf> {
    crate::data::download(
        CIFAR10_URL,
        CIFAR10_MD5,
        &cache.join("cifar-10-binary.tar.gz"),
        "CIFAR-10 (163 MB)",
        "if this machine is offline, download cifar-10-binary.tar.gz elsewhere and pass it (or \
         its extracted cifar-10-batches-bin directory) with --data PATH",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![fill; RECORD_BYTES];
        r[0] = label;
        r
    }

    #[test]
    fn parses_records_in_official_layout() {
        let mut bytes = record(3, 7);
        bytes.extend(record(9, 200));
        let mut records = Records::default();
        parse_cifar10_batch(&bytes, "x.bin", &mut records).unwrap();
        let data = records.into_dataset();
        assert_eq!(data.labels, vec![3, 9]);
        assert_eq!(data.image(1), &[200u8; IMAGE_BYTES][..]);
    }

    #[test]
    fn truncated_batch_is_an_error_naming_the_file() {
        let mut bytes = record(1, 1);
        bytes.pop();
        let err =
            parse_cifar10_batch(&bytes, "data_batch_3.bin", &mut Records::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("data_batch_3.bin") && msg.contains("truncated"),
            "{msg}"
        );
    }

    #[test]
    fn bad_label_is_an_error() {
        let err =
            parse_cifar10_batch(&record(12, 0), "b.bin", &mut Records::default()).unwrap_err();
        assert!(err.to_string().contains("label 12"), "{err}");
    }

    #[test]
    fn missing_batch_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data_batch_1.bin"), record(0, 0)).unwrap();
        let err = load_cifar10_dir(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("data_batch_2.bin"), "{err:#}");
    }

    #[test]
    fn corrupt_archive_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cifar-10-binary.tar.gz");
        std::fs::write(&path, b"definitely not gzip").unwrap();
        let err = crate::data::load(path.to_str().unwrap()).unwrap_err();
        assert!(
            format!("{err:#}").contains("cifar-10-binary.tar.gz"),
            "{err:#}"
        );
    }
}
