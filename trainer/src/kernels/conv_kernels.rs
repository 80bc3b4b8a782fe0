//! CPU convolution kernels (f32, NCHW, square kernel, no groups, no dilation) as im2col + GEMM.
//!
//! All three passes of a convolution (output, input gradient, weight gradient) are one large
//! matrix product each over "columns": for every output pixel of every image, the input patch
//! it sees (`c_in * k * k` values). Images are taken in chunks of a few MB of columns, so the
//! products stay large even for the 4x4 planes of the last stage, and chunks run in parallel on
//! all cores (each GEMM single-threaded: no fork-join inside tiny products).
//!
//! Why not Burn's: its default weight gradient (which flex does not override) convolves the
//! activations, batch and channels swapped, with the output gradient as a 32x32 "kernel": a GEMM
//! whose output is 3x3 wide, which ran in a skinny kernel at a fraction of the CPU's speed and
//! took about 40 % of the SimCLR step in a profile. The weight gradient here is
//! `dW[c_out, patch] = sum over chunks dY[c_out, cols] * columns[patch, cols]^T`.

pub use crate::kernels::conv_shape::ConvShape;
use crate::kernels::matmul::{matmul, Matrix};
use crate::kernels::patch_gather::PatchSources;
use rayon::prelude::*;

/// Fewer chunks than cores (a batch smaller than the thread count): each product then runs on
/// all cores instead.
pub(crate) fn few(chunks: &[std::ops::Range<usize>]) -> bool {
    chunks.len() < rayon::current_num_threads()
}

/// Output columns `ow` whose input column `ow * stride + offset - padding` lies inside the row.
fn valid_columns(s: &ConvShape, offset: usize, out_width: usize) -> std::ops::Range<usize> {
    // ow * stride >= padding - offset  and  ow * stride <= width - 1 + padding - offset
    let first = s.padding.saturating_sub(offset).div_ceil(s.stride);
    let last = (s.width - 1 + s.padding)
        .checked_sub(offset)
        .map(|v| v / s.stride + 1)
        .unwrap_or(0);
    first.min(out_width)..last.min(out_width).max(first.min(out_width))
}

/// Writes the columns of images `images` into `cols` `[patch, images.len() * out_plane]`:
/// row `(ci, i, j)`, column `(image, oh, ow)` holds `x[image, ci, oh*s - p + i, ow*s - p + j]`
/// (0 outside the image). Every element of `cols` is written.
pub(crate) fn im2col(x: &[f32], s: &ConvShape, images: std::ops::Range<usize>, cols: &mut [f32]) {
    let sources = gathers(s).then(|| PatchSources::new(s));
    let rows_per_channel = s.kernel * s.kernel * images.len() * s.out_plane();
    for (ci, rows) in cols.chunks_exact_mut(rows_per_channel).enumerate() {
        im2col_channel(x, s, images.clone(), ci, rows, sources.as_ref());
    }
}

/// [`im2col`] with the input channels split over the cores: for one image's columns, too small
/// to be worth splitting by images.
pub(crate) fn im2col_parallel(
    x: &[f32],
    s: &ConvShape,
    images: std::ops::Range<usize>,
    cols: &mut [f32],
) {
    let sources = gathers(s).then(|| PatchSources::new(s));
    let rows_per_channel = s.kernel * s.kernel * images.len() * s.out_plane();
    cols.par_chunks_exact_mut(rows_per_channel)
        .enumerate()
        .with_min_len(8)
        .for_each(|(ci, rows)| im2col_channel(x, s, images.clone(), ci, rows, sources.as_ref()));
}

/// Whether im2col gathers through a [`PatchSources`] table rather than copying runs of input
/// rows: for strided reads, and where the runs are short, so that a copy per run costs more
/// than the values it moves. im2col of 8 images, 3x3 (us, copies -> gathers): 64 channels
/// 32x32 990 -> 2258, 16x16 298 -> 512; 128 on 12x12 457 -> 594; 256 on 8x8 660 -> 546; 512 on
/// 4x4 679 -> 378; stride 2: 64 channels 32x32 790 -> 530, 256 on 16x16 871 -> 562.
fn gathers(s: &ConvShape) -> bool {
    s.stride > 1 || s.out_width() <= 8
}

