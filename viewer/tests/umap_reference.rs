//! The viewer's UMAP against umap-learn on the same data (bench/umap_reference.py wrote the
//! data and umap-learn's scores into tests/fixtures/umap_reference.json): ours must keep as
//! much of each point's neighbourhood and keep the classes as far apart.

use viewer::projection::{tsne_2d, TsneParams};
use viewer::umap::{neighbourhood_preservation, umap_2d, UmapParams};

/// How often a point's nearest neighbour on the map has its label.
fn label_agreement(coords: &[f64], labels: &[u64]) -> f64 {
    let n = labels.len();
    let agree = (0..n)
        .filter(|&i| {
            let d = |j: usize| {
                (coords[2 * i] - coords[2 * j]).powi(2)
                    + (coords[2 * i + 1] - coords[2 * j + 1]).powi(2)
            };
            let nearest = (0..n)
                .filter(|&j| j != i)
                .min_by(|&a, &b| d(a).total_cmp(&d(b)))
                .unwrap();
            labels[nearest] == labels[i]
        })
        .count();
    agree as f64 / n as f64
}

#[test]
fn umap_keeps_neighbourhoods_and_classes_as_umap_learn_does() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/umap_reference.json"
    );
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let dim = fixture["dim"].as_u64().unwrap() as usize;
    let rows: Vec<f32> = fixture["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let labels: Vec<u64> = fixture["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(rows.len(), labels.len() * dim);
    let reference_p = fixture["preservation_k10"]["mean"].as_f64().unwrap();
    let reference_a = fixture["label_agreement"]["mean"].as_f64().unwrap();

    let mut scores = Vec::new();
    for seed in 0..3 {
        let params = UmapParams {
            seed,
            ..UmapParams::for_points(labels.len())
        };
        let coords = umap_2d(&rows, dim, params, |_, _| {}).unwrap();
        assert!(coords.iter().all(|c| c.is_finite()));
        let p = neighbourhood_preservation(&rows, dim, &coords, 10);
        scores.push((p, label_agreement(&coords, &labels)));
    }
    let mean = |f: fn(&(f64, f64)) -> f64| scores.iter().map(f).sum::<f64>() / 3.0;
    let (ours_p, ours_a) = (mean(|s| s.0), mean(|s| s.1));
    // For scale: t-SNE (what the page showed before) and PCA on the same data.
    let tsne = tsne_2d(&rows, dim, TsneParams::default(), |_, _| {}).unwrap();
    let pca = viewer::projection::pca_2d(&rows, dim);
    eprintln!(
        "k=10 neighbourhood preservation / label agreement: ours {ours_p:.3} / {ours_a:.3} \
         (seeds {scores:.3?}), umap-learn {} {reference_p:.3} / {reference_a:.3}, t-SNE {:.3} / \
         {:.3}, PCA {:.3} / {:.3}",
        fixture["umap_learn"],
        neighbourhood_preservation(&rows, dim, &tsne, 10),
        label_agreement(&tsne, &labels),
        neighbourhood_preservation(&rows, dim, &pca, 10),
        label_agreement(&pca, &labels),
    );
    assert!(
        ours_p >= reference_p - 0.03,
        "neighbourhood preservation {ours_p:.3}, umap-learn {reference_p:.3}"
    );
    assert!(
        ours_a >= reference_a - 0.02,
        "label agreement {ours_a:.3}, umap-learn {reference_a:.3}"
    );
}
