//! The files the browser viewer loads (`trainer export --viewer`): the encoder `.onnx`, a
//! sample of images (`samples.bin`: class-balanced labelled test images, or evenly spaced
//! images of an unlabeled folder) and its description (`samples.json`). The viewer's
//! `samples` module reads exactly this layout.

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::path::Path;

use crate::data::ImageDataset;

pub const MODEL_FILE: &str = "encoder.onnx";
pub const SAMPLES_FILE: &str = "samples.bin";
pub const SAMPLES_META_FILE: &str = "samples.json";
/// Bumped whenever the layout of `samples.bin` / `samples.json` changes.
pub const SAMPLES_FORMAT: &str = "selfsup-viewer-samples/1";

/// What `samples.json` holds.
#[derive(Debug, Serialize)]
pub struct SamplesMeta<'a> {
    pub format: &'a str,
    pub count: usize,
    pub image_size: usize,
    /// `planar-rgb-u8`: per image 3 planes (R, G, B) of `image_size` squared bytes (the CIFAR
    /// record layout at 32 px),
    /// which divided by 255 is exactly the encoder's input.
    pub layout: &'a str,
    /// `["images"]` for unlabeled data, whose labels are then all 0.
    pub classes: Vec<String>,
    pub labels: Vec<u8>,
    /// False for an unlabeled folder: the viewer colours by nothing and captions by index.
    pub labelled: bool,
    /// Position of each sample in the source split, to find it again.
    pub source_index: &'a [usize],
    pub source: &'a str,
    pub model: &'a str,
    pub checkpoint: String,
}

/// Picks `n` images spread evenly over the classes: the first `n / classes` of each class in
/// dataset order (one more for the first `n % classes` classes), returned in dataset order.
pub fn balanced_sample(dataset: &ImageDataset, n: usize) -> Result<Vec<usize>> {
    let classes = dataset.classes.len().max(1);
    ensure!(n > 0, "--samples must be at least 1");
    ensure!(
        n <= dataset.len(),
        "--samples {n} is more than the {} images in the split",
        dataset.len()
    );
    let mut quota: Vec<usize> = (0..classes)
        .map(|c| n / classes + usize::from(c < n % classes))
        .collect();
    let mut picked = Vec::with_capacity(n);
    for (index, &label) in dataset.labels.iter().enumerate() {
        let q = &mut quota[label as usize];
        if *q > 0 {
            *q -= 1;
            picked.push(index);
        }
    }
    ensure!(
        picked.len() == n,
        "the split has too few images of some classes for a balanced sample of {n}"
    );
    Ok(picked)
}

/// Picks `n` images evenly spaced over a split of `len` images (for unlabeled data, where
/// there are no classes to balance), in dataset order.
pub fn evenly_spaced(len: usize, n: usize) -> Result<Vec<usize>> {
    ensure!(n > 0, "--samples must be at least 1");
    ensure!(len > 0, "the dataset has no images to show");
    let n = n.min(len);
    Ok((0..n).map(|k| k * len / n).collect())
}

