//! DINO (Caron et al., ICCV 2021): self-distillation with no labels. A student (encoder,
//! projector, prototypes) learns to match, on every other view, the output distribution of a
//! momentum teacher on the two global views:
//! `loss = mean over (teacher global g, student view v != g) of H(P_t(g), P_s(v))`, with
//! `P_t = softmax((t - center) / T_t)` (centred and sharpened, no gradient) and
//! `P_s = softmax(s / T_s)`. The center follows the teacher's mean output with momentum 0.9;
//! the teacher temperature warms up linearly over the first epochs; the prototypes stay frozen
//! for the first epoch. As the authors' `DINOLoss` and `MultiCropWrapper` (each group of views
//! of one size through the encoder in one pass, the head over all views at once: see
//! `multi_crop`) and solo-learn's `dino.py`.

use super::momentum::{check_tau, momentum_copy, tau_at, update_momentum, MomentumNetwork};
use super::multi_crop::{
    freeze_prototypes, require_prototypes, student_logits, swapped_cross_entropy,
    validate_global_views,
};
use super::{Method, MethodConfig, MethodSettings, Preset, StepOutput};
use crate::backend::TrainBackend;
use crate::data::augment::{AugmentConfig, ViewRecipe};
use crate::data::loader::Views;
use crate::distributed::sync::{from_rank0, gather_view_rows, gather_views};
use crate::model::{
    Activation, HeadConfig, HeadInit, ModelConfig, Prototypes, PrototypesConfig, SslModel,
};
use crate::optim::{OptimConfig, Schedule};
use crate::records::{decode_record, encode_record};
use anyhow::{ensure, Result};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use serde::{Deserialize, Serialize};

/// DINO's settings (`[method] name = "dino"`); the defaults are solo-learn's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DinoConfig {
    /// The student's softmax temperature.
    pub student_temperature: f64,
    /// The teacher's softmax temperature after the warm-up.
    pub teacher_temperature: f64,
    /// The teacher's temperature in the first epoch of the warm-up.
    pub warmup_teacher_temperature: f64,
    /// Epochs over which the teacher's temperature rises linearly (0: none).
    pub warmup_teacher_temperature_epochs: usize,
    /// Momentum of the center (the teacher's running mean output).
    pub center_momentum: f64,
    /// Teacher momentum at the first step.
    pub tau_base: f64,
    /// Teacher momentum at the last step (cosine schedule in between).
    pub tau_final: f64,
    /// Epochs at the start during which the prototypes are not updated (DINO's
    /// `freeze_last_layer`).
    pub freeze_prototypes_epochs: usize,
}

impl Default for DinoConfig {
    fn default() -> Self {
        Self {
            student_temperature: 0.1,
            teacher_temperature: 0.07,
            warmup_teacher_temperature: 0.04,
            warmup_teacher_temperature_epochs: 0,
            center_momentum: 0.9,
            tau_base: 0.9995,
            tau_final: 1.0,
            freeze_prototypes_epochs: 1,
        }
    }
}

impl DinoConfig {
    /// The teacher's temperature in 0-based epoch `epoch`: `np.linspace(warmup, final,
    /// warmup_epochs)` over the warm-up, then the final value (the reference's schedule).
    pub fn teacher_temperature_at(&self, epoch: usize) -> f64 {
        let warmup = self.warmup_teacher_temperature_epochs;
        match warmup {
            _ if epoch >= warmup => self.teacher_temperature,
            1 => self.warmup_teacher_temperature,
            _ => {
                let t = epoch as f64 / (warmup - 1) as f64;
                self.warmup_teacher_temperature
                    + t * (self.teacher_temperature - self.warmup_teacher_temperature)
            }
        }
    }
}

