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

use crate::kernels::conv_kernels::{few, sized, Scratch};
use crate::kernels::conv_shape::ConvShape;
use crate::kernels::matmul::{matmul, Matrix};
use crate::kernels::packed_gemm::{self, PackedRows};
use rayon::prelude::*;
use std::ops::{Add, Mul, Sub};
use std::sync::atomic::{AtomicBool, Ordering};

/// Positions of the transformed 6x6 tile.
pub(crate) const POINTS: usize = 36;

/// Floats between consecutive positions' matrices beyond their size. Without it the 36 matrices
/// of a buffer often start a multiple of 4 KB apart, so the transforms' 36 read or write streams
/// fall into the same cache sets and evict each other.
const SKEW: usize = 16;

/// Distance between the matrices of consecutive positions in a `[36, rows, cols]` buffer.
pub(crate) fn position_stride(rows: usize, cols: usize) -> usize {
    rows * cols + SKEW
}

/// Whether the convolution is one these kernels compute.
pub fn applies(s: &ConvShape) -> bool {
    s.kernel == 3 && s.stride == 1 && s.padding == 1
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns Winograd off (or on again) for this process: every convolution then runs as im2col +
/// GEMM (the `winograd` config key, `--no-winograd`). Winograd's float error is larger than
/// im2col's: its transforms scale values by up to 8 and back, so the rounding error follows the
/// inputs' magnitude, not the outputs'. `tests/tests/golden_step.rs` holds both against
/// PyTorch's float64 step (the measured errors are in docs/evidence.md).
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether Winograd is on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether Winograd beats im2col + GEMM on this convolution (all three passes), by `conv_bench` on 2 AVX-512 cores (ms,
/// 64 images, im2col -> Winograd; forward, input gradient, weight gradient):
///
/// | layer | forward | input grad | weight grad |
/// | --- | --- | --- | --- |
/// | 3->64, 32x32 (the stem) | 5.4 -> 5.3 | 5.0 -> 6.4 | 4.5 -> 8.1 |
/// | 64->64, 32x32 | 30.0 -> 17.9 | 26.9 -> 18.5 | 78.6 -> 17.0 |
/// | 128->128, 16x16 | 28.6 -> 12.5 | 26.3 -> 12.4 | 34.9 -> 14.2 |
/// | 256->256, 8x8 | 28.2 -> 11.0 | 27.5 -> 11.4 | 30.8 -> 12.8 |
/// | 512->512, 4x4 | 27.6 -> 13.5 | 28.2 -> 14.7 | 31.1 -> 25.7 |
///
/// Few channels make the transforms (work per channel and tile) outweigh the products (per
/// channel pair and tile); few tiles in the whole batch leave the products too small for the
/// transforms (of the weights above all) to pay: one image (batch 1, `conv_bench 1`) runs its
/// 32x32 and 16x16 layers (64 and 16 tiles) faster with Winograd (forward 1.3 -> 0.6 ms and
/// 1.0 -> 0.6 ms), its 8x8 and 4x4 ones (4 tiles, 1 tile) slower (0.9 -> 2.2 ms, 1.3 -> 11.4 ms).
pub fn faster_than_im2col(s: &ConvShape) -> bool {
    let (th, tw) = tile_grid(s);
    let tiles = s.batch * th * tw;
    enabled() && applies(s) && s.c_in >= 16 && s.c_out >= 16 && tiles >= 16
}

/// `B^T d` for one column (or row) of a 6x6 patch.
#[inline(always)]
fn input_1d<T: Arith>(d: [T; 6]) -> [T; 6] {
    [
        d[0] * 4.0 - d[2] * 5.0 + d[4],
        d[3] + d[4] - (d[1] + d[2]) * 4.0,
        (d[1] - d[2]) * 4.0 - d[3] + d[4],
        (d[3] - d[1]) * 2.0 - d[2] + d[4],
        (d[1] - d[3]) * 2.0 - d[2] + d[4],
        d[1] * 4.0 - d[3] * 5.0 + d[5],
    ]
}

/// `A^T m` for one column (or row) of a transformed 6x6 tile: four outputs.
#[inline(always)]
fn output_1d<T: Arith>(m: [T; 6]) -> [T; 4] {
    let (sum12, diff12) = (m[1] + m[2], m[1] - m[2]);
    let (sum34, diff34) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + sum12 + sum34,
        diff12 + diff34 * 2.0,
        sum12 + sum34 * 4.0,
        diff12 + diff34 * 8.0 + m[5],
    ]
}

/// `A y`: the adjoint of [`output_1d`], four output-gradient values to six.
#[inline(always)]
fn output_adjoint_1d<T: Arith>(y: [T; 4]) -> [T; 6] {
    let (even, odd) = (y[0] + y[2], y[1] + y[3]);
    let (even4, odd8) = (y[0] + y[2] * 4.0, y[1] * 2.0 + y[3] * 8.0);
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
fn weight_1d<T: Arith>(g: [T; 3]) -> [T; 6] {
    let (outer, middle) = (g[0] + g[2], g[1]);
    let quarter = g[0] * (1.0 / 24.0) + g[2] * (1.0 / 6.0);
    [
        g[0] * 0.25,
        (outer + middle) * (-1.0 / 6.0),
        (outer - middle) * (-1.0 / 6.0),
        quarter + middle * (1.0 / 12.0),
        quarter - middle * (1.0 / 12.0),
        g[2],
    ]
}

/// `G^T u`: the adjoint of [`weight_1d`], six values to three.
#[inline(always)]
fn weight_adjoint_1d<T: Arith>(u: [T; 6]) -> [T; 3] {
    let (sum12, diff12) = (u[1] + u[2], u[2] - u[1]);
    let (sum34, diff34) = (u[3] + u[4], u[3] - u[4]);
    [
        u[0] * 0.25 - sum12 * (1.0 / 6.0) + sum34 * (1.0 / 24.0),
        diff12 * (1.0 / 6.0) + diff34 * (1.0 / 12.0),
        (sum34 - sum12) * (1.0 / 6.0) + u[5],
    ]
}

/// Applies a 1-D transform to the columns, then the rows, of an `R x R` tile, into `out`
/// (plain loops into arrays the caller keeps: built as new arrays of 64-byte [`Lanes`] values,
/// they were copied through memory on every call).
#[inline(always)]
fn transform_2d<T: Copy, const R: usize, const S: usize>(
    tile: &[[T; R]; R],
    f: impl Fn([T; R]) -> [T; S],
    out: &mut [[T; S]; S],
) {
    let mut columns = [[tile[0][0]; S]; R]; // columns[j] = f(column j)
    for (j, column) in columns.iter_mut().enumerate() {
        let mut values = tile[0];
        for (value, row) in values.iter_mut().zip(tile) {
            *value = row[j];
        }
        *column = f(values);
    }
    // Row i of the result: f applied to row i of the column-transformed tile.
    for (i, out_row) in out.iter_mut().enumerate() {
        let mut values = tile[0];
        for (value, column) in values.iter_mut().zip(&columns) {
            *value = column[i];
        }
        *out_row = f(values);
    }
}

/// The arithmetic the 1-D transforms use: on one value (weights) or on [`Lanes`] (tiles).
trait Arith: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f32, Output = Self> {}
impl Arith for f32 {}
impl Arith for Lanes {}

/// Tiles transformed at once: one per lane of an AVX-512 register.
const LANES: usize = 16;

/// One value of [`LANES`] consecutive tiles. The transforms of patches, outputs and output
/// gradients run on these, so each add or multiply is one vector instruction for 16 tiles
/// (inside [`vectorized`]); one tile at a time, they were 15 % of a training step.
#[derive(Clone, Copy)]
struct Lanes([f32; LANES]);

impl Lanes {
    const ZERO: Lanes = Lanes([0.0; LANES]);
    /// The first `n` lanes from `values` (the rest zero).
    #[inline(always)]
    fn load(values: &[f32], n: usize) -> Lanes {
        if n == LANES {
            // A fixed-size copy: one vector load, where a copy of `n` values calls memcpy.
            return Lanes(values[..LANES].try_into().expect("16 values"));
        }
        let mut lanes = Lanes::ZERO;
        lanes.0[..n].copy_from_slice(&values[..n]);
        lanes
    }
    /// Writes the first `n` lanes to `dst`.
    #[inline(always)]
    fn store(&self, dst: &mut [f32], n: usize) {
        if n == LANES {
            dst[..LANES].copy_from_slice(&self.0);
        } else {
            dst[..n].copy_from_slice(&self.0[..n]);
        }
    }
}

impl Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(mut self, other: Lanes) -> Lanes {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
        self
    }
}

impl Sub for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn sub(mut self, other: Lanes) -> Lanes {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a -= b;
        }
        self
    }
}

