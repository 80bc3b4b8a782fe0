//! The crate as a library user sees it: `examples/pretrain_own_model.rs` pretrains a CNN of its
//! own with the library's parts (run here through its `pretrain`), and the library without the
//! `cli` feature brings in neither the command line nor the download code.

#[allow(dead_code)] // the example's `main` and argument parsing are not called here
#[path = "../examples/pretrain_own_model.rs"]
mod example;

use example::{pretrain, Recipe, Settings};
use std::process::Command;

fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len() as f32
}

fn run(recipe: Recipe, steps: usize) -> example::Report {
    let settings = Settings {
        data: e2e::cifar10_bin().display().to_string(),
        recipe,
        steps,
        batch_size: 64,
        seed: 1,
    };
    pretrain(&settings).unwrap()
}

#[test]
fn simclr_on_a_users_own_cnn_lowers_the_loss() {
    let report = run(Recipe::SimClr, 40);
    assert_eq!(report.losses.len(), 40);
    assert!(
        report.losses.iter().all(|l| l.is_finite()),
        "{:?}",
        report.losses
    );
    // NT-Xent over 128 views starts near ln(127) = 4.84 for an untrained network.
    let (first, last) = (report.losses[0], mean(&report.losses[30..]));
    assert!((first - 127f32.ln()).abs() < 0.3, "first loss {first}");
    assert!(
        last < first - 0.4,
        "loss {first} -> {last}: {:?}",
        report.losses
    );
    // The trained encoder embeds real images: 128 features each.
    let features = report.encoder.forward(burn::prelude::Tensor::zeros(
        [2, 3, 32, 32],
        &Default::default(),
    ));
    assert_eq!(features.dims(), [2, 128]);
}

#[test]
fn byol_on_a_users_own_cnn_lowers_the_loss_and_its_target_follows() {
    let report = run(Recipe::Byol, 40);
    assert!(
        report.losses.iter().all(|l| l.is_finite()),
        "{:?}",
        report.losses
    );
    // 2 - 2 cos per view pair, summed over both: between 0 and 8.
    let (first, last) = (mean(&report.losses[..5]), mean(&report.losses[35..]));
    assert!(
        last < first - 0.2,
        "loss {first} -> {last}: {:?}",
        report.losses
    );
    // The momentum target moved with the online network, yet lags: not the same weights.
    let lag = report.target_lag.unwrap();
    assert!(lag > 0.0 && lag.is_finite(), "target lag {lag}");
}

/// `cargo tree`'s crate names for the trainer library with `features`.
fn library_dependencies(default_features: bool) -> Vec<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args([
        "tree",
        "--offline",
        "--manifest-path",
        manifest,
        "-p",
        "trainer",
    ]);
    cargo.args(["-e", "normal", "--prefix", "none", "--format", "{p}"]);
    if !default_features {
        cargo.args(["--no-default-features", "--features", "flex"]);
    }
    let out = cargo.output().unwrap();
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_library_without_cli_needs_no_clap_nor_download_code() {
    let cli_only = ["clap", "ctrlc", "mimalloc", "ureq"];
    let with_cli = library_dependencies(true);
    for name in cli_only {
        assert!(
            with_cli.iter().any(|d| d == name),
            "{name} not in the CLI build"
        );
    }
    let library = library_dependencies(false);
    assert!(library.iter().any(|d| d == "burn"), "{library:?}");
    for name in cli_only {
        assert!(
            !library.iter().any(|d| d == name),
            "{name} is a dependency of the library without `cli`"
        );
    }
}
