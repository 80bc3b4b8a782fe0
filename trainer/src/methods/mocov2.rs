//! MoCo v2 (Chen, Fan, Girshick and He, 2020), in solo-learn's symmetric "MoCo V2+" form: the
//! query (online projection, L2-normalised) of each view must pick the momentum key encoder's
//! key of the other view among the negatives of a queue: InfoNCE with temperature,
//! `loss = (nce(q_a, k_b, queue_b) + nce(q_b, k_a, queue_a)) / 2`. After each step the batch's
//! keys replace the oldest entries of their view's queue (queue size a multiple of the batch).
//! The queue starts as random unit vectors and is saved in every checkpoint.

use super::momentum::{check_tau, tau_at, LegacyMomentumNetworkRecord, MomentumNetwork};
use super::{split_views, Method, MethodConfig, MethodSettings, Preset, StepOutput};
use crate::backend::TrainBackend;
use crate::data::augment::{AugmentConfig, PerView};
use crate::data::loader::Views;
use crate::distributed::sync::{from_rank0, gather_views};
use crate::eval::knn::l2_normalize;
use crate::model::{HeadConfig, ModelConfig, SslModel};
use crate::optim::{OptimConfig, OptimizerKind, Schedule};
use crate::records::{decode_record, encode_record};
use anyhow::{ensure, Result};
use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

/// MoCo v2's settings (`[method] name = "mocov2"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MocoV2Config {
    pub temperature: f64,
    /// Negatives per view's queue; a multiple of batch_size.
    pub queue_size: usize,
    /// Key-encoder momentum at the first step.
    pub tau_base: f64,
    /// Key-encoder momentum at the last step (cosine schedule in between).
    pub tau_final: f64,
}

impl Default for MocoV2Config {
    fn default() -> Self {
        Self {
            temperature: 0.2,
            queue_size: 32768,
            tau_base: 0.99,
            tau_final: 0.999,
        }
    }
}

impl MethodSettings for MocoV2Config {
    /// solo-learn's CIFAR-10 MoCo V2+ (`scripts/pretrain/cifar/mocov2plus.yaml`): projector
    /// 2048 -> 256 without BatchNorm, temperature 0.2, queue 32768, tau 0.99 -> 0.999, SGD lr 0.3
    /// (batch 256) with weight decay 1e-4 and warm-up + cosine, blur p 0.5 on both views. The blur
    /// is torchvision's (3 taps at 32 px), weaker than solo-learn's PIL blur of radius sigma
    /// (docs/training.md says by how much).
    fn preset() -> Preset {
        Preset {
            method: MethodConfig::Mocov2(MocoV2Config::default()),
            head: HeadConfig {
                hidden: 2048,
                out: 256,
                layers: 2,
                batchnorm: false,
                ..Default::default()
            },
            predictor: None,
            prototypes: None,
            optim: OptimConfig {
                optimizer: OptimizerKind::Sgd,
                weight_decay: 1e-4,
                ..OptimConfig::lars_preset(0.3, 1e-4)
            },
            augment: AugmentConfig {
                blur_prob: PerView([0.5, 0.5]),
                ..Default::default()
            },
        }
    }

    fn build<B: TrainBackend>(
        &self,
        model_config: &ModelConfig,
        model: &SslModel<B>,
        device: &B::Device,
    ) -> Box<dyn Method<B>> {
        Box::new(MocoV2::new(*self, model_config, model, device))
    }

    fn temperature_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.temperature)
    }

    fn validate(&self, batch_size: usize, _: &ModelConfig) -> Result<()> {
        ensure!(
            self.temperature > 0.0,
            "method.temperature must be positive"
        );
        check_tau(self.tau_base, self.tau_final)?;
        ensure!(
            self.queue_size >= batch_size && self.queue_size % batch_size == 0,
            "method.queue_size ({}) must be a multiple of batch_size ({}): each step replaces \
             one batch of keys",
            self.queue_size,
            batch_size
        );
        Ok(())
    }
}

