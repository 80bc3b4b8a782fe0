//! UMAP (McInnes, Healy & Melville 2018, as umap-learn implements it) of unit rows to 2-D:
//! exact k nearest neighbours, the fuzzy simplicial set (each point's distances rescaled by
//! its nearest distance `rho` and a bandwidth `sigma` with sum = log2 k, then the fuzzy union
//! w + w' - w w'), and the layout optimised by SGD over edges sampled in proportion to their
//! weight with negative sampling. Started from the PCA layout (umap-learn's `init="pca"`), with
//! a seeded generator, so a map is reproducible. No crate does this for wasm32 (`umap-rs` calls
//! `Instant::now()`, which panics there).

use anyhow::{ensure, Result};

use crate::projection::{checked_start, pca_2d};
use crate::reduce::dot;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UmapParams {
    /// Neighbours per point in the graph (umap-learn's `n_neighbors`).
    pub neighbours: usize,
    /// SGD epochs; umap-learn uses 500 up to 10,000 points and 200 above.
    pub epochs: usize,
    pub seed: u64,
}

impl UmapParams {
    pub fn for_points(n: usize) -> UmapParams {
        UmapParams {
            neighbours: 15,
            epochs: if n <= 10_000 { 500 } else { 200 },
            seed: 42,
        }
    }
}

/// The curve 1 / (1 + a d^2b) fitted to min_dist = 0.1, spread = 1 (umap-learn's defaults and
/// its `find_ab_params` values).
const A: f64 = 1.576_943_460_405_378;
const B: f64 = 0.895_060_878_640_497_9;
const NEGATIVE_SAMPLES: f64 = 5.0;
/// umap-learn clips every gradient component to this.
const CLIP: f64 = 4.0;

/// A small seeded generator (PCG-style LCG, upper bits) for the negative samples.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

/// Each row's `k` nearest other rows (exact) and their Euclidean distances, nearest first.
pub fn nearest_neighbours(rows: &[f32], dim: usize, k: usize) -> Vec<Vec<(usize, f64)>> {
    let n = rows.len() / dim;
    let norms: Vec<f64> = rows
        .chunks(dim)
        .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum())
        .collect();
    (0..n)
        .map(|i| {
            let a = &rows[i * dim..(i + 1) * dim];
            let mut d: Vec<(usize, f64)> = rows
                .chunks(dim)
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, b)| {
                    let dot = dot(a, b) as f64;
                    (j, (norms[i] + norms[j] - 2.0 * dot).max(0.0).sqrt())
                })
                .collect();
            let k = k.min(d.len());
            if k < d.len() {
                d.select_nth_unstable_by(k, |x, y| x.1.total_cmp(&y.1));
                d.truncate(k);
            }
            d.sort_by(|x, y| x.1.total_cmp(&y.1));
            d
        })
        .collect()
}

/// The fuzzy simplicial set: symmetric edge weights in (0, 1] as (i, j, w), both directions.
fn fuzzy_graph(knn: &[Vec<(usize, f64)>]) -> Vec<(usize, usize, f64)> {
    use std::collections::HashMap;
    let mut directed: HashMap<(usize, usize), f64> = HashMap::new();
    for (i, neighbours) in knn.iter().enumerate() {
        let k = neighbours.len().max(1) as f64;
        let target = k.log2();
        let rho = neighbours
            .iter()
            .map(|x| x.1)
            .find(|&d| d > 0.0)
            .unwrap_or(0.0);
        let mass = |sigma: f64| -> f64 {
            neighbours
                .iter()
                .map(|&(_, d)| (-((d - rho).max(0.0)) / sigma).exp())
                .sum()
        };
        // Binary search of sigma (the mass grows with sigma), as umap-learn's smooth_knn_dist.
        let (mut lo, mut hi, mut sigma) = (0.0, f64::INFINITY, 1.0);
        for _ in 0..64 {
            let m = mass(sigma);
            if (m - target).abs() < 1e-5 {
                break;
            }
            if m > target {
                hi = sigma;
                sigma = (lo + hi) / 2.0;
            } else {
                lo = sigma;
                sigma = if hi.is_infinite() {
                    sigma * 2.0
                } else {
                    (lo + hi) / 2.0
                };
            }
        }
        // umap-learn keeps sigma at least 1e-3 of the mean distance.
        let mean = neighbours.iter().map(|x| x.1).sum::<f64>() / k;
        let sigma = sigma.max(1e-3 * mean).max(1e-12);
        for &(j, d) in neighbours {
            let w = (-((d - rho).max(0.0)) / sigma).exp();
            directed.insert((i, j), w);
        }
    }
    let mut edges = Vec::with_capacity(directed.len() * 2);
    for (&(i, j), &w) in &directed {
        let back = directed.get(&(j, i)).copied().unwrap_or(0.0);
        let union = w + back - w * back;
        edges.push((i, j, union));
        if back == 0.0 {
            edges.push((j, i, union)); // the reverse entry of the symmetric matrix
        }
    }
    edges.sort_by_key(|e| (e.0, e.1));
    edges
}

