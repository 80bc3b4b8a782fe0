//! MLP heads on top of the encoder: the projector every method trains through (SimCLR's
//! `Linear -> ReLU -> Linear`, BYOL's with BatchNorm, Barlow Twins' and VICReg's three-layer
//! expander, DINO's GELU projector, SimSiam's and MoCo v3's bias-free Linears ending in a
//! BatchNorm without affine parameters) and the predictors of BYOL, SimSiam and MoCo v3.
//! Evaluation and export never see them.

use crate::distributed::{self, collective::CollectiveBackend, sync::synced_moments};
use crate::kernels::norm::batch_norm_2d;
use crate::precision::linear;
use burn::module::Initializer;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, relu};
use serde::{Deserialize, Serialize};

/// Shape of an MLP head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Width of the hidden layers.
    pub hidden: usize,
    /// Output size.
    pub out: usize,
    /// Linear layers: 2 (`in -> hidden -> out`) or 3 (`in -> hidden -> hidden -> out`).
    pub layers: usize,
    /// BatchNorm after each hidden Linear (before its activation).
    pub batchnorm: bool,
    /// The hidden layers' activation: `relu`, or `gelu` (DINO's head).
    pub activation: Activation,
    /// How the Linear layers start: `torch` (PyTorch's `nn.Linear` default), or
    /// `trunc_normal` (weights N(0, 0.02) truncated at ±2, biases 0: DINO's head).
    pub init: HeadInit,
    /// Which Linear layers have a bias: `all`, `last` (SimSiam's predictor) or `none` (MoCo
    /// v3's heads, SimSiam's projector: a BatchNorm follows each, which cancels a bias).
    pub bias: LinearBias,
    /// A BatchNorm without affine parameters after the last Linear (SimSiam's and MoCo v3's
    /// projector). In training mode, as heads always run: the batch's statistics (all ranks'
    /// under synchronised BatchNorm), so it keeps no state.
    pub output_norm: bool,
}

/// Which of a head's Linear layers have a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinearBias {
    #[default]
    All,
    /// Only the output layer.
    Last,
    None,
}

/// The activation between a head's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Relu,
    /// The exact (erf) GELU, as `nn.GELU()`.
    Gelu,
}

/// How a head's Linear layers are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadInit {
    /// PyTorch's `nn.Linear` default: weight and bias uniform on `±1/sqrt(fan_in)`.
    #[default]
    Torch,
    /// DINO's `trunc_normal_(std=0.02)` weights (cut at ±2, a hundred standard deviations
    /// out: a plain normal here) and zero biases.
    TruncNormal,
}

impl Default for HeadConfig {
    /// SimCLR's CIFAR head: 512 -> 512 -> 128, no BatchNorm.
    fn default() -> Self {
        Self {
            hidden: 512,
            out: 128,
            layers: 2,
            batchnorm: false,
            activation: Activation::Relu,
            init: HeadInit::Torch,
            bias: LinearBias::All,
            output_norm: false,
        }
    }
}

impl HeadConfig {
    /// solo-learn's CIFAR-10 projector for Barlow Twins and VICReg: 2048-2048-2048 with
    /// BatchNorm (`proj_hidden_dim` = `proj_output_dim` = 2048, three Linear layers).
    pub fn expander_2048() -> Self {
        Self {
            hidden: 2048,
            out: 2048,
            layers: 3,
            batchnorm: true,
            ..Self::default()
        }
    }

    pub fn init<B: Backend>(&self, d_in: usize, device: &B::Device) -> MlpHead<B> {
        let bn = |d| self.batchnorm.then(|| BatchNormConfig::new(d).init(device));
        let fc = |d_in, d_out, last: bool| {
            let bias = match self.bias {
                LinearBias::All => true,
                LinearBias::Last => last,
                LinearBias::None => false,
            };
            let config = LinearConfig::new(d_in, d_out).with_bias(bias);
            match self.init {
                HeadInit::Torch => config.init(device),
                HeadInit::TruncNormal => {
                    let normal = Initializer::Normal {
                        mean: 0.0,
                        std: 0.02,
                    };
                    Linear {
                        bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
                        ..config.with_initializer(normal).init(device)
                    }
                }
            }
        };
        let three = self.layers == 3;
        MlpHead {
            fc1: fc(d_in, self.hidden, false),
            bn1: bn(self.hidden),
            fc2: if three {
                fc(self.hidden, self.hidden, false)
            } else {
                fc(self.hidden, self.out, true)
            },
            bn2: if three { bn(self.hidden) } else { None },
            fc3: three.then(|| fc(self.hidden, self.out, true)),
            ops: HeadOps {
                activation: self.activation,
                output_norm: self.output_norm,
            },
        }
    }
}

