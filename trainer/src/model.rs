//! The network: a CIFAR ResNet-18 encoder and the SimCLR projection head.
//!
//! ```text
//! image [N,3,32,32] -> conv3x3(64) -> BN -> ReLU              (CIFAR stem: stride 1, no max-pool)
//!   -> stage1: 2 x BasicBlock(64,  stride 1)                  [N, 64,32,32]
//!   -> stage2: 2 x BasicBlock(128, stride 2)                  [N,128,16,16]
//!   -> stage3: 2 x BasicBlock(256, stride 2)                  [N,256, 8, 8]
//!   -> stage4: 2 x BasicBlock(512, stride 2)                  [N,512, 4, 4]
//!   -> global average pool -> h [N,512]        (the embedding used for evaluation and export)
//!   -> projection head: Linear -> ReLU -> Linear -> z [N,128]  (used only by the loss)
//! ```
//! `width` scales every stage (64 is the standard network); tests use a small width.

use crate::conv::{conv2d, ConvBackend};
use crate::norm::{batch_norm, NormBackend};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// What the network's forward pass needs of a backend beyond Burn's ops: its convolution
/// passes and its fused BatchNorm (both fall back to Burn's ops where a backend has no kernels).
pub trait NetworkOps: ConvBackend + NormBackend {}
impl<B: ConvBackend + NormBackend> NetworkOps for B {}

/// Architecture of encoder and head; part of every checkpoint so a mismatch is caught on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Channels of the stem and first stage; later stages use 2x, 4x, 8x this.
    pub width: usize,
    /// Hidden size of the projection head.
    pub head_hidden: usize,
    /// Output size of the projection head (the space the NT-Xent loss works in).
    pub head_out: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            width: 64,
            head_hidden: 512,
            head_out: 128,
        }
    }
}

impl ModelConfig {
    /// Size of the encoder feature h.
    pub fn embedding_dim(&self) -> usize {
        self.width * 8
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> SimClrModel<B> {
        SimClrModel {
            encoder: ResNet18::new(self.width, device),
            head: ProjectionHead::new(
                self.embedding_dim(),
                self.head_hidden,
                self.head_out,
                device,
            ),
        }
    }
}

fn conv3x3<B: Backend>(c_in: usize, c_out: usize, stride: usize, device: &B::Device) -> Conv2d<B> {
    // No bias: every convolution is followed by BatchNorm, which has its own shift.
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// The 1x1 strided convolution + BatchNorm that matches the shortcut to a block's output shape.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
}

/// ResNet BasicBlock: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm<B>,
    pub downsample: Option<Downsample<B>>,
    pub relu: Relu,
}

impl<B: Backend> BasicBlock<B> {
    pub fn new(c_in: usize, c_out: usize, stride: usize, device: &B::Device) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| Downsample {
            conv: Conv2dConfig::new([c_in, c_out], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        });
        Self {
            conv1: conv3x3(c_in, c_out, stride, device),
            bn1: BatchNormConfig::new(c_out).init(device),
            conv2: conv3x3(c_out, c_out, 1, device),
            bn2: BatchNormConfig::new(c_out).init(device),
            downsample,
            relu: Relu::new(),
        }
    }
}

impl<B: NetworkOps> BasicBlock<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let shortcut = match &self.downsample {
            Some(down) => batch_norm(&down.bn, conv2d(&down.conv, x.clone()), false),
            None => x.clone(),
        };
        let out = batch_norm(&self.bn1, conv2d(&self.conv1, x), true);
        let out = batch_norm(&self.bn2, conv2d(&self.conv2, out), false);
        self.relu.forward(out + shortcut)
    }
}

/// CIFAR ResNet-18 without its classifier: maps `[N,3,32,32]` normalised images to `[N, 8*width]`.
#[derive(Module, Debug)]
pub struct ResNet18<B: Backend> {
    pub stem_conv: Conv2d<B>,
    pub stem_bn: BatchNorm<B>,
    pub blocks: Vec<BasicBlock<B>>,
    pub relu: Relu,
}

impl<B: Backend> ResNet18<B> {
    pub fn new(width: usize, device: &B::Device) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = width;
        for (stage, stride) in [1, 2, 2, 2].into_iter().enumerate() {
            let c_out = width << stage;
            blocks.push(BasicBlock::new(c_in, c_out, stride, device));
            blocks.push(BasicBlock::new(c_out, c_out, 1, device));
            c_in = c_out;
        }
        Self {
            stem_conv: conv3x3(3, width, 1, device),
            stem_bn: BatchNormConfig::new(width).init(device),
            blocks,
            relu: Relu::new(),
        }
    }
}

impl<B: NetworkOps> ResNet18<B> {
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = batch_norm(&self.stem_bn, conv2d(&self.stem_conv, images), true);
        for block in &self.blocks {
            x = block.forward(x);
        }
        // Global average pool as a mean over the flattened spatial axis: the same as
        // AdaptiveAvgPool2d([1, 1]), and supported by every backend.
        let [n, c, h, w] = x.dims();
        x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
    }
}

/// SimCLR's MLP head `Linear -> ReLU -> Linear`; the loss sees its output z, evaluation never does.
#[derive(Module, Debug)]
pub struct ProjectionHead<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    pub relu: Relu,
}

impl<B: Backend> ProjectionHead<B> {
    pub fn new(d_in: usize, hidden: usize, d_out: usize, device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(d_in, hidden).init(device),
            fc2: LinearConfig::new(hidden, d_out).init(device),
            relu: Relu::new(),
        }
    }

    pub fn forward(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(self.relu.forward(self.fc1.forward(h)))
    }
}

/// Encoder + projection head, the module the optimizer trains.
#[derive(Module, Debug)]
pub struct SimClrModel<B: Backend> {
    pub encoder: ResNet18<B>,
    pub head: ProjectionHead<B>,
}

impl<B: NetworkOps> SimClrModel<B> {
    /// Projections z of a batch of normalised images.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head.forward(self.encoder.forward(images))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    #[test]
    fn encoder_has_resnet18_parameter_count() {
        let device = Default::default();
        let encoder = ResNet18::<CpuBackend>::new(64, &device);
        let params = encoder.num_params() as f64 / 1e6;
        // The torchvision ResNet-18 with a 3x3 stem and no fc layer has 11.17 M parameters.
        assert!(
            (params - 11.17).abs() <= 0.01,
            "encoder has {params:.4} M parameters"
        );
    }

    #[test]
    fn shapes_follow_the_diagram() {
        let device = Default::default();
        let model = ModelConfig {
            width: 4,
            head_hidden: 16,
            head_out: 8,
        }
        .init::<CpuBackend>(&device);
        let images = Tensor::<CpuBackend, 4>::zeros([3, 3, 32, 32], &device);
        assert_eq!(model.encoder.forward(images.clone()).dims(), [3, 32]);
        assert_eq!(model.forward(images).dims(), [3, 8]);
    }
}
