//! Build-time half of the ONNX round-trip test (tests/onnx_roundtrip.rs): saves a small encoder
//! as a trainer checkpoint, exports it with the project's exporter, and generates Burn code from
//! that file with burn-onnx's ModelGen, the importer the test then compares against.

use burn::backend::Flex;
use burn::module::Module;
use burn::prelude::Backend;
use rand::SeedableRng;
use std::path::PathBuf;
use trainer::checkpoint::{self, Checkpoint, TrainState};
use trainer::config::TrainConfig;
use trainer::model::ModelConfig;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../trainer/src");
    println!("cargo::rerun-if-changed=../onnx/src");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let device = Default::default();
    Flex::seed(&device, 7);
    let mut config = TrainConfig::default();
    config.model = ModelConfig::small(4, 8, 4);
    let model = config.model.init::<Flex>(&device);
    let state = TrainState {
        epochs_done: 1,
        global_step: 0,
        step_in_epoch: 0,
        loss_sum_in_epoch: 0.0,
        z_std_sum_in_epoch: 0.0,
        epoch_seed: 0,
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(0),
        loss_scaler: Default::default(),
    };
    let dir = out.join("roundtrip");
    let _ = std::fs::remove_dir_all(&dir);
    let record = model.clone().into_record();
    let path = checkpoint::save(&dir, &model, record, &[], &state, &config).unwrap();
    // The viewer's browser test exports this checkpoint with `trainer export --viewer`.
    println!("cargo::rustc-env=TINY_CHECKPOINT={}", path.display());
    // Export what the checkpoint holds (parameters are initialised lazily, so the saved copy is
    // the reference for both sides of the test).
    let saved = Checkpoint::read(&path)
        .unwrap()
        .model::<Flex>(&device)
        .unwrap();
    let proto = trainer::jobs::export::encoder_to_onnx(
        &saved.encoder,
        config.model.embedding_dim(),
        config.input_size(),
        &config.augment,
        config.method.kind(),
        &config.to_toml(),
        &onnx::ExportOptions::default(),
    );
    let onnx_path = out.join("encoder_w4.onnx");
    onnx::write_model(&proto, &onnx_path).unwrap();
    burn_onnx::ModelGen::new()
        .input(onnx_path.to_str().unwrap())
        .out_dir("model/")
        .run_from_script();
}
