//! The files the browser viewer loads (`trainer export --viewer`): the encoder `.onnx`, a
//! sample of images (`samples.bin`: class-balanced labelled test images, or evenly spaced
//! images of an unlabeled folder), its description (`samples.json`) and, when asked, the
//! samples' embeddings computed here (`embeddings.bin`, f32 or f16 rows), which let the page
//! draw the map at once. The viewer's `samples` module reads exactly this layout.

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::path::Path;

use crate::data::ImageDataset;

pub const MODEL_FILE: &str = "encoder.onnx";
pub const SAMPLES_FILE: &str = "samples.bin";
pub const SAMPLES_META_FILE: &str = "samples.json";
pub const EMBEDDINGS_FILE: &str = "embeddings.bin";
/// Sample images `export --viewer` picks unless told otherwise (embedded in the browser).
pub const VIEWER_SAMPLES: usize = 1000;
/// At most this many for `export --demo` (CIFAR-10's whole test set), with shipped embeddings.
pub const DEMO_SAMPLES: usize = 10_000;
/// What `trunk build` writes and a demo site needs: the page and ONNX Runtime Web beside it.
const PAGE_FILES: [&str; 2] = ["index.html", "ort/ort.wasm.min.js"];
/// Bumped whenever the layout of `samples.bin` / `samples.json` changes.
pub const SAMPLES_FORMAT: &str = "selfsup-viewer-samples/1";

/// The number type of `embeddings.bin`: f16 halves the download for a page with many points
/// (its rounding, 2^-11 relative, is far below what moves a point on the map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum EmbeddingDtype {
    F32,
    F16,
}

impl EmbeddingDtype {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }

    /// Little-endian bytes of `values` in this type.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => values
                .iter()
                .flat_map(|&v| burn::tensor::f16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

/// The samples' embeddings (`count` rows of `dim` values, in sample order), as computed here.
pub struct Embeddings<'a> {
    pub values: &'a [f32],
    pub dim: usize,
    pub dtype: EmbeddingDtype,
}

/// How `samples.json` describes `embeddings.bin`: `count` x `dim` little-endian values, row-major.
#[derive(Debug, Serialize)]
pub struct EmbeddingsMeta {
    pub file: &'static str,
    pub dtype: &'static str,
    pub dim: usize,
    /// Where they were computed (the viewer re-embeds a few in the browser to check them).
    pub computed_by: &'static str,
}

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<EmbeddingsMeta>,
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

/// The picked images as a dataset of their own, in the order of `indices` (what the viewer's
/// `samples.bin` holds, and what the embeddings are computed from).
pub fn picked(dataset: &ImageDataset, indices: &[usize]) -> ImageDataset {
    let mut pixels = Vec::with_capacity(indices.len() * dataset.image_bytes());
    for &i in indices {
        pixels.extend_from_slice(dataset.image(i));
    }
    let labels = match dataset.is_labelled() {
        true => indices.iter().map(|&i| dataset.labels[i]).collect(),
        false => Vec::new(),
    };
    ImageDataset::new(dataset.side, pixels, labels, dataset.classes.clone())
}

/// Checks that `page` is a built viewer page (what `--demo` copies).
pub fn check_page(page: &Path) -> Result<()> {
    for file in PAGE_FILES {
        ensure!(
            page.join(file).is_file(),
            "--page {}: no built viewer page there ({file} is missing); build it once with \
             `cd viewer && npm ci && PATH=\"$PWD/node_modules/.bin:$PATH\" trunk build --release` \
             (docs/viewer.md lists the tools), or give --page DIR",
            page.display()
        );
    }
    Ok(())
}

/// Copies the built page into the demo folder `dir`, all but its `assets/` (the demo gets its
/// own). Returns the number of files copied.
pub fn copy_page(page: &Path, dir: &Path) -> Result<usize> {
    check_page(page)?;
    fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<usize> {
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        let mut files = 0;
        let entries =
            std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
        for entry in entries {
            let entry = entry?;
            let (source, target) = (entry.path(), to.join(entry.file_name()));
            if entry.file_type()?.is_dir() {
                if !(top && entry.file_name() == "assets") {
                    files += copy_tree(&source, &target, false)?;
                }
            } else {
                std::fs::copy(&source, &target).with_context(|| {
                    format!("cannot copy {} to {}", source.display(), target.display())
                })?;
                files += 1;
            }
        }
        Ok(files)
    }
    copy_tree(page, dir, true)
}

