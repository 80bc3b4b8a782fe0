//! Data-parallel training against one device: two ranks (threads of this process on the CPU
//! backend) over two halves of a batch make the step one device makes over the whole batch,
//! for every method; two trainer processes talking over 127.0.0.1 (2 nodes of 1 device) train
//! as one process does; a killed rank stops the other with an error in bounded time; and
//! `trainer --devices 2` trains and resumes, also on another number of devices.

mod common;

use burn::module::Module;
use burn::optim::{Optimizer, SgdConfig};
use burn_collective::CollectiveConfig;
use common::{small, synthetic, text, trainer, Metrics};
use e2e::{cifar10_bin, relative_l2};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trainer::backend::CpuBackend;
use trainer::checkpoint::{decode_record, encode_record, Checkpoint};
use trainer::config::TrainConfig;
use trainer::data::loader::{make_shard, EpochPlan, Shard};
use trainer::distributed::sync::average_gradients;
use trainer::distributed::{self, Peer};
use trainer::jobs::train::{batch_tensor, loss_and_gradients};
use trainer::methods::momentum::Initialise;
use trainer::methods::{self, MethodKind};
use trainer::model::SslModel;
use trainer::named_params::{gradient_values, named_tensors};

type B = burn::backend::Autodiff<CpuBackend>;

/// Ranks of this process share one burn-collective server: one group of ranks at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// What one rank (or the single device) computed in a step.
#[derive(Debug, Clone)]
struct Step {
    loss: f64,
    /// Gradient of every parameter, by name, averaged over ranks.
    grads: Vec<(String, Vec<f32>)>,
    /// Every trainable parameter after an SGD step (lr 0.1) with those gradients.
    after: Vec<(String, Vec<f32>)>,
}

/// One step of `config`'s method from `model_bytes` / `method_state` on `shard` of batch 0.
fn step(config: &TrainConfig, model_bytes: &[u8], method_state: &[u8], shard: Shard) -> Step {
    let device = Default::default();
    let model: SslModel<B> = config
        .model
        .init::<B>(&device)
        .load_record(decode_record::<B, _>(model_bytes, &device).unwrap());
    let mut method = methods::build(config, &model, &device);
    method.load_state(method_state).unwrap();
    let data = synthetic();
    let plan = EpochPlan::new(data.train.len(), config.batch_size, 0, 11);
    let batch = make_shard(&data.train, &config.augment, &plan, 0, shard);
    let images = batch_tensor::<B>(batch.views, batch.size, &device);
    let out = loss_and_gradients(&model, method.as_mut(), images);
    let grads = average_gradients(&model, out.grads.expect("a finite loss"));
    let named = named_tensors::<B, _>(&model);
    let grad_values = named
        .iter()
        .filter_map(|t| Some((t.name.clone(), gradient_values::<B>(&grads, t)?)))
        .collect();
    let model = SgdConfig::new().init().step(0.1, model, grads);
    let after = named_tensors::<B, _>(&model.clone().no_grad())
        .into_iter()
        .filter(|t| !t.name.contains("running"))
        .map(|t| (t.name, t.values))
        .collect();
    Step {
        loss: out.stats.loss,
        grads: grad_values,
        after,
    }
}