/// Writes `onnx_bytes` and the sample images into `dir` (created if missing), each file
/// atomically, so a viewer that is serving the folder never sees half a file.
pub fn write(
    dir: &Path,
    onnx_bytes: &[u8],
    dataset: &ImageDataset,
    indices: &[usize],
    source: &str,
    checkpoint: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the viewer folder {}", dir.display()))?;
    let mut pixels = Vec::with_capacity(indices.len() * dataset.image_bytes());
    for &i in indices {
        pixels.extend_from_slice(dataset.image(i));
    }
    let labelled = dataset.is_labelled();
    let meta = SamplesMeta {
        format: SAMPLES_FORMAT,
        count: indices.len(),
        image_size: dataset.side,
        layout: "planar-rgb-u8",
        classes: match labelled {
            true => dataset.classes.clone(),
            false => vec!["images".to_string()],
        },
        labels: match labelled {
            true => indices.iter().map(|&i| dataset.labels[i]).collect(),
            false => vec![0; indices.len()],
        },
        labelled,
        source_index: indices,
        source,
        model: MODEL_FILE,
        checkpoint: checkpoint.display().to_string(),
    };
    let json = serde_json::to_vec_pretty(&meta)?;
    use crate::checkpoint::write_atomically;
    write_atomically(&dir.join(MODEL_FILE), onnx_bytes)?;
    write_atomically(&dir.join(SAMPLES_FILE), &pixels)?;
    write_atomically(&dir.join(SAMPLES_META_FILE), &json)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IMAGE_BYTES;

    fn dataset(labels: &[u8]) -> ImageDataset {
        let pixels: Vec<u8> = labels.iter().flat_map(|&l| vec![l; IMAGE_BYTES]).collect();
        let classes = vec!["a".into(), "b".into(), "c".into()];
        ImageDataset::new(32, pixels, labels.to_vec(), classes)
    }

    #[test]
    fn balanced_sample_takes_the_first_images_of_each_class() {
        let d = dataset(&[0, 0, 0, 1, 2, 1, 2, 0, 1]);
        assert_eq!(balanced_sample(&d, 3).unwrap(), vec![0, 3, 4]);
        // 7 = 3 + 2 + 2: class a gets the extra one.
        assert_eq!(balanced_sample(&d, 7).unwrap(), vec![0, 1, 2, 3, 4, 5, 6]);
        let err = balanced_sample(&d, 9).unwrap_err().to_string();
        assert!(err.contains("too few images"), "{err}");
        let err = balanced_sample(&d, 10).unwrap_err().to_string();
        assert!(err.contains("more than the 9 images"), "{err}");
    }

    #[test]
    fn writes_model_pixels_and_metadata() {
        let d = dataset(&[0, 1, 2, 0]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("assets");
        write(&out, b"onnx", &d, &[1, 2], "test", Path::new("ck")).unwrap();
        assert_eq!(std::fs::read(out.join(MODEL_FILE)).unwrap(), b"onnx");
        let pixels = std::fs::read(out.join(SAMPLES_FILE)).unwrap();
        assert_eq!(pixels.len(), 2 * IMAGE_BYTES);
        assert_eq!((pixels[0], pixels[IMAGE_BYTES]), (1, 2));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(SAMPLES_META_FILE)).unwrap()).unwrap();
        assert_eq!(meta["count"], 2);
        assert_eq!(meta["labels"], serde_json::json!([1, 2]));
        assert_eq!(meta["source_index"], serde_json::json!([1, 2]));
        assert_eq!(meta["format"], SAMPLES_FORMAT);
        assert_eq!(meta["labelled"], true);
    }

    #[test]
    fn unlabeled_images_are_sampled_evenly_and_marked_unlabeled() {
        assert_eq!(evenly_spaced(10, 4).unwrap(), vec![0, 2, 5, 7]);
        assert_eq!(evenly_spaced(3, 1000).unwrap(), vec![0, 1, 2]);
        assert!(evenly_spaced(0, 5).is_err());
        let side = 40;
        let pixels: Vec<u8> = (0..3u8).flat_map(|i| vec![i; 3 * side * side]).collect();
        let d = ImageDataset::new(side, pixels, vec![], vec![]);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), b"onnx", &d, &[0, 2], "folder", Path::new("ck")).unwrap();
        let pixels = std::fs::read(dir.path().join(SAMPLES_FILE)).unwrap();
        assert_eq!(pixels.len(), 2 * 3 * side * side);
        assert_eq!(pixels[3 * side * side], 2);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(SAMPLES_META_FILE)).unwrap())
                .unwrap();
        assert_eq!(meta["labelled"], false);
        assert_eq!(meta["image_size"], side);
        assert_eq!(meta["classes"], serde_json::json!(["images"]));
        assert_eq!(meta["labels"], serde_json::json!([0, 0]));
    }
}
