//! The sizes of one convolution, shared by every CPU convolution kernel (im2col + GEMM,
//! Winograd, the patch gather) and how a batch is cut into chunks for the threads.

/// Sizes of one convolution: input `[batch, c_in, height, width]`, weight
/// `[c_out, c_in, kernel, kernel]`, output `[batch, c_out, out_height, out_width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Output pixels per image and channel.
    pub fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }
    /// Values in one input patch: a row of the weight matrix `[c_out, patch]`.
    pub fn patch(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.c_in * self.height * self.width
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.c_out * self.out_plane()
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * self.patch()
    }

    /// Chunks of images: at most about 4 MB of `per_image` floats each (1 image at least), in a
    /// number of chunks that is a multiple of the thread count, so no core idles at the end of a
    /// pass.
    pub(crate) fn chunks_of(&self, per_image: usize) -> Vec<std::ops::Range<usize>> {
        self.chunks_within(per_image, 1 << 20) // 4 MB of f32
    }

    /// [`Self::chunks_of`] with at most about `floats` per chunk.
    pub(crate) fn chunks_within(
        &self,
        per_image: usize,
        floats: usize,
    ) -> Vec<std::ops::Range<usize>> {
        let by_size = (floats / per_image.max(1)).max(1);
        let threads = rayon::current_num_threads().max(1);
        let count = self.batch.div_ceil(by_size).next_multiple_of(threads);
        let step = self.batch.div_ceil(count).max(1);
        (0..self.batch)
            .step_by(step)
            .map(|start| start..(start + step).min(self.batch))
            .collect()
    }

    /// Chunks of images with at most about 4 MB of columns each.
    pub(crate) fn chunks(&self) -> Vec<std::ops::Range<usize>> {
        self.chunks_of(self.patch() * self.out_plane())
    }
}
