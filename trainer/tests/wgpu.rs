//! The GPU code path, executed: `--device wgpu` on a real Vulkan device. CI runs these on Mesa's
//! lavapipe (Vulkan on the CPU, installed by `.ci/run`), so the cubecl kernels, Burn's own
//! convolution and composed BatchNorm (the `NetworkOps` defaults), fusion, autodiff on a GPU
//! backend and the host <-> device transfers all run on every CI run. CUDA shares that code.
//!
//! Built only with `--features wgpu` (`.ci/run` turns it on).
#![cfg(feature = "wgpu")]

use burn::backend::Autodiff;
mod common;

use common::Metrics;
use e2e::{cifar10_bin, max_abs_diff, onnxruntime_run, trainer_command};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use trainer::backend::CpuBackend;
use trainer::checkpoint::Checkpoint;
use trainer::named_params::named_tensors;

fn trainer(args: &[&str]) -> Output {
    trainer_with_env(args, &[])
}

fn trainer_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    trainer_command(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the trainer binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stderr)
}

/// A narrow network and a small kNN monitor: lavapipe runs a GPU's kernels on two CPU cores.
const SMALL: &str = "[model]\nwidth = 4\n[model.head]\nhidden = 32\nout = 16\n\n\
                     [knn]\nbank_size = 200\nquery_size = 100\n";

/// `trainer` training arguments for a short real run into `out` on `device`.
fn train_args<'a>(data: &'a str, config: &'a str, out: &'a str, device: &'a str) -> Vec<&'a str> {
    vec![
        "--data",
        data,
        "--config",
        config,
        "--batch-size",
        "16",
        "--steps-per-epoch",
        "3",
        "--out",
        out,
        "--device",
        device,
    ]
}

/// Every parameter and running statistic of a checkpoint, by name.
fn weights(checkpoint: &Path) -> Vec<(String, Vec<f32>)> {
    let ckpt = Checkpoint::read(checkpoint).unwrap();
    let model = ckpt
        .model::<Autodiff<CpuBackend>>(&Default::default())
        .unwrap();
    named_tensors::<Autodiff<CpuBackend>, _>(&model)
        .into_iter()
        .map(|t| (t.name, t.values))
        .collect()
}

/// How far the change `after - before` in `ours` is from the one in `reference`: what an epoch of
/// Adam did to the parameters, on two backends. Returns the relative L2 error over all tensors
/// together, and the worst tensor with its own relative L2 error.
fn update_errors(
    before: &[(String, Vec<f32>)],
    ours: &[(String, Vec<f32>)],
    reference: &[(String, Vec<f32>)],
) -> (f64, (String, f64)) {
    let mut worst = (String::new(), 0.0);
    let (mut total_diff, mut total_norm) = (0.0f64, 0.0f64);
    for ((name, b), ((_, o), (_, r))) in before.iter().zip(ours.iter().zip(reference)) {
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for ((b, o), r) in b.iter().zip(o).zip(r) {
            let (du, dr) = ((o - b) as f64, (r - b) as f64);
            diff += (du - dr).powi(2);
            norm += dr.powi(2);
        }
        total_diff += diff;
        total_norm += norm;
        let error = if norm == 0.0 {
            diff.sqrt()
        } else {
            (diff / norm).sqrt()
        };
        if error > worst.1 {
            worst = (name.clone(), error);
        }
    }
    ((total_diff / total_norm).sqrt(), worst)
}

fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("checkpoints")).unwrap();
    for file in ["config.toml", "metrics.csv"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    for entry in std::fs::read_dir(from.join("checkpoints")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("checkpoints").join(entry.file_name())).unwrap();
    }
}

