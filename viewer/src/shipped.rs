//! Embeddings shipped with the samples (`trainer export --embeddings f16|f32`): decoding
//! `embeddings.bin`, and the check that they belong to the model the page loaded. The page
//! draws the map from them at once, then re-embeds a random sample of images in the browser
//! and compares; a mismatch is an error, not a silently wrong map.

use anyhow::{bail, ensure, Result};
use serde::Deserialize;

/// How many images the page re-embeds to check the shipped vectors.
pub const CHECKED: usize = 32;

/// `samples.json`'s description of `embeddings.bin`: `count` x `dim` little-endian values.
#[derive(Debug, Clone, Deserialize)]
pub struct ShippedMeta {
    pub file: String,
    pub dtype: String,
    pub dim: usize,
}

impl ShippedMeta {
    /// Bytes per value, or an error naming a type this viewer does not read.
    fn value_bytes(&self) -> Result<usize> {
        match self.dtype.as_str() {
            "f32" => Ok(4),
            "f16" => Ok(2),
            other => {
                bail!("samples.json: embeddings of type {other:?}; this viewer reads f32 and f16")
            }
        }
    }

    /// Decodes `bytes` (the file's content) into `count` rows of `dim` f32 values.
    pub fn decode(&self, bytes: &[u8], count: usize, dim: usize) -> Result<Vec<f32>> {
        let size = self.value_bytes()?;
        ensure!(
            self.dim == dim,
            "{} holds {}-d embeddings but the model gives {dim}-d ones: export the viewer files \
             again from the same checkpoint (`trainer export --viewer --embeddings f16`)",
            self.file,
            self.dim
        );
        let expected = count * dim * size;
        ensure!(
            bytes.len() == expected,
            "{} has {} bytes, samples.json says {count} x {dim} {} values = {expected} \
             (truncated or from another export: run `trainer export --viewer --embeddings` again)",
            self.file,
            bytes.len(),
            self.dtype
        );
        Ok(match size {
            4 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }

    /// The largest difference from the browser's embeddings that still means "the same
    /// model": ONNX Runtime Web and Burn's CPU kernels differ by ~1e-6 relative to the largest
    /// value; f16 rounds by up to 2^-11 relative. Another model or wrong images differ by
    /// the size of the values themselves.
    pub fn tolerance(&self, largest: f32) -> f32 {
        let rounding = if self.dtype == "f16" { 1e-3 } else { 0.0 };
        (1e-3 + rounding) * largest.max(1e-6)
    }
}

/// `k` distinct indices below `n` (all of them when `k >= n`), picked by Floyd's algorithm
/// from `random()` draws in [0, 1), returned sorted.
pub fn random_indices(n: usize, k: usize, mut random: impl FnMut() -> f64) -> Vec<usize> {
    let k = k.min(n);
    let mut picked = std::collections::BTreeSet::new();
    for j in n - k..n {
        let t = ((random() * (j + 1) as f64) as usize).min(j);
        if !picked.insert(t) {
            picked.insert(j);
        }
    }
    picked.into_iter().collect()
}

/// The outcome of re-embedding some shipped rows in the browser.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Largest |browser - shipped| over every value compared.
    pub max_diff: f32,
    /// The image it was found on.
    pub worst: usize,
    pub tolerance: f32,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.max_diff <= self.tolerance
    }
}

/// Compares the browser's rows for `indices` with the shipped rows of the same images.
pub fn compare(
    meta: &ShippedMeta,
    shipped: &[f32],
    dim: usize,
    indices: &[usize],
    browser: &[f32],
) -> Comparison {
    let mut worst = (0.0f32, indices.first().copied().unwrap_or(0));
    let mut largest = 0.0f32;
    for (row, &i) in browser.chunks(dim).zip(indices) {
        let reference = &shipped[i * dim..(i + 1) * dim];
        for (&b, &s) in row.iter().zip(reference) {
            largest = largest.max(s.abs());
            let diff = (b - s).abs();
            // A NaN is never within tolerance.
            if diff > worst.0 || diff.is_nan() {
                worst = (if diff.is_nan() { f32::INFINITY } else { diff }, i);
            }
        }
    }
    Comparison {
        max_diff: worst.0,
        worst: worst.1,
        tolerance: meta.tolerance(largest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(dtype: &str) -> ShippedMeta {
        ShippedMeta {
            file: "embeddings.bin".into(),
            dtype: dtype.into(),
            dim: 2,
        }
    }

    #[test]
    fn decodes_f32_and_f16_rows_and_names_a_bad_file() {
        let values = [1.0f32, -2.5, 0.25, 3.0];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(meta("f32").decode(&f32_bytes, 2, 2).unwrap(), values);
        // 1.0, -2.5, 0.1 (rounded to f16), 65504 as little-endian f16 (what the trainer writes).
        let f16_bytes = [0x00, 0x3C, 0x00, 0xC1, 0x66, 0x2E, 0xFF, 0x7B];
        let decoded = meta("f16").decode(&f16_bytes, 2, 2).unwrap();
        assert_eq!(decoded[..2], [1.0, -2.5]);
        assert!((decoded[2] - 0.1).abs() < 1e-4 && decoded[3] == 65504.0);
        let err = meta("f32").decode(&f32_bytes[..12], 2, 2).unwrap_err();
        assert!(
            err.to_string()
                .contains("embeddings.bin has 12 bytes, samples.json says 2 x 2 f32 values = 16"),
            "{err}"
        );
        let err = meta("f32").decode(&f32_bytes, 1, 4).unwrap_err();
        assert!(err
            .to_string()
            .contains("2-d embeddings but the model gives 4-d"));
        let err = meta("bf16").decode(&f16_bytes, 2, 2).unwrap_err();
        assert!(err.to_string().contains("\"bf16\""));
    }

    #[test]
    fn random_indices_are_distinct_sorted_and_in_range() {
        let mut state = 12345u64;
        let mut random = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let picked = random_indices(10_000, CHECKED, &mut random);
        assert_eq!(picked.len(), CHECKED);
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
        assert!(*picked.last().unwrap() < 10_000);
        assert_eq!(random_indices(5, CHECKED, &mut random), vec![0, 1, 2, 3, 4]);
        // Always the largest draw: still distinct.
        assert_eq!(random_indices(4, 3, || 0.999_999), vec![1, 2, 3]);
    }

    #[test]
    fn comparison_passes_rounding_and_fails_another_model() {
        let shipped = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let m = meta("f16");
        // Rows 0 and 2 re-embedded in the browser, within f16 rounding.
        let close = compare(&m, &shipped, 2, &[0, 2], &[1.0005, 2.0, 5.0, 6.003]);
        assert!(close.passed(), "{close:?}");
        assert_eq!(close.worst, 2);
        assert!((close.max_diff - 0.003).abs() < 1e-5);
        assert!((close.tolerance - 0.012).abs() < 1e-6);
        // Another model's vectors: far off.
        let other = compare(&m, &shipped, 2, &[0, 2], &[0.5, 2.0, 5.0, 6.0]);
        assert!(!other.passed());
        assert_eq!((other.max_diff, other.worst), (0.5, 0));
        // f32 vectors get no rounding allowance, and a NaN never passes.
        let f32_close = compare(&meta("f32"), &shipped, 2, &[2], &[5.0, 6.01]);
        assert!(!f32_close.passed(), "{f32_close:?}");
        let nan = compare(&meta("f32"), &shipped, 2, &[1], &[f32::NAN, 4.0]);
        assert!(!nan.passed() && nan.worst == 1);
    }
}
