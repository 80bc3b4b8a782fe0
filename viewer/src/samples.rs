//! The sample images that `trainer export --viewer` writes: `samples.json` describes them,
//! `samples.bin` holds the pixels (per image 3 planes of S x S bytes, R then G then B, at the
//! encoder's size S). Unlabeled samples (a folder of the user's own images) have one class and
//! `"labelled": false`.

use anyhow::{bail, ensure, Result};
use serde::Deserialize;

pub const FORMAT: &str = "selfsup-viewer-samples/1";

#[derive(Debug, Clone, Deserialize)]
pub struct SamplesMeta {
    pub format: String,
    pub count: usize,
    pub image_size: usize,
    pub layout: String,
    pub classes: Vec<String>,
    pub labels: Vec<u8>,
    #[serde(default)]
    pub source: String,
    /// False for unlabeled images (drawn in one colour, no legend); older exports were all
    /// labelled.
    #[serde(default = "yes")]
    pub labelled: bool,
    /// Embeddings computed by `trainer export --embeddings` (absent otherwise).
    #[serde(default)]
    pub embeddings: Option<crate::shipped::ShippedMeta>,
}

fn yes() -> bool {
    true
}

/// Images with labels, checked against their description.
#[derive(Debug, Clone)]
pub struct SampleSet {
    pub classes: Vec<String>,
    pub labels: Vec<u8>,
    pub labelled: bool,
    /// Side of the square images.
    pub side: usize,
    pixels: Vec<u8>,
    pub source: String,
    pub embeddings: Option<crate::shipped::ShippedMeta>,
}

impl SampleSet {
    /// Parses `samples.json` and `samples.bin`; every mismatch is an error that names the file.
    pub fn parse(meta_json: &[u8], pixels: Vec<u8>) -> Result<SampleSet> {
        let meta: SamplesMeta = serde_json::from_slice(meta_json)
            .map_err(|e| anyhow::anyhow!("samples.json is not a valid sample description: {e}"))?;
        ensure!(
            meta.format == FORMAT,
            "samples.json has format {:?}, this viewer reads {FORMAT:?}: export again with \
             `trainer export --viewer`",
            meta.format
        );
        ensure!(
            meta.image_size >= 8 && meta.layout == "planar-rgb-u8",
            "samples.json describes {}x{} {} images; the viewer reads planar-rgb-u8 images of \
             at least 8x8",
            meta.image_size,
            meta.image_size,
            meta.layout
        );
        let image_bytes = 3 * meta.image_size * meta.image_size;
        ensure!(
            meta.labels.len() == meta.count,
            "samples.json: {} labels for {} images",
            meta.labels.len(),
            meta.count
        );
        if let Some(bad) = meta
            .labels
            .iter()
            .find(|&&l| l as usize >= meta.classes.len())
        {
            bail!(
                "samples.json: label {bad} but only {} classes",
                meta.classes.len()
            );
        }
        ensure!(
            pixels.len() == meta.count * image_bytes,
            "samples.bin has {} bytes, samples.json says {} images of {image_bytes} bytes = {} \
             (truncated or from another export: run `trainer export --viewer` again)",
            pixels.len(),
            meta.count,
            meta.count * image_bytes
        );
        Ok(SampleSet {
            classes: meta.classes,
            labels: meta.labels,
            labelled: meta.labelled,
            side: meta.image_size,
            pixels,
            source: meta.source,
            embeddings: meta.embeddings,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn image_bytes(&self) -> usize {
        3 * self.side * self.side
    }

    /// Planar RGB bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let bytes = self.image_bytes();
        &self.pixels[i * bytes..(i + 1) * bytes]
    }

    /// What a point's caption says: its class, or its index when the images are unlabeled.
    pub fn caption(&self, i: usize) -> String {
        match self.labelled {
            true => self.classes[self.labels[i] as usize].clone(),
            false => format!("image {i}"),
        }
    }

    /// Images `range` as the encoder's input: [n, 3, S, S] floats in [0, 1].
    pub fn input_batch(&self, range: std::ops::Range<usize>) -> Vec<f32> {
        let bytes = self.image_bytes();
        self.pixels[range.start * bytes..range.end * bytes]
            .iter()
            .map(|&b| b as f32 / 255.0)
            .collect()
    }
}

/// Planar RGB bytes to interleaved RGBA (what a canvas `ImageData` holds).
pub fn planar_to_rgba(planar: &[u8]) -> Vec<u8> {
    let pixels = planar.len() / 3;
    let mut rgba = Vec::with_capacity(pixels * 4);
    for p in 0..pixels {
        rgba.extend_from_slice(&[planar[p], planar[pixels + p], planar[2 * pixels + p], 255]);
    }
    rgba
}

/// Interleaved RGBA of an S x S image to the encoder's input (planar RGB in [0, 1]).
pub fn rgba_to_input(rgba: &[u8]) -> Vec<f32> {
    let pixels = rgba.len() / 4;
    let mut input = vec![0.0; 3 * pixels];
    for p in 0..pixels {
        for c in 0..3 {
            input[c * pixels + p] = rgba[4 * p + c] as f32 / 255.0;
        }
    }
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE_BYTES: usize = 3 * 32 * 32;

    fn meta(count: usize, labels: &str) -> String {
        format!(
            r#"{{"format":"{FORMAT}","count":{count},"image_size":32,"layout":"planar-rgb-u8",
                "classes":["a","b"],"labels":{labels},"source":"test"}}"#
        )
    }