/// Two epochs on `device` into `out`, then the third epoch resumed on the other backend and,
/// from a copy, on the same one. Returns the runs (other, same).
fn train_then_resume_on_both(
    data: &str,
    config: &str,
    out: &Path,
    device: &str,
) -> (PathBuf, PathBuf) {
    let first = trainer(
        &[
            &train_args(data, config, out.to_str().unwrap(), device)[..],
            &["--epochs", "2"],
        ]
        .concat(),
    );
    let stderr = succeeded(&first);
    let expected = if device == "wgpu" {
        "device: wgpu ("
    } else {
        "device: cpu"
    };
    assert!(stderr.contains(expected), "{stderr}");
    let other = if device == "wgpu" { "cpu" } else { "wgpu" };
    let same_run = out.with_extension("same");
    copy_run(out, &same_run);
    for (run, resume_on) in [(out, other), (&same_run, device)] {
        let resumed = trainer(&[
            "--resume",
            "--epochs",
            "3",
            "--out",
            run.to_str().unwrap(),
            "--device",
            resume_on,
        ]);
        let stderr = succeeded(&resumed);
        assert!(stderr.contains("resuming from"), "{stderr}");
        assert!(
            text(&resumed.stdout).contains("epoch 3/3")
                && !text(&resumed.stdout).contains("epoch 2/3"),
            "{}",
            text(&resumed.stdout)
        );
    }
    (out.to_path_buf(), same_run)
}

/// A short real run on wgpu writes checkpoints and metrics; its checkpoint resumes on the CPU,
/// and a CPU checkpoint resumes on wgpu. The resumed epoch must do what it does on the backend
/// that wrote the checkpoint: same loss and the same parameter updates, within float32
/// reduction-order noise (a lost Adam state, step count or RNG position changes them by far more).
#[test]
fn wgpu_trains_and_checkpoints_resume_across_backends() {
    let data = cifar10_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, SMALL).unwrap();
    let (data, config) = (data.to_str().unwrap(), config.to_str().unwrap());

    for device in ["wgpu", "cpu"] {
        let run = dir.path().join(format!("from-{device}"));
        let (crossed, same) = train_then_resume_on_both(data, config, &run, device);
        for file in ["epoch-0001.ckpt", "epoch-0002.ckpt", "epoch-0003.ckpt"] {
            assert!(crossed.join("checkpoints").join(file).is_file(), "{file}");
        }
        let (crossed_rows, same_rows) = (Metrics::read(&crossed), Metrics::read(&same));
        assert_eq!(crossed_rows.rows.len(), 3);
        let losses = crossed_rows.column("loss");
        for &loss in &losses {
            assert!(loss > 1.0 && loss < 10.0, "loss {loss}");
        }
        for knn in crossed_rows.column("knn_top1") {
            assert!((0.0..=1.0).contains(&knn), "kNN {knn}");
        }
        // Epochs 1-2 are the same file; epoch 3 ran on the two backends.
        assert_eq!(crossed_rows.rows[..2], same_rows.rows[..2]);
        let (loss_crossed, loss_same) = (losses[2], same_rows.column("loss")[2]);
        assert!(
            (loss_crossed - loss_same).abs() / loss_same < 1e-3,
            "from {device}: epoch 3 loss {loss_crossed} resumed on the other backend, \
             {loss_same} on the same"
        );
        let before = weights(&crossed.join("checkpoints/epoch-0002.ckpt"));
        let (all, (name, error)) = update_errors(
            &before,
            &weights(&crossed.join("checkpoints/epoch-0003.ckpt")),
            &weights(&same.join("checkpoints/epoch-0003.ckpt")),
        );
        eprintln!(
            "from {device}: epoch 3 updates differ by {all:.2e} (relative L2, all tensors), \
             worst tensor {error:.2e} ({name})"
        );
        // Float32 noise (kernels that sum in another order) is amplified by Adam on tensors whose
        // gradient is small: one 8-value BatchNorm beta measured 1.4e-2 on one clean-machine run
        // (5e-5 on others). A resume that loses Adam's moments, its step count, the RNG position
        // or a running statistic moves the whole update, or that tensor's, by tens of percent.
        assert!(
            all < 1e-3,
            "from {device}: epoch 3's update differs by {all:.2e} between backends"
        );
        assert!(
            error < 0.1,
            "from {device}: epoch 3's update of {name} differs by {error:.2e} between backends"
        );
    }
}

/// Embeddings (the features `eval` and `embed` compute) of the first `limit` test images.
fn embed(run: &Path, data: &str, device: &str, limit: usize, out: &Path) -> Vec<f32> {
    let limit = limit.to_string();
    succeeded(&trainer(&[
        "embed",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        data,
        "--limit",
        &limit,
        "--device",
        device,
        "--out",
        out.to_str().unwrap(),
    ]));
    common::read_npy(out)
}

