//! SimCLR pretraining of a CIFAR ResNet-18, in the order data flows:
//! data -> augment -> loader -> model -> loss -> train (checkpoint, knn) ; backend picks the device.

pub mod augment;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod clip;
pub mod config;
pub mod conv;
pub mod conv_kernels;
pub mod data;
pub mod eval;
pub mod eval_job;
pub mod export;
pub mod features;
pub mod knn;
pub mod lars;
pub mod loader;
pub mod loss;
pub mod methods;
pub mod model;
pub mod named_params;
pub mod norm;
pub mod norm_kernels;
pub mod panics;
pub mod progress;
pub mod train;
pub mod viewer_assets;
