//! Self-supervised pretraining for images with [Burn](https://burn.dev): the `trainer` command
//! (SimCLR, BYOL, MoCo v2, VICReg and Barlow Twins on a ResNet-18), and the parts it is built
//! from, for your own Burn models.
//!
//! # As a library
//!
//! The losses, augmentations, optimizer and helpers work with any Burn module and backend; the
//! crate root re-exports them:
//!
//! | part | what it does |
//! | --- | --- |
//! | [`augment_pairs`], [`AugmentConfig`] | two random views of each image (crop, flip, colour jitter, grayscale, blur, solarize, normalise: torchvision's definitions) |
//! | [`NtXentLoss`] | SimCLR's loss over the batch's other views |
//! | [`byol_loss`] | BYOL's prediction of a momentum target, no negatives |
//! | [`info_nce`] | MoCo's loss against a queue of negative keys |
//! | [`VicRegLoss`] | VICReg's invariance, variance and covariance terms |
//! | [`BarlowTwinsLoss`] | Barlow Twins' cross-correlation pushed to the identity |
//! | [`momentum_copy`], [`update_momentum`], [`tau_at`] | an EMA (momentum) copy of a module, its update and BYOL's cosine schedule for `tau` |
//! | [`LarsConfig`] | the LARS optimizer of solo-learn's presets, as a Burn optimizer |
//! | [`clip_grad_norm`] | clipping by the global gradient norm, as `torch.nn.utils.clip_grad_norm_` |
//! | [`autocast`], [`Precision`], [`GradScaler`] | mixed precision (f16/bf16 convolutions and linears, f32 weights), as `torch.autocast` and its `GradScaler` |
//!
//! `examples/pretrain_own_model.rs` pretrains a small CNN of its own with these parts in about
//! 150 lines. A library user can leave out the command line and the dataset download (clap,
//! ctrlc, mimalloc, ureq):
//!
//! ```toml
//! trainer = { version = "0.1", default-features = false, features = ["flex"] }
//! ```
//!
//! # The command's rooms
//!
//! The modules follow the data path:
//!
//! - `data`: datasets (one table of `--data` formats), augmentations, the prefetching loader
//!   (images -> views: two by default, or a list of multi-crop groups);
//! - `model`: the encoder, a backbone chosen by name (`model/backbone/`: ResNet-18), and the MLP
//!   heads (views -> embeddings -> projections);
//! - `methods`: one file per self-supervised method (SimCLR, BYOL, MoCo v2, VICReg, Barlow
//!   Twins) behind the `Method` trait: projections -> loss, and per-step updates (EMA, queue);
//! - `optim`: optimizers (Adam, SGD, LARS), learning-rate schedule, gradient clipping;
//! - `kernels`: the CPU backend extension (fast convolution and BatchNorm);
//! - `eval`: kNN, linear probe, k-means on frozen features;
//! - `distributed`: data-parallel training over devices and machines (burn-collective);
//! - `jobs`: what the commands run (train, eval, export, embed, bench), each with plain options;
//!
//! and shared plumbing: `precision` (mixed precision), `config` (the recipe and presets), `checkpoint`, `backend` (device
//! choice), `named_params`, `records` (bytes on disk), `progress`, `panics`, `cli` (clap only), and the
//! run's logs: `metrics`, `tensorboard` (event files) and `plot` (`metrics.svg`).

pub mod backend;
pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod gpu_memory;
pub mod jobs;
pub mod kernels;
pub mod methods;
pub mod metrics;
pub mod model;
pub mod named_params;
pub mod optim;
pub mod panics;
pub mod plot;
pub mod precision;
pub mod progress;
pub mod records;
pub mod run_lock;
pub mod tensorboard;

pub use data::augment::AugmentConfig;
pub use data::loader::{augment_pairs, PairBatch, ViewBatch, Views};
pub use methods::barlow::BarlowTwinsLoss;
pub use methods::byol::byol_loss;
pub use methods::mocov2::info_nce;
pub use methods::mocov3::mocov3_loss;
pub use methods::momentum::{momentum_copy, tau_at, update_momentum};
pub use methods::simclr::NtXentLoss;
pub use methods::simsiam::simsiam_loss;
pub use methods::swav::sinkhorn_knopp;
pub use methods::vicreg::VicRegLoss;
pub use optim::clip::clip_grad_norm;
pub use optim::lars::LarsConfig;
pub use precision::{autocast, GradScaler, Precision};
