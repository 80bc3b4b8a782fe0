//! The encoder as `eval`, `embed`, the kNN monitor and `bench` run it for inference: on backends
//! with the CPU kernels ([`crate::kernels::conv::ConvBackend::PREPARED_INFERENCE`]) the
//! backbone's own prepared form ([`Backbone::prepare`]: BatchNorm folded, weights packed once);
//! elsewhere the module's own forward pass.

use crate::model::backbone::{Backbone, PreparedBackbone};
use crate::model::NetworkOps;
use burn::prelude::*;
use burn::tensor::TensorData;

/// An inference-mode encoder (a `valid()` module, BatchNorm on its running statistics), prepared
/// when the backend has the CPU kernels.
pub struct InferenceEncoder<'a, B: NetworkOps> {
    encoder: &'a Backbone<B>,
    prepared: Option<Box<dyn PreparedBackbone>>,
}

impl<'a, B: NetworkOps> InferenceEncoder<'a, B> {
    pub fn new(encoder: &'a Backbone<B>) -> Self {
        let prepared = if B::PREPARED_INFERENCE {
            encoder.prepare()
        } else {
            None
        };
        Self { encoder, prepared }
    }

    /// The module's own forward pass, never prepared (for comparisons).
    pub fn unprepared(encoder: &'a Backbone<B>) -> Self {
        Self {
            encoder,
            prepared: None,
        }
    }

    pub fn is_prepared(&self) -> bool {
        self.prepared.is_some()
    }

    /// Embeddings `[N, D]` of normalised images `[N, 3, H, W]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let Some(prepared) = &self.prepared else {
            return self.encoder.forward(images);
        };
        let [n, _, height, width] = images.dims();
        let device = images.device();
        let pixels: Vec<f32> = onnx::values(images);
        let features = prepared.forward(&pixels, [n, height, width]);
        let data = TensorData::new(features, [n, prepared.features()]);
        Tensor::from_data(data, &device)
    }
}
