//! Winograd F(2x2, 3x3) for one image's 3x3 stride-1 convolutions on small planes, for
//! inference at small batches (Lavin and Gray, 2016, the same paper as [`crate::kernels::winograd`]'s
//! F(4x4, 3x3)).
//!
//! On the 8x8 planes of the third stage one image has 4 tiles of F(4x4, 3x3), too few for its
//! 36 transformed weight matrices (4 times the weights' size) to pay, so it ran im2col + one
//! product: 75 MFLOP per 256-channel layer, bound by the cores' multiply-adds. F(2x2, 3x3)
//! computes each 2x2 block of outputs from a 4x4 patch through 16 products per channel pair
//! instead of 36: 16 tiles on 8x8, one AVX-512 vector of columns for [`packed_gemm`], 2.25 times
//! fewer multiplications for 1.8 times the weights' bytes.
//!
//! For a tile: `Y = A^T [(G g G^T) . (B^T d B)] A` with
//! `B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]]`, `G = [[1,0,0], [1/2,1/2,1/2],
//! [1/2,-1/2,1/2], [0,0,1]]`, `A^T = [[1,1,1,0], [0,1,-1,-1]]`.

use crate::kernels::conv_kernels::Scratch;
use crate::kernels::conv_shape::ConvShape;
use crate::kernels::packed_gemm::{self, PackedRows};
use crate::kernels::winograd;
use rayon::prelude::*;

/// Positions of the transformed 4x4 tile.
const POINTS: usize = 16;

/// Tiles of one image's `height x width` plane: 2x2 outputs each.
fn tile_grid(s: &ConvShape) -> (usize, usize) {
    (s.height.div_ceil(2), s.width.div_ceil(2))
}

/// Whether one image of this convolution is faster here than with F(4x4, 3x3) or im2col: 16
/// tiles at least (a full vector of columns), where F(4x4, 3x3) has fewer than 16. 256 channels
/// on 8x8, one image (us, im2col -> F(2x2)): alone 409 -> 214; in the network at batch 1, its
/// weights then read from memory, 424-432 -> 292-311. On 4x4 (4 tiles) 408 -> 634 alone: the
/// products are too narrow for 16 of them to beat one.
pub fn faster_for_one_image(s: &ConvShape) -> bool {
    let one = ConvShape { batch: 1, ..*s };
    let (th, tw) = tile_grid(&one);
    winograd::applies(&one)
        && winograd::enabled()
        && s.c_in >= 16
        && s.c_out >= 16
        && th * tw >= 16
        && !winograd::faster_than_im2col(&one)
}

/// `G g G^T` of one 3x3 filter, row-major 4x4.
fn transform_filter(g: &[f32]) -> [f32; POINTS] {
    // G g: 4x3.
    let mut gg = [[0.0f32; 3]; 4];
    for c in 0..3 {
        let (a, b, d) = (g[c], g[3 + c], g[6 + c]);
        gg[0][c] = a;
        gg[1][c] = (a + b + d) * 0.5;
        gg[2][c] = (a - b + d) * 0.5;
        gg[3][c] = d;
    }
    let mut u = [0.0f32; POINTS];
    for (r, row) in gg.iter().enumerate() {
        let [a, b, d] = *row;
        u[r * 4] = a;
        u[r * 4 + 1] = (a + b + d) * 0.5;
        u[r * 4 + 2] = (a - b + d) * 0.5;
        u[r * 4 + 3] = d;
    }
    u
}

/// The 16 transformed weight matrices `[c_out, c_in]` of `weight` `[c_out, c_in, 3, 3]`, packed
/// for [`conv2d_one_image`].
pub fn packed_positions(weight: &[f32], c_out: usize, c_in: usize) -> Vec<PackedRows> {
    assert_eq!(
        weight.len(),
        c_out * c_in * 9,
        "weight is not [c_out, c_in, 3, 3]"
    );
    // [c_out, 16, c_in] first, then each position's [c_out, c_in] rows (16 c_in apart) packed.
    let mut u = vec![0.0f32; c_out * POINTS * c_in];
    u.par_chunks_mut(POINTS * c_in)
        .zip(weight.par_chunks(c_in * 9))
        .for_each(|(u_co, filters)| {
            for (ci, filter) in filters.chunks_exact(9).enumerate() {
                for (p, value) in transform_filter(filter).into_iter().enumerate() {
                    u_co[p * c_in + ci] = value;
                }
            }
        });
    (0..POINTS)
        .into_par_iter()
        .map(|p| PackedRows::pack(&u[p * c_in..], c_out, c_in, POINTS * c_in))
        .collect()
}