/// UMAP of unit rows (n x dim) to 2-D; `on_epoch` sees the coordinates (n x 2, row-major)
/// after every epoch.
pub fn umap_2d(
    rows: &[f32],
    dim: usize,
    params: UmapParams,
    on_epoch: impl FnMut(usize, &[f64]),
) -> Result<Vec<f64>> {
    umap_2d_from(rows, dim, params, None, on_epoch)
}

/// [`umap_2d`] started from `init` (n x 2, rescaled to +-10) instead of PCA when given: a map
/// that grows keeps its layout.
pub fn umap_2d_from(
    rows: &[f32],
    dim: usize,
    params: UmapParams,
    init: Option<Vec<f64>>,
    mut on_epoch: impl FnMut(usize, &[f64]),
) -> Result<Vec<f64>> {
    let n = rows.len() / dim.max(1);
    ensure!(n >= 4, "UMAP needs at least 4 points, got {n}");
    ensure!(params.neighbours >= 2, "UMAP needs at least 2 neighbours");
    let knn = nearest_neighbours(rows, dim, params.neighbours.min(n - 1));
    let mut edges = fuzzy_graph(&knn);
    let max_w = edges.iter().map(|e| e.2).fold(0.0, f64::max);
    let epochs = params.epochs.max(1);
    // Edges too weak to be sampled once in the run are dropped (as umap-learn does).
    edges.retain(|e| e.2 >= max_w / epochs as f64);
    let per_sample: Vec<f64> = edges.iter().map(|e| max_w / e.2).collect();
    let per_negative: Vec<f64> = per_sample.iter().map(|p| p / NEGATIVE_SAMPLES).collect();
    let mut next_sample = per_sample.clone();
    let mut next_negative = per_negative.clone();

    // PCA start scaled to coordinates within +-10 (umap-learn's init).
    let mut y = match init {
        Some(init) => checked_start(init, n)?,
        None => pca_2d(rows, dim),
    };
    let largest = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if largest > 0.0 {
        y.iter_mut().for_each(|v| *v *= 10.0 / largest);
    }
    let mut random = Random(params.seed);
    let clip = |g: f64| g.clamp(-CLIP, CLIP);
    for epoch in 0..epochs {
        let alpha = 1.0 - epoch as f64 / epochs as f64;
        let e = epoch as f64;
        for (k, &(i, j, _)) in edges.iter().enumerate() {
            if next_sample[k] > e + 1.0 {
                continue;
            }
            // Attraction along the edge; both ends move.
            let (dx, dy) = (y[2 * i] - y[2 * j], y[2 * i + 1] - y[2 * j + 1]);
            let d2 = dx * dx + dy * dy;
            if d2 > 0.0 {
                let coeff = -2.0 * A * B * d2.powf(B - 1.0) / (A * d2.powf(B) + 1.0);
                let (gx, gy) = (clip(coeff * dx) * alpha, clip(coeff * dy) * alpha);
                y[2 * i] += gx;
                y[2 * i + 1] += gy;
                y[2 * j] -= gx;
                y[2 * j + 1] -= gy;
            }
            next_sample[k] += per_sample[k];
            // Repulsion from random points.
            let negatives = ((e + 1.0 - next_negative[k]) / per_negative[k])
                .floor()
                .max(0.0);
            for _ in 0..negatives as usize {
                let m = random.below(n);
                if m == i {
                    continue;
                }
                let (dx, dy) = (y[2 * i] - y[2 * m], y[2 * i + 1] - y[2 * m + 1]);
                let d2 = dx * dx + dy * dy;
                let (gx, gy) = if d2 > 0.0 {
                    let coeff = 2.0 * B / ((0.001 + d2) * (A * d2.powf(B) + 1.0));
                    (clip(coeff * dx), clip(coeff * dy))
                } else {
                    (CLIP, CLIP)
                };
                y[2 * i] += gx * alpha;
                y[2 * i + 1] += gy * alpha;
            }
            next_negative[k] += negatives * per_negative[k];
        }
        on_epoch(epoch + 1, &y);
    }
    Ok(y)
}

