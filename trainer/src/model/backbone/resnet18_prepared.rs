//! The ResNet-18 prepared once for CPU inference: every BatchNorm is folded into the
//! convolution before it and each block's bias, shortcut and ReLU are one pass over its output
//! ([`PreparedConv`]).

use super::resnet18::{ResNet18, STEM_POOL};
use super::PreparedBackbone;
use crate::kernels::conv::geometry;
use crate::kernels::pool::{max_pool, pooled_size};
use crate::kernels::prepared_conv::PreparedConv;
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::prelude::*;

/// `relu(bn(conv))` of the stem and each block's three convolutions, folded.
#[derive(Debug)]
pub struct PreparedResNet18 {
    stem: PreparedConv,
    /// The ImageNet stem's max-pool after it.
    stem_pool: bool,
    blocks: Vec<PreparedBlock>,
}

#[derive(Debug)]
struct PreparedBlock {
    conv1: PreparedConv,
    conv2: PreparedConv,
    downsample: Option<PreparedConv>,
}

/// `conv` followed by `bn` in inference mode, folded; `None` for a convolution the CPU kernels
/// do not cover.
fn fold<B: Backend>(conv: &Conv2d<B>, bn: &BatchNorm<B>) -> Option<PreparedConv> {
    let g = geometry(conv)?;
    let [c_out, c_in, kernel, _] = conv.weight.dims();
    Some(PreparedConv::folded(
        &onnx::values(conv.weight.val()),
        [c_out, c_in, kernel],
        g.stride,
        g.padding,
        onnx::batch_norm_scale_shift(bn),
    ))
}

impl PreparedResNet18 {
    /// The encoder's weights and running statistics, folded (a copy: later changes to `encoder`
    /// are not seen). `None` when a convolution is one the CPU kernels do not cover.
    pub fn new<B: Backend>(encoder: &ResNet18<B>) -> Option<Self> {
        let blocks = encoder
            .blocks
            .iter()
            .map(|block| {
                Some(PreparedBlock {
                    conv1: fold(&block.conv1, &block.bn1)?,
                    conv2: fold(&block.conv2, &block.bn2)?,
                    downsample: match &block.downsample {
                        Some(down) => Some(fold(&down.conv, &down.bn)?),
                        None => None,
                    },
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            stem: fold(&encoder.stem_conv, &encoder.stem_bn)?,
            stem_pool: encoder.stem_pool,
            blocks,
        })
    }

    fn forward_in_pool(&self, images: &[f32], [batch, height, width]: [usize; 3]) -> Vec<f32> {
        let mut x = self
            .stem
            .forward(images, [batch, height, width], None, true);
        let s = self.stem.shape(batch, height, width);
        let mut size = [s.out_height(), s.out_width()];
        if self.stem_pool {
            let (k, s, p) = STEM_POOL;
            x = max_pool(&x, size, k, s, p);
            size = size.map(|n| pooled_size(n, k, s, p));
        }
        for block in &self.blocks {
            let dims = [batch, size[0], size[1]];
            let s = block.conv1.shape(batch, size[0], size[1]);
            let shortcut = block
                .downsample
                .as_ref()
                .map(|down| down.forward(&x, dims, None, false));
            let h = block.conv1.forward(&x, dims, None, true);
            size = [s.out_height(), s.out_width()];
            let out_dims = [batch, size[0], size[1]];
            x = block
                .conv2
                .forward(&h, out_dims, Some(shortcut.as_deref().unwrap_or(&x)), true);
        }
        // Global average pool.
        let plane = size[0] * size[1];
        x.chunks_exact(plane)
            .map(|values| values.iter().sum::<f32>() / plane as f32)
            .collect()
    }
}

impl PreparedBackbone for PreparedResNet18 {
    /// Features `[batch, 8 * width]` of normalised images `[batch, 3, height, width]`.
    fn forward(&self, images: &[f32], dims: [usize; 3]) -> Vec<f32> {
        // On a thread of the pool: each convolution's parallel parts then start as jobs other
        // threads steal, where from outside the pool every one of them was handed over to the pool
        // while this thread slept (two context switches each, a tenth of the time at batch 1).
        rayon::scope(|_| self.forward_in_pool(images, dims))
    }

    /// Channels of the features.
    fn features(&self) -> usize {
        self.blocks
            .last()
            .map_or(self.stem.c_out(), |block| block.conv2.c_out())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::model::backbone::Backbone;
    use crate::model::prepared::InferenceEncoder;
    use crate::model::Stem;
    use burn::module::RunningState;
    use burn::tensor::Distribution;

    /// Gives every BatchNorm running statistics and an affine map away from the defaults, so
    /// that folding them is tested.
    fn with_statistics(mut encoder: ResNet18<CpuBackend>) -> ResNet18<CpuBackend> {
        let device = Default::default();
        let random = |c: usize, low: f64, high: f64| {
            Tensor::<CpuBackend, 1>::random([c], Distribution::Uniform(low, high), &device)
        };
        let set = |bn: &mut BatchNorm<CpuBackend>| {
            let c = bn.gamma.dims()[0];
            bn.running_mean = RunningState::new(random(c, -0.5, 0.5));
            bn.running_var = RunningState::new(random(c, 0.5, 2.0));
            bn.gamma = bn.gamma.clone().map(|_| random(c, 0.5, 1.5));
            bn.beta = bn.beta.clone().map(|_| random(c, -0.2, 0.2));
        };
        set(&mut encoder.stem_bn);
        for block in &mut encoder.blocks {
            set(&mut block.bn1);
            set(&mut block.bn2);
            if let Some(down) = &mut block.downsample {
                set(&mut down.bn);
            }
        }
        encoder
    }

    #[test]
    fn prepared_features_match_the_module_in_inference_mode() {
        let device = Default::default();
        CpuBackend::seed(&device, 7);
        let cifar = with_statistics(ResNet18::<CpuBackend>::new(8, &device));
        let imagenet = with_statistics(ResNet18::with_stem(8, Stem::Imagenet, &device));
        // Batch 1 and 3 take the image-by-image route, 6 the chunked one; the ImageNet stem
        // (7x7 stride 2 + max-pool) at 96 px, as STL-10.
        let cases = [
            (&cifar, 1, 32),
            (&cifar, 3, 32),
            (&cifar, 6, 32),
            (&imagenet, 1, 96),
            (&imagenet, 4, 96),
        ];
        for (encoder, batch, side) in cases {
            let images = Tensor::<CpuBackend, 4>::random(
                [batch, 3, side, side],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let encoder = Backbone::Resnet18(encoder.clone());
            let prepared = InferenceEncoder::new(&encoder);
            assert!(prepared.is_prepared());
            let ours: Vec<f32> = onnx::values(prepared.forward(images.clone()));
            let theirs: Vec<f32> = onnx::values(encoder.forward(images));
            assert_eq!(ours.len(), batch * 64);
            let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(
                scale > 0.1,
                "features are all near zero: the test would prove nothing"
            );
            let worst = ours
                .iter()
                .zip(&theirs)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst < 1e-4 * scale,
                "batch {batch} at {side} px: max diff {worst} (scale {scale})"
            );
        }
    }
}