impl Mul<f32> for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn mul(mut self, factor: f32) -> Lanes {
        for a in &mut self.0 {
            *a *= factor;
        }
        self
    }
}

/// Defines `$name`, which runs `$body` (an `#[inline(always)]` function) compiled for AVX-512,
/// else AVX2 + FMA, when the CPU has them (checked at run time; the build itself targets the
/// x86-64 baseline, SSE2), so the loops over [`Lanes`] inside become 16- or 8-wide vector code.
macro_rules! vectorized {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) = $body:ident) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked on the line above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// Position of tile `t` of a chunk: (image within the chunk, tile row, tile column).
#[derive(Clone, Copy)]
struct TileCursor {
    image: usize,
    row: usize,
    col: usize,
}

impl TileCursor {
    fn at(t: usize, (th, tw): (usize, usize)) -> Self {
        Self {
            image: t / (th * tw),
            row: t % (th * tw) / tw,
            col: t % tw,
        }
    }
    /// The next tile: along the row, then down, then the next image.
    #[inline(always)]
    fn advance(&mut self, (th, tw): (usize, usize)) {
        self.col += 1;
        if self.col == tw {
            self.col = 0;
            self.row += 1;
            if self.row == th {
                self.row = 0;
                self.image += 1;
            }
        }
    }
}

