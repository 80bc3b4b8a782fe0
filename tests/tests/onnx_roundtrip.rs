//! Round trip: an encoder exported by `onnx`, imported back into Burn by burn-onnx's ModelGen
//! (build.rs), computes the same embeddings as the original on real CIFAR-10 images.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use e2e::{cifar10_bin, max_abs_diff};
use std::path::Path;
use trainer::checkpoint::Checkpoint;
use trainer::eval::features::normalized_batch;

#[allow(clippy::all, unused)]
mod imported {
    include!(concat!(env!("OUT_DIR"), "/model/encoder_w4.rs"));
}

#[test]
fn burn_onnx_import_of_the_export_gives_the_same_embeddings() {
    let device = Default::default();
    let checkpoint = Checkpoint::read(&Path::new(env!("OUT_DIR")).join("roundtrip")).unwrap();
    let original = checkpoint.model::<Flex>(&device).unwrap().encoder;
    let imported = imported::Model::<Flex>::default();

    let test = trainer::data::load(cifar10_bin().to_str().unwrap())
        .unwrap()
        .test
        .head(16);
    let pixels: Vec<f32> = (0..test.len())
        .flat_map(|i| test.image(i).iter().map(|&b| b as f32 / 255.0))
        .collect();
    let images =
        Tensor::<Flex, 4>::from_data(TensorData::new(pixels, [test.len(), 3, 32, 32]), &device);
    let got = onnx::values(imported.forward(images));
    let want = onnx::values(original.forward(normalized_batch::<Flex>(
        &test,
        0..test.len(),
        &checkpoint.config.augment,
        &device,
    )));
    assert_eq!(got.len(), 16 * 32);
    let diff = max_abs_diff(&got, &want);
    println!("max |imported - original| = {diff:e}");
    assert!(diff <= 1e-4, "max difference {diff}");
    assert!(
        want.iter().any(|v| v.abs() > 1e-4),
        "embeddings are not all zero"
    );
}
