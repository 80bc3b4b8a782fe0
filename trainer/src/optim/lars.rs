//! LARS (You, Gitman and Ginsburg, 2017): SGD with momentum whose step for each weight tensor is
//! scaled by a trust ratio `eta * ||w|| / (||g|| + weight_decay * ||w||)`, so every layer moves
//! by about the same fraction of its norm. As in solo-learn's and lightly's LARS:
//! - weight decay is added to the gradient before the scaling;
//! - `clip_lr` caps the ratio at the learning rate (`min(ratio / lr, 1)`);
//! - 1-D tensors (biases, BatchNorm scales and shifts) are left out of both the adaptation and the
//!   weight decay (`exclude_bias_and_norm`);
//! - a tensor whose weight or gradient norm is zero takes a plain momentum step.
//!
//! The published CIFAR-10 presets of BYOL, Barlow Twins and VICReg train with it (issue 12).

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::momentum::{Momentum, MomentumConfig, MomentumState};
use burn::optim::{LearningRate, SimpleOptimizer};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LarsConfig {
    pub momentum: f64,
    pub weight_decay: f64,
    /// Trust coefficient.
    pub eta: f64,
    /// Cap the adapted rate at the base learning rate.
    pub clip_lr: bool,
    /// Leave 1-D tensors (biases, BatchNorm parameters) out of adaptation and weight decay.
    pub exclude_bias_and_norm: bool,
    /// Keeps the trust ratio finite.
    pub epsilon: f64,
}

impl Default for LarsConfig {
    /// solo-learn's CIFAR-10 LARS settings (BYOL, Barlow Twins, VICReg presets).
    fn default() -> Self {
        Self {
            momentum: 0.9,
            weight_decay: 1e-5,
            eta: 0.02,
            clip_lr: true,
            exclude_bias_and_norm: true,
            epsilon: 1e-8,
        }
    }
}

impl LarsConfig {
    /// The optimizer for a module `M` trained on backend `B`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
    ) -> OptimizerAdaptor<Lars<B::InnerBackend>, M, B> {
        OptimizerAdaptor::from(Lars {
            config: *self,
            momentum: Momentum::new(&MomentumConfig {
                momentum: self.momentum,
                dampening: 0.0, // PyTorch's SGD (Burn's default is 0.1)
                nesterov: false,
            }),
        })
    }
}

#[derive(Clone)]
pub struct Lars<B: Backend> {
    config: LarsConfig,
    momentum: Momentum<B>,
}

/// The momentum buffer of one tensor.
#[derive(Record, Clone)]
pub struct LarsState<B: Backend, const D: usize> {
    pub momentum: MomentumState<B, D>,
}

/// L2 norm of a whole tensor, `[1]`.
fn norm<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    t.powi_scalar(2).sum().sqrt()
}

impl<B: Backend> SimpleOptimizer<B> for Lars<B> {
    type State<const D: usize> = LarsState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let c = &self.config;
        let grad = if c.exclude_bias_and_norm && D == 1 {
            grad
        } else {
            // Computed on the device (no host round trip): where either norm is zero the ratio
            // is 1 and no weight decay is added, as in the reference implementations.
            let (w, g) = (norm(tensor.clone()), norm(grad.clone()));
            let adapt = w
                .clone()
                .greater_elem(0.0)
                .bool_and(g.clone().greater_elem(0.0));
            let mut ratio = w.clone() * c.eta / (g + w * c.weight_decay + c.epsilon);
            if c.clip_lr {
                ratio = (ratio / lr).clamp_max(1.0);
            }
            let ones = Tensor::<B, 1>::ones([1], &tensor.device());
            let ratio = ones.clone().mask_where(adapt.clone(), ratio);
            let decay = (ones * c.weight_decay).mask_fill(adapt.bool_not(), 0.0);
            let shape = [1; D];
            (grad + tensor.clone() * decay.reshape(shape)) * ratio.reshape(shape)
        };
        let (update, momentum) = self.momentum.transform(grad, state.map(|s| s.momentum));
        (tensor - update * lr, Some(LarsState { momentum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        LarsState {
            momentum: state.momentum.to_device(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{GradientsParams, Optimizer};
    use burn::tensor::TensorData;

    type B = Autodiff<CpuBackend>;

    /// A linear layer with weight [[3], [4]] (norm 5) and bias [1]; `sum(layer([0.6, 0.8]))`
    /// has gradient [[0.6], [0.8]] (norm 1) for the weight and [1] for the bias.
    fn layer() -> Linear<B> {
        let device = Default::default();
        let mut layer = LinearConfig::new(2, 1).init::<B>(&device);
        layer.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![3.0f32, 4.0], [2, 1]),
            &device,
        ));
        layer.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32], [1]),
            &device,
        )));
        layer
    }

    fn step(optimizer: &mut impl Optimizer<Linear<B>, B>, layer: Linear<B>, lr: f64) -> Linear<B> {
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(vec![0.6f32, 0.8], [1, 2]),
            &Default::default(),
        );
        let grads = layer.forward(x).sum().backward();
        let grads = GradientsParams::from_grads(grads, &layer);
        optimizer.step(lr, layer, grads)
    }

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    fn assert_close(got: &[f32], expected: &[f32]) {
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn two_steps_match_the_trust_ratio_by_hand() {
        // eta 0.02, weight decay 0.1, lr 0.5, momentum 0.9, clip_lr:
        // step 1: ratio 0.02 * 5 / (1 + 0.1 * 5) = 0.0667, clipped to min(0.0667 / 0.5, 1)
        //   = 0.1333; update (g + 0.1 w) * 0.1333 = [0.12, 0.16]; w = [2.94, 3.92].
        // step 2: |w| = 4.9: ratio 0.098 / 1.49 / 0.5 = 0.13154; (g + 0.1 w) * ratio =
        //   [0.1176, 0.1568]; momentum 0.9 * [0.12, 0.16] + that = [0.2256, 0.3008];
        //   w = [2.8272, 3.7696].
        // The bias (1-D) takes plain momentum SGD steps without weight decay: 1 - 0.5 = 0.5,
        // then 0.5 - 0.5 * (0.9 + 1) = -0.45.
        let config = LarsConfig {
            weight_decay: 0.1,
            epsilon: 0.0,
            ..Default::default()
        };
        let mut optimizer = config.init::<B, Linear<B>>();
        let layer = step(&mut optimizer, layer(), 0.5);
        assert_close(&values(layer.weight.val()), &[2.94, 3.92]);
        assert_close(&values(layer.bias.as_ref().unwrap().val()), &[0.5]);
        let layer = step(&mut optimizer, layer, 0.5);
        assert_close(&values(layer.weight.val()), &[2.8272, 3.7696]);
        assert_close(&values(layer.bias.as_ref().unwrap().val()), &[-0.45]);
    }

    #[test]
    fn without_exclusion_the_bias_is_adapted_too() {
        // Bias 1, gradient 1: ratio 0.02 * 1 / (1 + 0.1) / 0.5 = 0.036364; its update
        // (1 + 0.1 * 1) * 0.036364 = 0.04; bias 1 - 0.5 * 0.04 = 0.98.
        let config = LarsConfig {
            weight_decay: 0.1,
            epsilon: 0.0,
            exclude_bias_and_norm: false,
            ..Default::default()
        };
        let mut optimizer = config.init::<B, Linear<B>>();
        let layer = step(&mut optimizer, layer(), 0.5);
        assert_close(&values(layer.bias.as_ref().unwrap().val()), &[0.98]);
        assert_close(&values(layer.weight.val()), &[2.94, 3.92]);
    }
}
