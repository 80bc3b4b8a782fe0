//! SwAV (Caron et al., NeurIPS 2020): swapped prediction of cluster assignments. The projection
//! of every view (L2-normalised) is scored against K prototypes; each global view's scores go
//! through Sinkhorn-Knopp, which spreads the batch evenly over the prototypes, and every other
//! view must predict that assignment:
//! `loss = mean over (global g, view v != g) of H(Q_g, softmax(p_v / T))`, as solo-learn's
//! `swav.py` and `swav_loss_func`. With small batches a queue of the last global views'
//! projections joins the Sinkhorn-Knopp input from epoch `queue_start_epoch` on; the
//! prototypes stay frozen for the first `freeze_prototypes_epochs`. Multi-crop as DINO's.

use super::multi_crop::{
    freeze_prototypes, require_prototypes, student_logits, swapped_cross_entropy,
    validate_global_views,
};
use super::{Method, MethodConfig, MethodSettings, Preset, StepOutput};
use crate::backend::TrainBackend;
use crate::data::augment::{AugmentConfig, PerView, ViewRecipe};
use crate::data::loader::Views;
use crate::distributed::sync::{gather_view_rows, gather_views};
use crate::model::{HeadConfig, ModelConfig, PrototypesConfig, SslModel};
use crate::optim::{OptimConfig, Schedule};
use crate::records::{decode_record, encode_record};
use anyhow::{ensure, Result};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

/// SwAV's settings (`[method] name = "swav"`); the defaults are solo-learn's CIFAR-10 preset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwavConfig {
    /// The softmax temperature of the predictions.
    pub temperature: f64,
    /// Sinkhorn-Knopp's entropy weight epsilon.
    pub sinkhorn_epsilon: f64,
    /// Sinkhorn-Knopp's iterations.
    pub sinkhorn_iterations: usize,
    /// Projections per global view kept from earlier batches (0: no queue).
    pub queue_size: usize,
    /// The 0-based epoch from which the queue joins the assignments.
    pub queue_start_epoch: usize,
    /// Epochs at the start during which the prototypes are not updated.
    pub freeze_prototypes_epochs: usize,
}

impl Default for SwavConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            sinkhorn_epsilon: 0.05,
            sinkhorn_iterations: 3,
            queue_size: 3840,
            queue_start_epoch: 50,
            freeze_prototypes_epochs: 2,
        }
    }
}

impl MethodSettings for SwavConfig {
    /// solo-learn's CIFAR-10 SwAV (`scripts/pretrain/cifar/swav.yaml`): projector 2048 -> 128
    /// with BatchNorm, 3,000 prototypes of norm 1, T 0.1, Sinkhorn-Knopp 3 iterations at
    /// epsilon 0.05, a queue of 3,840 from epoch 50, prototypes frozen for 2 epochs, LARS 0.6
    /// (batch 256) with weight decay 1e-6, `symmetric.yaml` augmentations (jitter 0.8 / 0.8 /
    /// 0.8 / 0.2, blur 0.5 on both views), two views.
    fn preset() -> Preset {
        Preset {
            method: MethodConfig::Swav(SwavConfig::default()),
            head: HeadConfig {
                hidden: 2048,
                out: 128,
                layers: 2,
                batchnorm: true,
                ..Default::default()
            },
            predictor: None,
            prototypes: Some(PrototypesConfig {
                count: 3000,
                normalized: true,
            }),
            optim: OptimConfig::lars_preset(0.6, 1e-6),
            augment: AugmentConfig {
                brightness: 0.8,
                contrast: 0.8,
                saturation: 0.8,
                hue: 0.2,
                blur_prob: PerView([0.5, 0.5]),
                ..Default::default()
            },
        }
    }

    fn build<B: TrainBackend>(
        &self,
        model_config: &ModelConfig,
        _: &SslModel<B>,
        device: &B::Device,
    ) -> Box<dyn Method<B>> {
        Box::new(Swav::new(*self, model_config.head.out, device))
    }

    fn temperature_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.temperature)
    }

    fn validate(&self, _: usize, model: &ModelConfig) -> Result<()> {
        ensure!(
            self.temperature > 0.0 && self.sinkhorn_epsilon > 0.0,
            "method.temperature and method.sinkhorn_epsilon must be positive"
        );
        ensure!(
            self.sinkhorn_iterations >= 1,
            "method.sinkhorn_iterations must be at least 1"
        );
        require_prototypes("SwAV", "swav", model)
    }

    fn validate_views(&self, name: &str, views: &[ViewRecipe]) -> Result<()> {
        validate_global_views(name, views)
    }
}

