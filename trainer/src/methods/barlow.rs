//! Barlow Twins (Zbontar, Jing, Misra, LeCun and Deny, ICML 2021): the cross-correlation matrix
//! `C = norm(z_a)^T norm(z_b) / N` of the two views' embeddings, each dimension normalised over
//! the batch (BatchNorm without affine parameters: biased variance, epsilon 1e-5), is pushed to
//! the identity: `loss = scale * (sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2)`.
//! Defaults: the paper's lambda 0.0051 and scale 1 (solo-learn's CIFAR-10 preset scales by 0.1).

use super::{
    off_diagonal_mask, two_view_step, Method, MethodConfig, MethodSettings, Preset, StepOutput,
};
use crate::backend::TrainBackend;
use crate::data::augment::AugmentConfig;
use crate::data::loader::Views;
use crate::model::heads::batch_normalized;
use crate::model::{HeadConfig, ModelConfig, SslModel};
use crate::optim::OptimConfig;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Barlow Twins' settings (`[method] name = "barlow"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BarlowTwinsLoss {
    /// Weight of the off-diagonal (redundancy reduction) term.
    pub lambda: f64,
    /// Factor on the whole loss.
    pub scale: f64,
}

impl Default for BarlowTwinsLoss {
    fn default() -> Self {
        Self {
            lambda: 0.0051,
            scale: 1.0,
        }
    }
}

impl MethodSettings for BarlowTwinsLoss {
    /// solo-learn's CIFAR-10 Barlow Twins (`scripts/pretrain/cifar/barlow.yaml`): projector
    /// 2048-2048-2048 with BatchNorm, lambda 0.0051, loss scale 0.1, LARS lr 0.3 (batch 256) and
    /// weight decay 1e-4, asymmetric augmentations.
    fn preset() -> Preset {
        Preset {
            method: MethodConfig::Barlow(BarlowTwinsLoss {
                scale: 0.1,
                ..Default::default()
            }),
            head: HeadConfig::expander_2048(),
            predictor: None,
            prototypes: None,
            optim: OptimConfig::lars_preset(0.3, 1e-4),
            augment: AugmentConfig::asymmetric(),
        }
    }

    fn build<B: TrainBackend>(
        &self,
        _: &ModelConfig,
        _: &SslModel<B>,
        _: &B::Device,
    ) -> Box<dyn Method<B>> {
        Box::new(BarlowTwins(*self))
    }
}

/// Barlow Twins on the projections of the two views.
pub struct BarlowTwins(pub BarlowTwinsLoss);

impl<B: TrainBackend> Method<B> for BarlowTwins {
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B> {
        let images = views.two_views();
        two_view_step(model, images, |z_a, z_b| self.0.forward(z_a, z_b))
    }
}

impl BarlowTwinsLoss {
    /// The cross-correlation matrix `C`, `[D, D]`.
    pub fn cross_correlation<B: Backend>(z_a: Tensor<B, 2>, z_b: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, _] = z_a.dims();
        assert!(
            n >= 2,
            "Barlow Twins needs at least 2 images per batch, got {n}"
        );
        assert_eq!(
            z_a.dims(),
            z_b.dims(),
            "the two views' embeddings differ in shape"
        );
        batch_normalized(z_a)
            .transpose()
            .matmul(batch_normalized(z_b))
            / n as f64
    }

    /// `(on-diagonal, off-diagonal)` sums before weighting, each `[1]`.
    pub fn terms<B: Backend>(z_a: Tensor<B, 2>, z_b: Tensor<B, 2>) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let [_, d] = z_a.dims();
        let device = z_a.device();
        let c = Self::cross_correlation(z_a, z_b);
        let eye = Tensor::<B, 2>::eye(d, &device);
        let on_diagonal = (c.clone() * eye)
            .sum_dim(1)
            .neg()
            .add_scalar(1.0)
            .powi_scalar(2)
            .sum();
        let off_diagonal = (c * off_diagonal_mask::<B>(d, &device))
            .powi_scalar(2)
            .sum();
        (on_diagonal, off_diagonal)
    }

    /// The weighted loss of the two views' embeddings `z_a`, `z_b` (`[N, D]` each), `[1]`.
    ///
    /// ```
    /// use burn::backend::Flex;
    /// use burn::prelude::*;
    /// use trainer::BarlowTwinsLoss;
    ///
    /// let device = Default::default();
    /// let z = Tensor::<Flex, 2>::from_floats(
    ///     [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]],
    ///     &device,
    /// );
    /// let loss = BarlowTwinsLoss::default();
    /// // Identical, decorrelated views: the cross-correlation is the identity.
    /// assert!(loss.forward(z.clone(), z.clone()).into_scalar() < 1e-6);
    /// // Opposite views: C = -I, each diagonal entry costs (1 - (-1))^2 = 4.
    /// assert!((loss.forward(z.clone(), z.neg()).into_scalar() - 8.0).abs() < 1e-3);
    /// ```
    pub fn forward<B: Backend>(&self, z_a: Tensor<B, 2>, z_b: Tensor<B, 2>) -> Tensor<B, 1> {
        let (on, off) = Self::terms(z_a, z_b);
        (on + off * self.lambda) * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::tests::{matrix, scalar, DECORRELATED, Z_A, Z_B};

    #[test]
    fn terms_match_the_reference_code() {
        // facebookresearch/barlowtwins' loss (float64 PyTorch, BatchNorm1d(affine=False)).
        let (on, off) = BarlowTwinsLoss::terms(matrix(&Z_A, 1.0), matrix(&Z_B, 1.0));
        assert!((scalar(on) - 0.011383057).abs() < 1e-5);
        assert!((scalar(off) - 1.966471180).abs() < 1e-5);
        let total =
            scalar(BarlowTwinsLoss::default().forward(matrix(&Z_A, 1.0), matrix(&Z_B, 1.0)));
        assert!((total - 0.021412060).abs() < 1e-5, "{total}");
    }

    #[test]
    fn identical_decorrelated_views_cost_nothing_and_opposite_views_cost_four_per_dimension() {
        let loss = BarlowTwinsLoss::default();
        let z = matrix(&DECORRELATED, 2.0);
        assert!(scalar(loss.forward(z.clone(), z.clone())).abs() < 1e-6);
        // z_b = -z_a: C = -I, so each diagonal entry costs (1 - (-1))^2 = 4.
        let total = scalar(loss.forward(z.clone(), z.neg()));
        assert!((total - 8.0).abs() < 1e-3, "{total}");
    }
}
