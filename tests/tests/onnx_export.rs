//! Train -> export -> ONNX Runtime: the exported encoder computes what Burn computes, on real
//! CIFAR-10 test images, and the file is a valid ONNX model for `onnx.checker`; at 32 px (CIFAR
//! stem) and at 96 px (the same images upsampled: ImageNet stem, 7x7 stride 2 + max-pool).

use burn::module::AutodiffModule;
use e2e::{cifar10_bin, max_abs_diff, onnxruntime_run};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use trainer::backend::{CpuBackend, DeviceKind};
use trainer::checkpoint::Checkpoint;
use trainer::config::TrainConfig;
use trainer::data::{self, ImageDataset, Splits};
use trainer::eval::features::normalized_batch;
use trainer::jobs::export::{encoder_to_onnx, INPUT, OUTPUT};
use trainer::jobs::train::TrainJob;

struct Fixture {
    _dir: tempfile::TempDir,
    checkpoint: Checkpoint,
    test: ImageDataset,
}

/// A full-width encoder after a few real SimCLR steps (so BatchNorm's running statistics are
/// not the identity), trained once for every test here: on the images at 32 px.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| train_fixture(32))
}

/// The same at 96 px, where the run's `image_size` picks the ImageNet stem.
fn fixture_96() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| train_fixture(96))
}

fn train_fixture(side: usize) -> Fixture {
    let splits = data::load(cifar10_bin().to_str().unwrap()).unwrap();
    let splits = Splits {
        train: splits.train.head(64),
        test: splits.test.head(64),
        ..splits
    }
    .resized(side);
    let dir = tempfile::tempdir().unwrap();
    let mut config = TrainConfig {
        epochs: 1,
        batch_size: 8,
        steps_per_epoch: 3,
        ..Default::default()
    };
    config.knn.bank_size = 16;
    config.knn.query_size = 8;
    let job = TrainJob {
        config,
        out: dir.path().to_path_buf(),
        resume: false,
        stop: Arc::new(AtomicBool::new(false)),
        data: Some(Splits {
            test: splits.test.head(8),
            origin: "shared CIFAR-10".into(),
            ..splits.clone()
        }),
        topology: Default::default(),
    };
    job.run_on(DeviceKind::Cpu).unwrap();
    let checkpoint = Checkpoint::read(&dir.path().join("checkpoints")).unwrap();
    Fixture {
        _dir: dir,
        checkpoint,
        test: splits.test,
    }
}

fn export(dir: &Path, fold: bool) -> std::path::PathBuf {
    export_of(fixture(), dir, fold)
}

fn export_of(f: &Fixture, dir: &Path, fold: bool) -> std::path::PathBuf {
    let model = f
        .checkpoint
        .model::<CpuBackend>(&Default::default())
        .unwrap();
    let proto = encoder_to_onnx(
        &model.encoder,
        512,
        f.checkpoint.config.input_size(),
        &f.checkpoint.config.augment,
        f.checkpoint.config.method.kind(),
        &f.checkpoint.config.to_toml(),
        &onnx::ExportOptions {
            fold_batch_norm: fold,
        },
    );
    let path = dir.join(if fold { "folded.onnx" } else { "encoder.onnx" });
    onnx::write_model(&proto, &path).unwrap();
    path
}

/// Burn's embeddings of the first `n` test images (inference mode).
fn burn_embeddings(n: usize) -> Vec<f32> {
    burn_embeddings_of(fixture(), n)
}

fn burn_embeddings_of(f: &Fixture, n: usize) -> Vec<f32> {
    let device = Default::default();
    let encoder = f
        .checkpoint
        .model::<burn::backend::Autodiff<CpuBackend>>(&device)
        .unwrap()
        .encoder
        .valid();
    let images =
        normalized_batch::<CpuBackend>(&f.test, 0..n, &f.checkpoint.config.augment, &device);
    onnx::values(encoder.forward(images))
}

/// ONNX Runtime's embeddings of the first `n` test images: the raw bytes / 255, nothing else.
fn ort_embeddings(path: &Path, n: usize) -> Vec<f32> {
    ort_embeddings_of(fixture(), path, n)
}

fn ort_embeddings_of(f: &Fixture, path: &Path, n: usize) -> Vec<f32> {
    let pixels: Vec<f32> = (0..n)
        .flat_map(|i| f.test.image(i).iter().map(|&b| b as f32 / 255.0))
        .collect();
    let (shape, values) = onnxruntime_run(path, INPUT, pixels, n, OUTPUT);
    assert_eq!(&shape[..], &[n as i64, 512]);
    values
}

#[test]
fn onnx_runtime_matches_burn_at_batch_1_and_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = export(dir.path(), false);
    let expected = burn_embeddings(64);
    for n in [1, 64] {
        let got = ort_embeddings(&path, n);
        let diff = max_abs_diff(&got, &expected[..n * 512]);
        println!("batch {n}: max |ORT - Burn| = {diff:e}");
        assert!(diff <= 1e-4, "batch {n}: max difference {diff}");
    }
    assert!(
        expected.iter().any(|v| v.abs() > 1e-3),
        "embeddings are not all zero"
    );
}

