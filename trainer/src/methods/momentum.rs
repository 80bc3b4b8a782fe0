//! Momentum (EMA) networks, shared by BYOL's target and MoCo's key encoder: a copy of the online
//! encoder + projector that follows it as `target = tau * target + (1 - tau) * online` after
//! every step, with `tau` rising from its base value to its final one on a cosine schedule.
//! No gradient reaches it: its parameters are untracked and its outputs detached. Its BatchNorm
//! layers run in training mode and keep their own running statistics, as in solo-learn.

use crate::backend::TrainBackend;
use crate::model::backbone::{upgrade_legacy_record, LegacyEncoderRecord};
use crate::model::{Backbone, MlpHead, ModelConfig, SslModel};
use crate::records::{decode_record, encode_record};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// `tau` at 0-based step `step` of `total_steps`: `final - (final - base) * (cos(pi k/K) + 1)/2`
/// (BYOL's schedule, as solo-learn's `MomentumUpdater`).
pub fn tau_at(base: f64, end: f64, step: usize, total_steps: usize) -> f64 {
    if total_steps == 0 {
        return end;
    }
    let progress = (step as f64 / total_steps as f64).min(1.0);
    end - (end - base) * ((std::f64::consts::PI * progress).cos() + 1.0) / 2.0
}

/// Rejects momentum settings outside [0, 1] (`method.tau_base`, `method.tau_final`).
pub fn check_tau(base: f64, end: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&base) && (0.0..=1.0).contains(&end),
        "method.tau_base and method.tau_final must be in [0, 1]"
    );
    Ok(())
}

/// The momentum copy of the online encoder and projector.
#[derive(Module, Debug)]
pub struct MomentumNetwork<B: Backend> {
    pub encoder: Backbone<B>,
    pub head: MlpHead<B>,
}

/// A [`MomentumNetwork`]'s record in files from before backbones had names (checkpoint format 2).
#[derive(burn::record::Record)]
pub struct LegacyMomentumNetworkRecord<B: Backend> {
    pub encoder: LegacyEncoderRecord<B>,
    pub head: <MlpHead<B> as Module<B>>::Record,
}

impl<B: Backend> LegacyMomentumNetworkRecord<B> {
    pub fn upgrade(self) -> MomentumNetworkRecord<B> {
        MomentumNetworkRecord {
            encoder: upgrade_legacy_record(self.encoder),
            head: self.head,
        }
    }
}

impl<B: TrainBackend> MomentumNetwork<B> {
    /// A separate copy of `online`'s encoder and projector (its own tensors and BatchNorm
    /// state: a plain clone would share the running statistics with the online network).
    pub fn copy_of(online: &SslModel<B>, config: &ModelConfig, device: &B::Device) -> Self {
        // Both online parts are initialised before the fresh network is built, so the draws
        // from the random generator come in the order they always did.
        online.encoder.visit(&mut Initialise);
        online.head.visit(&mut Initialise);
        let fresh = ModelConfig {
            predictor: None,
            prototypes: None,
            ..config.clone()
        }
        .init::<B>(device);
        Self {
            encoder: momentum_copy(&online.encoder, fresh.encoder),
            head: momentum_copy(&online.head, fresh.head),
        }
    }

    /// Projections of `images` (training-mode BatchNorm), detached.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head.forward(self.encoder.forward(images)).detach()
    }

    /// Projections of a two-view batch `images` (`[2N, ...]`), each view in a forward pass of
    /// its own, as solo-learn's momentum networks take them: in one pass, BatchNorm's batch
    /// statistics would mix a query's view into its positive key (the intra-batch leak that
    /// MoCo's shuffle-BN exists to prevent).
    pub fn forward_each_view(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let [rows, channels, height, width] = images.dims();
        let view = |range: std::ops::Range<usize>| {
            self.forward(
                images
                    .clone()
                    .slice([range, 0..channels, 0..height, 0..width]),
            )
        };
        Tensor::cat(vec![view(0..rows / 2), view(rows / 2..rows)], 0)
    }

    /// The network's record, for a checkpoint's method state.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        encode_record::<B, _>(self.clone().into_record())
    }

    /// The network with the values [`MomentumNetwork::to_bytes`] saved (or a file from before
    /// backbones had names saved, in the legacy layout).
    pub fn load_bytes(self, bytes: &[u8], device: &B::Device) -> anyhow::Result<Self> {
        let record = decode_record::<B, _>(bytes, device).or_else(|error| {
            decode_record::<B, LegacyMomentumNetworkRecord<B>>(bytes, device)
                .map(LegacyMomentumNetworkRecord::upgrade)
                .map_err(|_| error)
        })?;
        Ok(self.load_record(record).no_grad())
    }

    /// One EMA step towards `online` with momentum `tau`.
    pub fn follow(self, online: &SslModel<B>, tau: f64) -> Self {
        Self {
            encoder: update_momentum(self.encoder, &online.encoder, tau),
            head: update_momentum(self.head, &online.head, tau),
        }
    }
}