/// solo-learn's `SinkhornKnopp` of prototype scores `[B, K]` (B: the global batch and any
/// queue): `Q = exp(scores / epsilon)`, normalised to sum 1, then `iterations` times each
/// prototype's total to `1 / K` and each row's to `1 / B`; returns `B * Q`, whose rows are
/// assignments (they sum to 1).
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use trainer::sinkhorn_knopp;
///
/// let device = Default::default();
/// // Four images that all prefer prototype 0: Sinkhorn-Knopp splits them over both.
/// let scores = Tensor::<Flex, 2>::from_floats(
///     [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], &device);
/// let q = sinkhorn_knopp(scores, 0.05, 3);
/// let per_prototype: Vec<f32> = q.clone().sum_dim(0).into_data().to_vec().unwrap();
/// assert!(per_prototype.iter().all(|&c| (c - 2.0).abs() < 0.05)); // 2 images each
/// let per_image: Vec<f32> = q.sum_dim(1).into_data().to_vec().unwrap();
/// assert!(per_image.iter().all(|&r| (r - 1.0).abs() < 1e-5));
/// ```
pub fn sinkhorn_knopp<B: Backend>(
    scores: Tensor<B, 2>,
    epsilon: f64,
    iterations: usize,
) -> Tensor<B, 2> {
    let [b, k] = scores.dims();
    // Shifting every score by the same amount changes nothing after the first normalisation;
    // by the maximum, exp cannot overflow (with scales trained, scores exceed cosines).
    let max = scores.clone().max().reshape([1, 1]);
    let mut q = ((scores - max) / epsilon).exp().transpose(); // [K, B]
    q = q.clone() / q.clone().sum().reshape([1, 1]);
    for _ in 0..iterations {
        q = q.clone() / q.clone().sum_dim(1) / k as f64;
        q = q.clone() / q.clone().sum_dim(0) / b as f64;
    }
    (q * b as f64).transpose()
}

/// The queue: what a checkpoint keeps of SwAV.
#[derive(Module, Debug)]
pub struct SwavState<B: Backend> {
    /// `[2, queue_size, d]`: the projections of each global view of the last batches, newest
    /// first; zeros until filled.
    pub queue: Option<Param<Tensor<B, 3>>>,
}

pub struct Swav<B: TrainBackend> {
    config: SwavConfig,
    state: SwavState<B>,
    /// 0-based epoch of the step being taken (queue, prototype freeze).
    epoch: usize,
    /// The global views' projections of the last step, `[2, N, d]`, queued after the update.
    pending: Option<Tensor<B, 3>>,
    device: B::Device,
}

impl<B: TrainBackend> Swav<B> {
    /// SwAV on projections of size `d`.
    pub fn new(config: SwavConfig, d: usize, device: &B::Device) -> Self {
        let queue = (config.queue_size > 0).then(|| {
            Param::from_tensor(Tensor::zeros([2, config.queue_size, d], device))
                .set_require_grad(false)
        });
        Self {
            config,
            state: SwavState { queue },
            epoch: 0,
            pending: None,
            device: device.clone(),
        }
    }

    /// The same method with `queue` (`[2, queue_size, d]`) as its queue (the golden test gives
    /// PyTorch's).
    pub fn with_queue(mut self, queue: Tensor<B, 3>) -> Self {
        self.state.queue = Some(Param::from_tensor(queue.detach()).set_require_grad(false));
        self
    }

    /// The queue's rows of global view `view` (`[queue_size, d]`), when it takes part now.
    fn queued(&self, view: usize) -> Option<Tensor<B, 2>> {
        if self.epoch < self.config.queue_start_epoch {
            return None;
        }
        let queue = self.state.queue.as_ref()?.val();
        let [_, size, d] = queue.dims();
        Some(
            queue
                .slice([view..view + 1, 0..size, 0..d])
                .reshape([size, d]),
        )
    }
}