impl MethodSettings for DinoConfig {
    /// solo-learn's CIFAR-10 DINO (`scripts/pretrain/cifar/dino.yaml`): projector 2048-2048 ->
    /// 256 with GELU and no BatchNorm, 4096 prototypes of norm 1, tau 0.9995 -> 1, LARS lr 0.3
    /// (batch 256) and weight decay 1e-6, asymmetric augmentations (two views).
    fn preset() -> Preset {
        Preset {
            method: MethodConfig::Dino(DinoConfig::default()),
            head: HeadConfig {
                hidden: 2048,
                out: 256,
                layers: 3,
                batchnorm: false,
                activation: Activation::Gelu,
                init: HeadInit::TruncNormal,
                ..Default::default()
            },
            predictor: None,
            prototypes: Some(PrototypesConfig::default()),
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
        Box::new(Dino::new(*self, model_config, model, device))
    }

    fn validate(&self, _: usize, model: &ModelConfig) -> Result<()> {
        ensure!(
            self.student_temperature > 0.0
                && self.teacher_temperature > 0.0
                && self.warmup_teacher_temperature > 0.0,
            "method.student_temperature, method.teacher_temperature and \
             method.warmup_teacher_temperature must be positive"
        );
        check_tau(self.tau_base, self.tau_final)?;
        ensure!(
            (0.0..=1.0).contains(&self.center_momentum),
            "method.center_momentum must be in [0, 1]"
        );
        require_prototypes("DINO", "dino", model)
    }

    fn validate_views(&self, name: &str, views: &[ViewRecipe]) -> Result<()> {
        validate_global_views(name, views)
    }
}

/// DINO's loss of the student's logits on every view (`[V * N, K]`, view-major) against the
/// teacher's on the two global views (`[2 * N, K]`), given the center `[1, K]`: the mean over
/// the `2 * (V - 1)` pairs of a teacher view and another student view of the cross-entropy
/// `-sum P_t log P_s`, each averaged over the images.
pub fn dino_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    center: Tensor<B, 2>,
    student_temperature: f64,
    teacher_temperature: f64,
) -> Tensor<B, 1> {
    let targets = softmax((teacher - center) / teacher_temperature, 1).detach();
    swapped_cross_entropy(targets, log_softmax(student / student_temperature, 1))
}

/// The teacher and the center: what a checkpoint keeps of DINO.
#[derive(Module, Debug)]
pub struct DinoState<B: Backend> {
    /// Momentum copy of the encoder and projector.
    pub teacher: MomentumNetwork<B>,
    /// Momentum copy of the prototypes.
    pub teacher_prototypes: Prototypes<B>,
    /// `[1, K]`: the running mean of the teacher's logits.
    pub center: Param<Tensor<B, 2>>,
}

pub struct Dino<B: TrainBackend> {
    config: DinoConfig,
    state: DinoState<B>,
    /// 0-based epoch of the step being taken (teacher temperature, prototype freeze).
    epoch: usize,
    device: B::Device,
}

impl<B: TrainBackend> Dino<B> {
    pub fn new(
        config: DinoConfig,
        model_config: &ModelConfig,
        model: &SslModel<B>,
        device: &B::Device,
    ) -> Self {
        let teacher = MomentumNetwork::copy_of(model, model_config, device);
        let (online, prototypes) = match (&model.prototypes, model_config.prototypes) {
            (Some(online), Some(config)) => (online, config),
            _ => panic!("DINO's model has prototypes (checked by its validation)"),
        };
        let fresh = prototypes.init(model_config.head.out, device);
        let count = prototypes.count;
        Self {
            config,
            state: DinoState {
                teacher,
                teacher_prototypes: momentum_copy(online, fresh),
                center: Param::from_tensor(Tensor::zeros([1, count], device))
                    .set_require_grad(false),
            },
            epoch: 0,
            device: device.clone(),
        }
    }

    /// The teacher's logits of the global views `[2N, 3, S, S]`, detached.
    fn teacher_logits(&self, globals: Tensor<B, 4>) -> Tensor<B, 2> {
        let z = self.state.teacher.forward(globals);
        self.state.teacher_prototypes.forward(z).detach()
    }
}

