//! Max-pooling of the ImageNet stem (3x3, stride 2, padding 1) for prepared inference, on planar
//! f32 planes. Training runs Burn's `max_pool2d` (forward and backward, flex's kernels), which
//! the tests here check against the definition too.

/// Output side of a pooling window `kernel` with `stride` and `padding` over `size` values.
pub fn pooled_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}

/// Max over each `kernel x kernel` window of every `[height, width]` plane of `x` (planes one
/// after another), padding never chosen (it counts as -infinity, as in PyTorch and ONNX).
pub fn max_pool(
    x: &[f32],
    [height, width]: [usize; 2],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Vec<f32> {
    let (oh_n, ow_n) = (
        pooled_size(height, kernel, stride, padding),
        pooled_size(width, kernel, stride, padding),
    );
    let plane = height * width;
    let mut out = vec![0.0f32; x.len() / plane * oh_n * ow_n];
    use rayon::prelude::*;
    out.par_chunks_mut(oh_n * ow_n)
        .zip(x.par_chunks(plane))
        .for_each(|(out, x)| {
            for oh in 0..oh_n {
                let rows = (oh * stride).saturating_sub(padding)
                    ..(oh * stride + kernel - padding).min(height);
                for ow in 0..ow_n {
                    let cols = (ow * stride).saturating_sub(padding)
                        ..(ow * stride + kernel - padding).min(width);
                    let mut best = f32::NEG_INFINITY;
                    for y in rows.clone() {
                        for v in &x[y * width + cols.start..y * width + cols.end] {
                            best = best.max(*v);
                        }
                    }
                    out[oh * ow_n + ow] = best;
                }
            }
        });
    out
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::backend::Autodiff;
    use burn::prelude::*;
    use burn::tensor::module::max_pool2d;
    use burn::tensor::TensorData;

    /// The definition: every window position, bounds checked one by one; also returns the
    /// position of each maximum (the first on ties), where the gradient goes.
    fn reference(
        x: &[f32],
        [h, w]: [usize; 2],
        k: usize,
        s: usize,
        p: usize,
    ) -> (Vec<f32>, Vec<usize>) {
        let (oh_n, ow_n) = (pooled_size(h, k, s, p), pooled_size(w, k, s, p));
        let (mut out, mut argmax) = (Vec::new(), Vec::new());
        for (index, plane) in x.chunks(h * w).enumerate() {
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let mut best = (f32::NEG_INFINITY, 0);
                    for i in 0..k {
                        for j in 0..k {
                            let (y, xx) = (
                                (oh * s + i) as isize - p as isize,
                                (ow * s + j) as isize - p as isize,
                            );
                            if (0..h as isize).contains(&y) && (0..w as isize).contains(&xx) {
                                let v = plane[y as usize * w + xx as usize];
                                if v > best.0 {
                                    best = (v, index * h * w + y as usize * w + xx as usize);
                                }
                            }
                        }
                    }
                    out.push(best.0);
                    argmax.push(best.1);
                }
            }
        }
        (out, argmax)
    }

    /// Distinct values, so every window has one maximum.
    fn distinct(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % n) as f32 / n as f32 - 0.5)
            .collect()
    }

    #[test]
    fn prepared_max_pool_matches_the_definition() {
        for (h, w) in [(48, 48), (7, 9), (2, 2), (24, 23)] {
            let x = distinct(3 * h * w);
            let ours = max_pool(&x, [h, w], 3, 2, 1);
            assert_eq!(ours, reference(&x, [h, w], 3, 2, 1).0, "{h} x {w}");
        }
    }

    /// What training runs: Burn's max_pool2d on the CPU backend, forward and backward (the
    /// gradient of each output goes to its window's maximum), against the definition.
    #[test]
    fn training_max_pool_forward_and_backward_match_the_definition() {
        type B = Autodiff<CpuBackend>;
        let device = Default::default();
        let (n, c, h, w) = (2, 3, 11, 10);
        let x = distinct(n * c * h * w);
        let input = Tensor::<B, 4>::from_data(TensorData::new(x.clone(), [n, c, h, w]), &device)
            .require_grad();
        let out = max_pool2d(input.clone(), [3, 3], [2, 2], [1, 1], [1, 1], false);
        let (expected, argmax) = reference(&x, [h, w], 3, 2, 1);
        let ours: Vec<f32> = out.clone().into_data().to_vec().unwrap();
        assert_eq!(ours, expected);
        let dy = distinct(expected.len());
        let loss =
            (out * Tensor::from_data(TensorData::new(dy.clone(), [n, c, 6, 5]), &device)).sum();
        let grads = loss.backward();
        let dx: Vec<f32> = input.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let mut want = vec![0.0f32; x.len()];
        for (g, &at) in dy.iter().zip(&argmax) {
            want[at] += g;
        }
        let worst = dx
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 1e-6, "max-pool gradient differs by {worst}");
    }
}