/// One image `x_image` `[c_in, height, width]` convolved (3x3, stride 1, padding 1) into `y_image`
/// `[c_out, height, width]`, with the weights of [`packed_positions`]. Needs
/// [`packed_gemm::available`].
pub fn conv2d_one_image(x_image: &[f32], u: &[PackedRows], s: &ConvShape, y_image: &mut [f32]) {
    let (th, tw) = tile_grid(s);
    let tiles = th * tw;
    let plane = s.height * s.width;
    assert_eq!(x_image.len(), s.c_in * plane, "input is not one image");
    assert_eq!(y_image.len(), s.c_out * plane, "output is not one image");
    assert_eq!(u.len(), POINTS, "not F(2x2, 3x3) weights");
    // v [c_in, 16, tiles]: each input channel's transformed patches.
    let mut v = Scratch::new(s.c_in * POINTS * tiles);
    v.par_chunks_mut(POINTS * tiles)
        .zip(x_image.par_chunks(plane))
        .with_min_len(16)
        .for_each(|(v_channel, x_plane)| transform_input(x_plane, s, v_channel));
    // m [16, c_out, tiles]: one product per position over the input channels.
    let mut m = Scratch::new(POINTS * s.c_out * tiles);
    m.par_chunks_mut(s.c_out * tiles)
        .zip(u)
        .enumerate()
        .for_each(|(p, (m_p, u_p))| {
            let v_p = &v[p * tiles..];
            packed_gemm::multiply(u_p, v_p, tiles, POINTS * tiles, m_p, tiles, false)
        });
    y_image
        .par_chunks_mut(plane)
        .enumerate()
        .with_min_len(16)
        .for_each(|(co, y_plane)| transform_output(&m, s, co, y_plane));
}

/// `B^T d B` of every tile of one channel's plane into `v_channel` `[16, tiles]`.
fn transform_input(x_plane: &[f32], s: &ConvShape, v_channel: &mut [f32]) {
    let (th, tw) = tile_grid(s);
    let tiles = th * tw;
    // Input value at (row, col) of the plane padded by 1 (0 outside).
    let at = |r: usize, c: usize| -> f32 {
        let (r, c) = (r.wrapping_sub(1), c.wrapping_sub(1));
        if r < s.height && c < s.width {
            x_plane[r * s.width + c]
        } else {
            0.0
        }
    };
    for ty in 0..th {
        for tx in 0..tw {
            let mut d = [[0.0f32; 4]; 4];
            for (r, row) in d.iter_mut().enumerate() {
                for (c, value) in row.iter_mut().enumerate() {
                    *value = at(2 * ty + r, 2 * tx + c);
                }
            }
            // B^T d (rows), then (.) B (columns).
            let mut t = [[0.0f32; 4]; 4];
            for c in 0..4 {
                t[0][c] = d[0][c] - d[2][c];
                t[1][c] = d[1][c] + d[2][c];
                t[2][c] = d[2][c] - d[1][c];
                t[3][c] = d[1][c] - d[3][c];
            }
            let tile = ty * tw + tx;
            for (r, row) in t.iter().enumerate() {
                let values = [
                    row[0] - row[2],
                    row[1] + row[2],
                    row[2] - row[1],
                    row[1] - row[3],
                ];
                for (c, value) in values.into_iter().enumerate() {
                    v_channel[(r * 4 + c) * tiles + tile] = value;
                }
            }
        }
    }
}

/// `A^T m A` of every tile of output channel `co` (`m` `[16, c_out, tiles]`) into its plane.
fn transform_output(m: &[f32], s: &ConvShape, co: usize, y_plane: &mut [f32]) {
    let (th, tw) = tile_grid(s);
    let tiles = th * tw;
    let at = |p: usize, tile: usize| m[(p * s.c_out + co) * tiles + tile];
    for ty in 0..th {
        for tx in 0..tw {
            let tile = ty * tw + tx;
            // A^T m (rows): 2x4.
            let columns: [[f32; 4]; 4] =
                std::array::from_fn(|c| std::array::from_fn(|r| at(r * 4 + c, tile)));
            let t = [
                columns.map(|m| m[0] + m[1] + m[2]),
                columns.map(|m| m[1] - m[2] - m[3]),
            ];
            for (i, row) in t.iter().enumerate() {
                let (oy, ox) = (2 * ty + i, 2 * tx);
                if oy >= s.height {
                    continue;
                }
                y_plane[oy * s.width + ox] = row[0] + row[1] + row[2];
                if ox + 1 < s.width {
                    y_plane[oy * s.width + ox + 1] = row[1] - row[2] - row[3];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv_kernels::tests::{reference_conv, values};
    use crate::kernels::winograd::tests::shape;

    /// Against the definition, on 8x8 (16 tiles, the network's case), odd sizes (tiles cut at
    /// the border) and channel counts off the panel and vector sizes.
    #[test]
    fn matches_the_definition() {
        if !packed_gemm::available() {
            return;
        }
        for (c_in, c_out, height, width) in [(16, 24, 8, 8), (20, 7, 7, 9), (3, 13, 5, 4)] {
            let s = shape(1, c_in, c_out, height, width);
            let (x, w) = (values(s.input_len(), 3), values(s.weight_len(), 4));
            let u = packed_positions(&w, c_out, c_in);
            let mut y = vec![f32::NAN; s.output_len()];
            conv2d_one_image(&x, &u, &s, &mut y);
            let expected = reference_conv(&x, &w, &s);
            let diff = e2e::max_abs_diff(&y, &expected);
            assert!(diff < 1e-5, "{s:?}: {diff}");
        }
    }
}