/// A checkpoint trained on wgpu: its features on wgpu equal the CPU's, its ONNX export computes
/// them in ONNX Runtime, and `eval` on wgpu reports what `eval` on the CPU reports.
#[test]
fn wgpu_features_export_and_eval_agree_with_the_cpu() {
    let data = cifar10_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, SMALL).unwrap();
    let data = data.to_str().unwrap();
    let run = dir.path().join("run");
    succeeded(&trainer(
        &[
            &train_args(
                data,
                config.to_str().unwrap(),
                run.to_str().unwrap(),
                "wgpu",
            )[..],
            &["--epochs", "1"],
        ]
        .concat(),
    ));

    let n = 64;
    let gpu = embed(&run, data, "wgpu", n, &dir.path().join("gpu.npy"));
    let cpu = embed(&run, data, "cpu", n, &dir.path().join("cpu.npy"));
    assert_eq!(gpu.len(), n * 32);
    let scale = cpu.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "embeddings are all zero");
    let diff = max_abs_diff(&gpu, &cpu);
    eprintln!("embeddings, wgpu vs cpu: max difference {diff:.2e} (largest value {scale:.2})");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "wgpu vs cpu embeddings: {diff}"
    );

    let onnx = dir.path().join("encoder.onnx");
    succeeded(&trainer(&[
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        onnx.to_str().unwrap(),
    ]));
    let splits = trainer::data::load(data).unwrap();
    let pixels: Vec<f32> = (0..n)
        .flat_map(|i| splits.test.image(i).iter().map(|&b| b as f32 / 255.0))
        .collect();
    let (shape, ort) = onnxruntime_run(
        &onnx,
        trainer::jobs::export::INPUT,
        pixels,
        n,
        trainer::jobs::export::OUTPUT,
    );
    assert_eq!(shape, [n as i64, 32]);
    let diff = max_abs_diff(&ort, &gpu);
    eprintln!("embeddings, ONNX Runtime vs wgpu: max difference {diff:.2e}");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "ONNX Runtime vs wgpu embeddings: {diff}"
    );

    let eval = |device: &str| {
        let stdout = text(
            &trainer(&[
                "eval",
                "--checkpoint",
                run.to_str().unwrap(),
                "--data",
                data,
                "--limit-train",
                "500",
                "--limit-test",
                "200",
                "--probe-epochs",
                "2",
                "--device",
                device,
            ])
            .stdout,
        );
        let line = stdout
            .lines()
            .find(|l| l.contains("kNN"))
            .unwrap_or_else(|| panic!("no kNN line in eval's output:\n{stdout}"))
            .to_string();
        line
    };
    let (gpu_knn, cpu_knn) = (eval("wgpu"), eval("cpu"));
    assert_eq!(gpu_knn, cpu_knn, "eval's kNN on wgpu and on the CPU");
}

/// Without a Vulkan driver, `--device wgpu` stops at once with what to install: no panic trace,
/// no hang, for every command that takes `--device`.
#[test]
fn wgpu_without_a_driver_is_a_clear_error() {
    let data = cifar10_bin();
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let commands: [&[&str]; 3] = [
        &[
            "--data", data, "--epochs", "1", "--out", out, "--device", "wgpu",
        ],
        &[
            "bench",
            "--device",
            "wgpu",
            "--no-torch",
            "--no-onnx",
            "--steps",
            "1",
        ],
        &[
            "eval",
            "--checkpoint",
            out,
            "--data",
            data,
            "--device",
            "wgpu",
        ],
    ];
    for args in commands {
        let started = Instant::now();
        let output = trainer_with_env(args, &[("VK_ICD_FILENAMES", "/nonexistent")]);
        let took = started.elapsed();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no GPU adapter for wgpu")
                && stderr.contains("mesa-vulkan-drivers")
                && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
        // A hang guard, not a speed test: the probe fails in well under a second here.
        assert!(took < Duration::from_secs(60), "{args:?} took {took:?}");
    }
}

