//! Self-supervised pretraining of a CIFAR ResNet-18, in rooms that follow the data path:
//!
//! - `data`: datasets, augmentations, the prefetching loader (images -> pairs of views);
//! - `model`: the encoder and the MLP heads (views -> embeddings -> projections);
//! - `methods`: one file per self-supervised method (SimCLR, BYOL, MoCo v2, VICReg, Barlow
//!   Twins) behind the `Method` trait: projections -> loss, and per-step updates (EMA, queue);
//! - `optim`: optimizers (Adam, SGD, LARS), learning-rate schedule, gradient clipping;
//! - `kernels`: the CPU backend extension (fast convolution and BatchNorm);
//! - `eval`: kNN, linear probe, k-means on frozen features;
//! - `distributed`: data-parallel training over devices and machines (burn-collective);
//! - `jobs`: what the commands run (train, eval, export, bench);
//!
//! and shared plumbing: `config` (the recipe and presets), `checkpoint`, `backend` (device
//! choice), `named_params`, `progress`, `panics`, `cli`, and the run's logs: `tensorboard` (event
//! files) and `plot` (`metrics.svg`).

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod jobs;
pub mod kernels;
pub mod methods;
pub mod model;
pub mod named_params;
pub mod optim;
pub mod panics;
pub mod plot;
pub mod progress;
pub mod tensorboard;
