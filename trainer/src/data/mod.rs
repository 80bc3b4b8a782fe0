//! Datasets: CIFAR-10 (official binary: a directory, the `.tar.gz`, or the official download),
//! STL-10 (official binary, `stl10:DIR`), and folders of your own images, labelled by class
//! folder or not labelled at all (`folder:PATH`, `images:PATH`).
//!
//! Every image is kept as a square of `side x side` pixels, planar RGB bytes (the CIFAR binary
//! record layout): images of another size are resized (shorter side) and centre-cropped once,
//! at load. `augment` turns an image into a view, `loader` batches of two views.

pub mod augment;
pub mod cifar10;
pub mod datasets;
pub mod folder;
pub mod loader;
pub mod pixels;
pub mod stl10;
pub mod transforms;

pub use cifar10::{
    download_cifar10, load_cifar10_archive, load_cifar10_dir, parse_cifar10_batch, CIFAR10_CLASSES,
    CIFAR10_MD5, CIFAR10_URL, IMAGE_BYTES,
};
pub use datasets::{cache_dir, data_help, load, load_with, DatasetFormat, DATASETS};
pub use folder::load_image_folder;
pub use pixels::Pixels;

use anyhow::{bail, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Square images, `3 x side x side` planar RGB bytes each, with labels when the data has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageDataset {
    /// Side of every image, in pixels.
    pub side: usize,
    pub pixels: Pixels,
    /// One per image, an index into `classes`; empty for unlabeled data.
    pub labels: Vec<u8>,
    /// Empty for unlabeled data.
    pub classes: Vec<String>,
    /// Each image's file, relative to the dataset folder (image folders only; else empty).
    pub names: Vec<String>,
}

impl ImageDataset {
    /// Labelled `side x side` images.
    pub fn new(
        side: usize,
        pixels: impl Into<Pixels>,
        labels: Vec<u8>,
        classes: Vec<String>,
    ) -> Self {
        Self {
            side,
            pixels: pixels.into(),
            labels,
            classes,
            names: Vec::new(),
        }
    }

    /// Bytes of one image.
    pub fn image_bytes(&self) -> usize {
        3 * self.side * self.side
    }

    pub fn len(&self) -> usize {
        match self.image_bytes() {
            0 => 0,
            bytes => self.pixels.len() / bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every image has a label (what kNN, the linear probe and k-means need).
    pub fn is_labelled(&self) -> bool {
        !self.classes.is_empty() && self.labels.len() == self.len()
    }

    pub fn image(&self, index: usize) -> &[u8] {
        let bytes = self.image_bytes();
        &self.pixels[index * bytes..(index + 1) * bytes]
    }

    /// Image `index`'s name: its file for image folders, else `<split>/<index>`.
    pub fn name(&self, index: usize, split: &str) -> String {
        self.names
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("{split}/{index}"))
    }

    /// The first `n` images (all when `n` is 0 or too large).
    pub fn head(&self, n: usize) -> ImageDataset {
        let n = if n == 0 {
            self.len()
        } else {
            n.min(self.len())
        };
        if n == self.len() {
            return self.clone(); // shares the bytes (a mapped cache stays mapped)
        }
        ImageDataset {
            side: self.side,
            pixels: self.pixels[..n * self.image_bytes()].to_vec().into(),
            labels: self.labels.iter().take(n).copied().collect(),
            classes: self.classes.clone(),
            names: self.names.iter().take(n).cloned().collect(),
        }
    }

    /// `n` images drawn with `seed` (all when `n` is 0 or too large), in their order here: the
    /// same subset for the same `seed` on every call. Labelled data is sampled per class, each
    /// class in proportion to its share of the images (largest remainders take the rest), so a
    /// subset of a class-sorted folder holds every class, where the first `n` would hold the
    /// first few classes only.
    pub fn sample(&self, n: usize, seed: u64) -> ImageDataset {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        if n == 0 || n >= self.len() {
            return self.clone();
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let groups: Vec<Vec<usize>> = if self.is_labelled() {
            let mut groups = vec![Vec::new(); self.classes.len()];
            for (index, &label) in self.labels.iter().enumerate() {
                groups[label as usize].push(index);
            }
            groups
        } else {
            vec![(0..self.len()).collect()]
        };
        // Each group's share of n: the floor of its proportional quota, then one more for the
        // groups with the largest remainders (the first group on ties).
        let total = self.len();
        let mut shares: Vec<usize> = groups.iter().map(|g| n * g.len() / total).collect();
        let mut by_remainder: Vec<usize> = (0..groups.len()).collect();
        by_remainder.sort_by_key(|&c| std::cmp::Reverse((n * groups[c].len()) % total));
        let missing = n - shares.iter().sum::<usize>();
        for &c in by_remainder.iter().take(missing) {
            shares[c] += 1;
        }
        let mut chosen = Vec::with_capacity(n);
        for (mut group, share) in groups.into_iter().zip(shares) {
            group.shuffle(&mut rng);
            chosen.extend_from_slice(&group[..share]);
        }
        chosen.sort_unstable();
        self.select(&chosen)
    }

    /// The images at `indices`, in that order (a copy).
    pub fn select(&self, indices: &[usize]) -> ImageDataset {
        let bytes = self.image_bytes();
        let mut pixels = Vec::with_capacity(indices.len() * bytes);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        let pick = |values: &[_]| -> Vec<_> {
            if values.is_empty() {
                Vec::new()
            } else {
                indices.iter().map(|&i| values[i]).collect()
            }
        };
        ImageDataset {
            side: self.side,
            pixels: pixels.into(),
            labels: pick(&self.labels),
            classes: self.classes.clone(),
            names: if self.names.is_empty() {
                Vec::new()
            } else {
                indices.iter().map(|&i| self.names[i].clone()).collect()
            },
        }
    }

    /// The same images at `side` (bilinear, in memory); itself when already that size.
    pub fn resized(&self, side: usize) -> ImageDataset {
        if side == self.side {
            return self.clone();
        }
        let out_bytes = 3 * side * side;
        let mut pixels = vec![0u8; self.len() * out_bytes];
        pixels
            .par_chunks_mut(out_bytes.max(1))
            .enumerate()
            .for_each(|(i, out)| resize_square(self.image(i), self.side, side, out));
        ImageDataset {
            side,
            pixels: pixels.into(),
            ..self.clone()
        }
    }
}

/// Bilinear resize of one planar square image (no crop: the images are square already).
fn resize_square(image: &[u8], from: usize, to: usize, out: &mut [u8]) {
    let planar = |c: usize| {
        image::ImageBuffer::<image::Luma<u8>, &[u8]>::from_raw(
            from as u32,
            from as u32,
            &image[c * from * from..(c + 1) * from * from],
        )
        .expect("a whole plane")
    };
    for c in 0..3 {
        let plane = image::imageops::resize(
            &planar(c),
            to as u32,
            to as u32,
            image::imageops::FilterType::Triangle,
        );
        out[c * to * to..(c + 1) * to * to].copy_from_slice(plane.as_raw());
    }
}

/// The images a run pretrains on and, when the data has labels, the labelled splits the kNN
/// monitor and `eval` use.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Labelled training images: the kNN bank, the linear probe's training set; pretraining
    /// uses them too unless `unlabeled` is given. May be unlabeled (no classes).
    pub train: ImageDataset,
    /// Labelled held-out images: the kNN queries (empty when the data has no labels).
    pub test: ImageDataset,
    /// Images without labels that pretraining uses instead of `train` (STL-10's 100,000, or a
    /// folder of unlabeled images).
    pub unlabeled: Option<ImageDataset>,
    /// Where the data came from, for messages.
    pub origin: String,
    /// The dataset's published per-channel mean and std in [0, 1] (CIFAR-10's), used when the
    /// config gives none; `None`: computed from the images.
    pub known_stats: Option<([f32; 3], [f32; 3])>,
    /// Files that could not be decoded and were left out.
    pub skipped: Vec<String>,
}

impl Splits {
    /// Labelled train and test splits only.
    pub fn labelled(train: ImageDataset, test: ImageDataset, origin: impl Into<String>) -> Self {
        Self {
            train,
            test,
            unlabeled: None,
            origin: origin.into(),
            known_stats: None,
            skipped: Vec::new(),
        }
    }

    /// What the self-supervised method trains on.
    pub fn pretraining(&self) -> &ImageDataset {
        self.unlabeled.as_ref().unwrap_or(&self.train)
    }

    /// Whether the kNN monitor and `eval` can run: labelled train and test images.
    pub fn has_labels(&self) -> bool {
        self.train.is_labelled() && self.test.is_labelled() && !self.test.is_empty()
    }

    /// Side of the images.
    pub fn side(&self) -> usize {
        self.pretraining().side
    }

    /// Every split at `side` (CIFAR-10 upsampled for a larger network, say).
    pub fn resized(self, side: usize) -> Self {
        Self {
            train: self.train.resized(side),
            test: self.test.resized(side),
            unlabeled: self.unlabeled.map(|u| u.resized(side)),
            ..self
        }
    }

    /// The labelled splits of `other` (`--eval-data`) in place of these, at this side.
    pub fn with_eval_data(self, other: Splits) -> Result<Self> {
        anyhow::ensure!(
            other.has_labels(),
            "--eval-data {}: has no labelled train and test images (class folders \
             PATH/<class>/*.jpg, PATH/train + PATH/val, CIFAR-10 or STL-10)",
            other.origin
        );
        let side = self.side();
        let pretraining = self.pretraining().clone();
        let origin = format!("{} (kNN and eval on {})", self.origin, other.origin);
        let mut skipped = self.skipped;
        skipped.extend(other.skipped);
        Ok(Self {
            train: other.train.resized(side),
            test: other.test.resized(side),
            unlabeled: Some(pretraining),
            origin,
            known_stats: self.known_stats,
            skipped,
        })
    }

    /// A one-line description: sizes, labels, resolution.
    pub fn summary(&self) -> String {
        let side = self.side();
        let labels = if self.has_labels() {
            format!(
                "{} train, {} test images, {} classes",
                self.train.len(),
                self.test.len(),
                self.train.classes.len()
            )
        } else {
            "no labels".to_string()
        };
        let unlabeled = match &self.unlabeled {
            Some(u) => format!("{} unlabeled images for pretraining; ", u.len()),
            None => String::new(),
        };
        let skipped = match self.skipped.len() {
            0 => String::new(),
            n => format!("; {n} unreadable files skipped"),
        };
        format!(
            "{} ({unlabeled}{labels}; {side}x{side} px{skipped})",
            self.origin
        )
    }
}

/// How to load a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Side the images are resized and centre-cropped to; 0: the dataset's own (CIFAR-10 32,
    /// STL-10 96, image folders [`folder::DEFAULT_SIDE`]).
    pub image_size: usize,
    /// An unreadable image file is an error instead of a skipped file with a warning.
    pub strict: bool,
}

/// Per-channel mean and standard deviation of `dataset`'s pixels in [0, 1], over at most 10,000
/// images spread evenly through it (as torchvision recipes compute a dataset's `Normalize`).
pub fn channel_stats(dataset: &ImageDataset) -> ([f32; 3], [f32; 3]) {
    let n = dataset.len();
    let take = n.min(10_000);
    let plane = dataset.side * dataset.side;
    let sums = (0..take)
        .into_par_iter()
        .map(|k| {
            let image = dataset.image(k * n / take.max(1));
            let mut s = [0.0f64; 6];
            for c in 0..3 {
                let (mut sum, mut squares) = (0u64, 0u64);
                for &v in &image[c * plane..(c + 1) * plane] {
                    sum += v as u64;
                    squares += (v as u64) * (v as u64);
                }
                s[c] = sum as f64;
                s[3 + c] = squares as f64;
            }
            s
        })
        .reduce(|| [0.0; 6], |a, b| std::array::from_fn(|i| a[i] + b[i]));
    let count = (take * plane).max(1) as f64;
    let mean: [f64; 3] = std::array::from_fn(|c| sums[c] / count / 255.0);
    let std = std::array::from_fn(|c| {
        let var = sums[3 + c] / count / (255.0 * 255.0) - mean[c] * mean[c];
        var.max(1e-12).sqrt() as f32
    });
    (mean.map(|m| m as f32), std)
}

/// Downloads `url` into `target` once (through a `.part` file), checks its MD5, and returns
/// `target`. `what` names the data in messages, `hint` says what to do when offline.
#[cfg(feature = "download")]
pub(crate) fn download(
    url: &str,
    md5: &str,
    target: &Path,
    what: &str,
    hint: &str,
) -> Result<PathBuf> {
    use anyhow::Context;
    use md5::{Digest, Md5};
    use std::fs::File;
    use std::io::{Read, Write};
    if target.is_file() {
        return Ok(target.to_path_buf());
    }
    let cache = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(cache)
        .with_context(|| format!("cannot create cache directory {}", cache.display()))?;
    eprintln!("downloading {what} from {url} into {}", cache.display());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(std::time::Duration::from_secs(10)))
        .timeout_connect(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let response = agent
        .get(url)
        .call()
        .with_context(|| format!("cannot download {url}; {hint}"))?;
    let mut body = response.into_body();
    let bar = crate::progress::bytes_bar(body.content_length());
    let partial = target.with_extension("part");
    let mut file =
        File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
    let mut reader = body.as_reader();
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buffer)
            .with_context(|| format!("download of {url} interrupted; {hint}"))?;
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
    if digest != md5 {
        let _ = std::fs::remove_file(&partial);
        bail!("downloaded {url} has MD5 {digest}, expected {md5}; try again");
    }
    std::fs::rename(&partial, target)?;
    Ok(target.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_planes() {
        // Red plane all 255, green half 0 / half 255, blue all 51.
        let side = 4;
        let mut image = vec![255u8; 16];
        image.extend((0..16).map(|i| if i < 8 { 0 } else { 255 }));
        image.extend([51u8; 16]);
        let data = ImageDataset::new(side, image, vec![], vec![]);
        let (mean, std) = channel_stats(&data);
        assert!(
            (mean[0] - 1.0).abs() < 1e-6 && std[0] < 1e-5,
            "{mean:?} {std:?}"
        );
        assert!((mean[1] - 0.5).abs() < 1e-6 && (std[1] - 0.5).abs() < 1e-6);
        assert!((mean[2] - 0.2).abs() < 1e-6);
    }

    /// 3 classes of 60 / 30 / 10 images, sorted by class, each image's first byte its index.
    fn class_sorted() -> ImageDataset {
        let labels: Vec<u8> = [(0u8, 60), (1, 30), (2, 10)]
            .iter()
            .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
            .collect();
        let pixels: Vec<u8> = (0..100u8).flat_map(|i| [i, 0, 0]).collect();
        ImageDataset::new(1, pixels, labels, vec!["a".into(), "b".into(), "c".into()])
    }

    #[test]
    fn a_sample_keeps_each_class_share_and_is_the_same_for_a_seed() {
        let data = class_sorted();
        let sample = data.sample(20, 7);
        let count = |c: u8| sample.labels.iter().filter(|&&l| l == c).count();
        assert_eq!((count(0), count(1), count(2)), (12, 6, 2));
        // In dataset order, each image with its own label.
        let firsts: Vec<u8> = (0..20).map(|i| sample.image(i)[0]).collect();
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
        for (i, &first) in firsts.iter().enumerate() {
            assert_eq!(sample.labels[i], data.labels[first as usize]);
        }
        assert_eq!(data.sample(20, 7), sample);
        assert_ne!(data.sample(20, 8), sample);
        // 7 of 100: quotas 4.2 / 2.1 / 0.7, the largest remainder (class c) takes the 7th.
        let small = data.sample(7, 1);
        let count = |c: u8| small.labels.iter().filter(|&&l| l == c).count();
        assert_eq!((count(0), count(1), count(2)), (4, 2, 1));
        // The first 20 would have been class a only.
        assert!(data.head(20).labels.iter().all(|&l| l == 0));
        assert_eq!(data.sample(0, 1), data);
        assert_eq!(data.sample(500, 1), data);
        // Unlabelled: a plain seeded subset.
        let unlabelled = ImageDataset::new(1, data.pixels.to_vec(), vec![], vec![]);
        assert_eq!(unlabelled.sample(10, 3).len(), 10);
    }

    #[test]
    fn resizing_keeps_a_constant_image_and_the_labels() {
        let data = ImageDataset::new(2, vec![10u8; 12], vec![0], vec!["a".into()]);
        let big = data.resized(5);
        assert_eq!((big.side, big.len(), big.labels.clone()), (5, 1, vec![0]));
        assert!(big.image(0).iter().all(|&v| v == 10));
        assert_eq!(data.head(0), data);
    }
}

/// Without the `download` feature: the file must already be there.
#[cfg(not(feature = "download"))]
pub(crate) fn download(
    url: &str,
    _md5: &str,
    target: &Path,
    what: &str,
    hint: &str,
) -> Result<PathBuf> {
    if target.is_file() {
        return Ok(target.to_path_buf());
    }
    bail!(
        "{what} is not at {} and this build cannot download it (built without the `download` \
         feature): fetch {url} into that file yourself, or {hint}",
        target.display()
    )
}
