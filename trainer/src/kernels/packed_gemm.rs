//! Matrix products `out = A B` for a fixed `A` (weights) and a narrow `B` (a few dozen columns:
//! one image's pixels or Winograd tiles), as inference at small batches runs them.
//!
//! A general GEMM (the `gemm` crate) repacks `A` on every call into the panels its kernel reads;
//! with 16-64 columns that repacking, a full read and write of the weights, costs as much as the
//! product itself (9.4 MB per 512-channel layer). Here `A` is packed once ([`PackedRows`], when
//! an inference model is prepared, as ONNX Runtime does at session load) and each call streams
//! it exactly once: per panel of [`PANEL_ROWS`] rows, all columns of `B` held in AVX-512
//! registers.

use rayon::prelude::*;

/// Rows of `A` per panel: 6 rows x up to 4 vectors of 16 columns = 24 accumulator registers of
/// the 32, the rest for `B`'s row and the broadcast weight.
pub const PANEL_ROWS: usize = 6;

/// Columns of `B` per block: 4 AVX-512 vectors.
const BLOCK_COLS: usize = 64;

/// `A` `[rows, depth]` in panels of [`PANEL_ROWS`] rows, each stored depth-major (`[depth,
/// PANEL_ROWS]`, so one panel is one contiguous stream); the last panel zero-padded.
#[derive(Clone, Debug)]
pub struct PackedRows {
    rows: usize,
    depth: usize,
    panels: Vec<f32>,
}

impl PackedRows {
    /// Packs row-major `a` (`rows` rows of `depth` values, `row_stride` apart).
    pub fn pack(a: &[f32], rows: usize, depth: usize, row_stride: usize) -> Self {
        assert!(rows == 0 || (rows - 1) * row_stride + depth <= a.len());
        let panel_count = rows.div_ceil(PANEL_ROWS);
        let mut panels = vec![0.0f32; panel_count * depth * PANEL_ROWS];
        for (p, panel) in panels.chunks_exact_mut(depth * PANEL_ROWS).enumerate() {
            for r in 0..PANEL_ROWS.min(rows - p * PANEL_ROWS) {
                let row = &a[(p * PANEL_ROWS + r) * row_stride..][..depth];
                for (k, &value) in row.iter().enumerate() {
                    panel[k * PANEL_ROWS + r] = value;
                }
            }
        }
        Self {
            rows,
            depth,
            panels,
        }
    }
}

