//! MoCo v3 (Chen, Xie and He, 2021), as solo-learn's `mocov3.py`: the online network's
//! prediction of each view (the query) must pick the momentum encoder's projection of the other
//! view (its key) among the keys of every other image of the global batch: InfoNCE with
//! temperature T, scaled by 2T, summed over both directions,
//! `loss = ctr(q_a, k_b) + ctr(q_b, k_a)`. No queue: the batch is the negatives. The momentum
//! encoder (encoder + projector) follows the online one with tau rising 0.99 -> 1.

use super::momentum::{check_tau, tau_at, MomentumNetwork};
use super::{
    require_predictor, split_views, Method, MethodConfig, MethodSettings, Preset, StepOutput,
};
use crate::backend::TrainBackend;
use crate::data::augment::AugmentConfig;
use crate::data::loader::Views;
use crate::distributed::sync::gather_views;
use crate::eval::knn::l2_normalize;
use crate::model::{HeadConfig, LinearBias, ModelConfig, SslModel};
use crate::optim::{OptimConfig, Schedule};
use anyhow::{ensure, Result};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

/// MoCo v3's settings (`[method] name = "mocov3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MocoV3Config {
    pub temperature: f64,
    /// Momentum encoder's momentum at the first step.
    pub tau_base: f64,
    /// Momentum encoder's momentum at the last step (cosine schedule in between).
    pub tau_final: f64,
}

impl Default for MocoV3Config {
    fn default() -> Self {
        Self {
            temperature: 0.2,
            tau_base: 0.99,
            tau_final: 1.0,
        }
    }
}

impl MethodSettings for MocoV3Config {
    /// solo-learn's CIFAR-10 MoCo V3 (`scripts/pretrain/cifar/mocov3.yaml`, its ResNet heads):
    /// projector 4096 -> 256 and predictor 4096 -> 256, bias-free Linears with BatchNorm, the
    /// projector ending in a BatchNorm without affine parameters; T 0.2, tau 0.99 -> 1, LARS
    /// 0.3 (batch 256) with weight decay 1e-6, asymmetric augmentations.
    fn preset() -> Preset {
        let mlp = HeadConfig {
            hidden: 4096,
            out: 256,
            layers: 2,
            batchnorm: true,
            bias: LinearBias::None,
            ..Default::default()
        };
        Preset {
            method: MethodConfig::Mocov3(MocoV3Config::default()),
            head: HeadConfig {
                output_norm: true,
                ..mlp
            },
            predictor: Some(mlp),
            prototypes: None,
            optim: OptimConfig::lars_preset(0.3, 1e-6),
            augment: AugmentConfig::asymmetric(),
        }
    }

    fn build<B: TrainBackend>(
        &self,
        model_config: &ModelConfig,
        model: &SslModel<B>,
        device: &B::Device,
    ) -> Box<dyn Method<B>> {
        Box::new(MocoV3::new(*self, model_config, model, device))
    }

    fn temperature_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.temperature)
    }

    fn validate(&self, _: usize, model: &ModelConfig) -> Result<()> {
        ensure!(
            self.temperature > 0.0,
            "method.temperature must be positive"
        );
        check_tau(self.tau_base, self.tau_final)?;
        require_predictor("MoCo v3", "mocov3", model)
    }
}

/// MoCo v3's contrastive loss of queries `q` whose positives are the same rows of `k` (the keys
/// of the other view) and whose negatives are `k`'s other rows: cross-entropy of the cosine
/// similarities over `temperature`, times `2 * temperature` (solo-learn's
/// `mocov3_loss_func`). `[1]`; `k` is a target (detach it first).
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use trainer::mocov3_loss;
///
/// let device = Default::default();
/// let q = Tensor::<Flex, 2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
/// let k = Tensor::<Flex, 2>::from_floats([[2.0, 0.0], [0.0, 3.0]], &device);
/// // Each row's logits are [1, 0] / T at T = 0.5: -ln(e^2 / (e^2 + 1)), times 2T = 1.
/// let want = -(2f32.exp() / (2f32.exp() + 1.0)).ln();
/// assert!((mocov3_loss(q, k, 0.5).into_scalar() - want).abs() < 1e-5);
/// ```
pub fn mocov3_loss<B: Backend>(q: Tensor<B, 2>, k: Tensor<B, 2>, temperature: f64) -> Tensor<B, 1> {
    let logits = l2_normalize(q).matmul(l2_normalize(k).transpose()) / temperature;
    let [n, _] = logits.dims();
    let positives = log_softmax(logits.clone(), 1) * Tensor::eye(n, &logits.device());
    positives.sum().mul_scalar(-2.0 * temperature / n as f64)
}

pub struct MocoV3<B: TrainBackend> {
    config: MocoV3Config,
    momentum_encoder: MomentumNetwork<B>,
    device: B::Device,
}

impl<B: TrainBackend> MocoV3<B> {
    pub fn new(
        config: MocoV3Config,
        model_config: &ModelConfig,
        model: &SslModel<B>,
        device: &B::Device,
    ) -> Self {
        Self {
            config,
            momentum_encoder: MomentumNetwork::copy_of(model, model_config, device),
            device: device.clone(),
        }
    }
}

impl<B: TrainBackend> Method<B> for MocoV3<B> {
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B> {
        let images = views.two_views();
        let z = model.forward(images.clone());
        let predictor = model
            .predictor
            .as_ref()
            .expect("MoCo v3 has a predictor (checked with the config)");
        let (q_a, q_b) = split_views(gather_views(predictor.forward(z.clone())));
        let keys = self.momentum_encoder.forward_each_view(images);
        let (k_a, k_b) = split_views(gather_views(keys));
        let t = self.config.temperature;
        StepOutput {
            loss: mocov3_loss(q_a, k_b, t) + mocov3_loss(q_b, k_a, t),
            projections: gather_views(z.detach()),
        }
    }

    fn after_update(&mut self, model: &SslModel<B>, step: usize, schedule: &Schedule) {
        let tau = tau_at(
            self.config.tau_base,
            self.config.tau_final,
            step,
            schedule.total_steps,
        );
        self.momentum_encoder = self.momentum_encoder.clone().follow(model, tau);
    }

    fn save_state(&self) -> Result<Vec<u8>> {
        self.momentum_encoder.to_bytes()
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        self.momentum_encoder = self
            .momentum_encoder
            .clone()
            .load_bytes(bytes, &self.device)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::tests::{matrix, scalar};

    #[test]
    fn loss_matches_the_formula() {
        // q = (1, 0), (0, 1); keys (0.6, 0.8), (-1, 0); T = 0.5.
        let q = matrix(&[[1.0, 0.0], [0.0, 1.0]], 1.0);
        let k = matrix(&[[0.6, 0.8], [-1.0, 0.0]], 1.0);
        let rows = [[0.6 / 0.5, -1.0 / 0.5], [0.8 / 0.5, 0.0f64]];
        let ce = |row: [f64; 2], i: usize| -(row[i].exp() / (row[0].exp() + row[1].exp())).ln();
        let want = (ce(rows[0], 0) + ce(rows[1], 1)) / 2.0 * (2.0 * 0.5);
        let got = scalar(mocov3_loss(q, k, 0.5));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