/// Tiles of one image plane: rows and columns of 4x4 output blocks.
pub(crate) fn tile_grid(s: &ConvShape) -> (usize, usize) {
    (s.height.div_ceil(4), s.width.div_ceil(4))
}

/// Chunks of images (see [`ConvShape::chunks_of`]) with at most about 1 MB of transformed
/// patches each up to 128 channels, 4 MB above. Small chunks keep the transformed tiles in a
/// core's L2 cache between the transforms and the products (the output transform reads 36
/// streams at once, which the prefetchers do not follow); but each chunk repacks the transformed
/// weights (36 c_in c_out floats), which from 256 channels costs more than the misses
/// (`conv_bench`, 64 images, forward: 64 channels on 32x32 21 -> 18 ms, 128 on 16x16 12.4 ->
/// 11.5 ms, but 256 on 8x8 11.0 -> 12.9 ms and 512 on 4x4 14 -> 19 ms with 1 MB).
fn chunks(s: &ConvShape, channels: usize) -> Vec<std::ops::Range<usize>> {
    let (th, tw) = tile_grid(s);
    let floats = if s.c_in.max(s.c_out) <= 128 {
        1 << 18
    } else {
        1 << 20
    };
    s.chunks_within(POINTS * channels * th * tw, floats)
}

/// Transformed patches `v` `[36, channels, tiles]` (positions [`position_stride`] apart) of
/// images `images` of `x` `[batch, channels, height, width]` (zero padding of 1 around each
/// plane).
pub(crate) fn transform_input(
    x: &[f32],
    channels: usize,
    s: &ConvShape,
    images: std::ops::Range<usize>,
    v: &mut [f32],
) {
    let (th, tw) = tile_grid(s);
    let tiles = images.len() * th * tw;
    let mut rows = position_rows(v, position_stride(channels, tiles), &[channels * tiles]);
    transform_input_rows(x, channels, s, images, 0..channels, &mut rows[0]);
}

/// Each of the 36 position matrices of `v` (`stride` apart) cut into consecutive row blocks of
/// `block_lens` values: for every block, its 36 slices. Lets threads fill disjoint channels of
/// all positions at once.
fn position_rows<'a>(
    v: &'a mut [f32],
    stride: usize,
    block_lens: &[usize],
) -> Vec<Vec<&'a mut [f32]>> {
    let mut blocks: Vec<Vec<&mut [f32]>> = block_lens
        .iter()
        .map(|_| Vec::with_capacity(POINTS))
        .collect();
    for position in v.chunks_mut(stride).take(POINTS) {
        for (block, part) in blocks.iter_mut().zip(split_lens(position, block_lens)) {
            block.push(part);
        }
    }
    blocks
}