/// `f(rank)` on `world` threads, each a registered rank of one data-parallel group.
fn on_ranks<T: Send + 'static>(
    world: usize,
    sync_batchnorm: bool,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    burn_collective::reset_collective::<CpuBackend>();
    let f = Arc::new(f);
    let threads: Vec<_> = (0..world)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || {
                let peer = Peer {
                    rank,
                    world,
                    sync_batchnorm,
                    timeout: Duration::from_secs(120),
                };
                distributed::set_current(Some(peer));
                let config = CollectiveConfig::default().with_num_devices(world);
                burn_collective::register::<CpuBackend>(peer.id(), Default::default(), config)
                    .unwrap();
                let out = f(rank);
                burn_collective::finish_collective::<CpuBackend>(peer.id()).unwrap();
                out
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The worst difference over all named tensors (names and order must match): the L2 norm of
/// the difference over the tensor's own norm, or over 1e-4 x the norm of all tensors together
/// where the tensor is nearly zero (a Linear's bias before BatchNorm has a gradient of ~0).
fn worst(ours: &[(String, Vec<f32>)], reference: &[(String, Vec<f32>)]) -> (f64, String) {
    assert_eq!(ours.len(), reference.len(), "number of tensors");
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let total = reference
        .iter()
        .map(|(_, b)| norm(b).powi(2))
        .sum::<f64>()
        .sqrt();
    ours.iter()
        .zip(reference)
        .map(|((name, a), (other, b))| {
            assert_eq!(name, other);
            let scale = norm(b).max(1e-4 * total);
            (relative_l2(a, b) * norm(b).max(1e-30) / scale, name.clone())
        })
        .fold((0.0, String::new()), |w, x| if x.0 > w.0 { x } else { w })
}

/// A fresh model and method state of `config` (what every rank and the single device start
/// from).
fn start(config: &TrainConfig) -> (Vec<u8>, Vec<u8>) {
    let device = Default::default();
    // A fixed draw: with some random weights this small network's step is ill-conditioned in
    // f32 (see docs/distributed.md).
    <B as burn::tensor::backend::Backend>::seed(&device, 3);
    let model = config.model.init::<B>(&device);
    model.visit(&mut Initialise);
    let method = methods::build(config, &model, &device);
    (
        encode_record::<B, _>(model.into_record()).unwrap(),
        method.save_state().unwrap(),
    )
}

#[test]
fn two_ranks_over_half_batches_make_the_one_device_step_for_every_method() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for kind in MethodKind::ALL {
        let config = small(kind, 1);
        let (model, state) = start(&config);
        let one = step(&config, &model, &state, Shard::WHOLE);
        let (c, m, s) = (config.clone(), model.clone(), state.clone());
        let ranks = on_ranks(2, true, move |rank| {
            step(&c, &m, &s, Shard { rank, world: 2 })
        });
        // Every rank computes the loss of the global batch and applies the same update.
        assert_eq!(ranks[0].loss, ranks[1].loss, "{kind}: loss per rank");
        assert_eq!(ranks[0].grads, ranks[1].grads, "{kind}: gradients per rank");
        assert_eq!(
            ranks[0].after, ranks[1].after,
            "{kind}: parameters per rank"
        );
        let loss_error = (ranks[0].loss - one.loss).abs() / one.loss.abs();
        let (grad_error, name) = worst(&ranks[0].grads, &one.grads);
        let (param_error, _) = worst(&ranks[0].after, &one.after);
        println!(
            "{kind}: loss {:.6} (one device {:.6}, rel. {loss_error:.1e}); gradients worst rel. \
             L2 {grad_error:.1e} ({name}); parameters after SGD {param_error:.1e}",
            ranks[0].loss, one.loss
        );
        assert!(
            loss_error < 1e-5,
            "{kind}: loss {} vs {}",
            ranks[0].loss,
            one.loss
        );
        assert!(
            grad_error < 1e-3,
            "{kind}: gradient of {name} differs by {grad_error}"
        );
        assert!(
            param_error < 1e-4,
            "{kind}: parameters differ by {param_error}"
        );
    }
}

