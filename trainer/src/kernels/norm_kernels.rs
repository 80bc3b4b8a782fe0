//! Training-mode BatchNorm (optionally followed by ReLU) over `[N, C, H*W]` f32 activations, as
//! two fused CPU kernels: forward and backward.
//!
//! Composed from tensor ops, BatchNorm + ReLU is about ten passes over the activations forward
//! and as many backward, each allocating its result; here it is two reads and a write each way.
//! Reductions run per channel and element-wise work per plane, both on all cores.

use rayon::prelude::*;

/// Layout of the activations: `images` x `channels` planes of `plane` contiguous values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub images: usize,
    pub channels: usize,
    pub plane: usize,
}

impl NormShape {
    pub fn total(&self) -> usize {
        self.images * self.channels * self.plane
    }
    /// Values per channel, the count the statistics are taken over.
    fn count(&self) -> f64 {
        (self.images * self.plane) as f64
    }
    /// The planes of channel `c`, one per image.
    fn planes<'a>(&self, values: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (channels, plane) = (self.channels, self.plane);
        (0..self.images).map(move |n| &values[(n * channels + c) * plane..][..plane])
    }
}

/// Output of the forward pass, and the batch statistics the backward pass and the running
/// averages need.
pub struct NormForward {
    pub output: Vec<f32>,
    pub mean: Vec<f32>,
    /// Biased variance (divided by the count), as BatchNorm normalises with.
    pub var: Vec<f32>,
}

/// `y = relu?((x - mean_c) / sqrt(var_c + eps) * gamma_c + beta_c)` with batch statistics.
pub fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    relu: bool,
    s: NormShape,
) -> NormForward {
    assert_eq!(
        (x.len(), gamma.len(), beta.len()),
        (s.total(), s.channels, s.channels)
    );
    let (mean, var): (Vec<f32>, Vec<f32>) = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            // Two passes (mean, then squared deviations): no cancellation for large means.
            // Lane sums within a plane, f64 across planes.
            let sum: f64 = s.planes(x, c).map(|p| lane_sum(p, |v| v) as f64).sum();
            let mean = sum / s.count();
            let m = mean as f32;
            let squares: f64 = s
                .planes(x, c)
                .map(|p| lane_sum(p, |v| (v - m) * (v - m)) as f64)
                .sum();
            (mean as f32, (squares / s.count()) as f32)
        })
        .unzip();
    let (scale, shift) = affine(gamma, beta, &mean, &var, eps);
    let mut output = vec![0.0f32; s.total()];
    output
        .par_chunks_mut(s.plane)
        .zip(x.par_chunks(s.plane))
        .enumerate()
        .for_each(|(index, (y, x))| {
            let c = index % s.channels;
            let (a, b) = (scale[c], shift[c]);
            for (y, &x) in y.iter_mut().zip(x) {
                let v = x * a + b;
                *y = if relu { v.max(0.0) } else { v };
            }
        });
    NormForward { output, mean, var }
}

/// Independent accumulators: a plain sequential sum waits on each addition's latency (the
/// compiler may not reorder float additions); 16 lanes vectorise.
const LANES: usize = 16;

/// `sum f(v)` over `values`, in lanes.
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Both sums of `f(x, y, dy) = (a, b)` over three equally long slices, in lanes.
fn lane_sums2(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (xs, ys, dys) = (
        x.chunks_exact(LANES),
        y.chunks_exact(LANES),
        dy.chunks_exact(LANES),
    );
    let (mut ta, mut tb) = (0.0f32, 0.0f32);
    for ((&x, &y), &dy) in xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .zip(dys.remainder())
    {
        let (da, db) = f(x, y, dy);
        ta += da;
        tb += db;
    }
    for ((x, y), dy) in xs.zip(ys).zip(dys) {
        for lane in 0..LANES {
            let (da, db) = f(x[lane], y[lane], dy[lane]);
            a[lane] += da;
            b[lane] += db;
        }
    }
    (a.iter().sum::<f32>() + ta, b.iter().sum::<f32>() + tb)
}