/// `values` cut into consecutive slices of `lens` values (the rest left out).
fn split_lens<'a>(mut values: &'a mut [f32], lens: &[usize]) -> Vec<&'a mut [f32]> {
    lens.iter()
        .map(|&len| {
            let (head, tail) = std::mem::take(&mut values).split_at_mut(len);
            values = tail;
            head
        })
        .collect()
}

vectorized! {
    /// [`transform_input`] of channels `channels` only, into `rows`: per position, the rows of
    /// those channels (`channels.len() * tiles` values).
    fn transform_input_rows(x: &[f32], c_x: usize, s: &ConvShape, images: std::ops::Range<usize>, channels: std::ops::Range<usize>, rows: &mut [&mut [f32]]) = transform_input_lanes
}

/// [`transform_input`], compiled for the baseline or, through [`vectorized`], for wider vectors.
#[inline(always)]
fn transform_input_lanes(
    x: &[f32],
    c_x: usize,
    s: &ConvShape,
    images: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    rows: &mut [&mut [f32]],
) {
    let grid = tile_grid(s);
    let tiles = images.len() * grid.0 * grid.1;
    let plane = s.height * s.width;
    // The plane being read, inside a zero border wide enough for every tile's 6x6 patch: each
    // patch is then read the same way, where reading it from the plane itself took a bounds test
    // per value on the edge tiles (44 % of the tiles of a 32x32 plane, all of them on 8x8 and
    // 4x4 planes).
    let padded_width = 4 * grid.1 + 2;
    let mut padded = vec![0.0f32; (4 * grid.0 + 2) * padded_width];
    // Every lane in use is overwritten for each group; the lanes past a partial last group keep
    // stale values, transformed but never stored.
    let (mut d, mut out) = ([[Lanes::ZERO; 6]; 6], [[Lanes::ZERO; 6]; 6]);
    for c in channels.clone() {
        let row = (c - channels.start) * tiles;
        let mut padded_image = None;
        for t0 in (0..tiles).step_by(LANES) {
            let n = LANES.min(tiles - t0);
            let mut tile = TileCursor::at(t0, grid);
            for lane in 0..n {
                let image = images.start + tile.image;
                if padded_image != Some(image) {
                    let src = &x[(image * c_x + c) * plane..][..plane];
                    for (r, src_row) in src.chunks_exact(s.width).enumerate() {
                        padded[(r + 1) * padded_width + 1..][..s.width].copy_from_slice(src_row);
                    }
                    padded_image = Some(image);
                }
                let corner = 4 * tile.row * padded_width + 4 * tile.col;
                for (i, d_row) in d.iter_mut().enumerate() {
                    let src_row = &padded[corner + i * padded_width..][..6];
                    for (value, source) in d_row.iter_mut().zip(src_row) {
                        value.0[lane] = *source;
                    }
                }
                tile.advance(grid);
            }
            transform_2d(&d, input_1d, &mut out);
            for (value, position) in out.as_flattened().iter().zip(rows.iter_mut()) {
                value.store(&mut position[row + t0..], n);
            }
        }
    }
}

/// Transformed weights `u` `[c_out, 36, c_in]` of `weight` `[c_out, c_in, 3, 3]`: position
/// `xi`'s matrix `[c_out, c_in]` has rows `36 * c_in` apart.
pub(crate) fn transform_weight(weight: &[f32], c_in: usize, u: &mut [f32]) {
    u.par_chunks_mut(POINTS * c_in)
        .zip(weight.par_chunks(c_in * 9))
        .for_each(|(u_co, weight_co)| transform_weight_row(weight_co, c_in, u_co));
}

vectorized! {
    /// One output channel of [`transform_weight`]: `u_co` `[36, c_in]` from `weight_co`
    /// `[c_in, 3, 3]`, sixteen input channels at a time.
    fn transform_weight_row(weight_co: &[f32], c_in: usize, u_co: &mut [f32]) = transform_weight_row_lanes
}