#[test]
fn without_synchronised_batchnorm_each_rank_normalises_its_own_share() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = small(MethodKind::Simclr, 1);
    let (model, state) = start(&config);
    let one = step(&config, &model, &state, Shard::WHOLE);
    let (c, m, s) = (config.clone(), model.clone(), state.clone());
    let ranks = on_ranks(2, false, move |rank| {
        step(&c, &m, &s, Shard { rank, world: 2 })
    });
    // Still one update on every rank, but of another loss: BatchNorm over 4 images, not 8.
    assert_eq!(ranks[0].after, ranks[1].after);
    let loss_error = (ranks[0].loss - one.loss).abs() / one.loss.abs();
    assert!(
        loss_error > 1e-4,
        "per-device BatchNorm should change the loss: {loss_error}"
    );
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tiny SGD run on real CIFAR-10 (width 8, batch 16, one step per epoch, small kNN monitor)
/// as TOML. One step: after a step the gradient of this small network is ill-conditioned in f32
/// (moving every parameter by 1e-7 of itself changes it by 2e-3 on one device), so a second
/// step would compare float noise; the step's equivalence is what is tested.
fn tiny_config(dir: &Path, data: &Path) -> std::path::PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            "data = {:?}\ninit_weights = {:?}\nepochs = 1\nbatch_size = 16\nsteps_per_epoch = 1\n\
             [model]\nwidth = 8\n[model.head]\nhidden = 32\nout = 16\n\
             [optim]\noptimizer = \"sgd\"\nlr = 0.5\n\
             [knn]\nbank_size = 64\nquery_size = 32\nk = 5\n",
            data.display().to_string(),
            initial_weights(dir).display().to_string()
        ),
    )
    .unwrap();
    path
}

/// The model of [`tiny_config`] with random weights, as an `--init-weights` file in `dir`: every
/// run of a test starts from exactly these.
fn initial_weights(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("initial.safetensors");
    let mut config = TrainConfig::default();
    config.model.width = 8;
    config.model.head.hidden = 32;
    config.model.head.out = 16;
    let tensors = {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let device = Default::default();
        <B as burn::tensor::backend::Backend>::seed(&device, 5);
        let model = config.model.init::<B>(&device);
        named_tensors::<B, _>(&model)
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), b);
            (t.name.clone(), view.unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

/// Node `rank` of a 2-node run (1 device each) of `config` into `out`, rank 0 on `port`.
fn node(rank: usize, port: u16, config: &Path, out: &Path, extra: &[&str]) -> Child {
    let mut command = e2e::trainer_command(env!("CARGO_BIN_EXE_trainer"));
    command
        .args(["train", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out);
    command.args([
        "--nodes",
        "2",
        "--node-rank",
        &rank.to_string(),
        "--coordinator",
        &format!("127.0.0.1:{port}"),
    ]);
    command.args(extra);
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the trainer starts")
}

fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{all}");
    all
}

/// Trainable parameters of a checkpoint's model, by name.
fn parameters(checkpoint: &Path) -> Vec<(String, Vec<f32>)> {
    let ckpt = Checkpoint::read(checkpoint).unwrap();
    let model = ckpt.model::<B>(&Default::default()).unwrap();
    named_tensors::<B, _>(&model)
        .into_iter()
        .filter(|t| !t.name.contains("running"))
        .map(|t| (t.name, t.values))
        .collect()
}

fn first_loss(run: &Path) -> f64 {
    Metrics::read(run).column("loss")[0]
}

#[test]
fn two_processes_over_loopback_train_as_one_process() {
    let data = cifar10_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &data);
    let one = dir.path().join("one");
    let status = trainer(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        one.to_str().unwrap(),
    ]);
    assert!(status.status.success(), "{}", text(&status.stderr));

    let two = dir.path().join("two");
    let port = free_port();
    let node0 = node(0, port, &config, &two, &[]);
    let node1 = node(1, port, &config, &two, &[]);
    let log1 = finish(node1, "node 1");
    let log0 = finish(node0, "node 0");
    assert!(log0.contains("x 2 (node 0 of 2"), "{log0}");
    assert!(log1.contains("x 2 (node 1 of 2"), "{log1}");
    assert!(log0.contains("gradient all-reduce:"), "{log0}");
    assert!(
        !log1.contains("next: trainer eval"),
        "only node 0 gives the next steps:\n{log1}"
    );

    let ckpt = |run: &Path| run.join("checkpoints").join("epoch-0001.ckpt");
    let (loss_one, loss_two) = (first_loss(&one), first_loss(&two));
    // Parameters after the SGD step, compared by their change from the shared start.
    let (initial, _) =
        trainer::named_params::read_safetensors(&dir.path().join("initial.safetensors")).unwrap();
    let initial: Vec<(String, Vec<f32>)> = parameters(&ckpt(&one))
        .into_iter()
        .map(|(name, _)| (name.clone(), initial[&name].1.clone()))
        .collect();
    let update = |after: Vec<(String, Vec<f32>)>| -> Vec<(String, Vec<f32>)> {
        after
            .into_iter()
            .zip(&initial)
            .map(|((name, a), (_, p))| (name, a.iter().zip(p).map(|(a, p)| a - p).collect()))
            .collect()
    };
    let (update_one, update_two) = (
        update(parameters(&ckpt(&one))),
        update(parameters(&ckpt(&two))),
    );
    let (error, name) = worst(&update_two, &update_one);
    println!("2 processes: loss {loss_two:.6} vs one {loss_one:.6}; updates worst rel. L2 {error:.1e} ({name})");
    assert!(
        (loss_two - loss_one).abs() < 1e-4 * loss_one.abs(),
        "{loss_two} vs {loss_one}"
    );
    assert!(error < 2e-3, "update of {name} differs by {error}");
    assert!(!two.join("checkpoints").join("epoch-0001.tmp").exists());
}

