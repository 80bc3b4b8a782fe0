//! Downstream evaluation of frozen encoder features: kNN, linear probe and k-means clustering.
//!
//! The features are computed once (BatchNorm in inference mode, no augmentation); each metric
//! then works on them alone, so they can be tested on synthetic embeddings whose answer is known.
//! `features` computes them, `knn` is also the training loop's monitor. `standard_linear` is
//! the published linear protocol, which needs the encoder itself (augmented images each epoch).

pub mod features;
pub mod knn;
pub mod standard_linear;

use anyhow::{ensure, Result};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use knn::{l2_normalize, top1, KnnClassifier};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How `trainer eval` trains its linear classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ProbeProtocol {
    /// A quick look: Adam on features computed once from un-augmented images (seconds).
    Fast,
    /// The published protocol (solo-learn's `main_linear`): SGD with momentum 0.9 and a
    /// cosine learning rate, on features of random crop + flip views drawn every epoch (one
    /// encoder pass over the training set per epoch).
    Standard,
}

impl ProbeProtocol {
    pub fn name(self) -> &'static str {
        match self {
            ProbeProtocol::Fast => "fast",
            ProbeProtocol::Standard => "standard",
        }
    }

    /// Its default learning rate.
    pub fn default_lr(self) -> f64 {
        match self {
            ProbeProtocol::Fast => ProbeConfig::default().lr,
            ProbeProtocol::Standard => standard_linear::StandardLinearConfig::default().lr,
        }
    }
}

/// Linear-probe training settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeConfig {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            lr: 1e-3,
            batch_size: 512,
            seed: 0,
        }
    }
}

/// Host copy of features `[n, dim]`, row-major.
#[derive(Debug, Clone)]
pub struct Features {
    pub values: Vec<f32>,
    pub dim: usize,
}

impl Features {
    pub fn from_tensor<B: Backend>(t: Tensor<B, 2>) -> Self {
        let [_, dim] = t.dims();
        let values = t
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 features");
        Self { values, dim }
    }

    pub fn len(&self) -> usize {
        self.values.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(self.values.clone(), [self.len(), self.dim]),
            device,
        )
    }

    /// Rows scaled to unit L2 norm (the space kNN and k-means work in).
    pub fn l2_normalized(&self) -> Self {
        let mut values = self.values.clone();
        values.par_chunks_mut(self.dim).for_each(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= norm);
        });
        Self {
            values,
            dim: self.dim,
        }
    }
}

/// Results of `trainer eval`, written as `eval.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub checkpoint: String,
    pub train_images: usize,
    pub test_images: usize,
    pub knn_k: usize,
    pub knn_temperature: f64,
    pub knn_top1: f64,
    pub linear_probe_top1: f64,
    pub linear_probe_epochs: usize,
    /// How `linear_probe_top1` was measured: "fast" (Adam on the fixed features of
    /// un-augmented images, L2-normalised) or "standard" (solo-learn's offline protocol: SGD
    /// with momentum and cosine on features of crop + flip views); see `ProbeProtocol`.
    #[serde(default)]
    pub linear_probe_protocol: String,
    pub kmeans_nmi: f64,
    pub kmeans_ari: f64,
}

pub fn knn_top1<B: Backend>(
    knn: &KnnClassifier,
    train: &Features,
    train_labels: &[u8],
    test: &Features,
    test_labels: &[u8],
    num_classes: usize,
    device: &B::Device,
) -> f64 {
    knn.accuracy(
        train.to_tensor::<B>(device),
        train_labels,
        test.to_tensor::<B>(device),
        test_labels,
        num_classes,
    )
}

/// Trains `Linear(dim, classes)` with Adam and cross-entropy on frozen, L2-normalised features
/// and returns its top-1 accuracy on the test features.
pub fn linear_probe<B: AutodiffBackend>(
    train: &Features,
    train_labels: &[u8],
    test: &Features,
    test_labels: &[u8],
    num_classes: usize,
    config: &ProbeConfig,
    device: &B::Device,
) -> Result<f64> {
    ensure!(
        !train.is_empty() && !test.is_empty(),
        "linear probe needs train and test features"
    );
    B::seed(device, config.seed);
    let train = l2_normalize(train.to_tensor::<B>(device)).detach();
    let test = l2_normalize(test.to_tensor::<B::InnerBackend>(device));
    let [n, dim] = train.dims();
    let labels = Tensor::<B, 1, Int>::from_data(
        TensorData::new(train_labels.iter().map(|&l| l as i64).collect(), [n]),
        device,
    );
    let mut probe: Linear<B> = LinearConfig::new(dim, num_classes).init(device);
    let mut optimizer = AdamConfig::new().init::<B, Linear<B>>();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let batch = config.batch_size.clamp(1, n);
    for epoch in 0..config.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch) {
            let index = Tensor::<B, 1, Int>::from_data(
                TensorData::new(chunk.iter().map(|&i| i as i64).collect(), [chunk.len()]),
                device,
            );
            let x = train.clone().select(0, index.clone());
            let y = labels.clone().select(0, index);
            let loss = loss_fn.forward(probe.forward(x), y);
            // Cosine decay: the probe ends in a minimum instead of bouncing around it.
            let lr = config.lr
                * 0.5
                * (1.0 + (std::f64::consts::PI * epoch as f64 / config.epochs as f64).cos());
            let grads = GradientsParams::from_grads(loss.backward(), &probe);
            probe = optimizer.step(lr, probe, grads);
        }
    }
    let logits = burn::module::AutodiffModule::valid(&probe).forward(test);
    Ok(logits_top1(logits, test_labels))
}

