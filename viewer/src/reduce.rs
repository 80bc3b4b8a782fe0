//! The rows' first principal components, before a neighbour search: t-SNE and UMAP spend most of
//! their set-up finding each point's nearest neighbours, and in the encoder's 512 dimensions an
//! exact search of 10,000 points is 5e10 multiply-adds. Projecting onto the top 50 components
//! first (what openTSNE, scanpy and scikit-learn's t-SNE advice do) keeps the distances that
//! matter and makes the search ten times cheaper.

/// How many components t-SNE and UMAP search neighbours in.
pub const NEIGHBOUR_DIMS: usize = 50;

/// Subspace iterations: the top components of an encoder's embeddings separate quickly, and
/// any basis close to the top-k subspace keeps distances as well as the eigenvectors would.
const ITERATIONS: usize = 24;

/// The sum of `term(a[i], b[i])` with eight independent accumulators, so the compiler can
/// vectorise it (a plain `sum()` of floats must add in order).
fn lane_sum(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| term(x, y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += term(x[l], y[l]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Sum of products, vectorisable.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |x, y| x * y)
}

/// Euclidean distance, vectorisable.
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |x, y| (x - y) * (x - y)).sqrt()
}

/// The centred rows (n x dim) projected onto an orthonormal basis of their top `k` principal
/// directions: n x k, row-major. Distances within that subspace are kept exactly, so for data
/// whose variance lies in `k` directions every distance is. Rows of `k` or fewer dimensions
/// (or fewer rows than `k`) come back unchanged. Deterministic.
pub fn principal_components(rows: &[f32], dim: usize, k: usize) -> (Vec<f32>, usize) {
    let n = rows.len() / dim.max(1);
    if dim <= k || n <= k || k == 0 {
        return (rows.to_vec(), dim);
    }
    let mut mean = vec![0.0f64; dim];
    for row in rows.chunks(dim) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);

    // Covariance (unnormalised), upper triangle by rank-1 updates, then mirrored.
    let mut cov = vec![0.0f64; dim * dim];
    let mut centred = vec![0.0f64; dim];
    for row in rows.chunks(dim) {
        centred
            .iter_mut()
            .zip(row.iter().zip(&mean))
            .for_each(|(c, (&v, m))| *c = v as f64 - m);
        for a in 0..dim {
            let xa = centred[a];
            cov[a * dim + a..(a + 1) * dim]
                .iter_mut()
                .zip(&centred[a..])
                .for_each(|(c, &xb)| *c += xa * xb);
        }
    }
    for a in 0..dim {
        for b in 0..a {
            cov[a * dim + b] = cov[b * dim + a];
        }
    }

    // Subspace iteration: basis <- orth(cov basis), from a fixed pseudo-random start.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut basis: Vec<Vec<f64>> = (0..k)
        .map(|_| {
            (0..dim)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect()
        })
        .collect();
    orthonormalise(&mut basis);
    for _ in 0..ITERATIONS {
        basis = basis
            .iter()
            .map(|v| {
                cov.chunks(dim)
                    .map(|c| c.iter().zip(v).map(|(a, b)| a * b).sum())
                    .collect()
            })
            .collect();
        orthonormalise(&mut basis);
    }

    let basis: Vec<Vec<f32>> = basis
        .iter()
        .map(|v| v.iter().map(|&x| x as f32).collect())
        .collect();
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let mut out = Vec::with_capacity(n * k);
    let mut centred = vec![0.0f32; dim];
    for row in rows.chunks(dim) {
        centred
            .iter_mut()
            .zip(row.iter().zip(&mean))
            .for_each(|(c, (v, m))| *c = v - m);
        out.extend(basis.iter().map(|v| dot(&centred, v)));
    }
    (out, k)
}

/// Modified Gram-Schmidt; a vector that vanishes (rank below k) is replaced by zeros, which
/// keeps the projection's other coordinates right.
fn orthonormalise(vectors: &mut [Vec<f64>]) {
    for i in 0..vectors.len() {
        let (done, rest) = vectors.split_at_mut(i);
        let v = &mut rest[0];
        for u in done.iter() {
            let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-12 {
            v.iter_mut().for_each(|x| *x /= norm);
        } else {
            v.iter_mut().for_each(|x| *x = 0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::umap::nearest_neighbours;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    }

    /// n points that vary in `rank` random directions of `dim` (plus `noise` in all of them).
    fn low_rank(n: usize, dim: usize, rank: usize, noise: f32) -> Vec<f32> {
        let mut r = Lcg(7);
        let directions: Vec<f32> = (0..rank * dim).map(|_| r.next()).collect();
        (0..n)
            .flat_map(|_| {
                let weights: Vec<f32> = (0..rank).map(|_| 3.0 * r.next()).collect();
                (0..dim)
                    .map(|j| {
                        (0..rank)
                            .map(|c| weights[c] * directions[c * dim + j])
                            .sum::<f32>()
                            + noise * r.next()
                            + 0.25
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn distance(rows: &[f32], dim: usize, i: usize, j: usize) -> f32 {
        let (a, b) = (&rows[i * dim..(i + 1) * dim], &rows[j * dim..(j + 1) * dim]);
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
            .sqrt()
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(
            (dot(&a, &b) - plain).abs() < 1e-3,
            "{} vs {plain}",
            dot(&a, &b)
        );
    }

    #[test]
    fn data_of_lower_rank_keeps_every_distance() {
        let (dim, k) = (96, 12);
        let rows = low_rank(300, dim, 8, 0.0);
        let (reduced, kept) = principal_components(&rows, dim, k);
        assert_eq!((kept, reduced.len()), (k, 300 * k));
        for (i, j) in [(0, 1), (5, 299), (17, 140), (200, 201)] {
            let (before, after) = (distance(&rows, dim, i, j), distance(&reduced, k, i, j));
            assert!(
                (before - after).abs() < 1e-4 * before.max(1.0),
                "{i}-{j}: {before} vs {after}"
            );
        }
    }

    #[test]
    fn noisy_data_keeps_its_neighbours() {
        let (dim, k) = (128, 16);
        let rows = low_rank(400, dim, 10, 0.05);
        let (reduced, _) = principal_components(&rows, dim, k);
        let (before, after) = (
            nearest_neighbours(&rows, dim, 10),
            nearest_neighbours(&reduced, k, 10),
        );
        let kept: usize = before
            .iter()
            .zip(&after)
            .map(|(b, a)| b.iter().filter(|x| a.iter().any(|y| y.0 == x.0)).count())
            .sum();
        let recall = kept as f64 / (400 * 10) as f64;
        assert!(recall > 0.9, "neighbour recall {recall}");
    }

    #[test]
    fn few_dimensions_come_back_unchanged() {
        let rows = low_rank(20, 8, 3, 0.1);
        assert_eq!(principal_components(&rows, 8, 50), (rows.clone(), 8));
    }
}
