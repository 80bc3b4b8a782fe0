//! Winograd F(4x4, 3x3) for the 3x3 stride-1 padding-1 convolutions (all but four of
//! ResNet-18's twenty): each 4x4 block of outputs ("tile") comes from a 6x6 input patch through
//! 36 products per channel pair instead of 144, so the matrix products, most of the step's time,
//! do a quarter of im2col's multiplications (Lavin and Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016; the transforms below are theirs, points 0, +-1, +-2, +-1/2).
//!
//! For a tile: `Y = A^T [(G g G^T) . (B^T d B)] A`. Over channels the elementwise product becomes,
//! for each of the 36 positions `xi`, one matrix product `M[xi] = U[xi] V[xi]` with `U[xi]`
//! `[c_out, c_in]` (transformed weights) and `V[xi]` `[c_in, tiles]` (transformed patches).
//!
//! - Input gradient: the same convolution of the output gradient by the weights flipped and with
//!   their channel axes swapped (stride 1, padding 1 keep the size).
//! - Weight gradient: the adjoint of the forward map, `dU[xi] = dM[xi] V[xi]^T` with
//!   `dM = A dY A^T` per tile, then `dg = G^T dU G`: 36 products of `[c_out, tiles] x [tiles,
//!   c_in]` instead of im2col's `[c_out, tiles*16] x [tiles*16, 9 c_in]`.
//!
//! Images are taken in chunks (a multiple of the thread count), each chunk's 36 products
//! single-threaded unless there are fewer chunks than cores, as in
//! [`crate::kernels::conv_kernels`].

use crate::kernels::conv_kernels::{few, sized, ConvShape};
use crate::kernels::matmul::{matmul, Matrix};
use rayon::prelude::*;

/// Positions of the transformed 6x6 tile.
const POINTS: usize = 36;

/// Floats between consecutive positions' matrices beyond their size. Without it the 36 matrices
/// of a buffer often start a multiple of 4 KB apart, so the transforms' 36 read or write streams
/// fall into the same cache sets and evict each other.
const SKEW: usize = 16;

/// Distance between the matrices of consecutive positions in a `[36, rows, cols]` buffer.
fn position_stride(rows: usize, cols: usize) -> usize {
    rows * cols + SKEW
}

/// Whether the convolution is one these kernels compute.
pub fn applies(s: &ConvShape) -> bool {
    s.kernel == 3 && s.stride == 1 && s.padding == 1
}

/// A pass of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Output,
    InputGrad,
    WeightGrad,
}

/// Whether Winograd beats im2col + GEMM on this pass, by `conv_bench` on 2 AVX-512 cores (ms,
/// 64 images, im2col -> Winograd; forward, input gradient, weight gradient):
///
/// | layer | forward | input grad | weight grad |
/// | --- | --- | --- | --- |
/// | 3->64, 32x32 (the stem) | 3.7 -> 7.9 | 2.7 -> 11.7 | 3.8 -> 8.1 |
/// | 64->64, 32x32 | 28.0 -> 28.8 | 27.8 -> 28.7 | 82.0 -> 28.7 |
/// | 128->128, 16x16 | 27.4 -> 21.2 | 27.0 -> 18.5 | 33.9 -> 19.0 |
/// | 256->256, 8x8 | 28.0 -> 17.1 | 28.8 -> 15.5 | 32.9 -> 20.3 |
/// | 512->512, 4x4 | 25.5 -> 30.4 | 28.2 -> 32.1 | 32.9 -> 161.1 |
///
/// Few channels make the transforms (work per channel and tile) outweigh the products (per
/// channel pair and tile); a 4x4 plane is one tile, whose transformed weights (4x the weights)
/// cost more than the products they save. Same with few tiles in the whole batch: one image
/// (batch 1) of 256 channels on 8x8, 0.5 ms -> 2.7 ms forward.
pub fn faster_than_im2col(s: &ConvShape, pass: Pass) -> bool {
    let side = s.height.min(s.width);
    let plane_ok = match pass {
        Pass::Output | Pass::InputGrad => (8..=16).contains(&side),
        Pass::WeightGrad => side >= 8,
    };
    let (th, tw) = tile_grid(s);
    let tiles = s.batch * th * tw;
    applies(s) && s.c_in >= 16 && s.c_out >= 16 && plane_ok && tiles >= 128
}

