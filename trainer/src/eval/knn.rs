//! Weighted kNN classification on L2-normalised features (the protocol of the lightly
//! benchmarks and the MoCo demo): each of the k most cosine-similar bank images votes for its
//! label with weight exp(similarity / T).

use burn::prelude::*;

#[derive(Debug, Clone, Copy)]
pub struct KnnClassifier {
    pub k: usize,
    pub temperature: f64,
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

impl KnnClassifier {
    /// Predicted label of each query. Similarities are computed on the device in chunks; the
    /// top-k selection and voting run on the host.
    pub fn predict<B: Backend>(
        &self,
        bank: Tensor<B, 2>,
        bank_labels: &[u8],
        queries: Tensor<B, 2>,
        num_classes: usize,
    ) -> Vec<u8> {
        let [bank_len, _] = bank.dims();
        assert_eq!(bank_len, bank_labels.len(), "one label per bank row");
        let k = self.k.min(bank_len);
        let bank_t = l2_normalize(bank).transpose();
        let queries = l2_normalize(queries);
        let [query_len, _] = queries.dims();
        let chunk = (64 * 1024 * 1024 / 4 / bank_len.max(1)).clamp(1, 1024);
        let mut predictions = Vec::with_capacity(query_len);
        let mut order: Vec<usize> = (0..bank_len).collect();
        for start in (0..query_len).step_by(chunk) {
            let end = (start + chunk).min(query_len);
            let sims = queries.clone().slice([start..end]).matmul(bank_t.clone());
            let sims: Vec<f32> = sims
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 data");
            for row in sims.chunks(bank_len) {
                order.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
                let mut votes = vec![0.0f64; num_classes];
                for &j in &order[..k] {
                    votes[bank_labels[j] as usize] += (row[j] as f64 / self.temperature).exp();
                }
                predictions.push(argmax(&votes) as u8);
            }
        }
        predictions
    }

    /// Top-1 accuracy in [0, 1] of the queries against their labels.
    pub fn accuracy<B: Backend>(
        &self,
        bank: Tensor<B, 2>,
        bank_labels: &[u8],
        queries: Tensor<B, 2>,
        query_labels: &[u8],
        num_classes: usize,
    ) -> f64 {
        let predicted = self.predict(bank, bank_labels, queries, num_classes);
        top1(&predicted, query_labels)
    }
}

/// Fraction of `predicted` equal to `labels`.
pub fn top1(predicted: &[u8], labels: &[u8]) -> f64 {
    assert_eq!(predicted.len(), labels.len());
    let hits = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    hits as f64 / labels.len().max(1) as f64
}

fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::tensor::TensorData;
    use rand::{Rng, SeedableRng};

    fn tensor(rows: &[Vec<f32>]) -> Tensor<CpuBackend, 2> {
        let d = rows[0].len();
        let flat: Vec<f32> = rows.concat();
        Tensor::from_data(TensorData::new(flat, [rows.len(), d]), &Default::default())
    }

    /// Points around the class's own axis, plus noise.
    fn clustered(n: usize, classes: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<u8>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let c = i % classes;
                let v = (0..classes)
                    .map(|d| if d == c { 1.0 } else { 0.0 } + rng.random_range(-0.1..0.1))
                    .collect();
                (v, c as u8)
            })
            .unzip()
    }

    #[test]
    fn separated_clusters_are_classified_perfectly() {
        let (bank, bank_labels) = clustered(200, 5, 1);
        let (queries, labels) = clustered(50, 5, 2);
        let knn = KnnClassifier {
            k: 20,
            temperature: 0.1,
        };
        let acc = knn.accuracy(tensor(&bank), &bank_labels, tensor(&queries), &labels, 5);
        assert_eq!(acc, 1.0);
    }

    #[test]
    fn shuffled_labels_give_chance() {
        let (bank, _) = clustered(2000, 10, 3);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let random_labels: Vec<u8> = (0..2000).map(|_| rng.random_range(0..10)).collect();
        let (queries, labels) = clustered(500, 10, 5);
        let knn = KnnClassifier {
            k: 50,
            temperature: 0.1,
        };
        let acc = knn.accuracy(tensor(&bank), &random_labels, tensor(&queries), &labels, 10);
        assert!((0.03..0.2).contains(&acc), "chance is 0.1, got {acc}");
    }

    #[test]
    fn nearest_neighbour_votes_weigh_similarity() {
        // Query closest to the one class-1 point: k=1 follows it; with k=4 and a flat
        // temperature the three class-0 votes outweigh it.
        let bank = vec![
            vec![1.0, 0.0],
            vec![0.95, 0.05],
            vec![0.97, 0.03],
            vec![0.0, 1.0],
        ];
        let labels = vec![0, 0, 0, 1];
        let query = tensor(&[vec![0.1, 1.0]]);
        let predict = |k| {
            KnnClassifier {
                k,
                temperature: 10.0,
            }
            .predict(tensor(&bank), &labels, query.clone(), 2)
        };
        assert_eq!(predict(1), vec![1]);
        assert_eq!(predict(4), vec![0]);
    }
}
