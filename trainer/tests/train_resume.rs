//! Training runs end to end on a tiny network and synthetic images: outputs, checkpoints,
//! resume (after an epoch and after Ctrl-C mid-epoch, past a damaged checkpoint), a non-finite
//! loss, and one writer per run folder.

mod common;

use burn::backend::Autodiff;
use common::{assert_close, text, Metrics};
use std::path::Path;
use std::sync::Mutex;
use trainer::backend::{BackendTask, CpuBackend, TrainBackend};
use trainer::checkpoint::{latest_in, Checkpoint};
use trainer::config::TrainConfig;
use trainer::jobs::train::{knn_monitor, EpochMetrics, KnnSubsets, Outcome};
use trainer::methods::simclr::NtXentLoss;
use trainer::methods::MethodConfig;
use trainer::model::ModelConfig;

/// Burn's seeded RNG is global: runs that initialise models must not interleave.
static SERIAL: Mutex<()> = Mutex::new(());

fn config(epochs: usize) -> TrainConfig {
    let mut config = TrainConfig {
        epochs,
        batch_size: 8,
        steps_per_epoch: 3,
        ..Default::default()
    };
    config.model = ModelConfig::small(4, 16, 8);
    config.knn.bank_size = 48;
    config.knn.query_size = 12;
    config.knn.k = 5;
    config
}

/// The kNN monitor's top-1 for a checkpoint's encoder, on the data the tests train on.
struct KnnOfCheckpoint(Checkpoint);

impl BackendTask for KnnOfCheckpoint {
    type Output = f64;
    fn run<B: TrainBackend>(self, device: B::Device, _name: &str) -> anyhow::Result<f64> {
        let model = self.0.model::<B>(&device)?;
        let data = common::synthetic();
        let subsets = KnnSubsets::new(&data.train, &data.test, &self.0.config);
        Ok(knn_monitor(&model, &subsets, &self.0.config, &device))
    }
}

fn train(
    config: TrainConfig,
    out: &Path,
    resume: bool,
    stop: bool,
) -> anyhow::Result<(Outcome, Vec<EpochMetrics>)> {
    common::train(config, out, resume, stop, common::synthetic())
}

#[test]
fn run_writes_checkpoints_metrics_and_config() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (outcome, metrics) = train(config(2), dir.path(), false, false).unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert_eq!(metrics.len(), 2);
    assert!(metrics.iter().all(|m| m.loss.is_finite() && m.loss > 0.0));
    // Each epoch's kNN is the monitor's value for that epoch's saved encoder: recomputed from
    // the checkpoint, it is the same number (a monitor of the wrong weights, BatchNorm mode or
    // images would differ), and a multiple of 1/12 (12 queries).
    for m in &metrics {
        let saved = dir
            .path()
            .join(format!("checkpoints/epoch-{:04}.ckpt", m.epoch));
        let again = KnnOfCheckpoint(Checkpoint::read(&saved).unwrap())
            .run::<Autodiff<CpuBackend>>(Default::default(), "cpu")
            .unwrap();
        assert_eq!(m.knn_top1, again, "epoch {}", m.epoch);
        assert!(((m.knn_top1 * 12.0).round() - m.knn_top1 * 12.0).abs() < 1e-9);
    }
    let ckpts = dir.path().join("checkpoints");
    assert!(ckpts.join("epoch-0001.ckpt").is_file());
    assert!(ckpts.join("epoch-0002.ckpt").is_file());
    assert_eq!(
        latest_in(&ckpts).unwrap().unwrap(),
        ckpts.join("epoch-0002.ckpt")
    );
    let saved = TrainConfig::load(&dir.path().join("config.toml")).unwrap();
    // The saved config is the run's, with what the data decided made concrete: the size, the
    // stem and the normalisation (computed from these synthetic images).
    assert_eq!(saved.image_size, 32);
    assert_eq!(saved.model.stem, trainer::model::Stem::Cifar);
    let (mean, std) = (saved.augment.mean.unwrap(), saved.augment.std.unwrap());
    assert!(mean.iter().all(|m| (0.45..0.55).contains(m)), "{mean:?}");
    assert!(std.iter().all(|s| (0.25..0.33).contains(s)), "{std:?}");
    let mut expected = config(2);
    expected.image_size = 32;
    expected.model.stem = trainer::model::Stem::Cifar;
    expected.augment.mean = Some(mean);
    expected.augment.std = Some(std);
    assert_eq!(saved, expected);
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "epoch,loss,z_std,knn_top1,pairs_per_s,seconds");
    assert_eq!(lines.len(), 3);
    assert!(lines[2].starts_with("2,"));
    let ckpt = Checkpoint::read(&ckpts).unwrap();
    assert_eq!((ckpt.state.epochs_done, ckpt.state.global_step), (2, 6));
    // Starting a new run over an existing one is refused instead of overwriting it.
    let err = train(config(2), dir.path(), false, false).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn resumed_epoch_matches_uninterrupted_run() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let straight = tempfile::tempdir().unwrap();
    let (_, full) = train(config(2), straight.path(), false, false).unwrap();

    let split = tempfile::tempdir().unwrap();
    let (_, first) = train(config(1), split.path(), false, false).unwrap();
    assert_close(first[0].loss, full[0].loss, "epoch 1");
    let (outcome, second) = train(config(2), split.path(), true, false).unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert_eq!(second.len(), 1, "resume continues at epoch 2");
    assert_eq!(second[0].epoch, 2);
    assert_close(second[0].loss, full[1].loss, "epoch 2 after resume");
    assert_close(second[0].knn_top1, full[1].knn_top1, "kNN after resume");
    let csv = std::fs::read_to_string(split.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
}