impl<B: TrainBackend> Method<B> for Dino<B> {
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B> {
        let n = views.images;
        let globals = {
            let [_, c, h, w] = views.groups[0].dims();
            views.groups[0].clone().slice([0..2 * n, 0..c, 0..h, 0..w])
        };
        let (z, student) = student_logits(model, views);
        let views_per_image = student.dims()[0] / n;
        let student = gather_view_rows(student, views_per_image);
        let teacher = gather_views(self.teacher_logits(globals));
        let center = self.state.center.val();
        let loss = dino_loss(
            student,
            teacher.clone(),
            center.clone(),
            self.config.student_temperature,
            self.config.teacher_temperature_at(self.epoch),
        );
        // The center follows the mean teacher output of the global batch, after the loss (as
        // the reference updates it inside the loss's forward).
        let m = self.config.center_momentum;
        let center = center * m + teacher.mean_dim(0) * (1.0 - m);
        self.state.center = Param::from_tensor(center.detach()).set_require_grad(false);
        let [_, d] = z.dims();
        StepOutput {
            loss,
            projections: gather_views(z.slice([0..2 * n, 0..d]).detach()),
        }
    }

    fn begin_step(&mut self, step: usize, schedule: &Schedule) {
        self.epoch = step / schedule.steps_per_epoch.max(1);
    }

    fn adjust_gradients(&self, model: &SslModel<B>, grads: &mut GradientsParams) {
        if self.epoch < self.config.freeze_prototypes_epochs {
            freeze_prototypes(model, grads);
        }
    }

    fn after_update(&mut self, model: &SslModel<B>, step: usize, schedule: &Schedule) {
        let tau = tau_at(
            self.config.tau_base,
            self.config.tau_final,
            step,
            schedule.total_steps,
        );
        let state = self.state.clone();
        let online = model
            .prototypes
            .as_ref()
            .expect("DINO's model has prototypes");
        self.state = DinoState {
            teacher: state.teacher.follow(model, tau),
            teacher_prototypes: update_momentum(state.teacher_prototypes, online, tau),
            center: state.center,
        };
    }

    fn share_rank0_state(&mut self) {
        self.state = from_rank0(self.state.clone());
    }

    fn save_state(&self) -> Result<Vec<u8>> {
        encode_record::<B, _>(self.state.clone().into_record())
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        let record = decode_record::<B, _>(bytes, &self.device)?;
        self.state = self.state.clone().load_record(record).no_grad();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::methods::tests::{matrix, scalar};

    #[test]
    fn loss_is_the_mean_cross_entropy_over_pairs_of_other_views() {
        // One image, three views (two global, one local), two prototypes; center 0, both
        // temperatures 1: the loss averages H(softmax(t_g), softmax(s_v)) over (g, v != g).
        let student = matrix(&[[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], 1.0);
        let teacher = matrix(&[[2.0, 0.0], [0.0, 1.0]], 1.0);
        let center = Tensor::<CpuBackend, 2>::zeros([1, 2], &Default::default());
        let softmax = |a: f64, b: f64| {
            let (ea, eb) = (a.exp(), b.exp());
            [ea / (ea + eb), eb / (ea + eb)]
        };
        let h = |p: [f64; 2], q: [f64; 2]| -(p[0] * q[0].ln() + p[1] * q[1].ln());
        let (t0, t1) = (softmax(2.0, 0.0), softmax(0.0, 1.0));
        let (s0, s1, s2) = (softmax(1.0, 0.0), softmax(0.0, 2.0), softmax(0.5, 0.5));
        let want = (h(t0, s1) + h(t0, s2) + h(t1, s0) + h(t1, s2)) / 4.0;
        let got = scalar(dino_loss(student, teacher, center, 1.0, 1.0));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn teacher_temperature_warms_up_linearly_then_stays() {
        let config = DinoConfig {
            warmup_teacher_temperature_epochs: 3,
            ..Default::default()
        };
        let temperatures: Vec<f64> = (0..5).map(|e| config.teacher_temperature_at(e)).collect();
        let want = [0.04, 0.055, 0.07, 0.07, 0.07];
        for (got, want) in temperatures.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{temperatures:?}");
        }
        assert_eq!(DinoConfig::default().teacher_temperature_at(0), 0.07);
    }
}