/// `B^T d` for one column (or row) of a 6x6 patch.
#[inline(always)]
fn input_1d(d: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        2.0 * (d[3] - d[1]) - d[2] + d[4],
        2.0 * (d[1] - d[3]) - d[2] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `A^T m` for one column (or row) of a transformed 6x6 tile: four outputs.
#[inline(always)]
fn output_1d(m: [f32; 6]) -> [f32; 4] {
    let (sum12, diff12) = (m[1] + m[2], m[1] - m[2]);
    let (sum34, diff34) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + sum12 + sum34,
        diff12 + 2.0 * diff34,
        sum12 + 4.0 * sum34,
        diff12 + 8.0 * diff34 + m[5],
    ]
}

/// `A y`: the adjoint of [`output_1d`], four output-gradient values to six.
#[inline(always)]
fn output_adjoint_1d(y: [f32; 4]) -> [f32; 6] {
    let (even, odd) = (y[0] + y[2], y[1] + y[3]);
    let (even4, odd8) = (y[0] + 4.0 * y[2], 2.0 * y[1] + 8.0 * y[3]);
    [
        y[0],
        even + odd,
        even - odd,
        even4 + odd8,
        even4 - odd8,
        y[3],
    ]
}

/// `G g` for one column (or row) of a 3x3 kernel.
#[inline(always)]
fn weight_1d(g: [f32; 3]) -> [f32; 6] {
    let (outer, middle) = (g[0] + g[2], g[1]);
    let quarter = g[0] / 24.0 + g[2] / 6.0;
    [
        g[0] / 4.0,
        -(outer + middle) / 6.0,
        -(outer - middle) / 6.0,
        quarter + middle / 12.0,
        quarter - middle / 12.0,
        g[2],
    ]
}

/// `G^T u`: the adjoint of [`weight_1d`], six values to three.
#[inline(always)]
fn weight_adjoint_1d(u: [f32; 6]) -> [f32; 3] {
    let (sum12, diff12) = (u[1] + u[2], u[2] - u[1]);
    let (sum34, diff34) = (u[3] + u[4], u[3] - u[4]);
    [
        u[0] / 4.0 - sum12 / 6.0 + sum34 / 24.0,
        diff12 / 6.0 + diff34 / 12.0,
        -sum12 / 6.0 + sum34 / 6.0 + u[5],
    ]
}

/// Applies a 1-D transform to the columns, then the rows, of an `R x R` tile.
#[inline(always)]
fn transform_2d<const R: usize, const S: usize>(
    tile: &[[f32; R]; R],
    f: impl Fn([f32; R]) -> [f32; S],
) -> [[f32; S]; S] {
    let mut columns = [[0.0f32; S]; R]; // columns[j] = f(column j)
    for (j, column) in columns.iter_mut().enumerate() {
        *column = f(std::array::from_fn(|i| tile[i][j]));
    }
    // Row i of the result: f applied to row i of the column-transformed tile.
    std::array::from_fn(|i| f(std::array::from_fn(|j| columns[j][i])))
}

/// Tiles of one image plane: rows and columns of 4x4 output blocks.
fn tile_grid(s: &ConvShape) -> (usize, usize) {
    (s.height.div_ceil(4), s.width.div_ceil(4))
}

/// Chunks of images with at most about 4 MB of transformed patches each (see
/// [`ConvShape::chunks_of`]).
fn chunks(s: &ConvShape, channels: usize) -> Vec<std::ops::Range<usize>> {
    let (th, tw) = tile_grid(s);
    s.chunks_of(POINTS * channels * th * tw)
}

