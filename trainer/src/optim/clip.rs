//! Gradient clipping by the global L2 norm of all gradients, as PyTorch's
//! `torch.nn.utils.clip_grad_norm_` (Burn's optimizer option clips each tensor separately).

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let squares = grad.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + squares,
                None => squares,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, grad.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of `model`'s gradients in `grads` (0 when there are none; not finite
/// when one of them is not).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorm::<B> { grads, total: None };
    model.visit(&mut visitor);
    match visitor.total {
        Some(total) => total.sqrt().into_scalar().elem::<f64>(),
        None => 0.0,
    }
}

/// Multiplies every one of `model`'s gradients in `grads` by `factor`.
pub fn scale_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    model.visit(&mut Scale { grads, factor });
}

/// Scales all of `model`'s gradients by `min(1, max_norm / (norm + 1e-6))`, where `norm` is
/// their global L2 norm, and returns that norm (before clipping).
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = global_norm(model, grads);
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        scale_gradients(model, grads, factor);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};

    type B = Autodiff<CpuBackend>;

    /// A Linear(2, 2) whose weight gradients are all 3 and bias gradients all 4:
    /// global norm sqrt(4 * 9 + 2 * 16) = sqrt(68).
    fn known_grads() -> (Linear<B>, GradientsParams) {
        let device = Default::default();
        let linear: Linear<B> = LinearConfig::new(2, 2).init(&device);
        let loss = linear.weight.val().sum().mul_scalar(3.0)
            + linear.bias.as_ref().unwrap().val().sum().mul_scalar(4.0);
        let grads = GradientsParams::from_grads(loss.backward(), &linear);
        (linear, grads)
    }

    fn grad_values(linear: &Linear<B>, grads: &GradientsParams) -> (Vec<f32>, Vec<f32>) {
        let w = grads.get::<CpuBackend, 2>(linear.weight.id).unwrap();
        let b = grads
            .get::<CpuBackend, 1>(linear.bias.as_ref().unwrap().id)
            .unwrap();
        (
            w.into_data().to_vec().unwrap(),
            b.into_data().to_vec().unwrap(),
        )
    }

    #[test]
    fn scales_every_gradient_by_the_global_norm() {
        let (linear, mut grads) = known_grads();
        let norm = clip_grad_norm(&linear, &mut grads, 1.0);
        assert!((norm - 68f64.sqrt()).abs() < 1e-4, "{norm}");
        let (w, b) = grad_values(&linear, &grads);
        let scale = 1.0 / 68f32.sqrt();
        assert!(w.iter().all(|v| (v - 3.0 * scale).abs() < 1e-5), "{w:?}");
        assert!(b.iter().all(|v| (v - 4.0 * scale).abs() < 1e-5), "{b:?}");
    }

    #[test]
    fn gradients_under_the_limit_are_untouched() {
        let (linear, mut grads) = known_grads();
        clip_grad_norm(&linear, &mut grads, 100.0);
        let (w, b) = grad_values(&linear, &grads);
        assert_eq!((w, b), (vec![3.0; 4], vec![4.0; 2]));
    }
}