#[test]
fn ctrl_c_mid_epoch_saves_and_resume_finishes_the_same_epoch() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let straight = tempfile::tempdir().unwrap();
    let (_, full) = train(config(1), straight.path(), false, false).unwrap();

    let dir = tempfile::tempdir().unwrap();
    // The stop flag is already raised: the run stops after its first step.
    let (outcome, metrics) = train(config(1), dir.path(), false, true).unwrap();
    let ckpt_path = dir.path().join("checkpoints/epoch-0001-step-000001.ckpt");
    assert_eq!(
        outcome,
        Outcome::Interrupted {
            checkpoint: ckpt_path.clone()
        }
    );
    assert!(metrics.is_empty());
    let ckpt = Checkpoint::read(&ckpt_path).unwrap();
    assert_eq!((ckpt.state.epochs_done, ckpt.state.step_in_epoch), (0, 1));

    let (outcome, metrics) = train(config(1), dir.path(), true, false).unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert_close(metrics[0].loss, full[0].loss, "epoch 1 loss across Ctrl-C");
}

#[test]
fn old_checkpoints_are_pruned_after_each_save() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut run = config(1);
    (run.keep_last, run.keep_every) = (1, 2);
    // A Ctrl-C save, then the resumed run's three epochs.
    train(run.clone(), dir.path(), false, true).unwrap();
    run.epochs = 4;
    train(run, dir.path(), true, false).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["epoch-0002.ckpt", "epoch-0004.ckpt", "latest"]);
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    train(config(1), dir.path(), false, false).unwrap();
    let mut broken = config(2);
    broken.method = MethodConfig::Simclr(NtXentLoss::new(1e-300)); // logits overflow: NaN loss
                                                                   // Resuming continues a run's own recipe only: the checkpoint is given the broken one, as if
                                                                   // the run had been trained with it.
    let first = dir.path().join("checkpoints/epoch-0001.ckpt");
    let mut ckpt = Checkpoint::read(&first).unwrap();
    ckpt.config.method = broken.method;
    ckpt.write().unwrap();
    let err = train(broken, dir.path(), true, false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("loss became") && msg.contains("epoch 2"),
        "{msg}"
    );
    let ckpts = dir.path().join("checkpoints");
    assert_eq!(
        latest_in(&ckpts).unwrap().unwrap(),
        ckpts.join("epoch-0001.ckpt")
    );
    Checkpoint::read(&ckpts.join("epoch-0001.ckpt")).unwrap();
}

#[test]
fn resume_with_another_architecture_is_refused() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    train(config(1), dir.path(), false, false).unwrap();
    let mut other = config(2);
    other.model.width = 8;
    let err = format!("{:#}", train(other, dir.path(), true, false).unwrap_err());
    assert!(err.contains("architecture"), "{err}");
}