/// Writes `onnx_bytes`, the sample images and their embeddings (if given) into `dir` (created
/// if missing), each file atomically, so a viewer that is serving the folder never sees half a
/// file. A stale `embeddings.bin` of an earlier export is removed when none is given.
pub fn write(
    dir: &Path,
    onnx_bytes: &[u8],
    dataset: &ImageDataset,
    indices: &[usize],
    source: &str,
    checkpoint: &Path,
    embeddings: Option<Embeddings>,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the viewer folder {}", dir.display()))?;
    let mut pixels = Vec::with_capacity(indices.len() * dataset.image_bytes());
    for &i in indices {
        pixels.extend_from_slice(dataset.image(i));
    }
    if let Some(e) = &embeddings {
        ensure!(
            e.dim > 0 && e.values.len() == indices.len() * e.dim,
            "{} embedding values for {} images of {} dimensions",
            e.values.len(),
            indices.len(),
            e.dim
        );
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
        embeddings: embeddings.as_ref().map(|e| EmbeddingsMeta {
            file: EMBEDDINGS_FILE,
            dtype: e.dtype.name(),
            dim: e.dim,
            computed_by: "trainer export (Burn, CPU)",
        }),
    };
    let json = serde_json::to_vec_pretty(&meta)?;
    use crate::records::write_atomically;
    write_atomically(&dir.join(MODEL_FILE), onnx_bytes)?;
    write_atomically(&dir.join(SAMPLES_FILE), &pixels)?;
    let embeddings_path = dir.join(EMBEDDINGS_FILE);
    match &embeddings {
        Some(e) => write_atomically(&embeddings_path, &e.dtype.encode(e.values))?,
        None if embeddings_path.exists() => std::fs::remove_file(&embeddings_path)
            .with_context(|| format!("cannot remove the stale {}", embeddings_path.display()))?,
        None => {}
    }
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
        write(&out, b"onnx", &d, &[1, 2], "test", Path::new("ck"), None).unwrap();
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
        write(
            dir.path(),
            b"onnx",
            &d,
            &[0, 2],
            "folder",
            Path::new("ck"),
            None,
        )
        .unwrap();
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

    #[test]
    fn embeddings_are_written_as_little_endian_rows_and_described() {
        let d = dataset(&[0, 1, 2, 0]);
        let dir = tempfile::tempdir().unwrap();
        let values = [1.0f32, -2.5, 0.1, 65504.0];
        for (dtype, bytes) in [(EmbeddingDtype::F32, 16), (EmbeddingDtype::F16, 8)] {
            let e = Embeddings {
                values: &values,
                dim: 2,
                dtype,
            };
            write(dir.path(), b"m", &d, &[0, 3], "t", Path::new("ck"), Some(e)).unwrap();
            let raw = std::fs::read(dir.path().join(EMBEDDINGS_FILE)).unwrap();
            assert_eq!(raw.len(), bytes);
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.path().join(SAMPLES_META_FILE)).unwrap())
                    .unwrap();
            assert_eq!(meta["embeddings"]["dtype"], dtype.name());
            assert_eq!(meta["embeddings"]["dim"], 2);
            assert_eq!(meta["embeddings"]["file"], EMBEDDINGS_FILE);
        }
        // f16 bits of 1.0, -2.5, 0.1 (rounded), 65504 (the largest f16), little-endian.
        let raw = std::fs::read(dir.path().join(EMBEDDINGS_FILE)).unwrap();
        let halves: Vec<u16> = raw
            .chunks(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(halves, vec![0x3C00, 0xC100, 0x2E66, 0x7BFF]);
        // Values that do not fill the rows are refused; an export without embeddings removes
        // the stale file so the page cannot show vectors of another model.
        let short = Embeddings {
            values: &values[..3],
            dim: 2,
            dtype: EmbeddingDtype::F32,
        };
        let err = write(
            dir.path(),
            b"m",
            &d,
            &[0, 3],
            "t",
            Path::new("ck"),
            Some(short),
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("3 embedding values for 2 images"));
        write(dir.path(), b"m", &d, &[0, 3], "t", Path::new("ck"), None).unwrap();
        assert!(!dir.path().join(EMBEDDINGS_FILE).exists());
        let meta = std::fs::read_to_string(dir.path().join(SAMPLES_META_FILE)).unwrap();
        assert!(!meta.contains("embeddings"), "{meta}");
    }

    #[test]
    fn copies_a_built_page_but_not_its_assets_and_refuses_an_unbuilt_one() {
        let tmp = tempfile::tempdir().unwrap();
        let page = tmp.path().join("dist");
        let err = copy_page(&page, &tmp.path().join("demo"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("index.html is missing") && err.contains("trunk build"),
            "{err}"
        );
        for (file, body) in [
            ("index.html", "page"),
            ("ort/ort.wasm.min.js", "ort"),
            ("assets/encoder.onnx", "someone else's model"),
            ("viewer_bg.wasm", "wasm"),
        ] {
            let path = page.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        let demo = tmp.path().join("demo");
        assert_eq!(copy_page(&page, &demo).unwrap(), 3);
        assert_eq!(
            std::fs::read_to_string(demo.join("ort/ort.wasm.min.js")).unwrap(),
            "ort"
        );
        assert!(demo.join("viewer_bg.wasm").is_file());
        assert!(!demo.join("assets").exists());
    }

    #[test]
    fn picked_keeps_the_order_and_labels_of_the_indices() {
        let d = dataset(&[0, 1, 2, 0]);
        let p = picked(&d, &[2, 0]);
        assert_eq!(p.len(), 2);
        assert_eq!(p.labels, vec![2, 0]);
        assert_eq!((p.image(0)[0], p.image(1)[0]), (2, 0));
    }
}
