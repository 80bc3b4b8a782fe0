//! Self-supervised methods, one file each, behind one trait: the training loop hands a batch of
//! views ([`Views`]: two of one size for the methods here, or multi-crop groups) to a [`Method`]
//! and gets the loss back; after the optimizer's update it lets the
//! method update its own state (a momentum network, a queue of negatives). Encoder, heads,
//! augmentations, loop, checkpoints, kNN monitor, eval and export are shared.
//!
//! Adding a method: a file with its config (serde, with the published defaults) implementing
//! [`MethodSettings`] (its CIFAR-10 preset, checks, and its [`Method`]), plus one row in the
//! `methods!` registry below.

pub mod barlow;
pub mod byol;
pub mod dino;
pub mod mocov2;
pub mod mocov3;
pub mod momentum;
pub mod multi_crop;
pub mod simclr;
pub mod simsiam;
pub mod swav;
pub mod vicreg;

use crate::backend::TrainBackend;
use crate::data::augment::{AugmentConfig, ViewRecipe};
use crate::data::loader::Views;
use crate::distributed::sync::gather_views;
use crate::model::{HeadConfig, ModelConfig, PrototypesConfig, SslModel};
use crate::optim::{OptimConfig, Schedule};
use anyhow::{ensure, Result};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// What one training step of a method produces.
pub struct StepOutput<B: Backend> {
    /// The loss to minimise, `[1]`.
    pub loss: Tensor<B, 1>,
    /// The online projections of both views, `[2N, d]`, for the collapse monitor.
    pub projections: Tensor<B, 2>,
}

/// A self-supervised method on backend `B`.
pub trait Method<B: TrainBackend> {
    /// The loss of `model` on `views` (a two-view method takes [`Views::two_views`], `[2N, 3,
    /// S, S]`: the first views of N images, then their second views). BatchNorm runs in
    /// training mode. In a data-parallel run `images` are
    /// this rank's share, and the loss is over the global batch: projections go through
    /// [`gather_views`] before the loss.
    fn step(&mut self, model: &SslModel<B>, views: Views<B>) -> StepOutput<B>;

    /// Called before the loss of 0-based step `step` of a training run (a method whose
    /// settings follow the epoch: DINO's teacher temperature). Without it, step 0.
    fn begin_step(&mut self, _step: usize, _schedule: &Schedule) {}

    /// Drops the gradients of parameters the method keeps fixed at this step, before the
    /// update (DINO's prototypes in the first epoch): the optimizer leaves them untouched.
    fn adjust_gradients(&self, _model: &SslModel<B>, _grads: &mut GradientsParams) {}

    /// Called after the optimizer updated `model` at 0-based step `step` of the run (momentum
    /// networks follow the online one, keys enter the queue).
    fn after_update(&mut self, _model: &SslModel<B>, _step: usize, _schedule: &Schedule) {}

    /// Makes the method's own state rank 0's on every rank of a data-parallel run (a fresh
    /// run: ranks drew their own random state).
    fn share_rank0_state(&mut self) {}

    /// The method's own state for a checkpoint (momentum network, queue); empty if it has none.
    fn save_state(&self) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    /// Restores what [`Method::save_state`] saved.
    fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        ensure!(
            bytes.is_empty(),
            "the checkpoint holds method state this method does not have"
        );
        Ok(())
    }
}

/// What each method's config gives the registry below: its published recipe, its checks and
/// the method itself. The defaults fit a method that compares two views of one size.
pub trait MethodSettings {
    /// The method's published CIFAR-10 ResNet-18 configuration (SimCLR: this project's seed
    /// recipe): method settings, heads, optimizer and augmentations.
    fn preset() -> Preset
    where
        Self: Sized;

    /// The method for a run, for the freshly built or loaded `model` (of `model_config`).
    fn build<B: TrainBackend>(
        &self,
        model_config: &ModelConfig,
        model: &SslModel<B>,
        device: &B::Device,
    ) -> Box<dyn Method<B>>;

