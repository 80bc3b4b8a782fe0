//! The CPU backend extension: convolution and BatchNorm passes as Burn backend traits
//! (`ConvBackend`, `NormBackend`) with fast kernels for the flex backend; other backends use
//! Burn's own ops through the traits' defaults.

pub mod conv;
pub mod conv_kernels;
pub mod conv_shape;
pub mod matmul;
pub mod norm;
pub mod norm_kernels;
pub mod packed_gemm;
mod patch_gather;
pub mod pool;
pub mod prepared_conv;
pub mod winograd;
pub mod winograd_f2;