/// Transformed patches `v` `[36, channels, tiles]` (positions [`position_stride`] apart) of images `images` of `x`
/// `[batch, channels, height, width]` (zero padding of 1 around each plane).
fn transform_input(
    x: &[f32],
    channels: usize,
    s: &ConvShape,
    images: std::ops::Range<usize>,
    v: &mut [f32],
) {
    let (th, tw) = tile_grid(s);
    let (h, w) = (s.height as isize, s.width as isize);
    let tiles = images.len() * th * tw;
    let stride = position_stride(channels, tiles);
    let plane = s.height * s.width;
    for c in 0..channels {
        for (local, image) in images.clone().enumerate() {
            let src = &x[(image * channels + c) * plane..][..plane];
            for ty in 0..th {
                for tx in 0..tw {
                    let (row0, col0) = (4 * ty as isize - 1, 4 * tx as isize - 1);
                    let mut d = [[0.0f32; 6]; 6];
                    let interior = row0 >= 0 && col0 >= 0 && row0 + 6 <= h && col0 + 6 <= w;
                    for (i, d_row) in d.iter_mut().enumerate() {
                        let r = row0 + i as isize;
                        if !(0..h).contains(&r) {
                            continue;
                        }
                        let src_row = &src[r as usize * s.width..][..s.width];
                        if interior {
                            d_row.copy_from_slice(&src_row[col0 as usize..col0 as usize + 6]);
                        } else {
                            for (j, value) in d_row.iter_mut().enumerate() {
                                let col = col0 + j as isize;
                                if (0..w).contains(&col) {
                                    *value = src_row[col as usize];
                                }
                            }
                        }
                    }
                    let t = (local * th + ty) * tw + tx;
                    let transformed = transform_2d(&d, input_1d);
                    for (p, value) in transformed.iter().flatten().enumerate() {
                        v[p * stride + c * tiles + t] = *value;
                    }
                }
            }
        }
    }
}

/// Transformed weights `u` `[c_out, 36, c_in]` of `weight` `[c_out, c_in, 3, 3]`: position
/// `xi`'s matrix `[c_out, c_in]` has rows `36 * c_in` apart.
fn transform_weight(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; POINTS * c_out * c_in];
    u.par_chunks_mut(POINTS * c_in)
        .enumerate()
        .for_each(|(co, u_co)| {
            for ci in 0..c_in {
                let g = &weight[(co * c_in + ci) * 9..][..9];
                let g: [[f32; 3]; 3] =
                    std::array::from_fn(|i| std::array::from_fn(|j| g[i * 3 + j]));
                for (p, value) in transform_2d(&g, weight_1d).iter().flatten().enumerate() {
                    u_co[p * c_in + ci] = *value;
                }
            }
        });
    u
}

/// Position `p`'s `[c_out, c_in]` matrix in [`transform_weight`]'s layout.
fn weight_matrix(p: usize, c_out: usize, c_in: usize) -> Matrix {
    Matrix::new(p * c_in, c_out, c_in, POINTS * c_in)
}