/// Top-1 accuracy of a classifier's `logits` (`[N, classes]`) against `labels`.
pub fn logits_top1<B: Backend>(logits: Tensor<B, 2>, labels: &[u8]) -> f64 {
    let predicted: Vec<u8> = logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int data")
        .into_iter()
        .map(|p| p as u8)
        .collect();
    top1(&predicted, labels)
}

/// k-means (k-means++ seeding, Lloyd iterations) on the rows of `features`; returns each row's
/// cluster. Deterministic for a seed.
pub fn kmeans(features: &Features, k: usize, iterations: usize, seed: u64) -> Vec<usize> {
    let (n, dim) = (features.len(), features.dim);
    assert!(
        k >= 1 && n >= k,
        "k-means needs at least k = {k} points, got {n}"
    );
    let dist2 = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centers: Vec<Vec<f32>> = vec![features.row(rng.random_range(0..n)).to_vec()];
    let mut nearest: Vec<f32> = (0..n)
        .map(|i| dist2(features.row(i), &centers[0]))
        .collect();
    while centers.len() < k {
        let total: f64 = nearest.iter().map(|&d| d as f64).sum();
        let mut target = rng.random::<f64>() * total;
        let mut pick = n - 1;
        for (i, &d) in nearest.iter().enumerate() {
            target -= d as f64;
            if target <= 0.0 {
                pick = i;
                break;
            }
        }
        centers.push(features.row(pick).to_vec());
        let last = centers.last().unwrap();
        nearest
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, d)| *d = d.min(dist2(features.row(i), last)));
    }
    let mut assignment = vec![usize::MAX; n];
    for _ in 0..iterations {
        let next: Vec<usize> = (0..n)
            .into_par_iter()
            .map(|i| {
                let row = features.row(i);
                (0..k)
                    .min_by(|&a, &b| dist2(row, &centers[a]).total_cmp(&dist2(row, &centers[b])))
                    .unwrap()
            })
            .collect();
        if next == assignment {
            break;
        }
        assignment = next;
        let mut sums = vec![vec![0.0f64; dim]; k];
        let mut counts = vec![0usize; k];
        for (i, &c) in assignment.iter().enumerate() {
            counts[c] += 1;
            for (s, &v) in sums[c].iter_mut().zip(features.row(i)) {
                *s += v as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                centers[c] = sums[c]
                    .iter()
                    .map(|s| (s / counts[c] as f64) as f32)
                    .collect();
            }
        }
    }
    assignment
}

/// Contingency table of two labelings, with row and column totals.
fn contingency(a: &[usize], b: &[usize]) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>) {
    let ka = a.iter().max().map_or(0, |m| m + 1);
    let kb = b.iter().max().map_or(0, |m| m + 1);
    let mut table = vec![vec![0.0; kb]; ka];
    for (&x, &y) in a.iter().zip(b) {
        table[x][y] += 1.0;
    }
    let rows = table.iter().map(|r| r.iter().sum()).collect();
    let cols = (0..kb).map(|j| table.iter().map(|r| r[j]).sum()).collect();
    (table, rows, cols)
}

fn entropy(counts: &[f64], n: f64) -> f64 {
    counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| -(c / n) * (c / n).ln())
        .sum()
}

/// Normalised mutual information (arithmetic mean normalisation, as scikit-learn's default).
pub fn nmi(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len() as f64;
    let (table, rows, cols) = contingency(a, b);
    let mut mi = 0.0;
    for (i, row) in table.iter().enumerate() {
        for (j, &nij) in row.iter().enumerate() {
            if nij > 0.0 {
                mi += nij / n * (n * nij / (rows[i] * cols[j])).ln();
            }
        }
    }
    let (ha, hb) = (entropy(&rows, n), entropy(&cols, n));
    if ha + hb == 0.0 {
        return 1.0; // both labelings are a single cluster: identical
    }
    (mi / ((ha + hb) / 2.0)).clamp(0.0, 1.0)
}