/// Whether [`multiply`] can run on this CPU (it needs AVX-512F; callers use the `gemm` crate
/// otherwise).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[r, c] = sum_k a[r, k] b[k, c]` for `c < cols`: `b` `[depth, cols]` with rows
/// `b_stride` apart, `out` `[rows, cols]` with rows `out_stride` apart (other columns of
/// `out` untouched). Panels are split over all cores when `parallel`. Needs [`available`].
pub fn multiply(
    a: &PackedRows,
    b: &[f32],
    cols: usize,
    b_stride: usize,
    out: &mut [f32],
    out_stride: usize,
    parallel: bool,
) {
    assert!(available(), "packed_gemm::multiply needs AVX-512F");
    assert!(cols <= b_stride && cols <= out_stride);
    if a.rows == 0 || cols == 0 {
        return;
    }
    assert!(a.depth == 0 || (a.depth - 1) * b_stride + cols <= b.len());
    assert!((a.rows - 1) * out_stride + cols <= out.len());
    let panel_len = a.depth * PANEL_ROWS;
    let run = |(p, out_rows): (usize, &mut [f32])| {
        let rows = out_rows.len().div_ceil(out_stride).min(PANEL_ROWS);
        let panel = &a.panels[p * panel_len..][..panel_len];
        for c0 in (0..cols).step_by(BLOCK_COLS) {
            let width = BLOCK_COLS.min(cols - c0);
            // SAFETY: AVX-512F is present (asserted above); the panel holds depth x PANEL_ROWS
            // values, b holds depth rows of at least c0 + width values b_stride apart, and
            // out_rows holds `rows` rows of at least c0 + width values out_stride apart (the
            // last possibly cut right after its `cols` values).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::panel_block(
                    panel.as_ptr(),
                    a.depth,
                    b.as_ptr().add(c0),
                    b_stride,
                    width,
                    out_rows.as_mut_ptr().add(c0),
                    out_stride,
                    rows,
                )
            };
            // Elsewhere `available` is false: the assert above has already stopped the call.
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("no AVX-512F kernel for {rows} rows x {width} columns of {panel:p}");
        }
    };
    // Each panel's rows of `out` (the last one cut at the end of the matrix).
    let out = &mut out[..(a.rows - 1) * out_stride + cols];
    if parallel {
        out.par_chunks_mut(PANEL_ROWS * out_stride)
            .enumerate()
            .for_each(run);
    } else {
        out.chunks_mut(PANEL_ROWS * out_stride)
            .enumerate()
            .for_each(run);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::PANEL_ROWS;
    use std::arch::x86_64::*;

    /// Floats of the panel requested ahead of the one in use.
    const PREFETCH_AHEAD: usize = 128;

    /// One panel times up to 64 columns of `b` (`width` of them), into `rows` rows of `out`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel_block(
        panel: *const f32,
        depth: usize,
        b: *const f32,
        b_stride: usize,
        width: usize,
        out: *mut f32,
        out_stride: usize,
        rows: usize,
    ) {
        match width.div_ceil(16) {
            1 => block::<1>(panel, depth, b, b_stride, width, out, out_stride, rows),
            2 => block::<2>(panel, depth, b, b_stride, width, out, out_stride, rows),
            3 => block::<3>(panel, depth, b, b_stride, width, out, out_stride, rows),
            _ => block::<4>(panel, depth, b, b_stride, width, out, out_stride, rows),
        }
    }

    /// Lanes of vector `v` that hold one of the first `width` columns.
    #[inline(always)]
    fn mask(v: usize, width: usize) -> __mmask16 {
        let valid = width.saturating_sub(16 * v).min(16);
        ((1u32 << valid) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const V: usize>(
        panel: *const f32,
        depth: usize,
        b: *const f32,
        b_stride: usize,
        width: usize,
        out: *mut f32,
        out_stride: usize,
        rows: usize,
    ) {
        let masks: [__mmask16; V] = std::array::from_fn(|v| mask(v, width));
        let mut acc = [[_mm512_setzero_ps(); V]; PANEL_ROWS];
        for k in 0..depth {
            let b_row = b.add(k * b_stride);
            let b_values: [__m512; V] =
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], b_row.add(16 * v)));
            let a_col = panel.add(k * PANEL_ROWS);
            // The weights stream from memory once per call (the network's do not fit in the
            // caches): ask for them well ahead, which the hardware prefetchers alone do not.
            _mm_prefetch::<_MM_HINT_T0>(a_col.wrapping_add(PREFETCH_AHEAD) as *const i8);
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let a_value = _mm512_set1_ps(*a_col.add(r));
                for (acc, &b_value) in acc_row.iter_mut().zip(&b_values) {
                    *acc = _mm512_fmadd_ps(a_value, b_value, *acc);
                }
            }
        }
        for (r, acc_row) in acc.iter().enumerate().take(rows) {
            for (v, acc) in acc_row.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(r * out_stride + 16 * v), masks[v], *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv_kernels::tests::values;

    fn reference(a: &[f32], b: &[f32], rows: usize, depth: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                out[r * cols + c] = (0..depth)
                    .map(|k| a[r * depth + k] as f64 * b[k * cols + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_on_ragged_shapes() {
        if !available() {
            eprintln!("skipped: no AVX-512F on this CPU");
            return;
        }
        // Rows not a multiple of the panel, columns not a multiple of 16 or of a block.
        for (rows, depth, cols) in [
            (1, 1, 1),
            (7, 5, 17),
            (13, 33, 64),
            (32, 70, 100),
            (6, 9, 4),
        ] {
            let (a, b) = (values(rows * depth, 1), values(depth * cols, 2));
            let packed = PackedRows::pack(&a, rows, depth, depth);
            for parallel in [false, true] {
                // Output rows wider than `cols`: the extra columns must stay untouched.
                let stride = cols + 3;
                let mut out = vec![f32::NAN; rows * stride];
                multiply(&packed, &b, cols, cols, &mut out, stride, parallel);
                let expected = reference(&a, &b, rows, depth, cols);
                for r in 0..rows {
                    for c in 0..cols {
                        let (got, want) = (out[r * stride + c], expected[r * cols + c]);
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{rows}x{depth}x{cols} [{r},{c}]: {got} vs {want}"
                        );
                    }
                    assert!(out[r * stride + cols..][..3].iter().all(|v| v.is_nan()));
                }
            }
        }
    }
}