/// The `kernel * kernel` rows of [`im2col`] that input channel `ci` fills: through `sources`
/// when given, else (stride 1 only) by copying runs of input rows.
fn im2col_channel(
    x: &[f32],
    s: &ConvShape,
    images: std::ops::Range<usize>,
    ci: usize,
    rows: &mut [f32],
    sources: Option<&PatchSources>,
) {
    let (ow_n, plane) = (s.out_width(), s.out_plane());
    let width = images.len() * plane;
    let in_plane = s.height * s.width;
    let planes = images.map(|image| &x[(image * s.c_in + ci) * in_plane..][..in_plane]);
    if let Some(sources) = sources {
        for (row, row_cols) in rows.chunks_exact_mut(width).enumerate() {
            for (src, dst) in planes.clone().zip(row_cols.chunks_exact_mut(plane)) {
                sources.gather_row(row, src, dst);
            }
        }
        return;
    }
    assert_eq!(s.stride, 1, "strided im2col gathers");
    for i in 0..s.kernel {
        for j in 0..s.kernel {
            let row = i * s.kernel + j;
            let row_cols = &mut rows[row * width..(row + 1) * width];
            let valid = valid_columns(s, j, ow_n);
            for (src, dst) in planes.clone().zip(row_cols.chunks_exact_mut(plane)) {
                for (oh, out_row) in dst.chunks_exact_mut(ow_n).enumerate() {
                    let ih = (oh + i).wrapping_sub(s.padding);
                    if ih >= s.height || valid.is_empty() {
                        out_row.fill(0.0);
                        continue;
                    }
                    out_row[..valid.start].fill(0.0);
                    out_row[valid.end..].fill(0.0);
                    let in_row = &src[ih * s.width..][..s.width];
                    let first_in = valid.start + j - s.padding;
                    let out = &mut out_row[valid.clone()];
                    out.copy_from_slice(&in_row[first_in..first_in + out.len()]);
                }
            }
        }
    }
}