/// The trainer binary on CIFAR-10 with a width-4 network, 1 step of 8 per epoch, no kNN.
fn tiny_run(out: &Path, epochs: &str) -> std::process::Output {
    let data = e2e::cifar10_bin();
    common::trainer(&[
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--width",
        "4",
        "--batch-size",
        "8",
        "--steps-per-epoch",
        "1",
        "--knn-every",
        "0",
        "--epochs",
        epochs,
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn a_second_run_on_a_folder_in_use_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // This test process holds the folder, as a first `trainer train --out run` would.
    let held = trainer::run_lock::RunLock::acquire(&out).unwrap();
    let second = tiny_run(&out, "1");
    assert_eq!(second.status.code(), Some(1));
    let err = text(&second.stderr);
    let holder = format!("PID {} on host", std::process::id());
    assert!(
        err.contains(&holder) && err.contains(&out.display().to_string()),
        "{err}"
    );
    for file in ["checkpoints", "metrics.csv", "config.toml", "tb"] {
        assert!(!out.join(file).exists(), "the refused run wrote {file}");
    }
    // Once the first run ends (or dies), the folder is free again.
    drop(held);
    let first = tiny_run(&out, "1");
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(out.join("checkpoints/epoch-0001.ckpt").is_file());
}

#[test]
fn resume_passes_over_a_damaged_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let first = tiny_run(&out, "2");
    assert!(first.status.success(), "{}", text(&first.stderr));
    let newest = out.join("checkpoints/epoch-0002.ckpt");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() - 100]).unwrap(); // a save cut short

    let resumed = common::trainer(&["--resume", "--out", out.to_str().unwrap()]);
    let (stdout, err) = (text(&resumed.stdout), text(&resumed.stderr));
    assert!(resumed.status.success(), "{err}");
    assert!(
        err.contains("warning: checkpoint")
            && err.contains("epoch-0002.ckpt: truncated")
            && err.contains("resuming from")
            && err.contains("epoch-0001.ckpt"),
        "{err}"
    );
    assert!(
        stdout.contains("epoch 2/2") && !stdout.contains("epoch 1/2"),
        "{stdout}"
    );
    let kept = out.join("checkpoints/epoch-0002.ckpt.corrupt");
    assert_eq!(std::fs::read(&kept).unwrap().len(), bytes.len() - 100);
    Checkpoint::read(&newest).unwrap();
    assert_eq!(Metrics::read(&out).column("epoch"), [1.0, 2.0]);
}

/// Checkpoints written by older trainers still work: format 2 (before backbones had names:
/// `tests/fixtures/checkpoint-v2/{byol,mocov2}`, the trainer at commit 1243bdb) and format 3
/// (before the prototype layer: `tests/fixtures/checkpoint-v3/{simclr,byol}`, commit 62aeacf).
/// Each is a run of `trainer train --config C --data CIFAR10 --epochs 1 --steps-per-epoch 2
/// --batch-size 16 --knn-every 0` with width 2 and heads 32 -> 16, then that trainer's `embed
/// --limit 8` of the CIFAR-10 test split (`embeddings-test8.npy`). BYOL's and MoCo v2's method
/// state holds a momentum encoder, so both the model and the method state take the old layout.
/// Today's trainer embeds the same images into the same vectors, resumes the run for another
/// epoch (writing today's format) and exports it.
#[test]
fn checkpoints_from_older_trainers_embed_resume_and_export() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cifar = e2e::cifar10_bin();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    for (format, method) in [(2, "byol"), (2, "mocov2"), (3, "simclr"), (3, "byol")] {
        let fixtures = fixtures.join(format!("checkpoint-v{format}"));
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join(method);
        std::fs::create_dir_all(run.join("checkpoints")).unwrap();
        for file in [
            "config.toml",
            "checkpoints/epoch-0001.ckpt",
            "checkpoints/latest",
        ] {
            std::fs::copy(fixtures.join(method).join(file), run.join(file)).unwrap();
        }
        assert_eq!(Checkpoint::read(&run).unwrap().format, format, "{method}");

        let npy = dir.path().join("e.npy");
        let embed = common::trainer(&[
            "embed",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            cifar.to_str().unwrap(),
            "--limit",
            "8",
            "--out",
            npy.to_str().unwrap(),
        ]);
        assert!(embed.status.success(), "{method}: {}", text(&embed.stderr));
        let (ours, before) = (
            common::read_npy(&npy),
            common::read_npy(&fixtures.join(method).join("embeddings-test8.npy")),
        );
        assert_eq!(ours.len(), 8 * 16, "{method}");
        let scale = before.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = e2e::max_abs_diff(&ours, &before);
        assert!(
            scale > 1e-3 && worst <= 1e-5 * scale,
            "{method}: embeddings differ from the old trainer's by {worst} (scale {scale})"
        );

        let mut config = TrainConfig::load(&run.join("config.toml")).unwrap();
        config.epochs = 2;
        let (outcome, metrics) =
            common::train(config, &run, true, false, common::synthetic()).unwrap();
        assert_eq!(outcome, Outcome::Finished, "{method}");
        assert_eq!(metrics.len(), 1, "{method}: one more epoch");
        assert!(metrics[0].loss.is_finite(), "{method}: {:?}", metrics[0]);
        let resumed = Checkpoint::read(&run).unwrap();
        assert_eq!(
            (resumed.state.epochs_done, resumed.format),
            (2, 4),
            "{method}"
        );

        let onnx = dir.path().join("e.onnx");
        let export = common::trainer(&[
            "export",
            "--checkpoint",
            run.to_str().unwrap(),
            "--out",
            onnx.to_str().unwrap(),
        ]);
        assert!(
            export.status.success(),
            "{method}: {}",
            text(&export.stderr)
        );
        let size = std::fs::metadata(&onnx).unwrap().len();
        assert!(size > 10_000, "{method}: {size} bytes of ONNX");
    }
}