/// InfoNCE of queries `q` (`[n, d]`) whose positives are `k` (`[n, d]`) and whose negatives
/// are the rows of `queue` (`[K, d]`); all L2-normalised. Mean over the rows, `[1]`.
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use trainer::info_nce;
///
/// let device = Default::default();
/// let q = Tensor::<Flex, 2>::from_floats([[1.0, 0.0]], &device);
/// let k = q.clone(); // the key of the query's other view
/// let queue = Tensor::<Flex, 2>::from_floats([[0.0, 1.0], [0.0, -1.0]], &device);
/// // logits [1, 0, 0] / T at T = 0.2: -ln(e^5 / (e^5 + 2))
/// let loss = info_nce(q, k, queue, 0.2).into_scalar();
/// assert!((loss - -(5f32.exp() / (5f32.exp() + 2.0)).ln()).abs() < 1e-5);
/// ```
pub fn info_nce<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    queue: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let positive = (q.clone() * k).sum_dim(1);
    let negatives = q.matmul(queue.transpose());
    let logits = Tensor::cat(vec![positive, negatives], 1) / temperature;
    let [n, _] = logits.dims();
    log_softmax(logits, 1).slice([0..n, 0..1]).mean().neg()
}

/// The key encoder and the queues: what a checkpoint keeps of MoCo.
#[derive(Module, Debug)]
pub struct MocoState<B: Backend> {
    pub key_encoder: MomentumNetwork<B>,
    /// `[2, queue_size, d]`: one queue of keys per view.
    pub queue: Param<Tensor<B, 3>>,
}

/// A [`MocoState`]'s record in files from before backbones had names (checkpoint format 2).
#[derive(burn::record::Record)]
pub struct LegacyMocoStateRecord<B: Backend> {
    pub key_encoder: LegacyMomentumNetworkRecord<B>,
    pub queue: <Param<Tensor<B, 3>> as Module<B>>::Record,
}

impl<B: Backend> LegacyMocoStateRecord<B> {
    fn upgrade(self) -> MocoStateRecord<B> {
        MocoStateRecord {
            key_encoder: self.key_encoder.upgrade(),
            queue: self.queue,
        }
    }
}

impl<B: Backend> MocoState<B> {
    /// Writes `keys` (`[2, n, d]`) into the queues at the slot of 0-based step `step`: step `s`
    /// fills rows `(s * n) % K ..` (the oldest ones), as solo-learn's pointer does.
    pub fn enqueue(self, keys: Tensor<B, 3>, step: usize) -> Self {
        let [_, n, d] = keys.dims();
        let [_, size, _] = self.queue.val().dims();
        let at = (step * n) % size;
        let queue = self
            .queue
            .map(|q| q.slice_assign([0..2, at..at + n, 0..d], keys).detach());
        Self { queue, ..self }
    }
}

pub struct MocoV2<B: TrainBackend> {
    config: MocoV2Config,
    state: MocoState<B>,
    /// Keys of the last step's views, `[2, n, d]`, enqueued after the update.
    pending: Option<Tensor<B, 3>>,
    device: B::Device,
}