/// Forward convolution (3x3, stride 1, padding 1): `x` `[batch, c_in, h, w]`, `weight`
/// `[c_out, c_in, 3, 3]` -> `[batch, c_out, h, w]`.
pub fn conv2d(x: &[f32], weight: &[f32], s: &ConvShape) -> Vec<f32> {
    assert!(
        applies(s),
        "{s:?} is not a 3x3 stride-1 padding-1 convolution"
    );
    assert_eq!((x.len(), weight.len()), (s.input_len(), s.weight_len()));
    let u = transform_weight(weight, s.c_out, s.c_in);
    let (th, tw) = tile_grid(s);
    let plane = s.height * s.width;
    let mut y = vec![0.0f32; s.output_len()];
    let chunks = chunks(s, s.c_in.max(s.c_out));
    let (parallel, per_chunk) = (few(&chunks), chunks[0].len() * s.c_out * plane);
    let buffers = || (Vec::new(), Vec::new());
    let chunks = y.par_chunks_mut(per_chunk).zip(chunks);
    chunks.for_each_init(buffers, |(v, m), (y_images, images)| {
        let tiles = images.len() * th * tw;
        let (v_stride, m_stride) = (
            position_stride(s.c_in, tiles),
            position_stride(s.c_out, tiles),
        );
        let v = sized(v, POINTS * v_stride);
        transform_input(x, s.c_in, s, images.clone(), v);
        let m = sized(m, POINTS * m_stride);
        for p in 0..POINTS {
            matmul(
                m,
                Matrix::new(p * m_stride, s.c_out, tiles, tiles),
                false,
                &u,
                weight_matrix(p, s.c_out, s.c_in),
                v,
                Matrix::new(p * v_stride, s.c_in, tiles, tiles),
                parallel,
            );
        }
        transform_output(m, s, images.len(), y_images);
    });
    y
}

/// Writes the 4x4 output blocks of `m` `[36, c_out, tiles]` (positions [`position_stride`]
/// apart) into `y` `[images, c_out, h, w]`
/// (blocks clipped at the plane's edge).
fn transform_output(m: &[f32], s: &ConvShape, images: usize, y: &mut [f32]) {
    let (th, tw) = tile_grid(s);
    let tiles = images * th * tw;
    let stride = position_stride(s.c_out, tiles);
    let plane = s.height * s.width;
    for local in 0..images {
        for co in 0..s.c_out {
            let dst = &mut y[(local * s.c_out + co) * plane..][..plane];
            for ty in 0..th {
                for tx in 0..tw {
                    let t = (local * th + ty) * tw + tx;
                    let tile: [[f32; 6]; 6] = std::array::from_fn(|i| {
                        std::array::from_fn(|j| m[(i * 6 + j) * stride + co * tiles + t])
                    });
                    let out = transform_2d(&tile, output_1d);
                    let rows = (s.height - 4 * ty).min(4);
                    let cols = (s.width - 4 * tx).min(4);
                    for (i, out_row) in out.iter().enumerate().take(rows) {
                        dst[(4 * ty + i) * s.width + 4 * tx..][..cols]
                            .copy_from_slice(&out_row[..cols]);
                    }
                }
            }
        }
    }
}

/// Gradient of the input: the convolution of `dy` by the flipped, channel-transposed weights.
pub fn conv2d_input_grad(dy: &[f32], weight: &[f32], s: &ConvShape) -> Vec<f32> {
    assert!(
        applies(s),
        "{s:?} is not a 3x3 stride-1 padding-1 convolution"
    );
    assert_eq!((dy.len(), weight.len()), (s.output_len(), s.weight_len()));
    let mut flipped = vec![0.0f32; weight.len()];
    for co in 0..s.c_out {
        for ci in 0..s.c_in {
            for k in 0..9 {
                flipped[(ci * s.c_out + co) * 9 + 8 - k] = weight[(co * s.c_in + ci) * 9 + k];
            }
        }
    }
    let transposed = ConvShape {
        c_in: s.c_out,
        c_out: s.c_in,
        ..*s
    };
    conv2d(dy, &flipped, &transposed)
}

