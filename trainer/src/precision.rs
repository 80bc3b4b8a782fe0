//! Mixed precision, as PyTorch's `torch.autocast` + `GradScaler`: the weights, the optimizer
//! state, BatchNorm (statistics and output), the activations between layers, the loss and every
//! reduction stay f32; inside [`autocast`] the convolutions and linear layers cast their input
//! and weights to f16 or bf16 (differentiable casts, so the gradients that reach the f32
//! weights are f32) and their output back to f32. With f16, a [`GradScaler`] multiplies the loss
//! before backward so that small gradients do not flush to zero in f16, divides the gradients
//! back, and skips the step (halving the scale) when they overflowed.
//!
//! Burn 0.21 has no automatic mixed precision; this is the part of it the network needs. It is
//! for GPUs (tensor cores); the CPU backends compute in f32.

use burn::module::AutodiffModule;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// The precision of convolutions and linear layers in training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (TF32 matmuls on NVIDIA sm80+ where the backend uses them).
    #[default]
    F32,
    /// bfloat16: f32's range with 8 bits of mantissa; no loss scaling needed (CUDA, sm80+).
    Bf16,
    /// IEEE half: 11 bits of mantissa, largest value 65504; dynamic loss scaling.
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// The dtype convolutions and linears compute in, `None` for f32.
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(FloatDType::BF16),
            Self::F16 => Some(FloatDType::F16),
        }
    }
}

thread_local! {
    static COMPUTE: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// Restores the thread's previous precision when dropped.
pub struct AutocastGuard {
    previous: Precision,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        COMPUTE.with(|c| c.set(self.previous));
    }
}

/// Convolutions and linear layers run by this thread compute in `precision` until the guard
/// is dropped (a thread-local setting, as `torch.autocast`: each rank's thread sets its own).
pub fn autocast(precision: Precision) -> AutocastGuard {
    AutocastGuard {
        previous: COMPUTE.with(|c| c.replace(precision)),
    }
}

/// The precision [`autocast`] set for this thread (f32 outside it).
pub fn current() -> Precision {
    COMPUTE.with(|c| c.get())
}

/// `tensor` in the dtype convolutions and linears compute in on this thread.
pub fn to_compute<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, D> {
    match current().compute_dtype() {
        Some(dtype) => tensor.cast(dtype),
        None => tensor,
    }
}

/// `tensor` back in f32 after a low-precision layer (a no-op in f32).
pub fn to_f32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, D> {
    match current().compute_dtype() {
        Some(_) => tensor.cast(FloatDType::F32),
        None => tensor,
    }
}

/// `fc` applied to `x` in this thread's precision; output in f32.
pub fn linear<B: Backend>(fc: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    if current() == Precision::F32 {
        return fc.forward(x);
    }
    let bias = fc.bias.as_ref().map(|b| to_compute(b.val()));
    let y = burn::tensor::module::linear(to_compute(x), to_compute(fc.weight.val()), bias);
    to_f32(y)
}

/// Whether `device` computes in `precision`: a low-precision matmul, its cast back and a sum
/// must run and give the exact answer (cubecl panics deep inside on a type the device lacks).
pub fn check_supported<B: Backend>(precision: Precision, device: &B::Device) -> anyhow::Result<()> {
    let Some(dtype) = precision.compute_dtype() else {
        return Ok(());
    };
    let device = device.clone();
    let probe = crate::panics::catch_quietly(move || {
        let ones = Tensor::<B, 2>::ones([4, 4], &device).cast(dtype);
        let product = ones.clone().matmul(ones).cast(FloatDType::F32);
        product.sum().into_scalar().elem::<f64>()
    });
    match probe {
        Ok(sum) if sum == 64.0 => Ok(()),
        Ok(sum) => anyhow::bail!(
            "--precision {}: this device computed a 4x4 matmul of ones in {} as summing to \
             {sum}, not 64; use --precision f32",
            precision.name(),
            precision.name()
        ),
        Err(reason) => anyhow::bail!(
            "--precision {}: this device does not compute in {} ({reason}); use --precision f32{}",
            precision.name(),
            precision.name(),
            if precision == Precision::Bf16 {
                " or f16 (bf16 needs CUDA on an sm80+ GPU; wgpu has no bf16)"
            } else {
                ""
            }
        ),
    }
}

/// Dynamic loss scaling for f16, as `torch.cuda.amp.GradScaler` with its defaults: the loss is
/// multiplied by `scale` before backward; a step whose gradients are not finite is skipped and
/// halves the scale; 2000 finite steps in a row double it. Disabled (scale 1, never skips)
/// for f32 and bf16. It also carries the precision the step's forward pass runs in
/// ([`autocast`]). Saved in checkpoints, so a resumed run continues with the same scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    pub precision: Precision,
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub good_steps: usize,
    pub growth_interval: usize,
    /// Steps skipped because their gradients overflowed, since the run started.
    pub skipped_steps: usize,
}

/// PyTorch's `init_scale`: 2^16.
pub const INITIAL_LOSS_SCALE: f64 = 65536.0;

impl Default for GradScaler {
    /// Disabled: what f32 and bf16 runs, and checkpoints from before mixed precision, have.
    fn default() -> Self {
        Self::new(Precision::F32)
    }
}

impl GradScaler {
    /// Scaling for `precision`: enabled for f16 only, starting at [`INITIAL_LOSS_SCALE`].
    pub fn new(precision: Precision) -> Self {
        Self::with_scale(precision, INITIAL_LOSS_SCALE)
    }

