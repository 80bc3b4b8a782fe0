//! The encoder of a run, chosen by name (`[model] backbone`, `--backbone`): maps normalised
//! images `[N, 3, S, S]` to embeddings `[N, D]`. Each backbone lives here alone, in its own
//! files: its module (layers, initialisation, forward), its ONNX graph and its CPU inference
//! form. Nothing outside this folder names one; the rest of the trainer sees [`Backbone`].
//!
//! Adding a backbone: its file(s) here, one variant in [`BackboneKind`] and [`Backbone`], and
//! its arm in each `match` below (docs/development.md, "Add a backbone").

pub mod resnet18;
pub mod resnet18_prepared;

use crate::model::{NetworkOps, Stem};
use burn::module::Module;
use burn::prelude::*;
use onnx::{ExportOptions, GraphBuilder, ToOnnx};
use resnet18::ResNet18;
use serde::{Deserialize, Serialize};

/// The backbones by name (`backbone` in `[model]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum BackboneKind {
    /// ResNet-18 (He et al. 2016), torchvision's, with a CIFAR (3x3) or ImageNet (7x7 +
    /// max-pool) stem; `width` channels in the first stage (64: the standard network).
    #[default]
    Resnet18,
}

impl BackboneKind {
    pub const ALL: [BackboneKind; 1] = [Self::Resnet18];

    pub fn name(self) -> &'static str {
        match self {
            Self::Resnet18 => "resnet18",
        }
    }

    /// How a run's first line describes it.
    pub fn describe(self, stem: Stem) -> String {
        match self {
            Self::Resnet18 => {
                let stem = match stem {
                    Stem::Imagenet => "ImageNet stem",
                    _ => "CIFAR stem",
                };
                format!("ResNet-18 ({stem})")
            }
        }
    }

    /// Size of the embedding of a backbone of `width`.
    pub fn embedding_dim(self, width: usize) -> usize {
        match self {
            Self::Resnet18 => width * 8,
        }
    }

    /// A freshly initialised backbone (the initialisation of its reference implementation).
    pub fn init<B: Backend>(self, width: usize, stem: Stem, device: &B::Device) -> Backbone<B> {
        match self {
            Self::Resnet18 => Backbone::Resnet18(ResNet18::with_stem(width, stem, device)),
        }
    }
}

impl std::fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The encoder of a model: one of the backbones. Its parameters' paths are the backbone's own
/// (`encoder.stem_conv.weight`, never `encoder.Resnet18.stem_conv.weight`: the variant is not
/// a level of the path, see `named_params`).
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    Resnet18(ResNet18<B>),
}

impl<B: Backend> Backbone<B> {
    pub fn kind(&self) -> BackboneKind {
        match self {
            Self::Resnet18(_) => BackboneKind::Resnet18,
        }
    }

    /// Size of the embedding.
    pub fn embedding_dim(&self) -> usize {
        match self {
            Self::Resnet18(net) => net.embedding_dim(),
        }
    }

    /// The backbone prepared once for CPU inference (weights folded and packed: a copy), or
    /// `None` where its layers are not all covered by the CPU kernels.
    pub fn prepare(&self) -> Option<Box<dyn PreparedBackbone>> {
        match self {
            Self::Resnet18(net) => resnet18_prepared::PreparedResNet18::new(net)
                .map(|p| Box::new(p) as Box<dyn PreparedBackbone>),
        }
    }
}

impl<B: NetworkOps> Backbone<B> {
    /// Embeddings `[N, D]` of normalised images `[N, 3, S, S]` (BatchNorm as the module's mode).
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Self::Resnet18(net) => net.forward(images),
        }
    }
}

impl<B: Backend> ToOnnx for Backbone<B> {
    fn to_onnx(&self, g: &mut GraphBuilder, x: &str, options: &ExportOptions) -> String {
        match self {
            Self::Resnet18(net) => net.to_onnx(g, x, options),
        }
    }
}

/// A backbone's CPU inference form: plain `f32` slices in and out, no autodiff, no Burn tensors.
pub trait PreparedBackbone: Send + Sync + std::fmt::Debug {
    /// Embeddings `[batch, features]` of normalised images `[batch, 3, height, width]`.
    fn forward(&self, images: &[f32], dims: [usize; 3]) -> Vec<f32>;
    /// Size of the embedding.
    fn features(&self) -> usize;
}

/// The record of an encoder in files written before backbones had names (checkpoint format 2,
/// and BYOL's and MoCo v2's method state in them): the ResNet-18's record itself, with no
/// variant around it.
pub type LegacyEncoderRecord<B> = <ResNet18<B> as Module<B>>::Record;

/// A [`LegacyEncoderRecord`] as the record of today's [`Backbone`].
pub fn upgrade_legacy_record<B: Backend>(record: LegacyEncoderRecord<B>) -> BackboneRecord<B> {
    BackboneRecord::Resnet18(record)
}