#[test]
fn a_killed_rank_stops_the_other_with_an_error_in_bounded_time() {
    let data = cifar10_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &data);
    let out = dir.path().join("run");
    let port = free_port();
    let timeout = 10;
    let long = [
        "--steps-per-epoch",
        "100000",
        "--epochs",
        "1",
        "--peer-timeout",
        "10",
    ];
    let mut node0 = node(0, port, &config, &out, &long);
    let mut node1 = node(1, port, &config, &out, &long);
    // Node 0 prints where it writes once both ranks registered and training begins.
    let mut stderr0 = node0.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !text(&seen).contains("output:") {
        let n = stderr0.read(&mut buffer).unwrap();
        assert!(n > 0, "node 0 ended before training:\n{}", text(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    std::thread::sleep(Duration::from_secs(3));
    node1.kill().unwrap();
    let killed = Instant::now();
    let _ = node1.wait();
    let mut rest = String::new();
    stderr0.read_to_string(&mut rest).unwrap();
    let status = node0.wait().unwrap();
    let waited = killed.elapsed();
    let log = format!("{}{rest}", text(&seen));
    println!(
        "node 0 stopped {:.1} s after node 1 was killed: {}",
        waited.as_secs_f64(),
        log.lines().last().unwrap_or("")
    );
    assert!(!status.success(), "node 0 should fail:\n{log}");
    assert!(
        log.contains("distributed training stopped") && log.contains("rank 0 of 2"),
        "{log}"
    );
    assert!(
        waited < Duration::from_secs(timeout + 30),
        "took {waited:?}"
    );
}

#[test]
fn devices_2_trains_and_resumes_on_another_number_of_devices() {
    let data = cifar10_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &data);
    let out = dir.path().join("run");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let output = trainer(&args);
        let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "{args:?}:\n{all}");
        all
    };
    let first = run(&["--devices", "2"]);
    assert!(
        first.contains("x 2 (node 0 of 1, 2 per node; 8 images per device)"),
        "{first}"
    );
    assert!(first.contains("gradient all-reduce:"), "{first}");
    assert!(first.contains("epoch 1/1"), "{first}");
    run(&["--resume", "--epochs", "2", "--devices", "1"]);
    let third = run(&["--resume", "--epochs", "3", "--devices", "2"]);
    assert!(third.contains("epoch 3/3"), "{third}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    for epoch in 1..=3 {
        let ckpt = out
            .join("checkpoints")
            .join(format!("epoch-{epoch:04}.ckpt"));
        assert_eq!(Checkpoint::read(&ckpt).unwrap().state.epochs_done, epoch);
    }
    // The batch must split over the devices.
    let output = trainer(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--devices",
        "3",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("does not split evenly over 3 devices"),
        "{}",
        text(&output.stderr)
    );
}
