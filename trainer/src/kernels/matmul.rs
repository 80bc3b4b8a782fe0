//! The matrix products of the CPU convolution kernels: the `gemm` crate (the AVX-512 kernels
//! flex uses) on row-major views of f32 buffers.

/// A row-major matrix view: `rows x cols` starting at `offset`, rows `row_stride` apart.
#[derive(Clone, Copy)]
pub struct Matrix {
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    transposed: bool,
}

impl Matrix {
    pub fn new(offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            offset,
            rows,
            cols,
            row_stride,
            transposed: false,
        }
    }
    /// The same values read as the transposed matrix.
    pub fn t(self) -> Self {
        Self {
            transposed: !self.transposed,
            ..self
        }
    }
    /// (rows, cols) as the product sees them.
    fn dims(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    /// (column stride, row stride) as the product sees them.
    fn strides(&self) -> (isize, isize) {
        let (cs, rs) = (1, self.row_stride as isize);
        if self.transposed {
            (rs, cs)
        } else {
            (cs, rs)
        }
    }
    fn check(&self, buffer: &[f32]) {
        assert!(self.rows > 0 && self.cols > 0 && self.cols <= self.row_stride);
        let last = self.offset + (self.rows - 1) * self.row_stride + self.cols;
        assert!(last <= buffer.len());
    }
}

/// `dst (+)= lhs * rhs` on matrix views of three buffers; on all cores when `parallel`, else on
/// the calling thread (the kernels parallelise over chunks of images instead).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dst: &mut [f32],
    d: Matrix,
    accumulate: bool,
    lhs: &[f32],
    l: Matrix,
    rhs: &[f32],
    r: Matrix,
    parallel: bool,
) {
    let ((m, k), (k2, n)) = (l.dims(), r.dims());
    assert!(k == k2 && d.dims() == (m, n) && !d.transposed);
    d.check(dst);
    l.check(lhs);
    r.check(rhs);
    let ((dcs, drs), (lcs, lrs), (rcs, rrs)) = (d.strides(), l.strides(), r.strides());
    // SAFETY: every index the strides address lies inside its buffer (checked above), and dst
    // does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(d.offset),
            dcs,
            drs,
            accumulate,
            lhs.as_ptr().add(l.offset),
            lcs,
            lrs,
            rhs.as_ptr().add(r.offset),
            rcs,
            rrs,
            1.0,
            1.0,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}
