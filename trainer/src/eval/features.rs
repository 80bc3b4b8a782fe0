//! Encoder features h of un-augmented images: what evaluation, export checks and the viewer use.

use crate::data::augment::{normalize_into, to_float, AugmentConfig};
use crate::data::ImageDataset;
use crate::model::prepared::InferenceEncoder;
use crate::model::{Backbone, NetworkOps};
use crate::progress::items_bar;
use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

/// Normalised planar f32 images `[n, 3, side, side]` of `indices` in `dataset`.
pub fn normalized_batch<B: Backend>(
    dataset: &ImageDataset,
    indices: std::ops::Range<usize>,
    augment: &AugmentConfig,
    device: &B::Device,
) -> Tensor<B, 4> {
    let n = indices.len();
    let (mean, std) = augment.normalization();
    let mut pixels = vec![0.0f32; n * dataset.image_bytes()];
    pixels
        .par_chunks_mut(dataset.image_bytes())
        .zip(indices)
        .for_each(|(out, i)| normalize_into(&to_float(dataset.image(i)), &mean, &std, out));
    let side = dataset.side;
    Tensor::from_data(TensorData::new(pixels, [n, 3, side, side]), device)
}

/// Features `[N, D]` of every image of `dataset`. `encoder` must be on an inference backend (a
/// `valid()` module), so that BatchNorm uses its running statistics; on the CPU it runs
/// prepared ([`InferenceEncoder`]: BatchNorm folded, weights packed once for all batches).
pub fn encode_dataset<B: NetworkOps>(
    encoder: &Backbone<B>,
    dataset: &ImageDataset,
    augment: &AugmentConfig,
    batch_size: usize,
    device: &B::Device,
    label: &str,
) -> Tensor<B, 2> {
    let bar = items_bar(dataset.len() as u64, label);
    let encoder = InferenceEncoder::new(encoder);
    let mut chunks = Vec::new();
    for start in (0..dataset.len()).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(dataset.len());
        let images = normalized_batch::<B>(dataset, start..end, augment, device);
        chunks.push(encoder.forward(images));
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    Tensor::cat(chunks, 0)
}