/// Output-gradient tiles transformed by the forward map's adjoint: `dm` `[36, c_out, tiles]`
/// (positions [`position_stride`] apart)
/// from `dy` `[batch, c_out, h, w]` (outside the plane: zero).
fn transform_output_grad(
    dy: &[f32],
    s: &ConvShape,
    images: std::ops::Range<usize>,
    dm: &mut [f32],
) {
    let (th, tw) = tile_grid(s);
    let tiles = images.len() * th * tw;
    let stride = position_stride(s.c_out, tiles);
    let plane = s.height * s.width;
    for (local, image) in images.enumerate() {
        for co in 0..s.c_out {
            let src = &dy[(image * s.c_out + co) * plane..][..plane];
            for ty in 0..th {
                for tx in 0..tw {
                    let mut tile = [[0.0f32; 4]; 4];
                    let rows = (s.height - 4 * ty).min(4);
                    let cols = (s.width - 4 * tx).min(4);
                    for (i, row) in tile.iter_mut().enumerate().take(rows) {
                        row[..cols]
                            .copy_from_slice(&src[(4 * ty + i) * s.width + 4 * tx..][..cols]);
                    }
                    let t = (local * th + ty) * tw + tx;
                    let transformed = transform_2d(&tile, output_adjoint_1d);
                    for (p, value) in transformed.iter().flatten().enumerate() {
                        dm[p * stride + co * tiles + t] = *value;
                    }
                }
            }
        }
    }
}