/// `fc1 -> [bn1] -> act -> fc2`, or with three layers `... -> fc2 -> [bn2] -> act -> fc3`.
#[derive(Module, Debug)]
pub struct MlpHead<B: Backend> {
    pub fc1: Linear<B>,
    pub bn1: Option<BatchNorm<B>>,
    pub fc2: Linear<B>,
    pub bn2: Option<BatchNorm<B>>,
    pub fc3: Option<Linear<B>>,
    /// What the head does between and after its layers. No parameters: its record is empty,
    /// as the `Relu` this field once was, so checkpoints keep their layout (the records are
    /// positional: a field more would not read older files).
    pub ops: HeadOps,
}

/// A head's activation and output normalisation (see [`HeadConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadOps {
    pub activation: Activation,
    pub output_norm: bool,
}

impl<B: CollectiveBackend> MlpHead<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let hidden = |x: Tensor<B, 2>, bn: &Option<BatchNorm<B>>| {
            let x = match bn {
                Some(bn) if distributed::current().is_some_and(|p| p.sync_batchnorm) => {
                    let [n, c] = x.dims();
                    batch_norm_2d(bn, x.reshape([n, c, 1, 1])).reshape([n, c])
                }
                Some(bn) => bn.forward(x),
                None => x,
            };
            match self.ops.activation {
                Activation::Relu => relu(x),
                Activation::Gelu => gelu(x),
            }
        };
        let x = linear(&self.fc2, hidden(linear(&self.fc1, x), &self.bn1));
        let x = match &self.fc3 {
            Some(fc3) => linear(fc3, hidden(x, &self.bn2)),
            None => x,
        };
        if self.ops.output_norm {
            synced_batch_normalized(x)
        } else {
            x
        }
    }
}

/// BatchNorm's epsilon (PyTorch's and Burn's default).
pub const NORM_EPSILON: f64 = 1e-5;

/// Each column scaled to zero mean and unit (biased) variance over the batch: a training-mode
/// BatchNorm without affine parameters (`nn.BatchNorm1d(d, affine=False)`).
pub fn batch_normalized<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 2> {
    let mean = z.clone().mean_dim(0);
    let z = z - mean;
    let variance = z.clone().powi_scalar(2).mean_dim(0);
    z / (variance + NORM_EPSILON).sqrt()
}

/// [`batch_normalized`] over the images of every rank under synchronised BatchNorm.
fn synced_batch_normalized<B: CollectiveBackend>(z: Tensor<B, 2>) -> Tensor<B, 2> {
    let [n, d] = z.dims();
    match synced_moments(z.clone().reshape([n * d, 1]), n) {
        Some((mean, variance, _)) => (z - mean) / (variance + NORM_EPSILON).sqrt(),
        None => batch_normalized(z),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::module::Module;

    #[test]
    fn layers_and_batchnorm_follow_the_config() {
        let device = Default::default();
        let simclr = HeadConfig::default().init::<CpuBackend>(32, &device);
        assert!(simclr.bn1.is_none() && simclr.fc3.is_none());
        assert_eq!(simclr.num_params(), 32 * 512 + 512 + 512 * 128 + 128);
        let expander = HeadConfig {
            hidden: 16,
            out: 8,
            layers: 3,
            batchnorm: true,
            ..Default::default()
        }
        .init::<CpuBackend>(32, &device);
        // Linear weights and biases, plus two BatchNorms' gamma, beta, running mean and variance.
        let linear = 32 * 16 + 16 + 16 * 16 + 16 + 16 * 8 + 8;
        assert_eq!(expander.num_params(), linear + 2 * 4 * 16);
        let x = Tensor::<CpuBackend, 2>::ones([5, 32], &device);
        assert_eq!(expander.forward(x.clone()).dims(), [5, 8]);
        assert_eq!(simclr.forward(x).dims(), [5, 128]);
    }

    /// PyTorch's `nn.Linear` default, which every reference head keeps: weight and bias uniform
    /// on `+-1/sqrt(fan_in)`. Checked on the widest values and the bounds, per layer.
    #[test]
    fn every_linear_is_initialised_as_pytorch_does() {
        let device = Default::default();
        let head = HeadConfig {
            hidden: 512,
            out: 128,
            layers: 3,
            batchnorm: true,
            ..Default::default()
        }
        .init::<CpuBackend>(512, &device);
        for (name, layer) in [("fc1", &head.fc1), ("fc2", &head.fc2)]
            .into_iter()
            .chain(head.fc3.iter().map(|fc3| ("fc3", fc3)))
        {
            let [fan_in, _] = layer.weight.dims();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let weight: Vec<f32> = layer.weight.val().into_data().to_vec().unwrap();
            let bias: Vec<f32> = layer
                .bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec()
                .unwrap();
            let n = weight.len() as f64;
            let std = (weight.iter().map(|&w| (w as f64).powi(2)).sum::<f64>() / n).sqrt();
            let expected = bound / 3f64.sqrt();
            assert!(
                (std / expected - 1.0).abs() < 0.02,
                "{name}: std {std} vs {expected}"
            );
            let max = weight
                .iter()
                .chain(&bias)
                .fold(0f64, |m, &w| m.max((w as f64).abs()));
            assert!(
                max <= bound && max > 0.95 * bound,
                "{name}: max |w| {max} vs {bound}"
            );
        }
    }
}
