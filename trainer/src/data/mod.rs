//! Datasets: CIFAR-10 in its official binary layout (a directory, the `.tar.gz`, or the official
//! download, cached and MD5-checked) and image folders (`PATH/<class>/*.{png,jpg,jpeg}`).
//!
//! Every image is kept as 3 x 32 x 32 planar RGB bytes, the CIFAR binary record layout.
//! `augment` turns an image into a view, `loader` batches of two views.

pub mod augment;
pub mod loader;

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;
use md5::{Digest, Md5};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::data::augment::PIXELS;

/// Bytes of one image: 3 planes of 32 x 32.
pub const IMAGE_BYTES: usize = 3 * PIXELS;
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

/// Labelled images, 3 x 32 x 32 planar RGB bytes each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageDataset {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    pub classes: Vec<String>,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, index: usize) -> &[u8] {
        &self.pixels[index * IMAGE_BYTES..(index + 1) * IMAGE_BYTES]
    }

    /// The first `n` images (all when `n` is 0 or too large).
    pub fn head(&self, n: usize) -> ImageDataset {
        let n = if n == 0 {
            self.len()
        } else {
            n.min(self.len())
        };
        ImageDataset {
            pixels: self.pixels[..n * IMAGE_BYTES].to_vec(),
            labels: self.labels[..n].to_vec(),
            classes: self.classes.clone(),
        }
    }

    fn push(&mut self, image: &[u8], label: u8) {
        self.pixels.extend_from_slice(image);
        self.labels.push(label);
    }
}

/// The train split (pretraining, kNN bank) and the test split (kNN queries).
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: ImageDataset,
    pub test: ImageDataset,
    /// Where the data came from, for messages.
    pub origin: String,
}

/// Loads the dataset that `--data` names (see [`crate::config::TrainConfig::data`]).
pub fn load(source: &str) -> Result<Splits> {
    if let Some(folder) = source.strip_prefix("folder:") {
        return load_image_folder(Path::new(folder));
    }
    let path = if source.is_empty() {
        download_cifar10(&cache_dir())?
    } else {
        PathBuf::from(source)
    };
    if path.is_file() {
        load_cifar10_archive(&path)
    } else if path.is_dir() {
        load_cifar10_dir(&path)
    } else {
        bail!(
            "--data {}: no such file or directory (expected a cifar-10-batches-bin directory, \
             cifar-10-binary.tar.gz, or folder:PATH)",
            path.display()
        )
    }
}

/// `$SELFSUP_CACHE`, else `$XDG_CACHE_HOME/selfsup`, else `~/.cache/selfsup`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SELFSUP_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("selfsup")
}

/// Parses one CIFAR-10 binary batch file's bytes into `into`, checking every record.
pub fn parse_cifar10_batch(bytes: &[u8], name: &str, into: &mut ImageDataset) -> Result<()> {
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
        into.push(&record[1..], label);
    }
    Ok(())
}

