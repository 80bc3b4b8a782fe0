//! A convolution prepared once for inference: its BatchNorm folded into the weights and a bias,
//! the weights transformed (Winograd) and packed (small batches) on first use and kept, and the
//! bias, the residual and ReLU applied in one pass over the output. ONNX Runtime does the same
//! at session load; `eval`, `embed` and the kNN monitor prepare the encoder once per run.
//!
//! Routes, by batch size:
//! - small batches ([`SMALL_BATCH`] images or fewer, on CPUs with AVX-512F): one image at a
//!   time through [`packed_gemm`], the weights read once per image from their packed panels
//!   (Winograd's 36 products, or im2col's one, 16-64 columns wide);
//! - larger batches: the training kernels (`winograd::conv2d_transformed` with the weights
//!   transformed once, or [`conv_kernels::conv2d`]), whose chunks of several images keep the
//!   products wide.

use crate::kernels::conv_kernels::{self, Scratch};
use crate::kernels::conv_shape::ConvShape;
use crate::kernels::packed_gemm::{self, PackedRows};
use crate::kernels::{winograd, winograd_f2};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Largest batch run one image at a time through the packed weights. `infer_bench`, img/s
/// image by image against chunked: batch 2 188 / 181, 3 186 / 157, 4 178 / 182, 8 113 / 221.
pub const SMALL_BATCH: usize = 3;

/// `relu?(conv(x) * scale + shift (+ residual))` with `scale` folded into the weights.
#[derive(Debug)]
pub struct PreparedConv {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    /// `[c_out, c_in, kernel, kernel]`, each output channel's filter times its scale.
    weight: Vec<f32>,
    /// `[c_out]`: the BatchNorm's shift.
    bias: Vec<f32>,
    /// The weights as im2col's `[c_out, c_in * k * k]` matrix, packed.
    packed: OnceLock<PackedRows>,
    /// Winograd's transformed weights `[c_out, 36, c_in]`.
    transformed: OnceLock<Vec<f32>>,
    /// Winograd's 36 `[c_out, c_in]` matrices, packed.
    packed_positions: OnceLock<Vec<PackedRows>>,
    /// Winograd F(2x2, 3x3)'s 16 `[c_out, c_in]` matrices, packed.
    packed_f2: OnceLock<Vec<PackedRows>>,
}

