//! VICReg (Bardes, Ponce and LeCun, ICLR 2022): variance-invariance-covariance regularisation of
//! the two views' embeddings `z_a`, `z_b` (`[N, D]`), with no negatives and no momentum network:
//! - invariance: mean squared error between the views;
//! - variance: hinge `mean_d relu(1 - sqrt(var_d + eps))` per view (unbiased variance over the
//!   batch), summed over the views, as solo-learn's `variance_loss` (which the preset follows)
//!   does: keeps every dimension from collapsing. facebookresearch/vicreg averages the two views
//!   instead (`/ 2` each), which halves the term's effective weight: 25 there is 12.5 here;
//! - covariance: `sum of squared off-diagonal covariances / D` per view, summed over the views:
//!   decorrelates the dimensions.
//! `loss = invariance_weight * inv + variance_weight * var + covariance_weight * cov`, with the
//! paper's weights 25 / 25 / 1 as defaults, the terms as solo-learn's `vicreg_loss_func` writes
//! them.

use super::{
    centred, off_diagonal_mask, two_view_step, Method, MethodConfig, MethodSettings, Preset,
    StepOutput,
};
use crate::backend::TrainBackend;
use crate::data::augment::{AugmentConfig, PerView};
use crate::data::loader::Views;
use crate::model::{HeadConfig, ModelConfig, SslModel};
use crate::optim::OptimConfig;
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

/// VICReg's settings (`[method] name = "vicreg"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VicRegLoss {
    pub invariance_weight: f64,
    pub variance_weight: f64,
    pub covariance_weight: f64,
    /// Added to the variance under the square root (keeps its gradient finite at collapse).
    pub epsilon: f64,
}

impl Default for VicRegLoss {
    fn default() -> Self {
        Self {
            invariance_weight: 25.0,
            variance_weight: 25.0,
            covariance_weight: 1.0,
            epsilon: 1e-4,
        }
    }
}

