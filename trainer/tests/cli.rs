//! The `trainer` binary as a user runs it, on the real CIFAR-10 images from `../shared/data`.

mod common;

use common::{text, trainer, Metrics};
use e2e::cifar10_bin;
use std::process::Command;

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
        "--log-every",
        "3",
    ];
    let first = trainer(&[&common[..], &["--epochs", "2"]].concat());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    assert!(
        stdout.contains("epoch 1/2: loss") && stdout.contains("epoch 2/2: loss"),
        "{stdout}"
    );
    assert!(text(&first.stderr).contains("50000 train, 10000 test images"));
    // --device auto (the default) says what it chose and why; lavapipe, a Vulkan driver on the
    // CPU, is passed over for the CPU backend.
    let err = text(&first.stderr);
    let choice = err
        .lines()
        .find(|l| l.starts_with("device: auto -> "))
        .unwrap_or_else(|| panic!("no device choice in\n{err}"));
    if choice.starts_with("device: auto -> cpu") {
        let expected = if cfg!(feature = "wgpu") {
            [
                "wgpu's adapter runs on the CPU",
                "wgpu found no GPU adapter",
            ]
        } else {
            ["built without --features wgpu"; 2]
        };
        assert!(expected.iter().any(|e| choice.contains(e)), "{choice}");
    }
    // The end of a run says how to evaluate it and how to look at it in the viewer.
    let hint = format!("export --checkpoint {} --viewer --data", out.display());
    assert!(
        text(&first.stderr).contains(&hint),
        "{}",
        text(&first.stderr)
    );
    for file in [
        "checkpoints/epoch-0001.ckpt",
        "checkpoints/epoch-0002.ckpt",
        "config.toml",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let config_toml = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config_toml.contains("width = 8") && config_toml.contains("epochs = 2"));
    // The run records the device it ran on, not "auto".
    let chosen = choice
        .trim_start_matches("device: auto -> ")
        .split(' ')
        .next()
        .unwrap();
    assert!(
        config_toml.contains(&format!("device = \"{chosen}\"")),
        "{config_toml}"
    );

    let resumed = trainer(&["--resume", "--epochs", "3", "--out", out.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let stdout = text(&resumed.stdout);
    assert!(
        stdout.contains("epoch 3/3") && !stdout.contains("epoch 2/3"),
        "{stdout}"
    );
    assert!(out.join("checkpoints/epoch-0003.ckpt").is_file());
    let metrics = Metrics::read(&out);
    assert_eq!(metrics.column("epoch"), [1.0, 2.0, 3.0]);
    for loss in metrics.column("loss") {
        assert!(loss > 0.0 && loss < 10.0, "loss {loss}");
    }
    for knn in metrics.column("knn_top1") {
        assert!((0.0..=1.0).contains(&knn), "kNN {knn}");
    }
    for rate in metrics.column("pairs_per_s") {
        assert!(rate > 0.0, "pairs/s {rate}");
    }
    tensorboard_events_hold_the_metrics(&out, &metrics);
    let svg = std::fs::read_to_string(out.join("metrics.svg")).unwrap();
    assert!(
        svg.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="360""#),
        "{svg}"
    );
    // Both panels (loss, kNN) hold one point per epoch, the resumed run's earlier ones too.
    assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
    assert_eq!(svg.matches("<circle").count(), 2 * 3, "{svg}");

    let evaluate = |train_images: &str, probe: &[&str]| {
        let args = [
            &[
                "eval",
                "--checkpoint",
                out.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--limit-train",
                train_images,
                "--limit-test",
                "200",
                "--k",
                "20",
            ][..],
            probe,
        ]
        .concat();
        let eval = trainer(&args);
        assert!(eval.status.success(), "{}", text(&eval.stderr));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("checkpoints/eval.json")).unwrap())
                .unwrap();
        (text(&eval.stdout), report)
    };
    let (table, report) = evaluate("500", &["--probe-epochs", "5"]);
    assert!(
        table.contains("kNN top-1 (k=20") && table.contains("k-means NMI"),
        "{table}"
    );
    assert_eq!(report["train_images"], 500);
    assert_eq!(report["test_images"], 200);
    for key in ["knn_top1", "linear_probe_top1", "kmeans_nmi", "kmeans_ari"] {
        let v = report[key].as_f64().unwrap_or(f64::NAN);
        assert!((-1.0..=1.0).contains(&v), "{key} = {v}");
    }
    // Ten classes: a trained or even random encoder beats the 10 % of guessing on kNN.
    assert!(report["knn_top1"].as_f64().unwrap() > 0.12, "{report}");
    assert_eq!(report["linear_probe_protocol"], "fast");

    // The published protocol (SGD on crop + flip views), labelled as such.
    let (table, report) = evaluate("256", &["--protocol", "standard", "--probe-epochs", "2"]);
    assert!(
        table.contains("linear probe top-1 (standard protocol, 2 epochs)"),
        "{table}"
    );
    assert_eq!(report["linear_probe_protocol"], "standard");
    assert_eq!(report["linear_probe_epochs"], 2);
    let top1 = report["linear_probe_top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1), "{report}");

    let onnx = dir.path().join("encoder.onnx");
    let export = trainer(&[
        "export",
        "--checkpoint",
        out.to_str().unwrap(),
        "--out",
        onnx.to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert!(
        text(&export.stdout).contains("opset 17"),
        "{}",
        text(&export.stdout)
    );
    let model = onnx::read_model(&onnx).unwrap();
    assert_eq!(model.graph.unwrap().output[0].name, "embedding");

    let npy = dir.path().join("emb.npy");
    let embed = trainer(&[
        "embed",
        "--checkpoint",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--split",
        "test",
        "--limit",
        "10",
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert!(embed.status.success(), "{}", text(&embed.stderr));
    let bytes = std::fs::read(&npy).unwrap();
    let header = String::from_utf8_lossy(&bytes[10..128]);
    assert!(header.contains("'shape': (10, 64)"), "{header}");
    assert_eq!(bytes.len(), 128 + 10 * 64 * 4);
}

#[test]
fn export_of_a_bad_checkpoint_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("epoch-0001.ckpt");
    std::fs::write(&ckpt, b"SELFSUP-CKPT\n\x05").unwrap();
    let onnx = dir.path().join("encoder.onnx");
    let out = trainer(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        onnx.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("epoch-0001.ckpt") && err.contains("truncated"),
        "{err}"
    );
    assert!(!onnx.exists(), "no partial .onnx is left behind");
    let missing = trainer(&["export", "--checkpoint", "/nonexistent.ckpt"]);
    assert!(
        text(&missing.stderr).contains("/nonexistent.ckpt"),
        "{}",
        text(&missing.stderr)
    );
    // The viewer folder is checked before anything is read or written.
    let viewer = dir.path().join("no-such-dir/assets");
    let out = trainer(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--viewer",
        viewer.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no-such-dir") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("no-such-dir").exists());
    // --samples only means something for the viewer.
    let out = trainer(&["export", "--checkpoint", "x", "--samples", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--viewer"),
        "{}",
        text(&out.stderr)
    );
}

/// What the trainer says it is matches what it does: all five methods, not "SimCLR
/// pretraining" (its description once said only that).
#[test]
fn descriptions_name_every_method() {
    let out = trainer(&["--help"]);
    let help = text(&out.stdout);
    for method in ["SimCLR", "BYOL", "MoCo v2", "VICReg", "Barlow Twins"] {
        assert!(
            env!("CARGO_PKG_DESCRIPTION").contains(method),
            "trainer/Cargo.toml's description lacks {method}"
        );
        assert!(help.contains(method), "--help lacks {method}");
    }
    // The docs once said synchronised BatchNorm was not used, beside the section that uses it.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/training.md"))
        .unwrap();
    assert!(!docs.contains("BatchNorm over GPUs are not used"));
    assert!(docs.contains("BatchNorm is synchronised"));
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
        "--init-weights",
        "--lr",
        "--weight-decay",
        "--warmup-epochs",
        "--temperature",
        "--width",
        "--image-size",
        "--knn-every",
        "--keep-last",
        "--log-every",
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
        "device = \"auto\"",
        "log_every = 10",
    ] {
        assert!(toml.contains(line), "{line} missing from\n{toml}");
    }
    // From LARS to SGD, BYOL keeps its own learning rate (1.0 per 256) and weight decay.
    let out = trainer(&["--print-config", "--method", "byol", "--optimizer", "sgd"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: toml::Value = toml::from_str(&text(&out.stdout)).unwrap();
    let optim = &config["optim"];
    assert_eq!(optim["optimizer"].as_str(), Some("sgd"));
    assert_eq!(optim["lr"].as_float(), Some(1.0));
    assert_eq!(optim["weight_decay"].as_float(), Some(1e-5));
    assert_eq!(optim["scale_lr_by_batch"].as_bool(), Some(true));
    // Winograd is on by default; --no-winograd turns it off in the config the run saves.
    assert_eq!(config["winograd"].as_bool(), Some(true));
    let out = trainer(&["--print-config", "--no-winograd"]);
    let config: toml::Value = toml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(config["winograd"].as_bool(), Some(false));

    // The flags people change most override the preset, and show in the config.
    let out = trainer(&[
        "--print-config",
        "--method",
        "mocov2",
        "--lr",
        "0.05",
        "--weight-decay",
        "0.001",
        "--warmup-epochs",
        "2",
        "--temperature",
        "0.3",
        "--width",
        "16",
        "--knn-every",
        "5",
        "--log-every",
        "7",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: toml::Value = toml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(config["optim"]["lr"].as_float(), Some(0.05));
    assert_eq!(config["optim"]["weight_decay"].as_float(), Some(0.001));
    assert_eq!(config["optim"]["warmup_epochs"].as_float(), Some(2.0));
    assert_eq!(config["method"]["temperature"].as_float(), Some(0.3));
    assert_eq!(config["model"]["width"].as_integer(), Some(16));
    assert_eq!(config["knn"]["every"].as_integer(), Some(5));
    assert_eq!(config["log_every"].as_integer(), Some(7));
    // A method without a temperature says so instead of ignoring the flag.
    let out = trainer(&["--print-config", "--method", "byol", "--temperature", "0.3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("byol has no temperature"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn resume_keeps_the_schedule_horizon_and_refuses_flags_that_change_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let saved = trainer(&["--print-config", "--method", "byol", "--epochs", "2"]);
    std::fs::write(out.join("config.toml"), &saved.stdout).unwrap();
    let out = out.to_str().unwrap();
    let resumed = |extra: &[&str]| {
        let run = trainer(&[&["--resume", "--out", out, "--print-config"], extra].concat());
        let config: Option<toml::Value> = toml::from_str(&text(&run.stdout)).ok();
        (run, config)
    };

    // A new --epochs keeps the cosine and BYOL's momentum over the original 2 epochs.
    let (run, config) = resumed(&["--epochs", "5"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let config = config.unwrap();
    assert_eq!(config["epochs"].as_integer(), Some(5));
    assert_eq!(config["schedule_epochs"].as_integer(), Some(2));
    assert!(text(&run.stderr).contains("--extend-schedule"));
    // ... unless asked to stretch them.
    let (run, config) = resumed(&["--epochs", "5", "--extend-schedule"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(config.unwrap()["schedule_epochs"].as_integer(), Some(5));

    // Any flag that changes what is trained is refused, naming the key, flag, old and new
    // value (the guard once compared only batch size, data and image size).
    for (flag, value, key, old) in [
        ("--batch-size", "64", "batch_size", "256"),
        ("--data", "/elsewhere", "data", "\"\""),
        ("--lr", "0.5", "optim.lr", "1.0"),
        ("--weight-decay", "0.1", "optim.weight_decay", "0.00001"),
        ("--warmup-epochs", "3", "optim.warmup_epochs", "10.0"),
        ("--steps-per-epoch", "7", "steps_per_epoch", "0"),
        ("--seed", "5", "seed", "42"),
        ("--precision", "bf16", "precision", "\"f32\""),
    ] {
        let (run, _) = resumed(&[flag, value]);
        assert_eq!(run.status.code(), Some(1), "{flag}");
        let err = text(&run.stderr);
        let line = format!("{key} ({flag}): {old} -> ");
        assert!(
            err.contains(&line) && err.contains("another --out"),
            "{line:?} in {err}"
        );
    }
    // Two at once: each is named.
    let (run, _) = resumed(&["--lr", "0.5", "--width", "8"]);
    let err = text(&run.stderr);
    assert!(
        err.contains("optim.lr (--lr)") && err.contains("model.width (--width): 64 -> 8"),
        "{err}"
    );
    // What a resumed run may change.
    for extra in [
        &["--knn-every", "3"][..],
        &["--log-every", "5"],
        &["--keep-last", "2"],
        &["--keep-every", "10"],
        &["--device", "cpu"],
        &["--no-winograd"],
    ] {
        let (run, _) = resumed(extra);
        assert!(run.status.success(), "{extra:?}: {}", text(&run.stderr));
    }
    // --config FILE on resume is checked as well: the run's own recipe passes, a changed key is
    // refused, whatever the file leaves to the data ("auto") is the run's.
    let same = dir.path().join("same.toml");
    std::fs::write(&same, &saved.stdout).unwrap();
    let (run, _) = resumed(&["--config", same.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let changed = dir.path().join("changed.toml");
    std::fs::write(
        &changed,
        text(&saved.stdout).replacen("lr = 1.0\n", "lr = 0.25\n", 1),
    )
    .unwrap();
    let (run, _) = resumed(&["--config", changed.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1));
    let err = text(&run.stderr);
    assert!(err.contains("optim.lr (--lr): 1.0 -> 0.25"), "{err}");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run() {
    use std::io::{BufRead, BufReader};
    let data = cifar10_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(
        &config,
        "[model]\nwidth = 4\n\n[knn]\nbank_size = 100\nquery_size = 50\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--batch-size",
        "16",
        "--steps-per-epoch",
        "300",
        "--epochs",
        "1",
        "--log-every",
        "1",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has started and logged a few steps (each step appends an event to
    // the TensorBoard file), then press Ctrl-C: mid-epoch, however fast the machine.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("TensorBoard:") {
        line.clear();
    }
    let events_size = || -> u64 {
        std::fs::read_dir(out.join("tb"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let started = events_size();
    let waited = std::time::Instant::now();
    while events_size() < started + 500 {
        assert!(
            waited.elapsed().as_secs() < 120,
            "no training steps logged in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted: saved"), "{rest}");
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    assert!(latest.trim().starts_with("epoch-0001-step-"), "{latest}");
    assert!(out.join("checkpoints").join(latest.trim()).is_file());

    // Resume, as it was (a new --steps-per-epoch would be refused: it moves the schedule): the
    // run continues from the saved step and completes epoch 1.
    let step: usize = latest.trim()["epoch-0001-step-".len()..]
        .trim_end_matches(".ckpt")
        .parse()
        .unwrap();
    assert!(step < 300, "saved at step {step}");
    let resumed = trainer(&["--resume", "--out", out.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(
        text(&resumed.stderr).contains("resuming from"),
        "{}",
        text(&resumed.stderr)
    );
    assert!(
        text(&resumed.stdout).contains("epoch 1/1: loss"),
        "{}",
        text(&resumed.stdout)
    );
    assert!(out.join("checkpoints/epoch-0001.ckpt").is_file());
}

#[test]
fn init_weights_load_by_name_and_misfits_are_named() {
    use trainer::named_params::read_safetensors;
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/golden_simclr.safetensors"
    );
    let data = cifar10_bin();
    let dir = tempfile::tempdir().unwrap();
    // The golden fixture's initial weights (PyTorch's initialisation of a width-4 network),
    // under their module paths.
    let (tensors, _) = read_safetensors(std::path::Path::new(fixture)).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .filter_map(|(name, (shape, values))| {
            let name = name.strip_prefix("init.")?.to_string();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Some((name, shape.clone(), bytes))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    let weights = dir.path().join("init.safetensors");
    safetensors::serialize_to_file(views, None, &weights).unwrap();
    let config = dir.path().join("width4.toml");
    std::fs::write(
        &config,
        "[model]\nwidth = 4\n[model.head]\nhidden = 32\nout = 16\n\n[knn]\nbank_size = 200\nquery_size = 100\n",
    )
    .unwrap();
    let run = |weights: &std::path::Path, out: &str| {
        trainer(&[
            "--data",
            data.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--init-weights",
            weights.to_str().unwrap(),
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "16",
            "--out",
            dir.path().join(out).to_str().unwrap(),
        ])
    };
    let ok = run(&weights, "ok");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stderr).contains("initial weights:"));

    // The fixture itself: every name carries a prefix, so nothing fits.
    let misfit = run(std::path::Path::new(fixture), "misfit");
    assert_eq!(misfit.status.code(), Some(1));
    let err = text(&misfit.stderr);
    assert!(
        err.contains("golden_simclr.safetensors does not fit the configured model")
            && err.contains("encoder.stem_conv.weight: missing")
            && err.contains("init.head.fc1.bias: not a tensor of this model"),
        "{err}"
    );

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &std::fs::read(&weights).unwrap()[..1000]).unwrap();
    let broken = run(&truncated, "broken");
    assert_eq!(broken.status.code(), Some(1));
    let err = text(&broken.stderr);
    assert!(
        err.contains("truncated.safetensors is not a readable safetensors file"),
        "{err}"
    );
}

/// Reads every event file under `run/tb` with TensorBoard's own reader (Python's `tensorboard`
/// package, as `tensorboard --logdir` does) and checks it against `metrics.csv`: the epoch
/// scalars equal the CSV's values, and the per-step scalars come every `--log-every 3` steps.
fn tensorboard_events_hold_the_metrics(run: &std::path::Path, metrics: &Metrics) {
    let script = r#"
import glob, sys
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
files = sorted(glob.glob(sys.argv[1] + "/tb/*tfevents*"))
print("files", len(files))
for f in files:
    for event in EventFileLoader(f).Load():
        if event.HasField("file_version"):
            print("version", event.file_version)
        for value in event.summary.value:
            # The loader hands scalars over as TensorBoard's scalar plugin stores them.
            number = value.tensor.float_val[0] if value.HasField("tensor") else value.simple_value
            print("scalar", value.tag, event.step, repr(number))
"#;
    let out = Command::new("python3")
        .args(["-I", "-c", script, run.to_str().unwrap()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "TensorBoard's reader failed (pip install tensorboard): {}",
        text(&out.stderr)
    );
    let listing = text(&out.stdout);
    // The first run and the resumed one each wrote their own file.
    assert!(listing.starts_with("files 2\n"), "{listing}");
    assert_eq!(
        listing.matches("version brain.Event:2").count(),
        2,
        "{listing}"
    );
    let scalars: Vec<(String, u64, f64)> = listing
        .lines()
        .filter_map(|line| line.strip_prefix("scalar "))
        .map(|line| {
            let [tag, step, value] = line.split(' ').collect::<Vec<_>>()[..] else {
                panic!("{line}")
            };
            (
                tag.to_string(),
                step.parse().unwrap(),
                value.parse().unwrap(),
            )
        })
        .collect();
    let series = |tag: &str| -> Vec<(u64, f64)> {
        scalars
            .iter()
            .filter(|(t, _, _)| t == tag)
            .map(|&(_, step, value)| (step, value))
            .collect()
    };
    for (tag, column) in [
        ("epoch/loss", "loss"),
        ("epoch/z_std", "z_std"),
        ("epoch/knn_top1", "knn_top1"),
    ] {
        let logged = series(tag);
        let csv = metrics.column(column);
        assert_eq!(logged.len(), csv.len(), "{tag}: {logged:?} vs {csv:?}");
        for (i, ((step, value), expected)) in logged.iter().zip(&csv).enumerate() {
            assert_eq!(*step, i as u64 + 1, "{tag}");
            // f32 in the event file, 4 to 6 decimals in the CSV.
            assert!(
                (value - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                "{tag} epoch {step}: {value} in TensorBoard, {expected} in metrics.csv"
            );
        }
    }
    // 4 steps per epoch, 3 epochs: steps 3, 6, 9 and 12.
    for tag in [
        "train/loss",
        "train/lr",
        "train/z_std",
        "train/grad_norm",
        "train/pairs_per_s",
    ] {
        let steps: Vec<u64> = series(tag).iter().map(|&(step, _)| step).collect();
        assert_eq!(steps, [3, 6, 9, 12], "{tag}");
    }
    for (_, loss) in series("train/loss") {
        assert!(loss > 0.0 && loss < 10.0, "step loss {loss}");
    }
    for (_, lr) in series("train/lr") {
        assert!(
            (lr - 3e-4).abs() < 1e-9,
            "SimCLR's constant Adam learning rate, got {lr}"
        );
    }
}

/// `bench --nccl` (the NCCL check a lent GPU runs) names the build it needs when this binary
/// has no CUDA, and writes no report.
#[cfg(not(feature = "cuda"))]
#[test]
fn the_nccl_check_says_it_needs_a_cuda_build() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("nccl.json");
    let out = trainer(&["bench", "--nccl", "--out", report.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("bench --nccl needs a binary built with `--features cuda`"),
        "{err}"
    );
    assert!(!report.exists());
}

/// A torchrun-style launch (its variables set, no MPI) on a device other than CUDA stops at once
/// with the MPI launch to use, instead of training WORLD_SIZE unrelated copies.
#[test]
fn a_torchrun_style_launch_off_cuda_names_the_mpirun_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let run = e2e::trainer_command(env!("CARGO_BIN_EXE_trainer"))
        .args(["--device", "cpu", "--data"])
        .arg(cifar10_bin())
        .arg("--out")
        .arg(&out)
        .envs([
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = text(&run.stderr);
    assert!(
        err.contains("a torchrun-style launch") && err.contains("`mpirun -np 2`"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written");
}

/// The trainer, run as `launcher` runs it (`taskset -c 0`, or one rayon thread), trains and
/// monitors to the end on one core. The loader's and the kNN monitor's parallel work once waited
/// forever for the main thread, which waited for them: every step hung, as it did under a
/// 1-CPU container and mpirun's default one-core binding.
#[test]
fn one_core_trains_to_the_end() {
    let data = cifar10_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(
        &config,
        "[model]\nwidth = 4\n\n[knn]\nbank_size = 64\nquery_size = 32\n",
    )
    .unwrap();
    for (name, launcher, threads) in [
        ("taskset", vec!["taskset", "-c", "0"], None),
        ("one-thread", vec![], Some("1")),
    ] {
        let out = dir.path().join(name);
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_trainer"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_trainer")),
        };
        if let Some(threads) = threads {
            command.env("RAYON_NUM_THREADS", threads);
        }
        command.args([
            "--data",
            data.to_str().unwrap(),
            "--batch-size",
            "8",
            "--steps-per-epoch",
            "2",
            "--epochs",
            "2",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let output = common::output_within(command, std::time::Duration::from_secs(300))
            .unwrap_or_else(|partial| panic!("{name}: no end after 300 s (hung?)\n{partial}"));
        assert!(output.status.success(), "{name}: {}", text(&output.stderr));
        let metrics = Metrics::read(&out);
        assert_eq!(metrics.column("epoch"), [1.0, 2.0], "{name}");
        assert!(
            metrics.column("knn_top1").iter().all(|a| a.is_finite()),
            "{name}"
        );
        assert!(out.join("checkpoints/epoch-0002.ckpt").is_file(), "{name}");
    }
}

/// solo-learn's published CIFAR-10 linear top-1 (its README's CIFAR-10 table, 1000 epochs) for
/// the methods of `--method`, quoted in docs/training.md's table and as a range in the README.
/// The table once gave MoCo V2+ NNCLR's 91.88.
#[test]
fn published_figures_are_quoted_as_solo_learn_publishes_them() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let training = std::fs::read_to_string(root.join("docs/training.md")).unwrap();
    let published = [
        ("simclr", "90.74"),
        ("byol", "92.58"),
        ("mocov2", "92.94"),
        ("vicreg", "92.07"),
        ("barlow", "92.10"),
        ("dino", "89.52"),
        ("simsiam", "90.51"),
        ("mocov3", "93.10"),
        ("swav", "89.17"),
    ];
    for (method, figure) in published {
        let row = training
            .lines()
            .find(|l| l.starts_with(&format!("| `{method}`")))
            .unwrap_or_else(|| panic!("docs/training.md has no row for {method}"));
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
        assert!(
            last.starts_with(figure),
            "{method}: {last:?}, published {figure}"
        );
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains("solo-learn publishes 89.2-93.1 % linear top-1"),
        "the README's range is min-max of {published:?}"
    );
}
