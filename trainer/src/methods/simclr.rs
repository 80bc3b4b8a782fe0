//! NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020).
//!
//! For 2N projections (rows 0..N are first views, N..2N the second views of the same images),
//! each row is a classification: its positive is the other view of its image, its negatives are
//! the 2N-2 other rows. `loss = mean_i -log( exp(s_ip/T) / sum_{j != i} exp(s_ij/T) )` with
//! `s` the cosine similarity.

use super::{Method, MethodConfig, MethodSettings, Preset, StepOutput};
use crate::backend::TrainBackend;
use crate::data::loader::Views;
use crate::distributed::sync::gather_views;
use crate::eval::knn::l2_normalize;
use crate::model::{ModelConfig, SslModel};
use anyhow::{ensure, Result};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

/// SimCLR's settings (`[method] name = "simclr"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NtXentLoss {
    /// Softmax temperature (0.5 as in the SimCLR CIFAR code; solo-learn uses 0.2).
    pub temperature: f64,
}

impl Default for NtXentLoss {
    fn default() -> Self {
        Self { temperature: 0.5 }
    }
}

impl MethodSettings for NtXentLoss {
    /// SimCLR's preset is this project's seed recipe: the defaults of every config section
    /// (Adam 3e-4, weight decay 1e-4, clipping at 1, head 512 -> 512 -> 128, symmetric
    /// augmentations).
    fn preset() -> Preset {
        Preset::with_defaults(MethodConfig::Simclr(NtXentLoss::default()))
    }

    fn build<B: TrainBackend>(
        &self,
        _: &ModelConfig,
        _: &SslModel<B>,
        _: &B::Device,
    ) -> Box<dyn Method<B>> {
        Box::new(SimClr(*self))
    }

    fn validate(&self, batch_size: usize, _: &ModelConfig) -> Result<()> {
        ensure!(
            self.temperature > 0.0,
            "method.temperature must be positive"
        );
        ensure!(
            batch_size >= 2,
            "batch_size must be at least 2: NT-Xent needs other images as negatives"
        );
        Ok(())
    }

    fn temperature_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.temperature)
    }
}

/// SimCLR: NT-Xent on the projections of both views.
pub struct SimClr(pub NtXentLoss);

impl<B: TrainBackend> Method<B> for SimClr {
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B> {
        let images = views.two_views();
        let z = gather_views(model.forward(images));
        StepOutput {
            loss: self.0.forward(z.clone()),
            projections: z,
        }
    }
}

impl NtXentLoss {
    pub fn new(temperature: f64) -> Self {
        Self { temperature }
    }

    /// `z`: `[2N, d]` projections, first views then second views. Returns the mean loss, `[1]`.
    ///
    /// ```
    /// use burn::backend::Flex;
    /// use burn::prelude::*;
    /// use trainer::NtXentLoss;
    ///
    /// // Two images whose two views agree, orthogonal to each other: each row's positive has
    /// // similarity 1 and its two negatives 0, so the loss is -ln(e^2 / (e^2 + 2)) at T = 0.5.
    /// let z = Tensor::<Flex, 2>::from_floats(
    ///     [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],
    ///     &Default::default(),
    /// );
    /// let loss = NtXentLoss::new(0.5).forward(z).into_scalar();
    /// let want = -(2f32.exp() / (2f32.exp() + 2.0)).ln();
    /// assert!((loss - want).abs() < 1e-5);
    /// ```
    pub fn forward<B: Backend>(&self, z: Tensor<B, 2>) -> Tensor<B, 1> {
        let [rows, _] = z.dims();
        assert!(
            rows >= 4 && rows % 2 == 0,
            "NT-Xent needs 2N rows with N >= 2, got {rows}"
        );
        let n = rows / 2;
        let device = z.device();
        let z = l2_normalize(z);
        let logits = z.clone().matmul(z.transpose()) / self.temperature;
        // A row is never its own negative: push self-similarity to -inf before the softmax
        // (a large finite value keeps the gradient free of NaN).
        let self_mask = Tensor::<B, 2>::eye(rows, &device).equal_elem(1.0);
        let logits = logits.mask_fill(self_mask, -1e9);
        let positives: Vec<i64> = (0..rows).map(|i| ((i + n) % rows) as i64).collect();
        let positives =
            Tensor::<B, 2, Int>::from_data(TensorData::new(positives, [rows, 1]), &device);
        log_softmax(logits, 1).gather(1, positives).mean().neg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    /// The loss computed by hand in f64 from the definition.
    fn reference(z: &[[f64; 2]], t: f64) -> f64 {
        let rows = z.len();
        let unit: Vec<[f64; 2]> = z
            .iter()
            .map(|v| {
                let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
                [v[0] / n, v[1] / n]
            })
            .collect();
        let sim = |i: usize, j: usize| (unit[i][0] * unit[j][0] + unit[i][1] * unit[j][1]) / t;
        (0..rows)
            .map(|i| {
                let pos = (i + rows / 2) % rows;
                let denom: f64 = (0..rows).filter(|&j| j != i).map(|j| sim(i, j).exp()).sum();
                -(sim(i, pos).exp() / denom).ln()
            })
            .sum::<f64>()
            / rows as f64
    }

    fn loss(z: &[[f64; 2]], t: f64) -> f64 {
        let flat: Vec<f32> = z.iter().flat_map(|v| [v[0] as f32, v[1] as f32]).collect();
        let z = Tensor::<CpuBackend, 2>::from_data(
            TensorData::new(flat, [z.len(), 2]),
            &Default::default(),
        );
        NtXentLoss::new(t).forward(z).into_scalar() as f64
    }

    #[test]
    fn matches_hand_computed_value() {
        let z = [[1.0, 0.0], [0.0, 2.0], [3.0, 0.1], [-0.5, 1.0]];
        for t in [0.5, 0.2, 1.0] {
            let (got, want) = (loss(&z, t), reference(&z, t));
            assert!((got - want).abs() < 1e-5, "T={t}: {got} vs {want}");
        }
    }

    #[test]
    fn known_closed_form_cases() {
        // Views identical, the two images orthogonal: each row has one positive with s=1/T,
        // and negatives with s=0 (the other image, twice). loss = -ln(e^2 / (e^2 + 2)) at T=0.5.
        let z = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]];
        let want = -((2.0f64).exp() / ((2.0f64).exp() + 2.0)).ln();
        assert!((loss(&z, 0.5) - want).abs() < 1e-5);
        // Scaling a projection does not change the loss (it is on the unit sphere).
        let scaled = [[5.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.3]];
        assert!((loss(&scaled, 0.5) - want).abs() < 1e-5);
    }

    #[test]
    fn gradient_is_finite_for_identical_rows() {
        use burn::backend::Autodiff;
        type B = Autodiff<CpuBackend>;
        let z = Tensor::<B, 2>::ones([4, 3], &Default::default()).require_grad();
        let loss = NtXentLoss::new(0.5).forward(z.clone());
        let grads = loss.backward();
        let g: Vec<f32> = z.grad(&grads).unwrap().into_data().to_vec().unwrap();
        assert!(g.iter().all(|v| v.is_finite()));
    }
}
