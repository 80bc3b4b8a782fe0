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
use crate::model::{BasicBlock, ResNet18};
use anyhow::{Context, Result};
use burn::prelude::*;
use onnx::proto::ModelProto;
use onnx::{tensor_value, ExportOptions, GraphBuilder, ToOnnx};
use std::io::Write;
use std::path::Path;

pub const INPUT: &str = "images";
pub const OUTPUT: &str = "embedding";

impl<B: Backend> ToOnnx for BasicBlock<B> {
    fn to_onnx(&self, g: &mut GraphBuilder, x: &str, options: &ExportOptions) -> String {
        let shortcut = match &self.downsample {
            Some(down) => g.conv_batch_norm(x, &down.conv, &down.bn, options),
            None => x.to_string(),
        };
        let out = g.conv_batch_norm(x, &self.conv1, &self.bn1, options);
        let out = g.relu(&out);
        let out = g.conv_batch_norm(&out, &self.conv2, &self.bn2, options);
        let out = g.add(&out, &shortcut);
        g.relu(&out)
    }
}

impl<B: Backend> ToOnnx for ResNet18<B> {
    fn to_onnx(&self, g: &mut GraphBuilder, x: &str, options: &ExportOptions) -> String {
        let stem = g.conv_batch_norm(x, &self.stem_conv, &self.stem_bn, options);
        let mut x = g.relu(&stem);
        if self.stem_pool {
            let (k, s, p) = crate::model::encoder::STEM_POOL;
            x = g.max_pool(&x, k, s, p);
        }
        for block in &self.blocks {
            x = block.to_onnx(g, &x, options);
        }
        let pooled = g.global_average_pool(&x);
        g.flatten(&pooled)
    }
}

/// The ONNX model of `encoder` (trained by `method` on `image_size` px images) with the
/// normalisation of `augment` in front.
#[allow(clippy::too_many_arguments)]
pub fn encoder_to_onnx<B: Backend>(
    encoder: &ResNet18<B>,
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
    crate::checkpoint::write_atomically(path, &bytes)
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
    crate::checkpoint::write_atomically(path, text.as_bytes())
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
