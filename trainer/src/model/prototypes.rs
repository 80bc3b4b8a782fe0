//! The prototype layer of DINO's head: the projection, L2-normalised, scored against `count`
//! prototypes by a weight-normalised Linear layer without bias (`nn.utils.weight_norm(
//! nn.Linear(bottleneck, count, bias=False))` in the DINO and solo-learn code):
//! `logits = normalize(z) · (g ⊙ v / ‖v‖)`, each prototype's column `v_k` divided by its own
//! norm. With `normalized` (DINO's `norm_last_layer`, the default) the scale `g` stays 1 and is
//! no parameter; otherwise it is trained, starting at 1.

use crate::eval::knn::l2_normalize;
use crate::precision::{to_compute, to_f32};
use burn::module::{Initializer, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// `[model.prototypes]`: the prototype layer after the projector (DINO).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrototypesConfig {
    /// Number of prototypes (DINO's output dimension K).
    pub count: usize,
    /// Every prototype has norm 1 (DINO's `norm_last_layer`); `false` trains a scale per
    /// prototype.
    pub normalized: bool,
}

impl Default for PrototypesConfig {
    /// solo-learn's CIFAR-10 DINO: 4096 prototypes of norm 1.
    fn default() -> Self {
        Self {
            count: 4096,
            normalized: true,
        }
    }
}

impl PrototypesConfig {
    /// The layer for projections of size `d_in`: directions as PyTorch's `nn.Linear` draws its
    /// weight (uniform on `±1/sqrt(d_in)`; only their direction matters), scales 1.
    pub fn init<B: Backend>(&self, d_in: usize, device: &B::Device) -> Prototypes<B> {
        let uniform = Initializer::KaimingUniform {
            gain: 1.0 / 3f64.sqrt(),
            fan_out_only: false,
        };
        Prototypes {
            weight_v: uniform.init_with([d_in, self.count], Some(d_in), Some(self.count), device),
            weight_g: (!self.normalized).then(|| Initializer::Ones.init([self.count], device)),
        }
    }
}

/// The weight-normalised prototypes: `weight_v` `[d_in, count]` (Burn's `[in, out]` layout),
/// `weight_g` `[count]` when the scales are trained.
#[derive(Module, Debug)]
pub struct Prototypes<B: Backend> {
    pub weight_v: Param<Tensor<B, 2>>,
    pub weight_g: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Prototypes<B> {
    /// Logits `[N, count]` of projections `z` `[N, d_in]`.
    pub fn forward(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let v = self.weight_v.val();
        let norms = v.clone().powi_scalar(2).sum_dim(0).sqrt(); // [1, count]
        let mut weight = v / norms;
        if let Some(g) = &self.weight_g {
            weight = weight * g.val().unsqueeze_dim(0);
        }
        // In this thread's precision, as every other linear layer.
        let logits =
            burn::tensor::module::linear(to_compute(l2_normalize(z)), to_compute(weight), None);
        to_f32(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    #[test]
    fn logits_are_cosines_with_the_prototypes_times_their_scale() {
        let device = Default::default();
        let layer = Prototypes::<CpuBackend> {
            // Prototypes (3, 4) and (0, -2): unit directions (0.6, 0.8) and (0, -1).
            weight_v: Param::from_tensor(Tensor::from_floats([[3.0, 0.0], [4.0, -2.0]], &device)),
            weight_g: None,
        };
        let z = Tensor::<CpuBackend, 2>::from_floats([[10.0, 0.0], [0.0, 0.5]], &device);
        let logits: Vec<f32> = layer.forward(z).into_data().to_vec().unwrap();
        let want = [0.6, 0.0, 0.8, -1.0];
        for (got, want) in logits.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{logits:?}");
        }
        let scaled = Prototypes {
            weight_g: Some(Param::from_tensor(Tensor::from_floats([2.0, 3.0], &device))),
            ..layer
        };
        let z = Tensor::<CpuBackend, 2>::from_floats([[1.0, 0.0]], &device);
        let logits: Vec<f32> = scaled.forward(z).into_data().to_vec().unwrap();
        assert!(
            (logits[0] - 1.2).abs() < 1e-6 && logits[1].abs() < 1e-6,
            "{logits:?}"
        );
    }

    #[test]
    fn normalized_prototypes_have_no_scale_parameter() {
        let device = Default::default();
        let fixed = PrototypesConfig::default().init::<CpuBackend>(8, &device);
        assert!(fixed.weight_g.is_none());
        assert_eq!(fixed.weight_v.dims(), [8, 4096]);
        let trained = PrototypesConfig {
            count: 5,
            normalized: false,
        }
        .init::<CpuBackend>(8, &device);
        assert_eq!(trained.weight_g.unwrap().dims(), [5]);
        assert_eq!(trained.weight_v.dims(), [8, 5]);
    }
}