/// Gradient of the weight: `dU[xi] = sum over chunks dM[xi] V[xi]^T`, then `dg = G^T dU G`.
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], s: &ConvShape) -> Vec<f32> {
    assert!(
        applies(s),
        "{s:?} is not a 3x3 stride-1 padding-1 convolution"
    );
    assert_eq!((x.len(), dy.len()), (s.input_len(), s.output_len()));
    let (th, tw) = tile_grid(s);
    let du_len = POINTS * s.c_out * s.c_in;
    let chunks = chunks(s, s.c_in.max(s.c_out));
    let parallel = few(&chunks);
    let du = chunks
        .into_par_iter()
        .fold(
            || (vec![0.0f32; du_len], Vec::new(), Vec::new()),
            |(mut du, mut v, mut dm), images| {
                let tiles = images.len() * th * tw;
                let (v_stride, dm_stride) = (
                    position_stride(s.c_in, tiles),
                    position_stride(s.c_out, tiles),
                );
                transform_input(
                    x,
                    s.c_in,
                    s,
                    images.clone(),
                    sized(&mut v, POINTS * v_stride),
                );
                transform_output_grad(dy, s, images, sized(&mut dm, POINTS * dm_stride));
                for p in 0..POINTS {
                    matmul(
                        &mut du,
                        Matrix::new(p * s.c_out * s.c_in, s.c_out, s.c_in, s.c_in),
                        true,
                        &dm,
                        Matrix::new(p * dm_stride, s.c_out, tiles, tiles),
                        &v,
                        Matrix::new(p * v_stride, s.c_in, tiles, tiles).t(),
                        parallel,
                    );
                }
                (du, v, dm)
            },
        )
        .map(|(du, _, _)| du)
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0f32; du_len]);
    let mut dw = vec![0.0f32; s.weight_len()];
    dw.par_chunks_mut(s.c_in * 9)
        .enumerate()
        .for_each(|(co, dw_co)| {
            for ci in 0..s.c_in {
                let tile: [[f32; 6]; 6] = std::array::from_fn(|i| {
                    std::array::from_fn(|j| du[((i * 6 + j) * s.c_out + co) * s.c_in + ci])
                });
                let g = transform_2d(&tile, weight_adjoint_1d);
                dw_co[ci * 9..][..9].copy_from_slice(g.as_flattened());
            }
        });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv_kernels::tests::{dot, reference_conv, values};

    fn shape(batch: usize, c_in: usize, c_out: usize, height: usize, width: usize) -> ConvShape {
        ConvShape {
            batch,
            c_in,
            height,
            width,
            c_out,
            kernel: 3,
            stride: 1,
            padding: 1,
        }
    }

    /// Planes that are whole tiles (8x8, 4x4), partial tiles at the edges (5x7, 6x6) and
    /// smaller than a tile (3x2); one channel and several.
    fn shapes() -> Vec<ConvShape> {
        vec![
            shape(3, 4, 5, 8, 8),
            shape(2, 6, 3, 4, 4),
            shape(1, 2, 3, 5, 7),
            shape(4, 1, 1, 6, 6),
            shape(2, 3, 2, 3, 2),
        ]
    }

    /// Largest difference relative to the largest reference value.
    fn relative_max_diff(ours: &[f32], reference: &[f32]) -> f32 {
        let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        e2e::max_abs_diff(ours, reference) / scale.max(1e-12)
    }

    #[test]
    fn only_3x3_stride_1_padding_1_convolutions_apply() {
        assert!(applies(&shape(1, 1, 1, 4, 4)));
        for (kernel, stride, padding) in [(3, 2, 1), (1, 2, 0), (3, 1, 0), (5, 1, 2)] {
            let s = ConvShape {
                kernel,
                stride,
                padding,
                ..shape(1, 1, 1, 8, 8)
            };
            assert!(!applies(&s), "{s:?}");
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        for s in shapes() {
            let (x, w) = (values(s.input_len(), 11), values(s.weight_len(), 12));
            let diff = relative_max_diff(&conv2d(&x, &w, &s), &reference_conv(&x, &w, &s));
            assert!(diff < 1e-5, "{s:?}: {diff}");
        }
    }

    /// The input gradient is the convolution's transpose and the weight gradient its derivative
    /// by the weights: `<conv(x, w), dy> = <x, input_grad(dy, w)> = <w, weight_grad(x, dy)>`,
    /// and each weight-gradient entry is the forward pass of a one-hot weight against `dy`.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward_pass() {
        for s in shapes() {
            let (x, w, dy) = (
                values(s.input_len(), 13),
                values(s.weight_len(), 14),
                values(s.output_len(), 15),
            );
            let forward = dot(&reference_conv(&x, &w, &s), &dy);
            let via_input = dot(&x, &conv2d_input_grad(&dy, &w, &s));
            let grad = conv2d_weight_grad(&x, &dy, &s);
            let via_weight = dot(&w, &grad);
            let tolerance = 1e-4 * forward.abs().max(1.0);
            assert!(
                (forward - via_input).abs() < tolerance,
                "{s:?}: {forward} vs {via_input}"
            );
            assert!(
                (forward - via_weight).abs() < tolerance,
                "{s:?}: {forward} vs {via_weight}"
            );
            for index in [0, 4, s.weight_len() / 2, s.weight_len() - 1] {
                let mut one_hot = vec![0.0; s.weight_len()];
                one_hot[index] = 1.0;
                let expected = dot(&reference_conv(&x, &one_hot, &s), &dy);
                assert!(
                    (grad[index] as f64 - expected).abs() < 1e-4 * expected.abs().max(1.0),
                    "{s:?} weight {index}: {} vs {expected}",
                    grad[index]
                );
            }
        }
    }

    /// On a layer of the real network's size, against im2col + GEMM (which the tests above and
    /// conv.rs's tests against Burn's own convolution hold to the definition).
    #[test]
    fn agrees_with_im2col_on_a_network_sized_layer() {
        use crate::kernels::conv_kernels;
        let s = shape(4, 64, 64, 16, 16);
        let (x, w, dy) = (
            values(s.input_len(), 16),
            values(s.weight_len(), 17)
                .iter()
                .map(|v| v * 0.05)
                .collect::<Vec<_>>(),
            values(s.output_len(), 18),
        );
        let pairs = [
            (conv2d(&x, &w, &s), conv_kernels::conv2d(&x, &w, &s)),
            (
                conv2d_input_grad(&dy, &w, &s),
                conv_kernels::conv2d_input_grad(&dy, &w, &s),
            ),
            (
                conv2d_weight_grad(&x, &dy, &s),
                conv_kernels::conv2d_weight_grad(&x, &dy, &s),
            ),
        ];
        for (pass, (ours, reference)) in ["output", "input gradient", "weight gradient"]
            .iter()
            .zip(pairs)
        {
            let diff = relative_max_diff(&ours, &reference);
            assert!(diff < 1e-5, "{pass}: {diff}");
        }
    }
}
