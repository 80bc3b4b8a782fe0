//! im2col on small planes by gathering through a table of source positions.
//!
//! im2col copies, for each input channel and kernel offset `(i, j)`, every output row's input
//! row shifted by `j`: on the 8x8 and 4x4 planes of the last stages (and every stride-2 layer)
//! those runs are 2-8 values, so the copy was a `memcpy` call and two `fill`s per 4-8 values:
//! a quarter of batch-1 inference. Here the source of every value of one channel's
//! `kernel * kernel` rows is computed once per convolution ([`PatchSources`]) and each row is one
//! gather of `out_plane` values (AVX-512 gathers of 16, padding masked to zero).

use crate::kernels::conv_shape::ConvShape;

/// For one input channel's `kernel * kernel` im2col rows: the index in the channel's input
/// plane that each value comes from, `-1` for padding (zero).
pub(crate) struct PatchSources {
    out_plane: usize,
    in_plane: usize,
    sources: Vec<i32>,
}

impl PatchSources {
    pub(crate) fn new(s: &ConvShape) -> Self {
        let (oh_n, ow_n) = (s.out_height(), s.out_width());
        let mut sources = Vec::with_capacity(s.kernel * s.kernel * oh_n * ow_n);
        for i in 0..s.kernel {
            for j in 0..s.kernel {
                for oh in 0..oh_n {
                    let ih = (oh * s.stride + i).wrapping_sub(s.padding);
                    for ow in 0..ow_n {
                        let iw = (ow * s.stride + j).wrapping_sub(s.padding);
                        let inside = ih < s.height && iw < s.width;
                        sources.push(if inside {
                            (ih * s.width + iw) as i32
                        } else {
                            -1
                        });
                    }
                }
            }
        }
        Self {
            out_plane: oh_n * ow_n,
            in_plane: s.height * s.width,
            sources,
        }
    }

    /// Writes row `row` (kernel offset `i * kernel + j`) of one image's channel `plane` into
    /// `out` (`out_plane` values).
    pub(crate) fn gather_row(&self, row: usize, plane: &[f32], out: &mut [f32]) {
        assert!(plane.len() >= self.in_plane && out.len() == self.out_plane);
        let sources = &self.sources[row * self.out_plane..][..self.out_plane];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present; every non-negative source is below `in_plane`
            // (built so in `new`), which `plane` holds, and `out` holds `sources.len()` values.
            unsafe { avx512::gather(sources, plane.as_ptr(), out) };
            return;
        }
        for (value, &source) in out.iter_mut().zip(sources) {
            *value = if source >= 0 {
                plane[source as usize]
            } else {
                0.0
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn gather(sources: &[i32], plane: *const f32, out: &mut [f32]) {
        let len = sources.len();
        for start in (0..len).step_by(16) {
            let lanes = (len - start).min(16);
            let in_range = ((1u32 << lanes) - 1) as __mmask16;
            let index = _mm512_maskz_loadu_epi32(in_range, sources.as_ptr().add(start));
            let inside = _mm512_mask_cmpge_epi32_mask(in_range, index, _mm512_setzero_si512());
            let values =
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), inside, index, plane as _);
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(start), in_range, values);
        }
    }
}