/// Adds the columns `cols` (layout of [`im2col`]) back onto the images they came from:
/// `dx_images` is the gradient of images `images` only, `[images.len(), c_in, height, width]`.
fn col2im_add(cols: &[f32], s: &ConvShape, images: std::ops::Range<usize>, dx_images: &mut [f32]) {
    let (ow_n, plane) = (s.out_width(), s.out_plane());
    let width = images.len() * plane;
    let in_plane = s.height * s.width;
    for ci in 0..s.c_in {
        for i in 0..s.kernel {
            for j in 0..s.kernel {
                let row = (ci * s.kernel + i) * s.kernel + j;
                let row_cols = &cols[row * width..(row + 1) * width];
                let valid = valid_columns(s, j, ow_n);
                if valid.is_empty() {
                    continue;
                }
                let first_in = valid.start * s.stride + j - s.padding;
                for local in 0..images.len() {
                    let dst = &mut dx_images[(local * s.c_in + ci) * in_plane..][..in_plane];
                    let src = &row_cols[local * plane..(local + 1) * plane];
                    for (oh, out_row) in src.chunks_exact(ow_n).enumerate() {
                        let ih = (oh * s.stride + i).wrapping_sub(s.padding);
                        if ih >= s.height {
                            continue;
                        }
                        let in_row = &mut dst[ih * s.width..][..s.width];
                        let values = &out_row[valid.clone()];
                        if s.stride == 1 {
                            let target = &mut in_row[first_in..first_in + values.len()];
                            target.iter_mut().zip(values).for_each(|(t, v)| *t += v);
                        } else {
                            for (k, value) in values.iter().enumerate() {
                                in_row[first_in + k * s.stride] += value;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Gathers `dy[images]` `[n, c_out, plane]` into `[c_out, n * plane]` (the columns' order).
fn gather_channels_first(
    dy: &[f32],
    s: &ConvShape,
    images: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let plane = s.out_plane();
    let width = images.len() * plane;
    for (local, image) in images.enumerate() {
        for co in 0..s.c_out {
            out[co * width + local * plane..][..plane]
                .copy_from_slice(&dy[(image * s.c_out + co) * plane..][..plane]);
        }
    }
}

/// The first `len` elements of a reused buffer (grown when needed, contents left as they were:
/// every caller overwrites all of them).
pub(crate) fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

thread_local! {
    /// Buffers [`Scratch`] returned on this thread, for the next one to take.
    static SCRATCH_POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A work buffer of `len` floats taken from this thread's pool and returned to it when
/// dropped, with stale contents (callers overwrite every value they read): a fresh zeroed
/// buffer per call is a memset of up to a few hundred KB, 5 % of inference at batch 1.
pub(crate) struct Scratch {
    buffer: Vec<f32>,
    len: usize,
}

impl Scratch {
    pub(crate) fn new(len: usize) -> Self {
        let mut buffer = SCRATCH_POOL
            .with(|pool| pool.borrow_mut().pop())
            .unwrap_or_default();
        if buffer.len() < len {
            buffer.resize(len, 0.0);
        }
        Self { buffer, len }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buffer[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buffer[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // A few buffers per thread are all one convolution uses at a time.
        const KEPT: usize = 4;
        let buffer = std::mem::take(&mut self.buffer);
        SCRATCH_POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < KEPT {
                pool.push(buffer);
            }
        });
    }
}

/// Forward convolution: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, k, k]` -> output.
pub fn conv2d(x: &[f32], weight: &[f32], s: &ConvShape) -> Vec<f32> {
    assert_eq!((x.len(), weight.len()), (s.input_len(), s.weight_len()));
    let plane = s.out_plane();
    let mut y = vec![0.0f32; s.output_len()];
    let chunks = s.chunks();
    let (parallel, per_chunk) = (few(&chunks), chunks[0].len() * s.c_out * plane);
    let buffers = || (Vec::new(), Vec::new());
    let chunks = y.par_chunks_mut(per_chunk).zip(chunks);
    chunks.for_each_init(buffers, |(cols, y_cols), (y_images, images)| {
        let width = images.len() * plane;
        let cols = sized(cols, s.patch() * width);
        im2col(x, s, images.clone(), cols);
        let y_cols = sized(y_cols, s.c_out * width);
        matmul(
            y_cols,
            Matrix::new(0, s.c_out, width, width),
            false,
            weight,
            Matrix::new(0, s.c_out, s.patch(), s.patch()),
            cols,
            Matrix::new(0, s.patch(), width, width),
            parallel,
        );
        for local in 0..images.len() {
            for co in 0..s.c_out {
                y_images[(local * s.c_out + co) * plane..][..plane]
                    .copy_from_slice(&y_cols[co * width + local * plane..][..plane]);
            }
        }
    });
    y
}

/// Gradient of the input: `dx = col2im(weight^T * dy)`.
pub fn conv2d_input_grad(dy: &[f32], weight: &[f32], s: &ConvShape) -> Vec<f32> {
    assert_eq!((dy.len(), weight.len()), (s.output_len(), s.weight_len()));
    let plane = s.out_plane();
    let in_image = s.c_in * s.height * s.width;
    let mut dx = vec![0.0f32; s.input_len()];
    let chunks = s.chunks();
    let (parallel, per_chunk) = (few(&chunks), chunks[0].len() * in_image);
    let buffers = || (Vec::new(), Vec::new());
    let chunks = dx.par_chunks_mut(per_chunk).zip(chunks);
    chunks.for_each_init(buffers, |(dy_cols, cols), (dx_images, images)| {
        let width = images.len() * plane;
        let dy_cols = sized(dy_cols, s.c_out * width);
        gather_channels_first(dy, s, images.clone(), dy_cols);
        let cols = sized(cols, s.patch() * width);
        matmul(
            cols,
            Matrix::new(0, s.patch(), width, width),
            false,
            weight,
            Matrix::new(0, s.c_out, s.patch(), s.patch()).t(),
            dy_cols,
            Matrix::new(0, s.c_out, width, width),
            parallel,
        );
        col2im_add(cols, s, images, dx_images);
    });
    dx
}

/// Gradient of the weight: `dW[c_out, patch] = sum over chunks dy_cols * columns^T`.
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], s: &ConvShape) -> Vec<f32> {
    assert_eq!((x.len(), dy.len()), (s.input_len(), s.output_len()));
    let plane = s.out_plane();
    let chunks = s.chunks();
    let parallel = few(&chunks);
    chunks
        .into_par_iter()
        .fold(
            || (vec![0.0f32; s.weight_len()], Vec::new(), Vec::new()),
            |(mut dw, mut cols, mut dy_cols), images| {
                let width = images.len() * plane;
                im2col(x, s, images.clone(), sized(&mut cols, s.patch() * width));
                gather_channels_first(dy, s, images, sized(&mut dy_cols, s.c_out * width));
                matmul(
                    &mut dw,
                    Matrix::new(0, s.c_out, s.patch(), s.patch()),
                    true,
                    &dy_cols,
                    Matrix::new(0, s.c_out, width, width),
                    &cols,
                    Matrix::new(0, s.patch(), width, width).t(),
                    parallel,
                );
                (dw, cols, dy_cols)
            },
        )
        .map(|(dw, _, _)| dw)
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0f32; s.weight_len()])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use e2e::max_abs_diff;

    /// Direct definition of the convolution, the reference for all three passes.
    pub(crate) fn reference_conv(x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
        let (oh_n, ow_n) = (s.out_height(), s.out_width());
        let mut y = vec![0.0; s.output_len()];
        for n in 0..s.batch {
            for co in 0..s.c_out {
                for oh in 0..oh_n {
                    for ow in 0..ow_n {
                        let mut sum = 0.0f64;
                        for ci in 0..s.c_in {
                            for i in 0..s.kernel {
                                for j in 0..s.kernel {
                                    let ih = (oh * s.stride + i) as isize - s.padding as isize;
                                    let iw = (ow * s.stride + j) as isize - s.padding as isize;
                                    if ih < 0
                                        || iw < 0
                                        || ih >= s.height as isize
                                        || iw >= s.width as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((n * s.c_in + ci) * s.height + ih as usize)
                                        * s.width
                                        + iw as usize];
                                    let wv = w[((co * s.c_in + ci) * s.kernel + i) * s.kernel + j];
                                    sum += (xv * wv) as f64;
                                }
                            }
                        }
                        y[((n * s.c_out + co) * oh_n + oh) * ow_n + ow] = sum as f32;
                    }
                }
            }
        }
        y
    }

    pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
        // Small deterministic pseudo-random values in [-1, 1).
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum()
    }

    const SHAPES: [ConvShape; 5] = [
        // 3x3 stride 1 (most of the network), 3x3 stride 2, 1x1 stride 2 (shortcut), odd sizes,
        // and the ImageNet stem's 7x7 stride 2 padding 3 on 3 channels.
        ConvShape {
            batch: 3,
            c_in: 4,
            height: 6,
            width: 6,
            c_out: 5,
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        ConvShape {
            batch: 2,
            c_in: 3,
            height: 8,
            width: 8,
            c_out: 6,
            kernel: 3,
            stride: 2,
            padding: 1,
        },
        ConvShape {
            batch: 5,
            c_in: 6,
            height: 4,
            width: 4,
            c_out: 7,
            kernel: 1,
            stride: 2,
            padding: 0,
        },
        ConvShape {
            batch: 1,
            c_in: 2,
            height: 5,
            width: 7,
            c_out: 3,
            kernel: 3,
            stride: 2,
            padding: 1,
        },
        ConvShape {
            batch: 2,
            c_in: 3,
            height: 19,
            width: 16,
            c_out: 4,
            kernel: 7,
            stride: 2,
            padding: 3,
        },
    ];

    /// Both im2col routes (row copies, gathers through a table) write every value exactly as
    /// the definition says, on wide and narrow planes, strides 1-2, kernels 1-7, odd sizes.
    #[test]
    fn im2col_routes_match_the_definition() {
        let shapes = [
            (2, 3, 12, 12, 3, 1, 1),
            (1, 2, 13, 11, 3, 2, 1),
            (3, 2, 5, 7, 3, 1, 1),
            (2, 4, 9, 9, 1, 2, 0),
            (1, 1, 4, 4, 3, 1, 1),
            (2, 3, 20, 18, 3, 1, 1),
            (2, 3, 23, 20, 7, 2, 3),
        ];
        for (batch, c_in, height, width, kernel, stride, padding) in shapes {
            let s = ConvShape {
                batch,
                c_in,
                height,
                width,
                c_out: 1,
                kernel,
                stride,
                padding,
            };
            let x = values(s.input_len(), 9);
            let (plane, images) = (s.out_plane(), (batch - 1).min(1)..batch);
            let cols_width = images.len() * plane;
            let mut expected = vec![0.0f32; s.patch() * cols_width];
            for ci in 0..c_in {
                for (i, j) in (0..kernel).flat_map(|i| (0..kernel).map(move |j| (i, j))) {
                    let row = (ci * kernel + i) * kernel + j;
                    for (local, image) in images.clone().enumerate() {
                        for (oh, ow) in (0..s.out_height())
                            .flat_map(|oh| (0..s.out_width()).map(move |ow| (oh, ow)))
                        {
                            let ih = (oh * stride + i) as isize - padding as isize;
                            let iw = (ow * stride + j) as isize - padding as isize;
                            let inside = (0..height as isize).contains(&ih)
                                && (0..width as isize).contains(&iw);
                            expected[row * cols_width + local * plane + oh * s.out_width() + ow] =
                                if inside {
                                    x[((image * c_in + ci) * height + ih as usize) * width
                                        + iw as usize]
                                } else {
                                    0.0
                                };
                        }
                    }
                }
            }
            let table = PatchSources::new(&s);
            let copies = (stride == 1).then_some(None);
            for sources in copies.into_iter().chain([Some(&table)]) {
                let mut cols = vec![f32::NAN; expected.len()];
                let per_channel = kernel * kernel * cols_width;
                for (ci, rows) in cols.chunks_exact_mut(per_channel).enumerate() {
                    im2col_channel(&x, &s, images.clone(), ci, rows, sources);
                }
                let gathered = sources.is_some();
                assert!(
                    cols.iter().zip(&expected).all(|(a, b)| a == b),
                    "{s:?}, gathered {gathered}"
                );
            }
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        for s in SHAPES {
            let (x, w) = (values(s.input_len(), 1), values(s.weight_len(), 2));
            let diff = max_abs_diff(&conv2d(&x, &w, &s), &reference_conv(&x, &w, &s));
            assert!(diff < 1e-5, "{s:?}: {diff}");
        }
    }

    /// The gradients are the adjoints of the forward map: for any dy,
    /// <conv(x, w), dy> = <x, input_grad(dy, w)> = <w, weight_grad(x, dy)>.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward_pass() {
        for s in SHAPES {
            let (x, w, dy) = (
                values(s.input_len(), 3),
                values(s.weight_len(), 4),
                values(s.output_len(), 5),
            );
            let forward = dot(&reference_conv(&x, &w, &s), &dy);
            let via_input = dot(&x, &conv2d_input_grad(&dy, &w, &s));
            let via_weight = dot(&w, &conv2d_weight_grad(&x, &dy, &s));
            assert!(
                (forward - via_input).abs() < 1e-3,
                "{s:?}: {forward} vs {via_input}"
            );
            assert!(
                (forward - via_weight).abs() < 1e-3,
                "{s:?}: {forward} vs {via_weight}"
            );
        }
    }

    /// Each weight-gradient entry is the derivative of <conv(x, w), dy> by that weight:
    /// a one-hot weight picks it out of the forward pass.
    #[test]
    fn weight_gradient_entries_match_one_hot_weights() {
        let s = SHAPES[1];
        let (x, dy) = (values(s.input_len(), 6), values(s.output_len(), 7));
        let grad = conv2d_weight_grad(&x, &dy, &s);
        for index in [0, 7, s.weight_len() / 2, s.weight_len() - 1] {
            let mut one_hot = vec![0.0; s.weight_len()];
            one_hot[index] = 1.0;
            let expected = dot(&reference_conv(&x, &one_hot, &s), &dy);
            assert!(
                (grad[index] as f64 - expected).abs() < 1e-4,
                "weight {index}"
            );
        }
    }
}