/// Adjusted Rand index (Hubert & Arabie): 1 for identical partitions, about 0 for random ones.
pub fn ari(a: &[usize], b: &[usize]) -> f64 {
    let pairs = |x: f64| x * (x - 1.0) / 2.0;
    let (table, rows, cols) = contingency(a, b);
    let index: f64 = table.iter().flatten().map(|&v| pairs(v)).sum();
    let sum_rows: f64 = rows.iter().map(|&v| pairs(v)).sum();
    let sum_cols: f64 = cols.iter().map(|&v| pairs(v)).sum();
    let expected = sum_rows * sum_cols / pairs(a.len() as f64);
    let max = (sum_rows + sum_cols) / 2.0;
    if max == expected {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::backend::Autodiff;

    /// `n` points in `classes` tight clusters around orthogonal axes; labels i % classes.
    fn separated(n: usize, classes: usize, noise: f32, seed: u64) -> (Features, Vec<u8>) {
        let dim = classes * 2;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let c = i % classes;
            for d in 0..dim {
                values.push(if d == c { 1.0 } else { 0.0 } + rng.random_range(-noise..=noise));
            }
            labels.push(c as u8);
        }
        (Features { values, dim }, labels)
    }

    fn as_usize(labels: &[u8]) -> Vec<usize> {
        labels.iter().map(|&l| l as usize).collect()
    }

    #[test]
    fn separated_clusters_give_perfect_scores() {
        let (train, train_labels) = separated(300, 5, 0.05, 1);
        let (test, test_labels) = separated(100, 5, 0.05, 2);
        let device = Default::default();
        let knn = KnnClassifier {
            k: 20,
            temperature: 0.1,
        };
        assert_eq!(
            knn_top1::<CpuBackend>(&knn, &train, &train_labels, &test, &test_labels, 5, &device),
            1.0
        );
        let probe = ProbeConfig {
            epochs: 30,
            lr: 1e-2,
            batch_size: 64,
            seed: 0,
        };
        let acc = linear_probe::<Autodiff<CpuBackend>>(
            &train,
            &train_labels,
            &test,
            &test_labels,
            5,
            &probe,
            &device,
        )
        .unwrap();
        assert_eq!(acc, 1.0);
        let clusters = kmeans(&test.l2_normalized(), 5, 50, 0);
        assert!((nmi(&clusters, &as_usize(&test_labels)) - 1.0).abs() < 1e-9);
        assert!((ari(&clusters, &as_usize(&test_labels)) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn shuffled_labels_give_chance() {
        let (train, _) = separated(1000, 10, 0.05, 3);
        let (test, _) = separated(500, 10, 0.05, 4);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let random = |n: usize, rng: &mut ChaCha8Rng| -> Vec<u8> {
            (0..n).map(|_| rng.random_range(0..10)).collect()
        };
        let (train_labels, test_labels) = (random(1000, &mut rng), random(500, &mut rng));
        let device = Default::default();
        let knn = KnnClassifier {
            k: 50,
            temperature: 0.1,
        };
        let acc = knn_top1::<CpuBackend>(
            &knn,
            &train,
            &train_labels,
            &test,
            &test_labels,
            10,
            &device,
        );
        assert!(acc < 0.2, "kNN on random labels: {acc}");
        let probe = ProbeConfig {
            epochs: 10,
            lr: 1e-2,
            batch_size: 128,
            seed: 0,
        };
        let acc = linear_probe::<Autodiff<CpuBackend>>(
            &train,
            &train_labels,
            &test,
            &test_labels,
            10,
            &probe,
            &device,
        )
        .unwrap();
        assert!(acc < 0.2, "probe on random labels: {acc}");
        let clusters = kmeans(&test.l2_normalized(), 10, 50, 0);
        let labels = as_usize(&test_labels);
        assert!(
            nmi(&clusters, &labels) < 0.1,
            "NMI {}",
            nmi(&clusters, &labels)
        );
        assert!(
            ari(&clusters, &labels).abs() < 0.05,
            "ARI {}",
            ari(&clusters, &labels)
        );
    }

    #[test]
    fn nmi_and_ari_match_hand_computed_values() {
        // Same partition under renamed clusters.
        assert!((nmi(&[0, 0, 1, 1], &[1, 1, 0, 0]) - 1.0).abs() < 1e-12);
        assert!((ari(&[0, 0, 1, 1], &[1, 1, 0, 0]) - 1.0).abs() < 1e-12);
        // scikit-learn: adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714285714,
        // normalized_mutual_info_score(...) = 0.8;
        assert!((ari(&[0, 0, 1, 1], &[0, 0, 1, 2]) - 0.571_428_571_4).abs() < 1e-9);
        assert!((nmi(&[0, 0, 1, 1], &[0, 0, 1, 2]) - 0.8).abs() < 1e-9);
    }
}
