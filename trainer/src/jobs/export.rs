//! The encoder as a standard ONNX file (`trainer export`) and raw embeddings (`trainer embed`).
//!
//! The exported graph takes RGB images in [0, 1] (`images`, float32 `[N, 3, S, S]` at the size
//! S the encoder was trained at, N dynamic), normalises them with the training run's mean and
//! std inside the graph, and returns the encoder feature h (`embedding`, `[N, 512]`) with
//! BatchNorm in inference mode. `metadata_props` say the size (`image_size`) and how images
//! were brought to it (`preprocessing`), so that a consumer (the viewer) can do the same.

use crate::data::augment::AugmentConfig;
use crate::data::ImageDataset;
use crate::methods::MethodKind;
use crate::model::Backbone;
use anyhow::ensure;
use anyhow::{Context, Result};
use burn::prelude::*;
use onnx::proto::ModelProto;
use onnx::{tensor_value, ExportOptions, GraphBuilder, ToOnnx};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const INPUT: &str = "images";
pub const OUTPUT: &str = "embedding";

/// The ONNX model of `encoder` (trained by `method` on `image_size` px images) with the
/// normalisation of `augment` in front.
#[allow(clippy::too_many_arguments)]
pub fn encoder_to_onnx<B: Backend>(
    encoder: &Backbone<B>,
    embedding_dim: usize,
    image_size: usize,
    augment: &AugmentConfig,
    method: MethodKind,
    config_toml: &str,
    options: &ExportOptions,
) -> ModelProto {
    let mut g = GraphBuilder::new();
    let (mean, std) = augment.normalization();
    let normalized = g.normalize(INPUT, &mean, &std);
    let h = encoder.to_onnx(&mut g, &normalized, options);
    let fmt = |v: &[f32; 3]| format!("{}, {}, {}", v[0], v[1], v[2]);
    let side = image_size as i64;
    g.finish(
        tensor_value(INPUT, &[Err("N"), Ok(3), Ok(side), Ok(side)]),
        &h,
        tensor_value(OUTPUT, &[Err("N"), Ok(embedding_dim as i64)]),
        &[
            (
                "producer",
                format!("selfsup trainer {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "input",
                format!("images: float32 [N, 3, {image_size}, {image_size}], RGB in [0, 1]"),
            ),
            ("image_size", image_size.to_string()),
            (
                "preprocessing",
                "resize the shorter side to image_size (bilinear), centre-crop to a square, RGB / 255"
                    .into(),
            ),
            (
                "output",
                format!("embedding: float32 [N, {embedding_dim}], encoder feature h"),
            ),
            ("method", method.name().to_string()),
            (
                "encoder",
                "the online encoder (the one the optimizer trained, not a momentum copy)".into(),
            ),
            ("normalization_mean", fmt(&mean)),
            ("normalization_std", fmt(&std)),
            ("bn_folded", options.fold_batch_norm.to_string()),
            ("training_config", config_toml.to_string()),
        ],
    )
}

/// Writes float32 `[rows, cols]` as a NumPy `.npy` file (format 1.0), atomically.
pub fn write_npy(path: &Path, values: &[f32], rows: usize, cols: usize) -> Result<()> {
    assert_eq!(values.len(), rows * cols);
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + values.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.write_all(&v.to_le_bytes())?;
    }
    crate::records::write_atomically(path, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `index,image,label` for each image of `dataset` (its file for image folders, else
/// `<split>/<index>`; the class name, empty for unlabeled data), atomically: the rows of the
/// `.npy` written beside it.
pub fn write_rows_csv(path: &Path, dataset: &ImageDataset, split: &str) -> Result<()> {
    let mut text = String::from("index,image,label\n");
    for i in 0..dataset.len() {
        let label = match dataset.labels.get(i) {
            Some(&l) if dataset.is_labelled() => dataset.classes[l as usize].as_str(),
            _ => "",
        };
        let name = dataset.name(i, split);
        // Quoted as CSV wants when a file name holds a comma or a quote.
        let name = if name.contains([',', '"']) {
            format!("\"{}\"", name.replace('"', "\"\""))
        } else {
            name
        };
        text.push_str(&format!("{i},{name},{label}\n"));
    }
    crate::records::write_atomically(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        write_npy(&path, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.contains("'<f4'"));
        let data = &bytes[10 + header_len..];
        assert_eq!(data.len(), 24);
        assert_eq!(f32::from_le_bytes(data[20..24].try_into().unwrap()), 6.0);
    }

    #[test]
    fn rows_csv_names_files_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv");
        let mut data = ImageDataset::new(1, vec![0u8; 6], vec![1, 0], vec!["x".into(), "y".into()]);
        data.names = vec!["cats/1.jpg".into(), "a,b.png".into()];
        write_rows_csv(&path, &data, "test").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "index,image,label\n0,cats/1.jpg,y\n1,\"a,b.png\",x\n");
        let unlabeled = ImageDataset::new(1, vec![0u8; 3], vec![], vec![]);
        write_rows_csv(&path, &unlabeled, "all").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "index,image,label\n0,all/0,\n"
        );
    }
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(group(clap::ArgGroup::new("viewer_files").args(["viewer", "demo"]))))]
pub struct ExportJobOptions {
    /// Checkpoint file, or a run directory / checkpoints directory (its latest checkpoint).
    #[cfg_attr(feature = "cli", arg(long))]
    pub checkpoint: PathBuf,
    /// Where to write the ONNX file [default: encoder.onnx, or only DIR/encoder.onnx with --viewer].
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: Option<PathBuf>,
    /// Fold every BatchNorm into the convolution before it (same outputs within 1e-5).
    #[cfg_attr(feature = "cli", arg(long))]
    pub fold_bn: bool,
    /// Also write what the browser viewer loads into DIR: encoder.onnx plus a sample of images
    /// (samples.bin, samples.json): class-balanced test images of labelled data, evenly spaced
    /// images of an unlabeled folder. `trunk serve` in viewer/ then shows them.
    #[cfg_attr(feature = "cli", arg(
        long,
        value_name = "DIR",
        num_args = 0..=1,
        default_missing_value = "viewer/assets",
        conflicts_with = "demo"
    ))]
    pub viewer: Option<PathBuf>,
    /// Write a self-contained demo site into DIR for any static host (`python3 -m http.server`
    /// in DIR works): the built viewer page (--page) plus, in DIR/assets, the model, the whole
    /// test split (at most 10,000 images; --samples N) and their f16 embeddings.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub demo: Option<PathBuf>,
    /// The built viewer page that --demo copies (`trunk build --release` in viewer/ writes it).
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            value_name = "DIR",
            default_value = "viewer/dist",
            requires = "demo"
        )
    )]
    pub page: PathBuf,
    /// Dataset the viewer's sample images come from (test split), as `train --data` (default:
    /// the run's --eval-data, else its --data).
    #[cfg_attr(feature = "cli", arg(long, requires = "viewer_files"))]
    pub data: Option<String>,
    /// Number of sample images for the viewer, balanced over the classes (at most all of an
    /// unlabeled folder) [default: 1000 with --viewer, the whole split up to 10,000 with --demo].
    #[cfg_attr(feature = "cli", arg(long, requires = "viewer_files"))]
    pub samples: Option<usize>,
    /// Also compute the samples' embeddings here (CPU) and write them into DIR/embeddings.bin
    /// as f16 or f32: the page then draws the map at once instead of embedding every image in
    /// the browser, and re-embeds 32 of them there to check they belong to this model
    /// [default with --demo: f16].
    #[cfg_attr(
        feature = "cli",
        arg(long, value_enum, value_name = "DTYPE", requires = "viewer_files")
    )]
    pub embeddings: Option<crate::jobs::viewer_assets::EmbeddingDtype>,
}

