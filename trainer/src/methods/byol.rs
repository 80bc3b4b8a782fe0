//! BYOL (Grill et al., NeurIPS 2020): the online network (encoder, projector, predictor)
//! predicts a momentum target network's projection of the other view. No negatives: the
//! predictor and the stop-gradient on the target keep it from collapsing.
//! `loss = (2 - 2 cos(p_a, t_b)) + (2 - 2 cos(p_b, t_a))`, each averaged over the batch
//! (solo-learn's `byol_loss_func`, summed over both directions), so it lies in [0, 8].

use super::momentum::{check_tau, tau_at, MomentumNetwork};
use super::{
    require_predictor, split_views, Method, MethodConfig, MethodSettings, Preset, StepOutput,
};
use crate::backend::TrainBackend;
use crate::data::augment::AugmentConfig;
use crate::data::loader::Views;
use crate::distributed::sync::gather_views;
use crate::eval::knn::l2_normalize;
use crate::model::{HeadConfig, ModelConfig, SslModel};
use crate::optim::{OptimConfig, Schedule};
use anyhow::Result;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// BYOL's settings (`[method] name = "byol"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByolConfig {
    /// Target momentum at the first step.
    pub tau_base: f64,
    /// Target momentum at the last step (cosine schedule in between).
    pub tau_final: f64,
}

impl Default for ByolConfig {
    fn default() -> Self {
        Self {
            tau_base: 0.99,
            tau_final: 1.0,
        }
    }
}

impl MethodSettings for ByolConfig {
    /// solo-learn's CIFAR-10 BYOL (`scripts/pretrain/cifar/byol.yaml`): projector and
    /// predictor 4096 -> 256 with BatchNorm, tau 0.99 -> 1, LARS lr 1.0 (batch 256) and weight
    /// decay 1e-5, asymmetric augmentations.
    fn preset() -> Preset {
        let mlp = HeadConfig {
            hidden: 4096,
            out: 256,
            layers: 2,
            batchnorm: true,
            ..Default::default()
        };
        Preset {
            method: MethodConfig::Byol(ByolConfig::default()),
            head: mlp,
            predictor: Some(mlp),
            prototypes: None,
            optim: OptimConfig::lars_preset(1.0, 1e-5),
            augment: AugmentConfig::asymmetric(),
        }
    }

    fn build<B: TrainBackend>(
        &self,
        model_config: &ModelConfig,
        model: &SslModel<B>,
        device: &B::Device,
    ) -> Box<dyn Method<B>> {
        Box::new(Byol::new(*self, model_config, model, device))
    }

    fn validate(&self, _: usize, model: &ModelConfig) -> Result<()> {
        check_tau(self.tau_base, self.tau_final)?;
        require_predictor("BYOL", "byol", model)
    }
}

/// `2 - 2 cos(p, t)` averaged over the rows, `[1]`.
pub fn regression_loss<B: Backend>(p: Tensor<B, 2>, t: Tensor<B, 2>) -> Tensor<B, 1> {
    let cos = (l2_normalize(p) * l2_normalize(t)).sum_dim(1);
    cos.mean().mul_scalar(-2.0).add_scalar(2.0)
}

/// The symmetric BYOL loss of predictions `p` and target projections `t`, both `[2N, d]`
/// (first views, then second views): each view's prediction against the other view's target.
/// `t` comes from the momentum target network ([`crate::update_momentum`]), without gradient.
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use trainer::byol_loss;
///
/// let device = Default::default();
/// // One image: predictions of its two views, and the target's projections of them.
/// let p = Tensor::<Flex, 2>::from_floats([[1.0, 0.0], [2.0, 0.0]], &device);
/// let same = Tensor::<Flex, 2>::from_floats([[3.0, 0.0], [1.0, 0.0]], &device);
/// let orthogonal = Tensor::<Flex, 2>::from_floats([[0.0, 1.0], [0.0, 5.0]], &device);
/// assert!(byol_loss(p.clone(), same).into_scalar().abs() < 1e-6); // 2 - 2 cos 0, twice
/// assert!((byol_loss(p, orthogonal).into_scalar() - 4.0).abs() < 1e-6); // 2 - 2 cos 90°, twice
/// ```
pub fn byol_loss<B: Backend>(p: Tensor<B, 2>, t: Tensor<B, 2>) -> Tensor<B, 1> {
    let (p_a, p_b) = split_views(p);
    let (t_a, t_b) = split_views(t);
    regression_loss(p_a, t_b) + regression_loss(p_b, t_a)
}

pub struct Byol<B: TrainBackend> {
    config: ByolConfig,
    target: MomentumNetwork<B>,
    device: B::Device,
}

impl<B: TrainBackend> Byol<B> {
    pub fn new(
        config: ByolConfig,
        model_config: &ModelConfig,
        model: &SslModel<B>,
        device: &B::Device,
    ) -> Self {
        Self {
            config,
            target: MomentumNetwork::copy_of(model, model_config, device),
            device: device.clone(),
        }
    }

    pub fn target(&self) -> &MomentumNetwork<B> {
        &self.target
    }
}

impl<B: TrainBackend> Method<B> for Byol<B> {
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B> {
        let images = views.two_views();
        let z = model.forward(images.clone());
        let p = match &model.predictor {
            Some(predictor) => predictor.forward(z.clone()),
            None => z.clone(),
        };
        let t = self.target.forward(images);
        StepOutput {
            loss: byol_loss(gather_views(p), gather_views(t)),
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
        let target = self.target.clone();
        self.target = target.follow(model, tau);
    }

    fn save_state(&self) -> Result<Vec<u8>> {
        self.target.to_bytes()
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        self.target = self.target.clone().load_bytes(bytes, &self.device)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::tests::{matrix, scalar};

    #[test]
    fn loss_matches_the_formula() {
        // p_a = (1, 0), p_b = (0, 2); t_a = (1, 1), t_b = (3, 0):
        // cos(p_a, t_b) = 1, cos(p_b, t_a) = 1/sqrt(2).
        let p = matrix(&[[1.0, 0.0], [0.0, 2.0]], 1.0);
        let t = matrix(&[[1.0, 1.0], [3.0, 0.0]], 1.0);
        let want = (2.0 - 2.0) + (2.0 - 2.0 / 2f64.sqrt());
        let got = scalar(byol_loss(p, t));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Opposite directions cost the maximum, 4 per direction.
        let p = matrix(&[[1.0, 0.0], [0.0, 1.0]], 1.0);
        let t = matrix(&[[0.0, -1.0], [-1.0, 0.0]], 1.0);
        assert!((scalar(byol_loss(p, t)) - 8.0).abs() < 1e-6);
    }
}