/// [`transform_weight_row`], compiled for the baseline or, through [`vectorized`], for wider vectors.
#[inline(always)]
fn transform_weight_row_lanes(weight_co: &[f32], c_in: usize, u_co: &mut [f32]) {
    let (mut g, mut out) = ([[Lanes::ZERO; 3]; 3], [[Lanes::ZERO; 6]; 6]);
    for ci0 in (0..c_in).step_by(LANES) {
        let n = LANES.min(c_in - ci0);
        for lane in 0..n {
            let kernel = &weight_co[(ci0 + lane) * 9..][..9];
            for (k, value) in g.as_flattened_mut().iter_mut().enumerate() {
                value.0[lane] = kernel[k];
            }
        }
        transform_2d(&g, weight_1d, &mut out);
        for (p, value) in out.as_flattened().iter().enumerate() {
            value.store(&mut u_co[p * c_in + ci0..], n);
        }
    }
}

thread_local! {
    /// The transformed weights of the last convolution on this thread, reused: at 512 channels
    /// they are 38 MB, and a fresh allocation each pass cost more in page faults than the
    /// transform itself.
    static TRANSFORMED_WEIGHTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
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
    TRANSFORMED_WEIGHTS.with(|buffer| {
        let mut fresh = Vec::new();
        // A nested call on this thread (a rayon job stolen while waiting) gets its own buffer.
        let mut reused = buffer.try_borrow_mut();
        let u = sized(
            reused.as_deref_mut().unwrap_or(&mut fresh),
            POINTS * s.c_out * s.c_in,
        );
        transform_weight(weight, s.c_in, u);
        conv2d_transformed(x, u, s)
    })
}