fn cifar10_dataset() -> ImageDataset {
    ImageDataset {
        classes: CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

/// Reads `cifar-10-batches-bin/` (or a directory that contains it).
pub fn load_cifar10_dir(dir: &Path) -> Result<Splits> {
    let dir = if dir.join("cifar-10-batches-bin").is_dir() {
        dir.join("cifar-10-batches-bin")
    } else {
        dir.to_path_buf()
    };
    let read = |name: &str, into: &mut ImageDataset| -> Result<()> {
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
    let mut train = cifar10_dataset();
    for name in TRAIN_FILES {
        read(name, &mut train)?;
    }
    let mut test = cifar10_dataset();
    read(TEST_FILE, &mut test)?;
    check_cifar10_sizes(&train, &test, &dir.display().to_string())?;
    Ok(Splits {
        train,
        test,
        origin: dir.display().to_string(),
    })
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
    let mut train = cifar10_dataset();
    let mut test = cifar10_dataset();
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
    check_cifar10_sizes(&train, &test, &path.display().to_string())?;
    Ok(Splits {
        train,
        test,
        origin: path.display().to_string(),
    })
}

fn check_cifar10_sizes(train: &ImageDataset, test: &ImageDataset, origin: &str) -> Result<()> {
    ensure!(
        train.len() == TRAIN_FILES.len() * RECORDS_PER_BATCH && test.len() == RECORDS_PER_BATCH,
        "{origin}: expected 50000 train and 10000 test images, found {} and {} (truncated batch files?)",
        train.len(),
        test.len()
    );
    Ok(())
}

/// Downloads the official archive into `cache` once, checks its MD5, and returns its path.
pub fn download_cifar10(cache: &Path) -> Result<PathBuf> {
    let target = cache.join("cifar-10-binary.tar.gz");
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(cache)
        .with_context(|| format!("cannot create cache directory {}", cache.display()))?;
    eprintln!(
        "downloading CIFAR-10 (163 MB) from {CIFAR10_URL} into {}",
        cache.display()
    );
    let offline_hint = "if this machine is offline, download cifar-10-binary.tar.gz elsewhere and \
                        pass it (or its extracted cifar-10-batches-bin directory) with --data PATH";
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(std::time::Duration::from_secs(10)))
        .timeout_connect(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let response = agent
        .get(CIFAR10_URL)
        .call()
        .with_context(|| format!("cannot download {CIFAR10_URL}; {offline_hint}"))?;
    let mut body = response.into_body();
    let bar = crate::progress::bytes_bar(body.content_length());
    let partial = cache.join("cifar-10-binary.tar.gz.part");
    let mut file =
        File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
    let mut reader = body.as_reader();
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buffer)
            .with_context(|| format!("download of {CIFAR10_URL} interrupted; {offline_hint}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n])
            .with_context(|| format!("cannot write {} (disk full?)", partial.display()))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    file.sync_all()?;
    let digest = format!("{:x}", hasher.finalize());
    if digest != CIFAR10_MD5 {
        let _ = std::fs::remove_file(&partial);
        bail!("downloaded {CIFAR10_URL} has MD5 {digest}, expected {CIFAR10_MD5}; try again");
    }
    std::fs::rename(&partial, &target)?;
    Ok(target)
}

/// `PATH/<class>/*.{png,jpg,jpeg}`, each image resized to 32 x 32. When `PATH/train` and
/// `PATH/test` exist they are the splits; otherwise every tenth image of each class is held
/// out as the test split for the kNN monitor.
pub fn load_image_folder(root: &Path) -> Result<Splits> {
    ensure!(root.is_dir(), "folder:{}: not a directory", root.display());
    let (train, test) = if root.join("train").is_dir() && root.join("test").is_dir() {
        let train = read_class_folders(&root.join("train"), None)?;
        let test = read_class_folders(&root.join("test"), Some(&train.classes))?;
        (train, test)
    } else {
        let all = read_class_folders(root, None)?;
        let mut train = ImageDataset {
            classes: all.classes.clone(),
            ..Default::default()
        };
        let mut test = train.clone();
        let mut seen = vec![0usize; all.classes.len()];
        for i in 0..all.len() {
            let label = all.labels[i];
            let into = if seen[label as usize] % 10 == 9 {
                &mut test
            } else {
                &mut train
            };
            seen[label as usize] += 1;
            into.push(all.image(i), label);
        }
        (train, test)
    };
    Ok(Splits {
        train,
        test,
        origin: format!("folder:{}", root.display()),
    })
}

fn read_class_folders(root: &Path, classes: Option<&[String]>) -> Result<ImageDataset> {
    let mut class_dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    class_dirs.sort();
    let names: Vec<String> = class_dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    if let Some(expected) = classes {
        ensure!(
            names == expected,
            "{}: class folders {names:?} differ from the train split's {expected:?}",
            root.display()
        );
    }
    ensure!(
        !names.is_empty() && names.len() <= 256,
        "{}: expected 1 to 256 class folders (PATH/<class>/*.png|jpg), found {}",
        root.display(),
        names.len()
    );
    let mut dataset = ImageDataset {
        classes: names,
        ..Default::default()
    };
    for (label, dir) in class_dirs.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image_file(p))
            .collect();
        files.sort();
        ensure!(
            !files.is_empty(),
            "{}: no .png, .jpg or .jpeg images in this class folder",
            dir.display()
        );
        for file in files {
            dataset.push(&read_image_32(&file)?, label as u8);
        }
    }
    Ok(dataset)
}

fn is_image_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Decodes an image file, resizes it to 32 x 32 and returns planar RGB bytes.
pub fn read_image_32(path: &Path) -> Result<Vec<u8>> {
    let image = image::open(path)
        .with_context(|| format!("{}: cannot decode image", path.display()))?
        .to_rgb8();
    let image = if image.dimensions() == (32, 32) {
        image
    } else {
        image::imageops::resize(&image, 32, 32, image::imageops::FilterType::Triangle)
    };
    let mut planar = vec![0u8; IMAGE_BYTES];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            planar[c * PIXELS + i] = pixel[c];
        }
    }
    Ok(planar)
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
        let mut data = cifar10_dataset();
        parse_cifar10_batch(&bytes, "x.bin", &mut data).unwrap();
        assert_eq!(data.labels, vec![3, 9]);
        assert_eq!(data.image(1), &[200u8; IMAGE_BYTES][..]);
    }

    #[test]
    fn truncated_batch_is_an_error_naming_the_file() {
        let mut bytes = record(1, 1);
        bytes.pop();
        let err =
            parse_cifar10_batch(&bytes, "data_batch_3.bin", &mut cifar10_dataset()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("data_batch_3.bin") && msg.contains("truncated"),
            "{msg}"
        );
    }

    #[test]
    fn bad_label_is_an_error() {
        let err = parse_cifar10_batch(&record(12, 0), "b.bin", &mut cifar10_dataset()).unwrap_err();
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
        let err = load(path.to_str().unwrap()).unwrap_err();
        assert!(
            format!("{err:#}").contains("cifar-10-binary.tar.gz"),
            "{err:#}"
        );
    }

    #[test]
    fn image_folder_is_resized_and_labelled_by_folder() {
        let dir = tempfile::tempdir().unwrap();
        for (class, color) in [("cats", [255u8, 0, 0]), ("dogs", [0, 0, 255])] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..10 {
                let img = image::RgbImage::from_pixel(40, 20, image::Rgb(color));
                img.save(dir.path().join(class).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        let splits = load(&format!("folder:{}", dir.path().display())).unwrap();
        assert_eq!(splits.train.classes, vec!["cats", "dogs"]);
        assert_eq!((splits.train.len(), splits.test.len()), (18, 2));
        let dog = splits.test.image(1);
        assert_eq!((dog[0], dog[PIXELS], dog[2 * PIXELS]), (0, 0, 255));
        assert_eq!(splits.test.labels, vec![0, 1]);
    }

    #[test]
    fn empty_class_folder_and_unreadable_image_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let err = load_image_folder(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("empty") && err.to_string().contains("no .png"),
            "{err}"
        );
        std::fs::write(dir.path().join("empty").join("bad.png"), b"not a png").unwrap();
        let err = load_image_folder(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("bad.png"), "{err:#}");
    }
}