#[test]
fn folded_batch_norm_gives_the_same_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let plain = ort_embeddings(&export(dir.path(), false), 16);
    let folded_path = export(dir.path(), true);
    let folded = ort_embeddings(&folded_path, 16);
    let diff = max_abs_diff(&plain, &folded);
    assert!(diff <= 1e-5, "folded vs plain: {diff}");
    let model = onnx::read_model(&folded_path).unwrap();
    let ops: Vec<&str> = model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert!(!ops.contains(&"BatchNormalization"), "{ops:?}");
}

#[test]
fn file_is_standard_onnx_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = export(dir.path(), false);
    let model = onnx::read_model(&path).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(
        (
            count("Conv"),
            count("BatchNormalization"),
            count("Relu"),
            count("Add")
        ),
        (20, 20, 17, 8)
    );
    assert_eq!(
        (
            count("GlobalAveragePool"),
            count("Flatten"),
            count("Sub"),
            count("Div")
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(model.opset_import[0].version, 17);
    let meta: Vec<&str> = model
        .metadata_props
        .iter()
        .map(|p| p.key.as_str())
        .collect();
    for key in [
        "producer",
        "training_config",
        "normalization_mean",
        "normalization_std",
    ] {
        assert!(meta.contains(&key), "{key} missing from {meta:?}");
    }
    assert_eq!(checked_output_dims(&path), "['N', 512]");
}

/// Runs `onnx.checker` with full shape inference on the file and returns the inferred output
/// dimensions as Python prints them.
fn checked_output_dims(path: &Path) -> String {
    let check = e2e::python3()
        .args([
            "-c",
            "import sys, onnx; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); \
             print([d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim])",
        ])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        check.status.success(),
        "onnx.checker rejected the file (pip install onnx?): {}",
        String::from_utf8_lossy(&check.stderr)
    );
    String::from_utf8_lossy(&check.stdout).trim().to_string()
}

#[test]
fn at_96_px_the_imagenet_stem_exports_and_matches_burn_in_onnx_runtime() {
    let f = fixture_96();
    assert_eq!(f.checkpoint.config.input_size(), 96);
    assert_eq!(
        f.checkpoint.config.model.stem,
        trainer::model::Stem::Imagenet
    );
    let dir = tempfile::tempdir().unwrap();
    let path = export_of(f, dir.path(), false);

    let model = onnx::read_model(&path).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let dims: Vec<Option<i64>> = graph.input[0]
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .expect("the input has a shape")
        .dim
        .iter()
        .map(|d| d.dim_value)
        .collect();
    assert_eq!(
        dims,
        [None, Some(3), Some(96), Some(96)],
        "input [N, 3, 96, 96]"
    );
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!((count("Conv"), count("MaxPool")), (20, 1));
    let size = model.metadata_props.iter().find(|p| p.key == "image_size");
    assert_eq!(size.map(|p| p.value.as_str()), Some("96"));
    assert_eq!(checked_output_dims(&path), "['N', 512]");

    let expected = burn_embeddings_of(f, 16);
    for n in [1, 16] {
        let got = ort_embeddings_of(f, &path, n);
        let relative = e2e::relative_l2(&got, &expected[..n * 512]);
        let diff = max_abs_diff(&got, &expected[..n * 512]);
        println!("96 px, batch {n}: |ORT - Burn| / |Burn| = {relative:e}, max abs {diff:e}");
        assert!(
            relative <= 1e-4,
            "batch {n}: relative difference {relative}"
        );
    }
    assert!(
        expected.iter().any(|v| v.abs() > 1e-3),
        "embeddings are not all zero"
    );
}

/// `trainer bench` compares its inference with ONNX Runtime's timed the same way: after 2
/// untimed passes, the median of per-pass times (not a mean after one warm-up). The script
/// reports its passes, and its rate must be the batch over their median.
#[test]
fn onnx_runtime_throughput_is_the_median_pass_after_the_warm_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = export(dir.path(), false);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/onnx_throughput.py");
    let out = e2e::python3()
        .arg(&script)
        .arg(&path)
        .args([
            "--batch-size",
            "2",
            "--warmup",
            "2",
            "--min-passes",
            "5",
            "--seconds",
            "0",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["statistic"], "median", "{report}");
    assert_eq!(report["warmup"], 2, "{report}");
    assert_eq!(report["passes"], 5, "{report}");
    let mut seconds: Vec<f64> = report["pass_seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    assert_eq!(seconds.len(), 5);
    seconds.sort_by(f64::total_cmp);
    let expected = 2.0 / seconds[2];
    let rate = report["images_per_s"].as_f64().unwrap();
    assert!(
        (rate - expected).abs() <= 1e-9 * expected,
        "images/s {rate}, batch / median pass {expected}"
    );
}
