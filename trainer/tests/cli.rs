//! The `trainer` binary as a user runs it, on the real CIFAR-10 images from `../shared/data`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .env(
            "SELFSUP_CACHE",
            std::env::temp_dir().join("selfsup-test-cache-empty"),
        )
        .output()
        .expect("the trainer binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The shared CIFAR-10 images in the official binary layout: `$CIFAR10_BIN`, or converted once
/// from `../shared/data/cifar10-jpeg.tar.gz` with `../shared/tools/cifar10-bin` (needs Pillow).
pub fn cifar10_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("CIFAR10_BIN") {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target").join("cifar10");
    let status = Command::new("python3")
        .arg(root.join("../shared/tools/cifar10-bin"))
        .arg(&out)
        .status()
        .expect("python3 runs ../shared/tools/cifar10-bin");
    assert!(
        status.success(),
        "could not prepare CIFAR-10 from ../shared (pip install pillow, or set CIFAR10_BIN)"
    );
    out.join("cifar-10-batches-bin")
}

#[test]
fn short_real_run_then_resume_adds_an_epoch() {
    let data = cifar10_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(
        &config,
        "[model]\nwidth = 8\n\n[knn]\nbank_size = 500\nquery_size = 200\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let common = [
        "--data",
        data.to_str().unwrap(),
        "--batch-size",
        "32",
        "--steps-per-epoch",
        "4",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let first = trainer(&[&common[..], &["--epochs", "2"]].concat());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    assert!(
        stdout.contains("epoch 1/2: loss") && stdout.contains("epoch 2/2: loss"),
        "{stdout}"
    );
    assert!(text(&first.stderr).contains("50000 train, 10000 test images"));
    for file in [
        "checkpoints/epoch-0001.ckpt",
        "checkpoints/epoch-0002.ckpt",
        "config.toml",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let config_toml = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config_toml.contains("width = 8") && config_toml.contains("epochs = 2"));

    let resumed = trainer(&["--resume", "--epochs", "3", "--out", out.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let stdout = text(&resumed.stdout);
    assert!(
        stdout.contains("epoch 3/3") && !stdout.contains("epoch 2/3"),
        "{stdout}"
    );
    assert!(out.join("checkpoints/epoch-0003.ckpt").is_file());
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{csv}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], (i + 1) as f64);
        assert!(row[1] > 0.0 && row[1] < 10.0, "loss {}", row[1]);
        assert!((0.0..=1.0).contains(&row[2]), "kNN {}", row[2]);
        assert!(row[3] > 0.0, "pairs/s");
    }
}

#[test]
fn help_explains_every_flag() {
    let out = trainer(&["train", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--data",
        "--epochs",
        "--batch-size",
        "--steps-per-epoch",
        "--out",
        "--device",
        "--seed",
        "--config",
        "--resume",
        "--optimizer",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn bad_inputs_get_clear_errors() {
    let out = trainer(&["--data", "/nonexistent/cifar", "--epochs", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/cifar") && err.contains("no such file"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = trainer(&["--resume", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("config.toml"),
        "{}",
        text(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "batch_size = \"big\"").unwrap();
    let out = trainer(&["--config", bad.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("batch_size"),
        "{err}"
    );

    #[cfg(not(feature = "cuda"))]
    {
        let out = trainer(&["--device", "cuda", "--data", "/nonexistent"]);
        assert!(
            text(&out.stderr).contains("--features cuda"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn print_config_shows_the_recipe_defaults() {
    let out = trainer(&[
        "--print-config",
        "--optimizer",
        "sgd",
        "--batch-size",
        "512",
    ]);
    assert!(out.status.success());
    let toml = text(&out.stdout);
    for line in [
        "batch_size = 512",
        "optimizer = \"sgd\"",
        "lr = 0.12",
        "temperature = 0.5",
        "width = 64",
    ] {
        assert!(toml.contains(line), "{line} missing from\n{toml}");
    }
}
