//! SimSiam (Chen and He, 2021): each view's prediction must point where the other view's
//! projection points, and the projection is a stop-gradient target; no negatives and no momentum
//! network. `loss = (D(p_a, z_b) + D(p_b, z_a)) / 2` with `D(p, z) = -cos(p, stopgrad(z))`
//! averaged over the batch (solo-learn's `simsiam_loss_func`), so it lies in [-1, 1]. What keeps
//! it from collapsing is the predictor and the stop-gradient, with BatchNorm in both heads.

use super::{
    require_predictor, split_views, Method, MethodConfig, MethodSettings, Preset, StepOutput,
};
use crate::backend::TrainBackend;
use crate::data::augment::{AugmentConfig, PerView};
use crate::data::loader::Views;
use crate::distributed::sync::gather_views;
use crate::eval::knn::l2_normalize;
use crate::model::{HeadConfig, LinearBias, ModelConfig, SslModel};
use crate::optim::{OptimConfig, OptimizerKind};
use anyhow::Result;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// SimSiam's settings (`[method] name = "simsiam"`): none beyond its heads and optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSiamConfig {}

impl MethodSettings for SimSiamConfig {
    /// solo-learn's CIFAR-10 SimSiam (`scripts/pretrain/cifar/simsiam.yaml`): projector
    /// 2048-2048-2048 with bias-free hidden Linears and BatchNorm, ending in a BatchNorm
    /// without affine parameters; predictor 2048 -> 512 -> 2048 (bottleneck, BatchNorm, a bias
    /// on its output layer only); SGD lr 0.5 (batch 256), weight decay 1e-5, warm-up + cosine,
    /// the predictor at a fixed rate; blur p 0.5 on both views (`symmetric_weak.yaml`).
    fn preset() -> Preset {
        Preset {
            method: MethodConfig::Simsiam(SimSiamConfig {}),
            head: HeadConfig {
                hidden: 2048,
                out: 2048,
                layers: 3,
                batchnorm: true,
                bias: LinearBias::None,
                output_norm: true,
                ..Default::default()
            },
            predictor: Some(HeadConfig {
                hidden: 512,
                out: 2048,
                layers: 2,
                batchnorm: true,
                bias: LinearBias::Last,
                ..Default::default()
            }),
            prototypes: None,
            optim: OptimConfig {
                optimizer: OptimizerKind::Sgd,
                fixed_predictor_lr: true,
                ..OptimConfig::lars_preset(0.5, 1e-5)
            },
            augment: AugmentConfig {
                blur_prob: PerView([0.5, 0.5]),
                ..Default::default()
            },
        }
    }

    fn build<B: TrainBackend>(
        &self,
        _: &ModelConfig,
        _: &SslModel<B>,
        _: &B::Device,
    ) -> Box<dyn Method<B>> {
        Box::new(SimSiam)
    }

    fn validate(&self, _: usize, model: &ModelConfig) -> Result<()> {
        require_predictor("SimSiam", "simsiam", model)
    }
}

/// `-cos(p, z)` averaged over the rows, `[1]`; `z` is a target (detach it first).
fn negative_cosine<B: Backend>(p: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 1> {
    (l2_normalize(p) * l2_normalize(z)).sum_dim(1).mean().neg()
}

/// The symmetric SimSiam loss of predictions `p` and projections `z`, both `[2N, d]` (first
/// views, then second views): each view's prediction against the other view's projection,
/// which gets no gradient.
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use trainer::simsiam_loss;
///
/// let device = Default::default();
/// // One image: predictions of its two views, and the projections of them.
/// let p = Tensor::<Flex, 2>::from_floats([[1.0, 0.0], [0.0, 2.0]], &device);
/// let z = Tensor::<Flex, 2>::from_floats([[0.0, 3.0], [5.0, 0.0]], &device);
/// assert!((simsiam_loss(p.clone(), z).into_scalar() + 1.0).abs() < 1e-6); // aligned: -1
/// let opposite = Tensor::<Flex, 2>::from_floats([[0.0, -1.0], [-1.0, 0.0]], &device);
/// assert!((simsiam_loss(p, opposite).into_scalar() - 1.0).abs() < 1e-6); // opposed: +1
/// ```
pub fn simsiam_loss<B: Backend>(p: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 1> {
    let (p_a, p_b) = split_views(p);
    let (z_a, z_b) = split_views(z.detach());
    (negative_cosine(p_a, z_b) + negative_cosine(p_b, z_a)) / 2.0
}

/// SimSiam: the model's own projector and predictor, no state of its own.
pub struct SimSiam;

impl<B: TrainBackend> Method<B> for SimSiam {
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B> {
        let z = model.forward(views.two_views());
        let predictor = model
            .predictor
            .as_ref()
            .expect("SimSiam has a predictor (checked with the config)");
        let p = predictor.forward(z.clone());
        let z = gather_views(z.detach());
        StepOutput {
            loss: simsiam_loss(gather_views(p), z.clone()),
            projections: z,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::methods::tests::{matrix, scalar, Z_A, Z_B};
    use burn::backend::Autodiff;

    #[test]
    fn loss_matches_the_formula_and_the_target_gets_no_gradient() {
        // p_a = (1, 0), p_b = (0, 2); z_a = (1, 1), z_b = (3, 0):
        // cos(p_a, z_b) = 1, cos(p_b, z_a) = 1/sqrt(2).
        let p = matrix(&[[1.0, 0.0], [0.0, 2.0]], 1.0);
        let z = matrix(&[[1.0, 1.0], [3.0, 0.0]], 1.0);
        let want = -(1.0 + 1.0 / 2f64.sqrt()) / 2.0;
        let got = scalar(simsiam_loss(p, z));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");

        type B = Autodiff<CpuBackend>;
        let device = Default::default();
        let rows: Vec<f32> = Z_A
            .iter()
            .chain(&Z_B)
            .flatten()
            .map(|&v| v as f32)
            .collect();
        let z = Tensor::<B, 2>::from_data(TensorData::new(rows, [10, 3]), &device).require_grad();
        let p = z.clone() * 2.0;
        let grads = simsiam_loss(p, z.clone()).backward();
        // The gradient reaches z only through p = 2z: the target branch is cut. Through p
        // alone, d/dz of -cos(2 z_a, z_b) is -2 d cos/dp, which the autodiff result must
        // equal: compare against a copy of z that enters only as the target.
        let target = Tensor::<B, 2>::from_data(z.clone().into_data(), &device);
        let p = z.clone().detach().require_grad();
        let want = simsiam_loss(p.clone() * 2.0, target).backward();
        let got: Vec<f32> = z.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let want: Vec<f32> = p.grad(&want).unwrap().into_data().to_vec().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }
}