impl PreparedConv {
    /// A bias-free convolution `weight` `[c_out, c_in, kernel, kernel]` followed by the affine map
    /// `y * scale[c] + shift[c]` (a BatchNorm in inference mode).
    pub fn folded(
        weight: &[f32],
        [c_out, c_in, kernel]: [usize; 3],
        stride: usize,
        padding: usize,
        (scale, shift): (Vec<f32>, Vec<f32>),
    ) -> Self {
        let filter = c_in * kernel * kernel;
        assert_eq!(
            weight.len(),
            c_out * filter,
            "weight is not [c_out, c_in, k, k]"
        );
        assert!(scale.len() == c_out && shift.len() == c_out);
        let weight = weight
            .chunks_exact(filter)
            .zip(&scale)
            .flat_map(|(row, &scale)| row.iter().map(move |w| w * scale))
            .collect();
        Self {
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            weight,
            bias: shift,
            packed: OnceLock::new(),
            transformed: OnceLock::new(),
            packed_positions: OnceLock::new(),
            packed_f2: OnceLock::new(),
        }
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// The convolution's sizes on `batch` images of `height x width`.
    pub fn shape(&self, batch: usize, height: usize, width: usize) -> ConvShape {
        ConvShape {
            batch,
            c_in: self.c_in,
            height,
            width,
            c_out: self.c_out,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    fn transformed(&self) -> &[f32] {
        self.transformed.get_or_init(|| {
            let mut u = vec![0.0f32; winograd::POINTS * self.c_out * self.c_in];
            winograd::transform_weight(&self.weight, self.c_in, &mut u);
            u
        })
    }

    /// `relu?(conv(x) + bias (+ residual))` on `x` `[batch, c_in, height, width]`; `residual`
    /// has the output's shape.
    pub fn forward(
        &self,
        x: &[f32],
        [batch, height, width]: [usize; 3],
        residual: Option<&[f32]>,
        relu: bool,
    ) -> Vec<f32> {
        let s = self.shape(batch, height, width);
        assert_eq!(
            x.len(),
            s.input_len(),
            "input is not [{batch}, {}, {height}, {width}]",
            self.c_in
        );
        let mut y = if batch <= SMALL_BATCH && packed_gemm::available() {
            self.image_by_image(x, &s)
        } else if winograd::faster_than_im2col(&s) {
            winograd::conv2d_transformed(x, self.transformed(), &s)
        } else {
            conv_kernels::conv2d(x, &self.weight, &s)
        };
        add_bias_residual_relu(&mut y, &self.bias, s.out_plane(), residual, relu);
        y
    }

    /// The small-batch route: each image's products with the packed weights.
    fn image_by_image(&self, x: &[f32], s: &ConvShape) -> Vec<f32> {
        let one = ConvShape { batch: 1, ..*s };
        let plane = s.out_plane();
        let mut y = vec![0.0f32; s.output_len()];
        if winograd::faster_than_im2col(&one) {
            let u = self.packed_positions.get_or_init(|| {
                winograd::packed_positions(self.transformed(), self.c_out, self.c_in)
            });
            for (image, y_image) in y.chunks_exact_mut(self.c_out * plane).enumerate() {
                winograd::conv2d_one_image(x, image, u, s, y_image);
            }
        } else if winograd_f2::faster_for_one_image(s) {
            let u = self
                .packed_f2
                .get_or_init(|| winograd_f2::packed_positions(&self.weight, self.c_out, self.c_in));
            let in_image = s.c_in * s.height * s.width;
            for (x_image, y_image) in x
                .chunks_exact(in_image)
                .zip(y.chunks_exact_mut(self.c_out * plane))
            {
                winograd_f2::conv2d_one_image(x_image, u, s, y_image);
            }
        } else {
            let packed = self
                .packed
                .get_or_init(|| PackedRows::pack(&self.weight, self.c_out, s.patch(), s.patch()));
            let mut cols = Scratch::new(s.patch() * plane);
            for (image, y_image) in y.chunks_exact_mut(self.c_out * plane).enumerate() {
                conv_kernels::im2col_parallel(x, s, image..image + 1, &mut cols);
                packed_gemm::multiply(packed, &cols, plane, plane, y_image, plane, true);
            }
        }
        y
    }
}

/// `y[n, c] = relu?(y[n, c] + bias[c] (+ residual[n, c]))` over planes of `plane` values.
fn add_bias_residual_relu(
    y: &mut [f32],
    bias: &[f32],
    plane: usize,
    residual: Option<&[f32]>,
    relu: bool,
) {
    if let Some(residual) = residual {
        assert_eq!(
            residual.len(),
            y.len(),
            "residual and output differ in size"
        );
    }
    let per_plane = |(i, y_plane): (usize, &mut [f32])| {
        let b = bias[i % bias.len()];
        let residual = residual.map(|r| &r[i * plane..][..plane]);
        match (residual, relu) {
            (Some(r), true) => y_plane
                .iter_mut()
                .zip(r)
                .for_each(|(v, r)| *v = (*v + b + r).max(0.0)),
            (Some(r), false) => y_plane.iter_mut().zip(r).for_each(|(v, r)| *v += b + r),
            (None, true) => y_plane.iter_mut().for_each(|v| *v = (*v + b).max(0.0)),
            (None, false) => y_plane.iter_mut().for_each(|v| *v += b),
        }
    };
    // One image's output is a few hundred KB at most: splitting it costs more than it saves.
    if y.len() <= 1 << 16 {
        y.chunks_exact_mut(plane).enumerate().for_each(per_plane);
    } else {
        y.par_chunks_exact_mut(plane)
            .enumerate()
            .for_each(per_plane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv_kernels::tests::{reference_conv, values};

    /// The prepared convolution against the definition, conv then the affine map, residual and
    /// ReLU, on every route: small and large batches, Winograd F(4x4) and F(2x2), im2col.
    #[test]
    fn matches_conv_then_affine_residual_relu() {
        // (c_in, c_out, size, kernel, stride, batch)
        let cases = [
            (16, 24, 16, 3, 1, 1), // Winograd, one image (16 tiles)
            (16, 24, 8, 3, 1, 2),  // F(2x2, 3x3) image by image (16 tiles, 4 of F(4x4))
            (16, 24, 4, 3, 1, 1),  // im2col image by image (4 tiles of F(2x2))
            (8, 20, 9, 3, 2, 3),   // stride 2, odd size
            (12, 16, 8, 1, 2, 1),  // 1x1 shortcut
            (16, 24, 16, 3, 1, 9), // Winograd, chunks of several images
            (8, 20, 9, 3, 2, 9),   // im2col chunks
        ];
        for (c_in, c_out, size, kernel, stride, batch) in cases {
            let padding = kernel / 2;
            let weight = values(c_out * c_in * kernel * kernel, 3);
            let scale: Vec<f32> = (0..c_out).map(|c| 0.5 + c as f32 * 0.1).collect();
            let shift: Vec<f32> = (0..c_out).map(|c| c as f32 * 0.05 - 0.3).collect();
            let conv = PreparedConv::folded(
                &weight,
                [c_out, c_in, kernel],
                stride,
                padding,
                (scale.clone(), shift.clone()),
            );
            let s = conv.shape(batch, size, size);
            let x = values(s.input_len(), 4);
            let residual = values(s.output_len(), 5);
            let plane = s.out_plane();
            let y = reference_conv(&x, &weight, &s);
            for (with_residual, relu) in [(false, false), (false, true), (true, true)] {
                let got = conv.forward(
                    &x,
                    [batch, size, size],
                    with_residual.then_some(&residual[..]),
                    relu,
                );
                assert_eq!(got.len(), s.output_len());
                for (i, &g) in got.iter().enumerate() {
                    let c = i / plane % c_out;
                    let mut want = y[i] * scale[c] + shift[c];
                    if with_residual {
                        want += residual[i];
                    }
                    if relu {
                        want = want.max(0.0);
                    }
                    assert!(
                        (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{c_in}->{c_out} {size}px k{kernel} s{stride} batch {batch} [{i}]: {g} vs {want}"
                    );
                }
            }
        }
    }
}