/// Mean fraction of each point's `k` nearest neighbours among the rows that are also among its
/// `k` nearest on the map: how much of the local structure a 2-D map keeps (1 = all).
pub fn neighbourhood_preservation(rows: &[f32], dim: usize, coords: &[f64], k: usize) -> f64 {
    let high = nearest_neighbours(rows, dim, k);
    let flat: Vec<f32> = coords.iter().map(|&c| c as f32).collect();
    let low = nearest_neighbours(&flat, 2, k);
    let kept: usize = high
        .iter()
        .zip(&low)
        .map(|(h, l)| {
            h.iter()
                .filter(|(j, _)| l.iter().any(|(m, _)| m == j))
                .count()
        })
        .sum();
    kept as f64 / (high.len() * k) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_are_exact_and_nearest_first() {
        let rows = [0.0f32, 0.0, 1.0, 0.0, 3.0, 0.0, 0.0, 2.0];
        let knn = nearest_neighbours(&rows, 2, 2);
        assert_eq!(knn[0], vec![(1, 1.0), (3, 2.0)]);
        assert_eq!(knn[2].iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 0]);
    }

    #[test]
    fn fuzzy_graph_is_symmetric_with_one_at_the_nearest() {
        let rows: Vec<f32> = (0..12)
            .flat_map(|i| [i as f32, (i * i % 5) as f32])
            .collect();
        let edges = fuzzy_graph(&nearest_neighbours(&rows, 2, 4));
        for &(i, j, w) in &edges {
            assert!(w > 0.0 && w <= 1.0 + 1e-12);
            let back = edges
                .iter()
                .find(|e| e.0 == j && e.1 == i)
                .expect("reverse edge");
            assert!((back.2 - w).abs() < 1e-12);
        }
        // Each point's nearest neighbour gets weight 1 (distance minus rho is 0).
        let nearest = nearest_neighbours(&rows, 2, 1);
        for (i, n) in nearest.iter().enumerate() {
            let e = edges.iter().find(|e| e.0 == i && e.1 == n[0].0).unwrap();
            assert!((e.2 - 1.0).abs() < 1e-9, "{e:?}");
        }
    }

    #[test]
    fn umap_is_reproducible_and_refuses_too_few_points() {
        let rows: Vec<f32> = (0..40)
            .flat_map(|i| [(i % 4) as f32, (i / 4) as f32, 1.0])
            .collect();
        let params = UmapParams {
            epochs: 50,
            ..UmapParams::for_points(40)
        };
        let mut seen = 0;
        let a = umap_2d(&rows, 3, params, |_, c| {
            seen += 1;
            assert_eq!(c.len(), 80);
        })
        .unwrap();
        assert_eq!(seen, 50);
        assert!(a.iter().all(|v| v.is_finite()));
        assert_eq!(a, umap_2d(&rows, 3, params, |_, _| {}).unwrap());
        // Started from a layout: it must have a place for every point.
        let from = umap_2d_from(&rows, 3, params, Some(a.clone()), |_, _| {}).unwrap();
        assert_eq!(from.len(), 80);
        let err = umap_2d_from(&rows, 3, params, Some(vec![0.0; 10]), |_, _| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("10 start coordinates for 40 points"),
            "{err}"
        );
        let err = umap_2d(&rows[..9], 3, params, |_, _| {}).unwrap_err();
        assert!(
            err.to_string().contains("at least 4 points, got 3"),
            "{err}"
        );
    }
}