    #[test]
    fn reads_unlabeled_images_at_their_size() {
        let json = format!(
            r#"{{"format":"{FORMAT}","count":2,"image_size":96,"layout":"planar-rgb-u8",
                "classes":["images"],"labels":[0,0],"labelled":false}}"#
        );
        let mut pixels = vec![0u8; 2 * 3 * 96 * 96];
        pixels[3 * 96 * 96] = 51;
        let set = SampleSet::parse(json.as_bytes(), pixels.clone()).unwrap();
        assert_eq!((set.side, set.labelled, set.len()), (96, false, 2));
        assert_eq!(set.image(1).len(), 3 * 96 * 96);
        assert_eq!(set.input_batch(1..2)[0], 0.2);
        assert_eq!(set.caption(1), "image 1");
        let err = SampleSet::parse(json.as_bytes(), pixels[..3 * 96 * 96].to_vec()).unwrap_err();
        assert!(err.to_string().contains("images of 27648 bytes"), "{err}");
        // Older exports carry no `labelled` key: labelled.
        let old = SampleSet::parse(meta(1, "[1]").as_bytes(), vec![0; IMAGE_BYTES]).unwrap();
        assert_eq!(
            (old.labelled, old.side, old.caption(0)),
            (true, 32, "b".to_string())
        );
    }

    #[test]
    fn parses_and_converts_images() {
        let mut pixels = vec![0u8; 2 * IMAGE_BYTES];
        pixels[IMAGE_BYTES] = 255; // image 1, red plane, first pixel
        let set = SampleSet::parse(meta(2, "[0,1]").as_bytes(), pixels).unwrap();
        assert_eq!(set.len(), 2);
        let batch = set.input_batch(1..2);
        assert_eq!(batch.len(), IMAGE_BYTES);
        assert_eq!((batch[0], batch[1]), (1.0, 0.0));
        let rgba = planar_to_rgba(set.image(1));
        assert_eq!(&rgba[..8], &[255, 0, 0, 255, 0, 0, 0, 255]);
        assert_eq!(rgba_to_input(&rgba), batch);
    }

    #[test]
    fn rejects_mismatches_with_a_reason() {
        let err = |json: String, bytes: usize| {
            SampleSet::parse(json.as_bytes(), vec![0; bytes])
                .unwrap_err()
                .to_string()
        };
        assert!(err(meta(2, "[0,1]"), IMAGE_BYTES).contains("samples.bin has 3072 bytes"));
        assert!(err(meta(2, "[0]"), 2 * IMAGE_BYTES).contains("1 labels for 2 images"));
        assert!(err(meta(1, "[5]"), IMAGE_BYTES).contains("label 5 but only 2 classes"));
        assert!(err("{".into(), 0).contains("not a valid sample description"));
        let other = meta(1, "[0]").replace(FORMAT, "other/9");
        assert!(err(other, IMAGE_BYTES).contains("\"other/9\""));
    }
}