/// Per-channel `scale = gamma / sqrt(var + eps)` and `shift = beta - mean * scale`.
fn affine(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma
        .iter()
        .zip(var)
        .map(|(&g, &v)| (g as f64 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((&b, &m), &a)| b - m * a)
        .collect();
    (scale, shift)
}

/// Gradients of the forward pass.
pub struct NormGrads {
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// Backward pass of [`forward`] (batch statistics, so the mean and variance depend on x too):
/// with `g = dy` (times `y > 0` after ReLU) and `xhat = (x - mean) / sqrt(var + eps)`,
/// `dbeta = sum g`, `dgamma = sum g * xhat`, and
/// `dx = gamma / sqrt(var + eps) * (g - dbeta / count - xhat * dgamma / count)`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    gamma: &[f32],
    forward: (&[f32], &[f32]),
    eps: f64,
    relu: bool,
    s: NormShape,
) -> NormGrads {
    let (mean, var) = forward;
    assert_eq!(
        (x.len(), y.len(), dy.len()),
        (s.total(), s.total(), s.total())
    );
    let inv_std: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let grad = |dy: f32, y: f32| if relu && y <= 0.0 { 0.0 } else { dy };
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let (m, inv) = (mean[c], inv_std[c]);
            let mut sums = (0.0f64, 0.0f64);
            for ((x, y), dy) in s.planes(x, c).zip(s.planes(y, c)).zip(s.planes(dy, c)) {
                let (g_sum, gx_sum) = lane_sums2(x, y, dy, |x, y, dy| {
                    let g = grad(dy, y);
                    (g, g * (x - m) * inv)
                });
                sums = (sums.0 + g_sum as f64, sums.1 + gx_sum as f64);
            }
            (sums.0 as f32, sums.1 as f32)
        })
        .unzip();
    let count = s.count() as f32;
    let mut dx = vec![0.0f32; s.total()];
    dx.par_chunks_mut(s.plane)
        .zip(
            x.par_chunks(s.plane)
                .zip(y.par_chunks(s.plane))
                .zip(dy.par_chunks(s.plane)),
        )
        .enumerate()
        .for_each(|(index, (dx, ((x, y), dy)))| {
            let c = index % s.channels;
            let (m, inv) = (mean[c], inv_std[c]);
            let scale = gamma[c] * inv;
            let (g_mean, gx_mean) = (dbeta[c] / count, dgamma[c] / count);
            for (((dx, &x), &y), &dy) in dx.iter_mut().zip(x).zip(y).zip(dy) {
                *dx = scale * (grad(dy, y) - g_mean - (x - m) * inv * gx_mean);
            }
        });
    NormGrads {
        x: dx,
        gamma: dgamma,
        beta: dbeta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: NormShape = NormShape {
        images: 3,
        channels: 2,
        plane: 5,
    };

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(7);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2000) as f32 / 500.0 - 2.0
            })
            .collect()
    }

    /// sum(forward(x) * w) for a fixed weighting w: its derivatives are what backward returns.
    fn objective(x: &[f32], gamma: &[f32], beta: &[f32], w: &[f32], relu: bool) -> f64 {
        let y = forward(x, gamma, beta, 1e-5, relu, S).output;
        y.iter().zip(w).map(|(&y, &w)| y as f64 * w as f64).sum()
    }

    #[test]
    fn forward_normalises_each_channel() {
        let x = values(S.total(), 1);
        let out = forward(&x, &[1.0, 1.0], &[0.0, 0.0], 0.0, false, S);
        for c in 0..S.channels {
            let ys: Vec<f32> = S.planes(&out.output, c).flatten().copied().collect();
            let mean = ys.iter().sum::<f32>() / ys.len() as f32;
            let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f32>() / ys.len() as f32;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
                "channel {c}: {mean} {var}"
            );
        }
    }

    /// Every analytic gradient entry equals a central finite difference of the objective.
    #[test]
    fn backward_matches_finite_differences() {
        for relu in [false, true] {
            let (x, w) = (values(S.total(), 2), values(S.total(), 3));
            let (gamma, beta) = (vec![1.5, -0.7], vec![0.2, 0.4]);
            let out = forward(&x, &gamma, &beta, 1e-5, relu, S);
            let grads = backward(
                &x,
                &out.output,
                &w,
                &gamma,
                (&out.mean, &out.var),
                1e-5,
                relu,
                S,
            );
            let h = 1e-2f32;
            let numeric = |f: &dyn Fn(f32) -> f64| ((f(h) - f(-h)) / (2.0 * h as f64)) as f32;
            for i in 0..S.total() {
                let d = numeric(&|e| {
                    let mut x = x.clone();
                    x[i] += e;
                    objective(&x, &gamma, &beta, &w, relu)
                });
                assert!(
                    (d - grads.x[i]).abs() < 2e-2,
                    "relu {relu}, dx[{i}]: {d} vs {}",
                    grads.x[i]
                );
            }
            for c in 0..S.channels {
                let dg = numeric(&|e| {
                    let mut g = gamma.clone();
                    g[c] += e;
                    objective(&x, &g, &beta, &w, relu)
                });
                let db = numeric(&|e| {
                    let mut b = beta.clone();
                    b[c] += e;
                    objective(&x, &gamma, &b, &w, relu)
                });
                assert!(
                    (dg - grads.gamma[c]).abs() < 2e-2,
                    "relu {relu}, dgamma[{c}]"
                );
                assert!((db - grads.beta[c]).abs() < 2e-2, "relu {relu}, dbeta[{c}]");
            }
        }
    }
}