    /// Starting at `scale` (f16; 1 otherwise).
    pub fn with_scale(precision: Precision, scale: f64) -> Self {
        Self {
            precision,
            scale: if precision == Precision::F16 {
                scale
            } else {
                1.0
            },
            good_steps: 0,
            growth_interval: 2000,
            skipped_steps: 0,
        }
    }

    /// Whether the loss is scaled: f16 only (bf16 has f32's range).
    pub fn enabled(&self) -> bool {
        self.precision == Precision::F16
    }

    /// What the loss is multiplied by before backward (1 when disabled).
    pub fn loss_factor(&self) -> f64 {
        if self.enabled() {
            self.scale
        } else {
            1.0
        }
    }

    /// Divides `grads` back by the loss factor; returns whether every one of them is finite
    /// (always true when disabled: f32 and bf16 steps are never skipped here).
    pub fn unscale<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        grads: &mut GradientsParams,
    ) -> bool {
        if !self.enabled() {
            return true;
        }
        crate::optim::clip::scale_gradients(model, grads, 1.0 / self.scale);
        crate::optim::clip::global_norm(model, grads).is_finite()
    }

    /// After a step: `finite` false halves the scale and counts a skipped step; `growth_interval`
    /// finite steps in a row double it.
    pub fn update(&mut self, finite: bool) {
        if !self.enabled() {
            return;
        }
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
            self.skipped_steps += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::backend::Autodiff;
    use burn::nn::LinearConfig;

    type B = Autodiff<CpuBackend>;

    fn linear_and_grads(value: f32) -> (Linear<B>, GradientsParams) {
        let device = Default::default();
        let linear: Linear<B> = LinearConfig::new(2, 2).init(&device);
        let loss =
            linear.weight.val().sum().mul_scalar(value) + linear.bias.as_ref().unwrap().val().sum();
        let grads = GradientsParams::from_grads(loss.backward(), &linear);
        (linear, grads)
    }

    #[test]
    fn autocast_is_scoped_to_the_thread_and_the_guard() {
        assert_eq!(current(), Precision::F32);
        {
            let _outer = autocast(Precision::F16);
            assert_eq!(current(), Precision::F16);
            std::thread::spawn(|| assert_eq!(current(), Precision::F32))
                .join()
                .unwrap();
            {
                let _inner = autocast(Precision::Bf16);
                assert_eq!(current(), Precision::Bf16);
            }
            assert_eq!(current(), Precision::F16);
        }
        assert_eq!(current(), Precision::F32);
    }

    #[test]
    fn scaler_unscales_finite_gradients_and_grows_after_the_interval() {
        let mut scaler = GradScaler::with_scale(Precision::F16, 8.0);
        scaler.growth_interval = 3;
        // Gradients of 8 * loss: weight 3 * 8 = 24, bias 8.
        let (linear, mut grads) = linear_and_grads(3.0 * 8.0);
        let bias_id = linear.bias.as_ref().unwrap().id;
        let mut scaled = GradientsParams::new();
        scaled.register(
            bias_id,
            grads
                .remove::<CpuBackend, 1>(bias_id)
                .unwrap()
                .mul_scalar(8.0),
        );
        scaled.register(
            linear.weight.id,
            grads.remove::<CpuBackend, 2>(linear.weight.id).unwrap(),
        );
        assert!(scaler.unscale(&linear, &mut scaled));
        let w = scaled.get::<CpuBackend, 2>(linear.weight.id).unwrap();
        let b = scaled.get::<CpuBackend, 1>(bias_id).unwrap();
        assert_eq!(w.into_data().to_vec::<f32>().unwrap(), vec![3.0; 4]);
        assert_eq!(b.into_data().to_vec::<f32>().unwrap(), vec![1.0; 2]);
        for _ in 0..2 {
            scaler.update(true);
        }
        assert_eq!(scaler.scale, 8.0);
        scaler.update(true);
        assert_eq!((scaler.scale, scaler.good_steps), (16.0, 0));
    }

    #[test]
    fn scaler_reports_an_overflow_and_halves_the_scale() {
        let mut scaler = GradScaler::with_scale(Precision::F16, 1024.0);
        let (linear, mut grads) = linear_and_grads(f32::INFINITY);
        assert!(!scaler.unscale(&linear, &mut grads));
        scaler.update(false);
        assert_eq!((scaler.scale, scaler.skipped_steps), (512.0, 1));
    }

    #[test]
    fn disabled_scaler_changes_nothing() {
        let mut scaler = GradScaler::new(Precision::Bf16);
        assert_eq!(scaler.loss_factor(), 1.0);
        let (linear, mut grads) = linear_and_grads(f32::INFINITY);
        assert!(scaler.unscale(&linear, &mut grads));
        scaler.update(false);
        assert_eq!((scaler.scale, scaler.skipped_steps), (1.0, 0));
        assert!(GradScaler::new(Precision::F16).enabled());
        assert_eq!(GradScaler::new(Precision::F16).scale, 65536.0);
    }

    #[test]
    fn precision_is_refused_where_the_device_lacks_it() {
        // f32 is always there; the flex CPU backend's answer for f16 is whatever it computes,
        // but the probe must not panic.
        check_supported::<CpuBackend>(Precision::F32, &Default::default()).unwrap();
        let _ = check_supported::<CpuBackend>(Precision::F16, &Default::default());
    }
}