impl<B: TrainBackend> MocoV2<B> {
    pub fn new(
        config: MocoV2Config,
        model_config: &ModelConfig,
        model: &SslModel<B>,
        device: &B::Device,
    ) -> Self {
        let d = model_config.head.out;
        let queue = Tensor::<B, 3>::random(
            [2, config.queue_size, d],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        let norm = queue
            .clone()
            .powi_scalar(2)
            .sum_dim(2)
            .sqrt()
            .clamp_min(1e-12);
        let state = MocoState {
            key_encoder: MomentumNetwork::copy_of(model, model_config, device),
            queue: Param::from_tensor(queue / norm),
        }
        .no_grad();
        Self {
            config,
            state,
            pending: None,
            device: device.clone(),
        }
    }

    pub fn queue(&self) -> Tensor<B, 3> {
        self.state.queue.val()
    }

    /// The same method with `queue` (`[2, queue_size, d]`, unit rows) as its queues (the golden
    /// test gives PyTorch's).
    pub fn with_queue(mut self, queue: Tensor<B, 3>) -> Self {
        assert_eq!(queue.dims(), self.queue().dims(), "queue shape");
        self.state.queue = Param::from_tensor(queue.detach()).set_require_grad(false);
        self
    }
}

impl<B: TrainBackend> Method<B> for MocoV2<B> {
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B> {
        let images = views.two_views();
        let z = gather_views(model.forward(images.clone()));
        let (q_a, q_b) = split_views(l2_normalize(z.clone()));
        let keys = self.state.key_encoder.forward_each_view(images);
        let keys = l2_normalize(gather_views(keys));
        let [rows, d] = keys.dims();
        let (k_a, k_b) = split_views(keys.clone());
        let queue = self.state.queue.val().detach();
        let [_, size, _] = queue.dims();
        let queue_of = |view: usize| {
            queue
                .clone()
                .slice([view..view + 1, 0..size, 0..d])
                .reshape([size, d])
        };
        let t = self.config.temperature;
        let loss = (info_nce(q_a, k_b, queue_of(1), t) + info_nce(q_b, k_a, queue_of(0), t)) / 2.0;
        self.pending = Some(keys.reshape([2, rows / 2, d]));
        StepOutput {
            loss,
            projections: z,
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
        let key_encoder = state.key_encoder.clone().follow(model, tau);
        let mut state = MocoState {
            key_encoder,
            ..state
        };
        if let Some(keys) = self.pending.take() {
            state = state.enqueue(keys, step);
        }
        self.state = state;
    }

    fn share_rank0_state(&mut self) {
        self.state = from_rank0(self.state.clone());
    }

    fn save_state(&self) -> Result<Vec<u8>> {
        encode_record::<B, _>(self.state.clone().into_record())
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        // A file from before backbones had names holds the legacy layout.
        let record = decode_record::<B, _>(bytes, &self.device).or_else(|error| {
            decode_record::<B, LegacyMocoStateRecord<B>>(bytes, &self.device)
                .map(LegacyMocoStateRecord::upgrade)
                .map_err(|_| error)
        })?;
        self.state = self.state.clone().load_record(record).no_grad();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::methods::tests::{matrix, scalar};
    use burn::module::AutodiffModule;
    use burn::tensor::TensorData;

    #[test]
    fn info_nce_matches_the_formula() {
        // q = (1, 0); its key (0.6, 0.8); queue rows (0, 1) and (-1, 0); T = 0.5.
        let q = matrix(&[[1.0, 0.0]], 1.0);
        let k = matrix(&[[0.6, 0.8]], 1.0);
        let queue = matrix(&[[0.0, 1.0], [-1.0, 0.0]], 1.0);
        let logits = [0.6 / 0.5, 0.0, -1.0 / 0.5f64];
        let sum: f64 = logits.iter().map(|l| l.exp()).sum();
        let want = -(logits[0].exp() / sum).ln();
        let got = scalar(info_nce(q, k, queue, 0.5));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn the_queue_replaces_its_oldest_keys_in_order() {
        let device = Default::default();
        let config = ModelConfig::small(2, 4, 1);
        let model = config.init::<burn::backend::Autodiff<CpuBackend>>(&device);
        let mut state = MocoV2::new(
            MocoV2Config {
                queue_size: 6,
                ..Default::default()
            },
            &config,
            &model,
            &device,
        )
        .state
        .valid();
        // Each step enqueues 2 keys per view: view 0 gets 10s+i, view 1 gets 100+10s+i.
        let keys = |s: usize| {
            let values: Vec<f32> = [0, 100]
                .iter()
                .flat_map(|v| (0..2).map(move |i| (v + 10 * s + i) as f32))
                .collect();
            Tensor::<CpuBackend, 3>::from_data(TensorData::new(values, [2, 2, 1]), &device)
        };
        for step in 0..4 {
            state = state.enqueue(keys(step), step);
        }
        let got: Vec<f32> = state.queue.val().into_data().to_vec().unwrap();
        // Step 3 wrapped around and overwrote step 0's slot (rows 0..2).
        assert_eq!(
            got,
            vec![
                30.0, 31.0, 10.0, 11.0, 20.0, 21.0, //
                130.0, 131.0, 110.0, 111.0, 120.0, 121.0
            ]
        );
    }
}
