//! The browser viewer: embeds labelled sample images with the exported encoder (ONNX Runtime
//! Web through `ort-web`), maps them to 2-D (t-SNE in a Web Worker, or PCA) and draws an
//! interactive scatter plot.
//!
//! The modules without DOM code build and are tested natively; `app` and the worker are
//! WebAssembly only (built by `trunk`).

pub mod atlas;
pub mod contract;
pub mod neighbors;
pub mod projection;
pub mod reduce;
pub mod samples;
pub mod shipped;
pub mod umap;
pub mod view;

#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod dom;
#[cfg(target_arch = "wasm32")]
mod gl;
#[cfg(target_arch = "wasm32")]
mod runtime;
#[cfg(target_arch = "wasm32")]
pub mod worker;

#[cfg(target_arch = "wasm32")]
pub use app::start;

/// How many nearest neighbours a clicked point or a dropped image lists.
pub const NEIGHBOURS: usize = 8;