/// `trainer bench --device wgpu` measures the step on the GPU and says which adapter.
#[test]
fn bench_runs_on_wgpu() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("bench.json");
    let stderr = succeeded(&trainer(&[
        "bench",
        "--device",
        "wgpu",
        "--width",
        "4",
        "--batch-size",
        "8",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--precision",
        "f16",
        "--no-torch",
        "--no-onnx",
        "--out",
        report.to_str().unwrap(),
    ]));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(
        json["device"].as_str().unwrap().starts_with("wgpu ("),
        "{json}\n{stderr}"
    );
    assert_eq!(json["precision"], "f16", "{json}");
    let result = &json["results"][0];
    assert_eq!(result["batch_size"], 8);
    assert!(
        result["train_step_pairs_per_s"].as_f64().unwrap() > 0.0,
        "{json}"
    );
}

/// `--precision f16` on wgpu (lavapipe has shaderFloat16) trains: 2 epochs of 10 steps on real
/// CIFAR-10, the second epoch's mean loss below the first's, the precision in config.toml; on
/// the CPU the flag is refused with the reason.
#[test]
fn f16_trains_on_wgpu_and_is_refused_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    let small = "log_every = 4\n[model]\nwidth = 4\n[model.head]\nhidden = 32\nout = 16\n\
                 [knn]\nevery = 0\n";
    std::fs::write(&config, small).unwrap();
    let data = cifar10_bin();
    let data = data.to_str().unwrap();
    let out = dir.path().join("f16");
    let mut args = train_args(
        data,
        config.to_str().unwrap(),
        out.to_str().unwrap(),
        "wgpu",
    );
    // Batch 32, 10 steps per epoch, lr 2e-3: the same run in f32 on the CPU goes from 4.03 to
    // 3.91 (at the default lr 3e-4 and batch 16 neither precision moves in 24 steps).
    args[5] = "32"; // batch size
    args[7] = "10"; // steps per epoch
    args.extend(["--epochs", "2", "--lr", "2e-3", "--precision", "f16"]);
    succeeded(&trainer(&args));
    let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(saved.contains("precision = \"f16\""), "{saved}");
    let metrics = Metrics::read(&out);
    let loss = metrics.column("loss");
    assert_eq!(loss.len(), 2);
    assert!(
        loss[1] < loss[0] - 0.05,
        "f16 training did not learn: epoch losses {loss:?}"
    );

    let refused = trainer(&[
        "--data",
        data,
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--precision",
        "f16",
        "--out",
        dir.path().join("cpu").to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("--precision f16: mixed precision is for GPUs"),
        "{stderr}"
    );
}

/// The GPU memory figures a run prints after each epoch ("epoch N: GPU memory: X MiB in use,
/// Y MiB reserved in P pool(s)"): (epoch, reserved MiB, pools).
fn gpu_memory_lines(stderr: &str) -> Vec<(usize, f64, usize)> {
    stderr
        .lines()
        .filter_map(|line| {
            let (epoch, rest) = line.strip_prefix("epoch ")?.split_once(": GPU memory: ")?;
            let (_, reserved) = rest.split_once(" MiB in use, ")?;
            let (reserved, pools) = reserved.split_once(" MiB reserved in ")?;
            let pools = pools.strip_suffix(" pool(s)")?;
            Some((
                epoch.parse().ok()?,
                reserved.parse().ok()?,
                pools.parse().ok()?,
            ))
        })
        .collect()
}

