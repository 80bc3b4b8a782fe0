//! Nearest neighbours by cosine similarity in the encoder's embedding space.

/// Rows of `dim` floats scaled to unit length (zero rows stay zero).
pub fn l2_normalized(rows: &[f32], dim: usize) -> Vec<f32> {
    let mut out = rows.to_vec();
    for row in out.chunks_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

/// The `k` rows of `bank` (unit rows of `dim`) most similar to `query`, best first, as
/// (row, cosine similarity); `skip` leaves one row out (the query itself).
pub fn nearest(
    bank: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    skip: Option<usize>,
) -> Vec<(usize, f32)> {
    let q = l2_normalized(query, dim);
    let mut scored: Vec<(usize, f32)> = bank
        .chunks(dim)
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(i, row)| (i, row.iter().zip(&q).map(|(a, b)| a * b).sum()))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_cosine_and_skips_the_query() {
        let bank = l2_normalized(&[1.0, 0.0, 0.0, 2.0, 1.0, 1.0, -1.0, 0.0], 2);
        let hits = nearest(&bank, 2, &[3.0, 0.1], 3, None);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 2, 1]);
        assert!((hits[0].1 - 0.99944).abs() < 1e-4);
        let hits = nearest(&bank, 2, &bank[0..2], 2, Some(0));
        assert_eq!(hits[0].0, 2);
        assert!((hits[0].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