impl<B: TrainBackend> Method<B> for Swav<B> {
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B> {
        let n = views.images;
        let (z, logits) = student_logits(model, views);
        let [rows, d] = z.dims();
        let [_, k] = logits.dims();
        let logits = gather_view_rows(logits, rows / n);
        let globals = gather_views(z.slice([0..2 * n, 0..d]).detach());
        let global_n = globals.dims()[0] / 2;
        let prototypes = model
            .prototypes
            .as_ref()
            .expect("SwAV's model has prototypes (checked with the config)");
        // Each global view's assignments of the global batch, with the queue's scores under
        // the current prototypes when it takes part; no gradient.
        let assignments: Vec<_> = (0..2)
            .map(|view| {
                let scores = logits
                    .clone()
                    .slice([view * global_n..(view + 1) * global_n, 0..k])
                    .detach();
                let scores = match self.queued(view) {
                    Some(queue) => Tensor::cat(vec![scores, prototypes.forward(queue).detach()], 0),
                    None => scores,
                };
                sinkhorn_knopp(
                    scores,
                    self.config.sinkhorn_epsilon,
                    self.config.sinkhorn_iterations,
                )
                .slice([0..global_n, 0..k])
            })
            .collect();
        let log_probs = log_softmax(logits / self.config.temperature, 1);
        let loss = swapped_cross_entropy(Tensor::cat(assignments, 0), log_probs);
        self.pending = Some(globals.clone().reshape([2, global_n, d]));
        StepOutput {
            loss,
            projections: globals,
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

    fn after_update(&mut self, _: &SslModel<B>, _: usize, _: &Schedule) {
        let (Some(newest), Some(queue)) = (self.pending.take(), self.state.queue.take()) else {
            return;
        };
        // The newest projections first, the oldest drop out (solo-learn's shift).
        let queue = queue.map(|q| {
            let [views, size, d] = q.dims();
            Tensor::cat(vec![newest, q], 1)
                .slice([0..views, 0..size, 0..d])
                .detach()
        });
        self.state.queue = Some(queue);
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
    use crate::methods::tests::matrix;

    #[test]
    fn sinkhorn_knopp_matches_the_reference_code() {
        // solo-learn's SinkhornKnopp(num_iters=3, epsilon=0.05) on these scores, in float64:
        // the same steps written out in numpy.
        let scores = [
            [0.3, -0.2, 0.5],
            [0.1, 0.4, -0.3],
            [-0.5, 0.2, 0.0],
            [0.6, 0.6, 0.1],
        ];
        let mut q: Vec<Vec<f64>> = (0..3)
            .map(|j| scores.iter().map(|row| (row[j] / 0.05f64).exp()).collect())
            .collect(); // [K, B]
        let total: f64 = q.iter().flatten().sum();
        q.iter_mut().flatten().for_each(|v| *v /= total);
        for _ in 0..3 {
            for row in q.iter_mut() {
                let s: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= s * 3.0);
            }
            for b in 0..4 {
                let s: f64 = q.iter().map(|row| row[b]).sum();
                q.iter_mut().for_each(|row| row[b] /= s * 4.0);
            }
        }
        let got: Vec<f32> = sinkhorn_knopp(matrix(&scores, 1.0), 0.05, 3)
            .into_data()
            .to_vec()
            .unwrap();
        for b in 0..4 {
            for j in 0..3 {
                let want = q[j][b] * 4.0;
                let have = got[b * 3 + j] as f64;
                assert!((have - want).abs() < 1e-5, "[{b}, {j}]: {have} vs {want}");
            }
        }
    }

    #[test]
    fn the_queue_takes_the_newest_global_projections_first() {
        let device = Default::default();
        type B = burn::backend::Autodiff<CpuBackend>;
        let config = SwavConfig {
            queue_size: 3,
            ..Default::default()
        };
        let mut swav = Swav::<B>::new(config, 1, &device);
        let model = ModelConfig::small(2, 4, 1).init::<B>(&device);
        let schedule = Schedule {
            batch_size: 2,
            steps_per_epoch: 1,
            total_steps: 2,
        };
        for step in 0..2 {
            // Step s queues 10s + (0, 1) for view 0 and 100 + 10s + (0, 1) for view 1.
            let values: Vec<f32> = [0, 100]
                .iter()
                .flat_map(|v| (0..2).map(move |i| (v + 10 * step + i) as f32))
                .collect();
            swav.pending = Some(Tensor::from_data(
                burn::tensor::TensorData::new(values, [2, 2, 1]),
                &device,
            ));
            swav.after_update(&model, step, &schedule);
        }
        let queue: Vec<f32> = swav
            .state
            .queue
            .unwrap()
            .val()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(queue, vec![10.0, 11.0, 0.0, 110.0, 111.0, 100.0]);
    }
}
