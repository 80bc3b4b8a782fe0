//! What the commands run: training, evaluation, export (ONNX and the viewer's files) and the
//! benchmark. Each job only wires rooms together; the work is in data, model, methods, eval.

pub mod bench;
pub mod embed;
pub mod eval;
pub mod export;
pub mod nccl_check;
pub mod train;
pub mod viewer_assets;
