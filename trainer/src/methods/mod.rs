//! Self-supervised methods beside SimCLR (issue 12, in progress): each file holds one method.
//! So far the losses of the two methods without momentum networks or queues, each checked
//! against its paper's reference code on small inputs.

pub mod barlow;
pub mod vicreg;

use burn::prelude::*;

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
    use crate::backend::CpuBackend;
    use burn::prelude::*;
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
}