/// [`conv2d`] with the weights already transformed.
pub(crate) fn conv2d_transformed(x: &[f32], u: &[f32], s: &ConvShape) -> Vec<f32> {
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
                u,
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

/// Position `p`'s transformed weights `[c_out, c_in]` (of [`transform_weight`]'s `u`), packed
/// once for [`packed_gemm::multiply`]: what inference at small batches reads.
pub(crate) fn packed_positions(u: &[f32], c_out: usize, c_in: usize) -> Vec<PackedRows> {
    (0..POINTS)
        .into_par_iter()
        .map(|p| PackedRows::pack(&u[p * c_in..], c_out, c_in, POINTS * c_in))
        .collect()
}

/// [`conv2d`] of image `image` of `x` alone, into `y_image` `[c_out, h, w]`, with the weights of
/// [`packed_positions`]: the 36 products of one image (16-64 tiles wide) are split over the
/// cores whole, each too small to split.
pub(crate) fn conv2d_one_image(
    x: &[f32],
    image: usize,
    u: &[PackedRows],
    s: &ConvShape,
    y_image: &mut [f32],
) {
    let (th, tw) = tile_grid(s);
    let tiles = th * tw;
    let (v_stride, m_stride) = (
        position_stride(s.c_in, tiles),
        position_stride(s.c_out, tiles),
    );
    let mut v = Scratch::new(POINTS * v_stride);
    let in_blocks = channel_blocks(s.c_in);
    let lens: Vec<usize> = in_blocks.iter().map(|b| b.len() * tiles).collect();
    position_rows(&mut v, v_stride, &lens)
        .into_par_iter()
        .zip(in_blocks)
        .for_each(|(mut rows, channels)| {
            transform_input_rows(x, s.c_in, s, image..image + 1, channels, &mut rows)
        });
    let mut m = Scratch::new(POINTS * m_stride);
    m.par_chunks_mut(m_stride)
        .zip(u)
        .enumerate()
        .for_each(|(p, (m_p, u_p))| {
            packed_gemm::multiply(u_p, &v[p * v_stride..], tiles, tiles, m_p, tiles, false)
        });
    let out_blocks = channel_blocks(s.c_out);
    let plane = s.height * s.width;
    let y_lens: Vec<usize> = out_blocks.iter().map(|b| b.len() * plane).collect();
    split_lens(y_image, &y_lens)
        .into_par_iter()
        .zip(out_blocks)
        .for_each(|(y_block, channels)| transform_output_channels(&m, s, 1, channels, y_block));
}

/// `channels` cut into a few blocks per core (of 16 channels at least), for the transforms of
/// one image to run on all cores.
fn channel_blocks(channels: usize) -> Vec<std::ops::Range<usize>> {
    let count = (2 * rayon::current_num_threads())
        .min(channels.div_ceil(16))
        .max(1);
    let step = channels.div_ceil(count);
    (0..channels)
        .step_by(step)
        .map(|start| start..(start + step).min(channels))
        .collect()
}

/// Writes the 4x4 output blocks of `m` `[36, c_out, tiles]` (positions [`position_stride`]
/// apart) into `y` `[images, c_out, h, w]` (blocks clipped at the plane's edge).
pub(crate) fn transform_output(m: &[f32], s: &ConvShape, images: usize, y: &mut [f32]) {
    transform_output_channels(m, s, images, 0..s.c_out, y);
}

vectorized! {
    /// [`transform_output`] of output channels `channels` only, into `y` `[images,
    /// channels.len(), h, w]`.
    fn transform_output_channels(m: &[f32], s: &ConvShape, images: usize, channels: std::ops::Range<usize>, y: &mut [f32]) = transform_output_lanes
}

/// [`transform_output`], compiled for the baseline or, through [`vectorized`], for wider vectors.
#[inline(always)]
fn transform_output_lanes(
    m: &[f32],
    s: &ConvShape,
    images: usize,
    channels: std::ops::Range<usize>,
    y: &mut [f32],
) {
    let grid = tile_grid(s);
    let tiles = images * grid.0 * grid.1;
    let stride = position_stride(s.c_out, tiles);
    let plane = s.height * s.width;
    let (mut block, mut out) = ([[Lanes::ZERO; 6]; 6], [[Lanes::ZERO; 4]; 4]);
    for co in channels.clone() {
        for t0 in (0..tiles).step_by(LANES) {
            let n = LANES.min(tiles - t0);
            for (p, value) in block.as_flattened_mut().iter_mut().enumerate() {
                *value = Lanes::load(&m[p * stride + co * tiles + t0..], n);
            }
            transform_2d(&block, output_1d, &mut out);
            let mut tile = TileCursor::at(t0, grid);
            for lane in 0..n {
                let dst =
                    &mut y[(tile.image * channels.len() + co - channels.start) * plane..][..plane];
                let rows = (s.height - 4 * tile.row).min(4);
                let cols = (s.width - 4 * tile.col).min(4);
                for (i, out_row) in out.iter().enumerate().take(rows) {
                    let dst_row = &mut dst[(4 * tile.row + i) * s.width + 4 * tile.col..];
                    for (value, out) in dst_row[..cols].iter_mut().zip(out_row) {
                        *value = out.0[lane];
                    }
                }
                tile.advance(grid);
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

vectorized! {
    /// Output-gradient tiles transformed by the forward map's adjoint: `dm` `[36, c_out, tiles]`
    /// (positions [`position_stride`] apart)
    /// from `dy` `[batch, c_out, h, w]` (outside the plane: zero).
    fn transform_output_grad(dy: &[f32], s: &ConvShape, images: std::ops::Range<usize>, dm: &mut [f32]) = transform_output_grad_lanes
}

/// [`transform_output_grad`], compiled for the baseline or, through [`vectorized`], for wider vectors.
#[inline(always)]
fn transform_output_grad_lanes(
    dy: &[f32],
    s: &ConvShape,
    images: std::ops::Range<usize>,
    dm: &mut [f32],
) {
    let grid = tile_grid(s);
    let tiles = images.len() * grid.0 * grid.1;
    let stride = position_stride(s.c_out, tiles);
    let plane = s.height * s.width;
    // As in transform_input: lanes in use are overwritten, zeros outside the plane.
    let (mut block, mut out) = ([[Lanes::ZERO; 4]; 4], [[Lanes::ZERO; 6]; 6]);
    for co in 0..s.c_out {
        for t0 in (0..tiles).step_by(LANES) {
            let n = LANES.min(tiles - t0);
            let mut tile = TileCursor::at(t0, grid);
            for lane in 0..n {
                let image = images.start + tile.image;
                let src = &dy[(image * s.c_out + co) * plane..][..plane];
                let rows = (s.height - 4 * tile.row).min(4);
                let cols = (s.width - 4 * tile.col).min(4);
                for (i, row) in block.iter_mut().enumerate() {
                    let src_row = &src[(4 * tile.row + i.min(rows - 1)) * s.width + 4 * tile.col..];
                    for (j, value) in row.iter_mut().enumerate() {
                        value.0[lane] = if i < rows && j < cols {
                            src_row[j]
                        } else {
                            0.0
                        };
                    }
                }
                tile.advance(grid);
            }
            transform_2d(&block, output_adjoint_1d, &mut out);
            for (p, value) in out.as_flattened().iter().enumerate() {
                value.store(&mut dm[p * stride + co * tiles + t0..], n);
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
    let du = transformed_weight_grad(x, dy, s, WHOLE_BATCH_FLOATS);
    let mut dw = vec![0.0f32; s.weight_len()];
    dw.par_chunks_mut(s.c_in * 9)
        .enumerate()
        .for_each(|(co, dw_co)| weight_grad_row(&du, co, s.c_out, s.c_in, dw_co));
    dw
}

/// `dU` `[36, c_out, c_in]`: over the whole batch per position when its transformed tiles take
/// at most `whole_batch_floats`, else by chunks with running sums.
fn transformed_weight_grad(
    x: &[f32],
    dy: &[f32],
    s: &ConvShape,
    whole_batch_floats: usize,
) -> Vec<f32> {
    let (th, tw) = tile_grid(s);
    let chunks = chunks(s, s.c_in.max(s.c_out));
    let whole_batch = POINTS * (s.c_in + s.c_out) * s.batch * th * tw;
    if whole_batch <= whole_batch_floats {
        // All chunks transformed (in parallel), then one task per position.
        let transformed: Vec<_> = chunks
            .into_par_iter()
            .map(|images| {
                let mut chunk = ChunkTransforms::default();
                chunk.fill(x, dy, s, images);
                chunk
            })
            .collect();
        let mut du = vec![0.0f32; POINTS * s.c_out * s.c_in];
        du.par_chunks_mut(s.c_out * s.c_in)
            .enumerate()
            .for_each(|(p, du_p)| {
                for (k, chunk) in transformed.iter().enumerate() {
                    chunk.add_product(p, s, du_p, 0, k > 0, false);
                }
            });
        du
    } else {
        weight_grad_by_chunks(x, dy, s, chunks)
    }
}

/// `dU` `[36, c_out, c_in]` summed over chunks of images, each chunk's 36 products into the
/// running sum of the thread that takes it (sums added at the end).
fn weight_grad_by_chunks(
    x: &[f32],
    dy: &[f32],
    s: &ConvShape,
    chunks: Vec<std::ops::Range<usize>>,
) -> Vec<f32> {
    let du_len = POINTS * s.c_out * s.c_in;
    let parallel = few(&chunks);
    chunks
        .into_par_iter()
        .fold(
            || (vec![0.0f32; du_len], ChunkTransforms::default()),
            |(mut du, mut chunk), images| {
                chunk.fill(x, dy, s, images);
                for p in 0..POINTS {
                    chunk.add_product(p, s, &mut du, p * s.c_out * s.c_in, true, parallel);
                }
                (du, chunk)
            },
        )
        .map(|(du, _)| du)
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0f32; du_len])
}

/// One chunk's transformed patches `v` `[36, c_in, tiles]` and output gradients `dm`
/// `[36, c_out, tiles]` for the weight gradient (buffers kept and grown across chunks).
#[derive(Default)]
struct ChunkTransforms {
    v: Vec<f32>,
    dm: Vec<f32>,
    tiles: usize,
}

impl ChunkTransforms {
    fn fill(&mut self, x: &[f32], dy: &[f32], s: &ConvShape, images: std::ops::Range<usize>) {
        let (th, tw) = tile_grid(s);
        self.tiles = images.len() * th * tw;
        let v = sized(&mut self.v, POINTS * position_stride(s.c_in, self.tiles));
        transform_input(x, s.c_in, s, images.clone(), v);
        let dm = sized(&mut self.dm, POINTS * position_stride(s.c_out, self.tiles));
        transform_output_grad(dy, s, images, dm);
    }

    /// `dU[p] (+)= dM[p] V[p]^T` into the `[c_out, c_in]` matrix at `offset` of `du`.
    fn add_product(
        &self,
        p: usize,
        s: &ConvShape,
        du: &mut [f32],
        offset: usize,
        accumulate: bool,
        parallel: bool,
    ) {
        let tiles = self.tiles;
        matmul(
            du,
            Matrix::new(offset, s.c_out, s.c_in, s.c_in),
            accumulate,
            &self.dm,
            Matrix::new(p * position_stride(s.c_out, tiles), s.c_out, tiles, tiles),
            &self.v,
            Matrix::new(p * position_stride(s.c_in, tiles), s.c_in, tiles, tiles).t(),
            parallel,
        );
    }
}

/// Transformed patches and output gradients of the whole batch (floats, 64 MB) up to which the
/// weight gradient keeps them all and runs each position's product over all images in one task:
/// no per-thread running sums of `dU` (36 c_out c_in floats each, which on the 4x4 planes cost
/// more than the products).
const WHOLE_BATCH_FLOATS: usize = 16 << 20;

vectorized! {
    /// Output channel `co` of the weight gradient: `dw_co` `[c_in, 3, 3]` = `G^T dU G` from
    /// `du` `[36, c_out, c_in]`, sixteen input channels at a time.
    fn weight_grad_row(du: &[f32], co: usize, c_out: usize, c_in: usize, dw_co: &mut [f32]) = weight_grad_row_lanes
}

/// [`weight_grad_row`], compiled for the baseline or, through [`vectorized`], for wider vectors.
#[inline(always)]
fn weight_grad_row_lanes(du: &[f32], co: usize, c_out: usize, c_in: usize, dw_co: &mut [f32]) {
    let (mut block, mut g) = ([[Lanes::ZERO; 6]; 6], [[Lanes::ZERO; 3]; 3]);
    for ci0 in (0..c_in).step_by(LANES) {
        let n = LANES.min(c_in - ci0);
        for (p, value) in block.as_flattened_mut().iter_mut().enumerate() {
            *value = Lanes::load(&du[(p * c_out + co) * c_in + ci0..], n);
        }
        transform_2d(&block, weight_adjoint_1d, &mut g);
        for lane in 0..n {
            for (k, value) in g.as_flattened().iter().enumerate() {
                dw_co[(ci0 + lane) * 9 + k] = value.0[lane];
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::conv_kernels::tests::{dot, reference_conv, values};

    /// A 3x3 stride-1 padding-1 convolution's shape.
    pub(crate) fn shape(
        batch: usize,
        c_in: usize,
        c_out: usize,
        height: usize,
        width: usize,
    ) -> ConvShape {
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
    /// smaller than a tile (3x2); one channel and several; 45 tiles per channel (two full groups
    /// of 16 lanes and a partial one, spanning images).
    fn shapes() -> Vec<ConvShape> {
        vec![
            shape(3, 4, 5, 8, 8),
            shape(2, 6, 3, 4, 4),
            shape(1, 2, 3, 5, 7),
            shape(4, 1, 1, 6, 6),
            shape(2, 3, 2, 3, 2),
            shape(5, 2, 3, 9, 11),
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

    /// The weight gradient's two routes (whole batch per position, running sums per chunk) give
    /// the same `dU`; the tests above only reach the first (their batches are small).
    #[test]
    fn weight_gradient_routes_agree() {
        for s in shapes().into_iter().chain([shape(4, 16, 16, 8, 8)]) {
            let (x, dy) = (values(s.input_len(), 19), values(s.output_len(), 20));
            let whole = transformed_weight_grad(&x, &dy, &s, usize::MAX);
            let by_chunks = transformed_weight_grad(&x, &dy, &s, 0);
            let diff = relative_max_diff(&by_chunks, &whole);
            assert!(diff < 1e-6, "{s:?}: {diff}");
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