/// The momentum (EMA) copy of any module `online`, for a BYOL target or a MoCo key encoder:
/// `fresh`, a newly built module of the same architecture, takes `online`'s values and is left
/// out of autodiff. Burn's clones share BatchNorm's running statistics, so the copy starts from
/// its own instance, which keeps its own statistics from then on.
///
/// ```
/// use burn::backend::{Autodiff, Flex};
/// use burn::nn::{Linear, LinearConfig};
/// use burn::prelude::*;
/// use trainer::{momentum_copy, update_momentum};
///
/// type B = Autodiff<Flex>;
/// let device = Default::default();
/// let online: Linear<B> = LinearConfig::new(4, 2).init(&device);
/// let target = momentum_copy(&online, LinearConfig::new(4, 2).init(&device));
/// assert!(target.weight.val().equal(online.weight.val()).all().into_scalar());
///
/// // The online network moves (as an optimizer step leaves it: a new trainable leaf tensor);
/// // the target follows a tenth of the way.
/// let step = |w: Tensor<B, 2>| (w + 1.0).detach().require_grad();
/// let online = Linear { weight: online.weight.map(step), ..online };
/// let target = update_momentum(target, &online, 0.9);
/// let gap = (online.weight.val() - target.weight.val()).mean().into_scalar();
/// assert!((gap - 0.9).abs() < 1e-5);
/// ```
pub fn momentum_copy<B: Backend, M: Module<B>>(online: &M, fresh: M) -> M {
    // Burn initialises parameters lazily, and each clone of a parameter not yet initialised
    // draws its own values: initialise the online network's first, so the copy is of it.
    online.visit(&mut Initialise);
    fresh.load_record(online.clone().into_record()).no_grad()
}

/// One EMA step of `target` towards `online`: `target = tau * target + (1 - tau) * online` for
/// every trainable tensor (lightly's `update_momentum`); BatchNorm running statistics are not
/// parameters and stay the target's own. `target` must mirror `online`'s structure (made by
/// [`momentum_copy`]). `tau` usually rises over training: see [`tau_at`].
pub fn update_momentum<B: AutodiffBackend, M: AutodiffModule<B>>(
    target: M,
    online: &M,
    tau: f64,
) -> M {
    let mut collect = Collect::<B> { values: Vec::new() };
    online.visit(&mut collect);
    let mut ema = Ema::<B> {
        online: collect.values.into_iter(),
        tau,
    };
    let target = target.map(&mut ema);
    assert!(
        ema.online.next().is_none(),
        "update_momentum: the target has fewer tensors than the online module"
    );
    target
}

/// Reads every parameter once, which initialises it in place.
pub struct Initialise;

impl<B: Backend> ModuleVisitor<B> for Initialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Each float tensor of the online network in visiting order: trainable?, values flattened.
struct Collect<B: AutodiffBackend> {
    values: Vec<(bool, Tensor<B::InnerBackend, 1>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let trainable = tensor.is_require_grad();
        let numel = tensor.shape().num_elements();
        self.values
            .push((trainable, tensor.inner().reshape([numel])));
    }
}

/// Moves the target's trainable tensors towards the online ones; its running statistics stay.
struct Ema<B: AutodiffBackend> {
    online: std::vec::IntoIter<(bool, Tensor<B::InnerBackend, 1>)>,
    tau: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Ema<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (trainable, online) = self
            .online
            .next()
            .expect("the momentum network mirrors the online encoder and projector");
        if !trainable {
            return param;
        }
        let tau = self.tau;
        param.map(|target| {
            let dims = target.dims();
            let updated =
                target.inner().mul_scalar(tau) + online.reshape(dims).mul_scalar(1.0 - tau);
            Tensor::from_inner(updated)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::named_params::named_tensors;
    use burn::backend::Autodiff;

    type B = Autodiff<CpuBackend>;

    #[test]
    fn tau_rises_from_base_to_final_on_a_cosine() {
        assert!((tau_at(0.99, 1.0, 0, 100) - 0.99).abs() < 1e-12);
        assert!((tau_at(0.99, 1.0, 50, 100) - 0.995).abs() < 1e-12);
        assert!((tau_at(0.99, 1.0, 100, 100) - 1.0).abs() < 1e-12);
        assert!(
            (tau_at(0.99, 0.999, 25, 100) - (0.999 - 0.009 * (1.0 + 0.5f64.sqrt()) / 2.0)).abs()
                < 1e-12
        );
    }

    #[test]
    fn ema_moves_parameters_only_and_no_gradient_reaches_the_copy() {
        let device = Default::default();
        let config = ModelConfig::small(2, 4, 3);
        let online = config.init::<B>(&device);
        let target = MomentumNetwork::copy_of(&online, &config, &device);
        let before = named_tensors(&online);
        // A freshly initialised (lazy) online network and its copy hold the same values.
        let copy = named_tensors(&target);
        for t in &copy {
            let online = before.iter().find(|o| o.name == t.name).unwrap();
            assert_eq!(online.values, t.values, "{}", t.name);
        }
        // The online network moves by +1 everywhere (parameters and running statistics).
        let moved = online.clone().map(&mut AddOne);
        let target = target.follow(&moved, 0.75);
        let after: std::collections::HashMap<_, _> = named_tensors(&target)
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut checked = 0;
        for t in before.iter().filter(|t| !t.name.starts_with("predictor")) {
            let got = &after[&t.name];
            let stat = t.name.ends_with("running_mean") || t.name.ends_with("running_var");
            // EMA: 0.75 * w + 0.25 * (w + 1) = w + 0.25; running statistics untouched.
            let shift = if stat { 0.0 } else { 0.25 };
            for (a, b) in t.values.iter().zip(&got.values) {
                assert!((b - (a + shift)).abs() < 1e-6, "{}: {a} -> {b}", t.name);
            }
            checked += 1;
        }
        assert!(checked > 60, "{checked} tensors compared");
        // Untracked: a loss through the copy has no gradient for it.
        let images = Tensor::<B, 4>::ones([2, 3, 32, 32], &device);
        let out = target.head.forward(target.encoder.forward(images));
        assert!(!out.is_require_grad());
    }

    struct AddOne;
    impl ModuleMapper<B> for AddOne {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|t| {
                let grad = t.is_require_grad();
                Tensor::from_inner(t.inner().add_scalar(1.0)).set_require_grad(grad)
            })
        }
    }
}
