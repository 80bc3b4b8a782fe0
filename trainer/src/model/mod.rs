//! The network: an encoder (the backbone: a ResNet-18 today, `model.backbone`) and the method's
//! MLP heads.
//!
//! ```text
//! image [N,3,32,32] -> conv3x3(64) -> BN -> ReLU              (CIFAR stem: stride 1, no max-pool)
//!   (or [N,3,H,W] -> conv7x7(64, stride 2) -> BN -> ReLU -> max-pool 3x3 stride 2: ImageNet
//!    stem, a quarter of the side before stage 1; e.g. 96 px -> 24 x 24)
//!   -> stage1: 2 x BasicBlock(64,  stride 1)                  [N, 64,32,32]
//!   -> stage2: 2 x BasicBlock(128, stride 2)                  [N,128,16,16]
//!   -> stage3: 2 x BasicBlock(256, stride 2)                  [N,256, 8, 8]
//!   -> stage4: 2 x BasicBlock(512, stride 2)                  [N,512, 4, 4]
//!   -> global average pool -> h [N,512]        (the embedding used for evaluation and export)
//!   -> projector (MLP head) -> z               (used only by the loss)
//!   -> [predictor (MLP head) -> p]             (BYOL only)
//! ```
//! `width` scales every stage (64 is the standard network); tests use a small width.

pub mod backbone;
pub mod heads;
pub mod prepared;
pub mod prototypes;

pub use backbone::{Backbone, BackboneKind};
pub use heads::{Activation, HeadConfig, HeadInit, LinearBias, MlpHead};
pub use prototypes::{Prototypes, PrototypesConfig};

use crate::distributed::collective::CollectiveBackend;
use crate::gpu_memory::GpuMemoryReport;
use crate::kernels::conv::ConvBackend;
use crate::kernels::norm::NormBackend;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// What the network's forward pass needs of a backend beyond Burn's ops: its convolution
/// passes and its fused BatchNorm (both fall back to Burn's ops where a backend has no kernels),
/// its collective calls, and its report of GPU memory.
pub trait NetworkOps: ConvBackend + NormBackend + CollectiveBackend + GpuMemoryReport {}
impl<B: ConvBackend + NormBackend + CollectiveBackend + GpuMemoryReport> NetworkOps for B {}

/// The encoder's first layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// Chosen from the image size when a run starts: `cifar` up to 64 px, `imagenet` above.
    #[default]
    Auto,
    /// 3x3 stride 1, no max-pool: the whole resolution reaches stage 1 (CIFAR, small images).
    Cifar,
    /// torchvision's: 7x7 stride 2 and a 3x3 stride-2 max-pool (STL-10, ImageNet, photos).
    Imagenet,
}

impl Stem {
    /// `Auto` made concrete for images of `image_size` pixels.
    pub fn for_size(self, image_size: usize) -> Stem {
        match self {
            Stem::Auto if image_size > 64 => Stem::Imagenet,
            Stem::Auto => Stem::Cifar,
            stem => stem,
        }
    }
}

/// Architecture of encoder and heads; part of every checkpoint so a mismatch is caught on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The encoder, by name (`resnet18`).
    pub backbone: BackboneKind,
    /// Channels of the stem and first stage; later stages use 2x, 4x, 8x this.
    pub width: usize,
    /// `cifar`, `imagenet`, or `auto` (by the image size; what a run's config.toml records is
    /// the one it chose).
    pub stem: Stem,
    /// The projector (the space the loss works in).
    pub head: HeadConfig,
    /// The predictor on top of the projector (BYOL); `None`: no predictor.
    pub predictor: Option<HeadConfig>,
    /// The prototype layer after the projector (DINO); `None`: none.
    pub prototypes: Option<PrototypesConfig>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: BackboneKind::Resnet18,
            width: 64,
            stem: Stem::Auto,
            head: HeadConfig::default(),
            predictor: None,
            prototypes: None,
        }
    }
}

impl ModelConfig {
    /// A network of `width` with SimCLR's head of `hidden` -> `out` (what small tests use).
    pub fn small(width: usize, hidden: usize, out: usize) -> Self {
        Self {
            backbone: BackboneKind::Resnet18,
            width,
            stem: Stem::Auto,
            head: HeadConfig {
                hidden,
                out,
                ..Default::default()
            },
            predictor: None,
            prototypes: None,
        }
    }

    /// Size of the encoder feature h.
    pub fn embedding_dim(&self) -> usize {
        self.backbone.embedding_dim(self.width)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> SslModel<B> {
        SslModel {
            // `Auto` here is a config from before stems could be chosen: all were CIFAR's.
            encoder: self
                .backbone
                .init(self.width, self.stem.for_size(32), device),
            head: self.head.init(self.embedding_dim(), device),
            predictor: self.predictor.map(|p| p.init(self.head.out, device)),
            prototypes: self.prototypes.map(|p| p.init(self.head.out, device)),
        }
    }
}

/// An [`SslModel`]'s record in checkpoints from before backbones had names (format 2): the
/// encoder's record without the backbone's variant around it.
#[derive(burn::record::Record)]
pub struct LegacySslModelRecord<B: Backend> {
    pub encoder: backbone::LegacyEncoderRecord<B>,
    pub head: <MlpHead<B> as Module<B>>::Record,
    pub predictor: <Option<MlpHead<B>> as Module<B>>::Record,
}

impl<B: Backend> LegacySslModelRecord<B> {
    pub fn upgrade(self) -> SslModelRecord<B> {
        SslModelRecordV3 {
            encoder: backbone::upgrade_legacy_record(self.encoder),
            head: self.head,
            predictor: self.predictor,
        }
        .upgrade()
    }
}

/// An [`SslModel`]'s record in checkpoints from before the prototype layer (format 3).
#[derive(burn::record::Record)]
pub struct SslModelRecordV3<B: Backend> {
    pub encoder: <Backbone<B> as Module<B>>::Record,
    pub head: <MlpHead<B> as Module<B>>::Record,
    pub predictor: <Option<MlpHead<B>> as Module<B>>::Record,
}

impl<B: Backend> SslModelRecordV3<B> {
    pub fn upgrade(self) -> SslModelRecord<B> {
        SslModelRecord {
            encoder: self.encoder,
            head: self.head,
            predictor: self.predictor,
            prototypes: None,
        }
    }
}

/// Encoder, projector, (BYOL) predictor and (DINO) prototypes: the module the optimizer
/// trains. Methods with a momentum network keep it themselves (`methods::momentum`).
#[derive(Module, Debug)]
pub struct SslModel<B: Backend> {
    pub encoder: Backbone<B>,
    pub head: MlpHead<B>,
    pub predictor: Option<MlpHead<B>>,
    pub prototypes: Option<Prototypes<B>>,
}

impl<B: NetworkOps> SslModel<B> {
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
    fn shapes_follow_the_diagram() {
        let device = Default::default();
        let mut config = ModelConfig::small(4, 16, 8);
        config.predictor = Some(HeadConfig {
            hidden: 12,
            out: 8,
            layers: 2,
            batchnorm: true,
            ..Default::default()
        });
        let model = config.init::<CpuBackend>(&device);
        let images = Tensor::<CpuBackend, 4>::zeros([3, 3, 32, 32], &device);
        assert_eq!(model.encoder.forward(images.clone()).dims(), [3, 32]);
        let z = model.forward(images);
        assert_eq!(z.dims(), [3, 8]);
        assert_eq!(model.predictor.unwrap().forward(z).dims(), [3, 8]);
    }
}