    /// Rejects settings that would only fail later, deep in training, for a run of
    /// `batch_size` images per step with the network `model`.
    fn validate(&self, _batch_size: usize, _model: &ModelConfig) -> Result<()> {
        Ok(())
    }

    /// Rejects a list of views the method cannot take (`name`: the method's, for the message).
    fn validate_views(&self, name: &str, views: &[ViewRecipe]) -> Result<()> {
        ensure!(
            views.len() == 2 && views[0].size == views[1].size,
            "{name} takes two views of one size, but [[augment.views]] gives {} views of sizes \
             {:?}: leave [[augment.views]] out for this method",
            views.len(),
            views.iter().map(|v| v.size).collect::<Vec<_>>()
        );
        Ok(())
    }

    /// The loss temperature, for `--temperature`; `None` for methods without one.
    fn temperature_mut(&mut self) -> Option<&mut f64> {
        None
    }
}

/// The registry: one row per method (`Variant = "name" => config type`, with its `--help`
/// line) makes [`MethodConfig`] (`[method]`, `name` picks the method), [`MethodKind`]
/// (`--method`) and their dispatch.
macro_rules! methods {
    ($($(#[$doc:meta])* $variant:ident = $name:literal => $config:ty,)+) => {
        /// The method of a run and its settings: `[method]` in the config, `name` picks the
        /// method.
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "name")]
        pub enum MethodConfig {
            $(#[serde(rename = $name)] $variant($config),)+
        }

        /// The methods by name (`--method`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
        pub enum MethodKind {
            $($(#[$doc])* #[cfg_attr(feature = "cli", value(name = $name))] $variant,)+
        }

        impl MethodKind {
            pub const ALL: &'static [MethodKind] = &[$(Self::$variant),+];

            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            /// See [`MethodSettings::preset`].
            pub fn preset(self) -> Preset {
                match self {
                    $(Self::$variant => <$config as MethodSettings>::preset(),)+
                }
            }
        }

        impl MethodConfig {
            pub fn kind(&self) -> MethodKind {
                match self {
                    $(Self::$variant(_) => MethodKind::$variant,)+
                }
            }

            /// The loss temperature, for `--temperature` (see
            /// [`MethodSettings::temperature_mut`]).
            fn temperature_mut(&mut self) -> Option<&mut f64> {
                match self {
                    $(Self::$variant(c) => c.temperature_mut(),)+
                }
            }

            /// Rejects settings that would only fail later, deep in training, for a run of
            /// `batch_size` images per step with the network `model` and the views `views`.
            pub fn validate(
                &self,
                batch_size: usize,
                model: &ModelConfig,
                views: &[ViewRecipe],
            ) -> Result<()> {
                match self {
                    $(Self::$variant(c) => {
                        c.validate_views($name, views)?;
                        c.validate(batch_size, model)
                    })+
                }
            }

            /// The method this config describes (see [`MethodSettings::build`]).
            pub fn build<B: TrainBackend>(
                &self,
                model_config: &ModelConfig,
                model: &SslModel<B>,
                device: &B::Device,
            ) -> Box<dyn Method<B>> {
                match self {
                    $(Self::$variant(c) => c.build(model_config, model, device),)+
                }
            }
        }
    };
}

methods! {
    /// SimCLR (Chen et al. 2020): NT-Xent over the batch's other images as negatives.
    Simclr = "simclr" => simclr::NtXentLoss,
    /// BYOL (Grill et al. 2020): predictor + momentum target network, no negatives.
    Byol = "byol" => byol::ByolConfig,
    /// MoCo v2 (Chen et al. 2020): momentum key encoder and a queue of negatives.
    Mocov2 = "mocov2" => mocov2::MocoV2Config,
    /// VICReg (Bardes et al. 2022): variance, invariance and covariance terms.
    Vicreg = "vicreg" => vicreg::VicRegLoss,
    /// Barlow Twins (Zbontar et al. 2021): cross-correlation pushed to the identity.
    Barlow = "barlow" => barlow::BarlowTwinsLoss,
    /// DINO (Caron et al. 2021): a student matches a momentum teacher's centred, sharpened
    /// distribution over prototypes; multi-crop.
    Dino = "dino" => dino::DinoConfig,
    /// SimSiam (Chen and He 2021): predictor + stop-gradient, no negatives, no momentum.
    Simsiam = "simsiam" => simsiam::SimSiamConfig,
    /// MoCo v3 (Chen et al. 2021): predictor + momentum encoder, the batch as negatives.
    Mocov3 = "mocov3" => mocov3::MocoV3Config,
    /// SwAV (Caron et al. 2020): swapped prediction of Sinkhorn-Knopp cluster assignments over
    /// prototypes; multi-crop.
    Swav = "swav" => swav::SwavConfig,
}

impl Default for MethodConfig {
    fn default() -> Self {
        Self::Simclr(Default::default())
    }
}

impl MethodKind {
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Every method's name, for messages: `simclr, byol, ...`.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl MethodConfig {
    /// Sets the loss temperature (`--temperature`); an error for methods without one.
    pub fn set_temperature(&mut self, temperature: f64) -> Result<()> {
        let kind = self.kind();
        let Some(t) = self.temperature_mut() else {
            let with_one: Vec<&str> = MethodKind::ALL
                .iter()
                .filter(|k| k.preset().method.temperature_mut().is_some())
                .map(|k| k.name())
                .collect();
            anyhow::bail!(
                "--temperature: {kind} has no temperature ({} do); see its settings with \
                 --print-config",
                with_one.join(", ")
            );
        };
        *t = temperature;
        Ok(())
    }
}

/// What a method's published recipe sets: its own settings and, of the rest of the config, the
/// heads, the optimizer and the augmentations (everything else keeps its default).
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub method: MethodConfig,
    pub head: HeadConfig,
    pub predictor: Option<HeadConfig>,
    pub prototypes: Option<PrototypesConfig>,
    pub optim: OptimConfig,
    pub augment: AugmentConfig,
}

impl Preset {
    /// `method` with the defaults of every other section (SimCLR's recipe).
    pub fn with_defaults(method: MethodConfig) -> Self {
        Self {
            method,
            head: HeadConfig::default(),
            predictor: None,
            prototypes: None,
            optim: OptimConfig::default(),
            augment: AugmentConfig::default(),
        }
    }
}

/// The step of a method whose loss compares the two views' projections directly (VICReg,
/// Barlow Twins): `loss(z_a, z_b)`.
fn two_view_step<B: TrainBackend>(
    model: &SslModel<B>,
    images: Tensor<B, 4>,
    loss: impl FnOnce(Tensor<B, 2>, Tensor<B, 2>) -> Tensor<B, 1>,
) -> StepOutput<B> {
    let z = gather_views(model.forward(images));
    let (z_a, z_b) = split_views(z.clone());
    StepOutput {
        loss: loss(z_a, z_b),
        projections: z,
    }
}

/// Rejects a network without a predictor for a method that needs one (`title`: the method as
/// people write it, `name`: its `--method` name).
fn require_predictor(title: &str, name: &str, model: &ModelConfig) -> Result<()> {
    ensure!(
        model.predictor.is_some(),
        "{title} needs a predictor ([model.predictor]): without it the two branches can agree \
         by collapsing. `--method {name}` sets the published one"
    );
    Ok(())
}

/// The two views' rows of `z` (`[2N, d]`): `(first views, second views)`.
pub fn split_views<B: Backend>(z: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [rows, d] = z.dims();
    let n = rows / 2;
    (z.clone().slice([0..n, 0..d]), z.slice([n..rows, 0..d]))
}

/// Collapse monitor: the standard deviation over the batch of the L2-normalised projections,
/// averaged over dimensions (solo-learn's `z_std`). About `1/sqrt(d)` when the projections
/// spread over the sphere, 0 when every image maps to the same point.
pub fn projection_std<B: Backend>(z: Tensor<B, 2>) -> f64 {
    let [n, _] = z.dims();
    if n < 2 {
        return f64::NAN;
    }
    let z = crate::eval::knn::l2_normalize(z.detach());
    let var = centred(z).powi_scalar(2).sum_dim(0) / (n - 1) as f64;
    var.sqrt().mean().into_scalar().elem::<f64>()
}

/// Below this fraction of `1/sqrt(d)`, [`projection_std`] means the projections collapsed.
pub const COLLAPSE_FRACTION: f64 = 0.1;

/// Whether a [`projection_std`] of projections of size `d` means collapse.
pub fn is_collapsed(std: f64, d: usize) -> bool {
    std < COLLAPSE_FRACTION / (d as f64).sqrt()
}

/// `1 - I` of size `d`: keeps the off-diagonal entries of a `[d, d]` matrix.
fn off_diagonal_mask<B: Backend>(d: usize, device: &B::Device) -> Tensor<B, 2> {
    Tensor::<B, 2>::eye(d, device).neg() + 1.0
}

/// `z` minus its column means (over the batch).
fn centred<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 2> {
    let mean = z.clone().mean_dim(0);
    z - mean
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::tensor::TensorData;

    /// Two views' embeddings of 5 images in 3 dimensions (the reference values of each loss's
    /// tests were computed on these by the papers' code).
    pub const Z_A: [[f64; 3]; 5] = [
        [0.5, -1.2, 2.0],
        [1.5, 0.3, -0.7],
        [-0.4, 0.9, 0.1],
        [2.2, -0.6, 1.3],
        [0.0, 1.1, -1.8],
    ];
    pub const Z_B: [[f64; 3]; 5] = [
        [0.7, -1.0, 1.6],
        [1.1, 0.5, -0.2],
        [-0.9, 1.4, 0.3],
        [1.8, -0.1, 0.9],
        [0.2, 0.6, -1.5],
    ];
    /// Zero-mean, uncorrelated columns of equal spread.
    pub const DECORRELATED: [[f64; 2]; 4] = [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]];

    pub fn matrix<const D: usize>(rows: &[[f64; D]], scale: f64) -> Tensor<CpuBackend, 2> {
        let values: Vec<f32> = rows.iter().flatten().map(|&v| (v * scale) as f32).collect();
        Tensor::from_data(
            TensorData::new(values, [rows.len(), D]),
            &Default::default(),
        )
    }

    pub fn scalar(t: Tensor<CpuBackend, 1>) -> f64 {
        t.into_scalar() as f64
    }

    #[test]
    fn projection_std_is_zero_at_collapse_and_large_when_spread() {
        let collapsed = matrix(&[[1.0, 2.0], [1.0, 2.0], [2.0, 4.0]], 1.0);
        let std = projection_std(collapsed);
        assert!(std.abs() < 1e-6 && is_collapsed(std, 2), "{std}");
        // Four unit vectors at +-45 degrees: each normalised coordinate is +-1/sqrt(2), whose
        // unbiased std over 4 rows is sqrt(4/3 * 1/2).
        let spread = projection_std(matrix(&DECORRELATED, 1.0));
        assert!((spread - (2.0f64 / 3.0).sqrt()).abs() < 1e-6, "{spread}");
        assert!(!is_collapsed(spread, 2));
    }

    #[test]
    fn method_config_reads_the_named_block_and_rejects_unknown_keys() {
        #[derive(Deserialize, Debug)]
        struct T {
            method: MethodConfig,
        }
        let t: T = toml::from_str("[method]\nname = \"byol\"\ntau_base = 0.9").unwrap();
        let MethodConfig::Byol(byol) = t.method else {
            panic!("{t:?}")
        };
        assert_eq!((byol.tau_base, byol.tau_final), (0.9, 1.0));
        let err = toml::from_str::<T>("[method]\nname = \"byol\"\nqueue_size = 4")
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue_size"), "{err}");
        let err = toml::from_str::<T>("[method]\nname = \"mae\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mae"), "{err}");
    }
}