impl MethodSettings for VicRegLoss {
    /// solo-learn's CIFAR-10 VICReg (`scripts/pretrain/cifar/vicreg.yaml`): expander
    /// 2048-2048-2048 with BatchNorm, weights 25/25/1, LARS lr 0.3 (batch 256) and weight decay
    /// 1e-4, crops from 20 % of the area, solarization p 0.1 on both views.
    fn preset() -> Preset {
        Preset {
            method: MethodConfig::Vicreg(VicRegLoss::default()),
            head: HeadConfig::expander_2048(),
            predictor: None,
            prototypes: None,
            optim: OptimConfig::lars_preset(0.3, 1e-4),
            augment: AugmentConfig {
                crop_scale: [0.2, 1.0],
                saturation: 0.2,
                solarize_prob: PerView([0.1, 0.1]),
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
        Box::new(VicReg(*self))
    }
}

/// VICReg on the projections of the two views.
pub struct VicReg(pub VicRegLoss);

impl<B: TrainBackend> Method<B> for VicReg {
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B> {
        let images = views.two_views();
        two_view_step(model, images, |z_a, z_b| self.0.forward(z_a, z_b))
    }
}

/// The three terms before weighting, each `[1]`.
pub struct VicRegTerms<B: Backend> {
    pub invariance: Tensor<B, 1>,
    pub variance: Tensor<B, 1>,
    pub covariance: Tensor<B, 1>,
}

impl VicRegLoss {
    pub fn terms<B: Backend>(&self, z_a: Tensor<B, 2>, z_b: Tensor<B, 2>) -> VicRegTerms<B> {
        let [n, _] = z_a.dims();
        assert!(n >= 2, "VICReg needs at least 2 images per batch, got {n}");
        assert_eq!(
            z_a.dims(),
            z_b.dims(),
            "the two views' embeddings differ in shape"
        );
        let invariance = (z_a.clone() - z_b.clone()).powi_scalar(2).mean();
        let variance = self.variance_term(z_a.clone()) + self.variance_term(z_b.clone());
        let covariance = covariance_term(z_a) + covariance_term(z_b);
        VicRegTerms {
            invariance,
            variance,
            covariance,
        }
    }

    /// The weighted loss of the two views' embeddings `z_a`, `z_b` (`[N, D]` each), `[1]`.
    ///
    /// ```
    /// use burn::backend::Flex;
    /// use burn::prelude::*;
    /// use trainer::VicRegLoss;
    ///
    /// let device = Default::default();
    /// let loss = VicRegLoss::default(); // weights 25 / 25 / 1
    /// // Views that agree, with spread (std above 1) and uncorrelated dimensions: nothing to pay.
    /// let spread = Tensor::<Flex, 2>::from_floats(
    ///     [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]],
    ///     &device,
    /// );
    /// assert!(loss.forward(spread.clone(), spread).into_scalar().abs() < 1e-6);
    /// // Collapse (every image the same point): each view's variance hinge costs
    /// // 25 * (1 - sqrt(1e-4)).
    /// let collapsed = Tensor::<Flex, 2>::ones([4, 2], &device);
    /// let cost = loss.forward(collapsed.clone(), collapsed).into_scalar();
    /// assert!((cost - 2.0 * 24.75).abs() < 1e-4);
    /// ```
    pub fn forward<B: Backend>(&self, z_a: Tensor<B, 2>, z_b: Tensor<B, 2>) -> Tensor<B, 1> {
        let t = self.terms(z_a, z_b);
        t.invariance * self.invariance_weight
            + t.variance * self.variance_weight
            + t.covariance * self.covariance_weight
    }

    fn variance_term<B: Backend>(&self, z: Tensor<B, 2>) -> Tensor<B, 1> {
        let [n, _] = z.dims();
        let variance = centred(z).powi_scalar(2).sum_dim(0) / (n - 1) as f64;
        relu((variance + self.epsilon).sqrt().neg() + 1.0).mean()
    }
}

/// Sum of the squared off-diagonal entries of the (unbiased) covariance matrix, divided by `D`.
fn covariance_term<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, d] = z.dims();
    let device = z.device();
    let z = centred(z);
    let covariance = z.clone().transpose().matmul(z) / (n - 1) as f64;
    (covariance * off_diagonal_mask::<B>(d, &device))
        .powi_scalar(2)
        .sum()
        / d as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::tests::{matrix, scalar, DECORRELATED, Z_A, Z_B};

    #[test]
    fn terms_match_the_reference_code() {
        // Values of solo-learn's vicreg_loss_func (float64) on these inputs; facebookresearch's
        // halves the variance term (0.020800066, total 6.305307823).
        let loss = VicRegLoss::default();
        let t = loss.terms(matrix(&Z_A, 1.0), matrix(&Z_B, 1.0));
        assert!((scalar(t.invariance) - 0.145333333).abs() < 1e-6);
        assert!((scalar(t.variance) - 0.041600133).abs() < 1e-6);
        assert!((scalar(t.covariance) - 2.151972833).abs() < 1e-5);
        let total = scalar(loss.forward(matrix(&Z_A, 1.0), matrix(&Z_B, 1.0)));
        assert!((total - 6.825309480).abs() < 1e-5, "{total}");
        // Scaled down by 0.3, the variance hinge is active in every dimension.
        let total = scalar(loss.forward(matrix(&Z_A, 0.3), matrix(&Z_B, 0.3)));
        assert!((total - 33.691935620).abs() < 1e-4, "{total}");
    }

    #[test]
    fn spread_decorrelated_identical_views_cost_nothing_and_collapse_costs_the_variance_hinge() {
        let loss = VicRegLoss::default();
        let z = matrix(&DECORRELATED, 2.0);
        assert!(scalar(loss.forward(z.clone(), z)).abs() < 1e-6);
        // Every image mapped to the same point: each dimension's std is sqrt(eps) = 0.01, in
        // both views.
        let collapsed = matrix(&[[0.3, -0.2], [0.3, -0.2], [0.3, -0.2], [0.3, -0.2]], 1.0);
        let total = scalar(loss.forward(collapsed.clone(), collapsed));
        assert!((total - 2.0 * 25.0 * 0.99).abs() < 1e-4, "{total}");
    }
}