/// 200 steps on wgpu with `--devices 1` (5 epochs of 40, kNN monitor and checkpoint included):
/// the memory CubeCL's pools hold, over all streams, is the same after every epoch from the
/// second on (the first sets up the pools), and so is the number of pools.
#[test]
fn gpu_memory_stays_flat_over_200_training_steps() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, SMALL).unwrap();
    let data = cifar10_bin();
    let out = dir.path().join("run");
    let mut args = train_args(
        data.to_str().unwrap(),
        config.to_str().unwrap(),
        out.to_str().unwrap(),
        "wgpu",
    );
    args[5] = "8"; // batch size: lavapipe is slow, the memory pattern is the same
    args[7] = "40"; // steps per epoch
    args.extend(["--epochs", "5", "--devices", "1"]);
    let stderr = succeeded(&trainer(&args));
    let memory = gpu_memory_lines(&stderr);
    eprintln!("after each epoch (epoch, reserved MiB, pools): {memory:?}");
    assert_eq!(
        memory.iter().map(|m| m.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "{stderr}"
    );
    assert!(memory[0].1 > 0.0 && memory[0].2 > 0, "{memory:?}");
    for &(epoch, reserved, pools) in &memory[2..] {
        assert_eq!(
            (reserved, pools),
            (memory[1].1, memory[1].2),
            "GPU memory grew between epoch 2 and epoch {epoch}: {memory:?}"
        );
    }
}

/// Collective calls run their blocking part (MPI's exchange; burn-collective's on its own
/// threads) on one long-lived thread per rank (`with_deadline`). 200 calls per rank that each
/// make, reduce and read a GPU tensor on that thread, as a gradient exchange does, leave the
/// device's memory and number of pools as they were after the first 20. And the measure sees
/// the leak it guards against: a new thread per call (CubeCL gives each its own stream and
/// pool: burn#4792) adds a pool per thread.
#[test]
fn gpu_memory_stays_flat_over_collective_calls() {
    use burn::backend::Wgpu;
    use burn::tensor::Tensor;
    use std::sync::{Arc, Barrier};
    use trainer::distributed::{collective::with_deadline, Peer};
    use trainer::gpu_memory::GpuMemoryReport;

    trainer::backend::wgpu_adapter().expect("a wgpu adapter (.ci/run installs lavapipe)");
    let device = burn::backend::wgpu::WgpuDevice::default();
    let world = 2;
    let (warm_up, calls) = (20, 200);
    let exchange = |device: &burn::backend::wgpu::WgpuDevice, peer: &Peer| {
        let device = device.clone();
        with_deadline(peer, "a test exchange", move || {
            let gradient = Tensor::<Wgpu, 2>::ones([64, 100], &device);
            Ok(gradient.sum().into_scalar())
        })
    };
    let measured = Arc::new(Barrier::new(world + 1));
    let go_on = Arc::new(Barrier::new(world + 1));
    let ranks: Vec<_> = (0..world)
        .map(|rank| {
            let (measured, go_on, device) = (measured.clone(), go_on.clone(), device.clone());
            std::thread::spawn(move || {
                let peer = Peer {
                    rank: 2000 + rank,
                    world,
                    sync_batchnorm: false,
                    timeout: Duration::from_secs(120),
                };
                for call in 0..calls {
                    if call == warm_up {
                        measured.wait(); // the main thread measures
                        go_on.wait();
                    }
                    assert_eq!(exchange(&device, &peer), 6400.0);
                }
            })
        })
        .collect();
    measured.wait();
    let before = Wgpu::gpu_memory(&device).unwrap();
    go_on.wait();
    ranks.into_iter().for_each(|rank| rank.join().unwrap());
    let after = Wgpu::gpu_memory(&device).unwrap();
    eprintln!(
        "after {warm_up} calls per rank: {}; after {calls}: {}",
        before.describe(),
        after.describe()
    );
    assert!(before.reserved > 0 && before.pools > 0, "{before:?}");
    assert_eq!(
        (after.reserved, after.pools),
        (before.reserved, before.pools),
        "GPU memory grew over {calls} collective calls per rank"
    );

    // The control: the same work on a new thread per call lands in a new pool each time.
    for _ in 0..4 {
        let device = device.clone();
        let sum = std::thread::spawn(move || {
            Tensor::<Wgpu, 2>::ones([64, 100], &device)
                .sum()
                .into_scalar()
        })
        .join()
        .unwrap();
        assert_eq!(sum, 6400.0);
    }
    let leaked = Wgpu::gpu_memory(&device).unwrap();
    eprintln!("after 4 calls on new threads: {}", leaked.describe());
    assert_eq!(leaked.pools, after.pools + 4, "{after:?} -> {leaked:?}");
    assert!(leaked.reserved > after.reserved, "{after:?} -> {leaked:?}");
}