/// `trainer export`: the ONNX file, and with `--viewer` / `--demo` the viewer's files.
pub fn run_export(args: ExportJobOptions) -> Result<()> {
    use crate::backend::CpuBackend;
    use crate::jobs::viewer_assets as va;
    check_destinations(&args)?;
    // The demo ships embeddings (the map at once) of as many images as make a useful map.
    let viewer_dir = match (&args.viewer, &args.demo) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(demo)) => Some(demo.join("assets")),
        (None, None) => None,
    };
    let embeddings = args
        .embeddings
        .or(args.demo.as_ref().map(|_| va::EmbeddingDtype::F16));
    let ckpt = crate::checkpoint::Checkpoint::read(&args.checkpoint)?;
    let model = ckpt.model::<CpuBackend>(&Default::default())?;
    let proto = crate::jobs::export::encoder_to_onnx(
        &model.encoder,
        ckpt.config.model.embedding_dim(),
        ckpt.config.input_size(),
        &ckpt.config.augment,
        ckpt.config.method.kind(),
        &ckpt.config.to_toml(),
        &onnx::ExportOptions {
            fold_batch_norm: args.fold_bn,
        },
    );
    let nodes = proto.graph.as_ref().map_or(0, |g| g.node.len());
    let report = |path: &Path| {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!(
            "wrote {} ({:.1} MB, {nodes} nodes, opset {}) from {}",
            path.display(),
            size as f64 / 1e6,
            onnx::OPSET,
            ckpt.path.display()
        );
    };
    let out = match (&args.out, &viewer_dir) {
        (Some(out), _) => Some(out.clone()),
        (None, None) => Some(PathBuf::from("encoder.onnx")),
        (None, Some(_)) => None,
    };
    if let Some(out) = &out {
        onnx::write_model(&proto, out)?;
        report(out);
    }
    if let Some(dir) = &viewer_dir {
        write_viewer_files(&args, &ckpt, &model, &proto, dir, embeddings, &report)?;
    }
    Ok(())
}

/// The viewer folder's parent and the demo's page exist: checked before the slow part, so a
/// typo costs nothing.
fn check_destinations(args: &ExportJobOptions) -> Result<()> {
    use crate::jobs::viewer_assets as va;
    if let Some(dir) = &args.viewer {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            ensure!(
                parent.is_dir(),
                "--viewer {}: {} does not exist (run from the repository root, or give \
--viewer DIR with an existing parent folder)",
                dir.display(),
                parent.display()
            );
        }
    }
    if args.demo.is_some() {
        va::check_page(&args.page)?;
    }
    Ok(())
}

/// The viewer's files in `dir`: the model, a sample of the data's images (a demo: the page
/// too) and, with `embeddings`, their embeddings.
fn write_viewer_files(
    args: &ExportJobOptions,
    ckpt: &crate::checkpoint::Checkpoint,
    model: &crate::model::SslModel<crate::backend::CpuBackend>,
    proto: &ModelProto,
    dir: &Path,
    embeddings: Option<crate::jobs::viewer_assets::EmbeddingDtype>,
    report: &dyn Fn(&Path),
) -> Result<()> {
    use crate::jobs::viewer_assets as va;
    let splits = ckpt.config.load_data_for(args.data.as_deref())?;
    // Labelled data: a class-balanced sample of the test split (a demo: the whole split,
    // when it is small enough). An unlabeled folder: evenly spaced images of the folder.
    let (images, indices) = match (splits.has_labels(), args.samples) {
        (true, None) if args.demo.is_some() && splits.test.len() <= va::DEMO_SAMPLES => {
            (&splits.test, (0..splits.test.len()).collect())
        }
        (true, samples) => {
            let n = samples.unwrap_or(match args.demo {
                Some(_) => va::DEMO_SAMPLES,
                None => va::VIEWER_SAMPLES,
            });
            (&splits.test, va::balanced_sample(&splits.test, n)?)
        }
        (false, samples) => {
            let images = splits.pretraining();
            let n = samples.unwrap_or(match args.demo {
                Some(_) => va::DEMO_SAMPLES,
                None => va::VIEWER_SAMPLES,
            });
            (images, va::evenly_spaced(images.len(), n)?)
        }
    };
    if let Some(demo) = &args.demo {
        let files = va::copy_page(&args.page, demo)?;
        println!(
            "copied the viewer page ({files} files) from {} into {}",
            args.page.display(),
            demo.display()
        );
    }
    let values = embeddings.map(|_| {
        let encoder = &model.encoder;
        let features = crate::eval::features::encode_dataset(
            encoder,
            &va::picked(images, &indices),
            &ckpt.config.augment,
            64,
            &Default::default(),
            "embedding the samples",
        );
        onnx::values(features)
    });
    let dim = ckpt.config.model.embedding_dim();
    let shipped = embeddings
        .zip(values.as_deref())
        .map(|(dtype, values)| va::Embeddings { values, dim, dtype });
    va::write(
        dir,
        &proto.to_bytes(),
        images,
        &indices,
        &splits.origin,
        &ckpt.path,
        shipped,
    )?;
    report(&dir.join(va::MODEL_FILE));
    if let Some(dtype) = embeddings {
        println!(
            "wrote their embeddings ({} x {dim}, {}) into {}",
            indices.len(),
            dtype.name(),
            dir.join(va::EMBEDDINGS_FILE).display()
        );
    }
    println!(
        "wrote {} sample images ({}) from {} into {}{}",
        indices.len(),
        match images.is_labelled() {
            true => format!("{} classes", images.classes.len()),
            false => "unlabeled".to_string(),
        },
        splits.origin,
        dir.display(),
        match args.demo {
            Some(_) => "",
            None => "; view them with `trunk serve` in viewer/",
        }
    );
    if let Some(demo) = &args.demo {
        println!(
            "the demo site is ready: `python3 -m http.server -d {}` (or any static host) \
             serves it",
            demo.display()
        );
    }
    Ok(())
}
