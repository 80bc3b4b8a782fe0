//! One SimCLR training step of the trainer against PyTorch's, value by value.
//!
//! `tests/fixtures/golden_simclr.safetensors` (written by `bench/golden_simclr.py`: PyTorch
//! 2.15, float64 arithmetic on float32 weights and inputs) holds a width-4 network's initial
//! weights and running statistics, one batch of 8 real CIFAR-10 image pairs drawn by
//! torchvision's SimCLR augmentations, and the results of one step of the recipe: the NT-Xent
//! loss, the gradient of every parameter, the global gradient norm, and every parameter and
//! running statistic after clipping and Adam. The trainer loads the same weights by name, runs
//! its own step code (`loss_and_gradients`, `apply_update`, the optimizer `with_optimizer`
//! builds from the default config) and must land on the same numbers, on the CPU kernels every
//! run uses (Winograd convolutions on) and with im2col + GEMM only (`--no-winograd`).
//!
//! Tolerances (float32 against float64; measured worst cases are in the README):
//! - loss: relative 1e-5;
//! - each gradient tensor: `|ours - torch| / |torch|` (L2 over the tensor) below 1e-3;
//! - the update of each parameter tensor (after - before; Adam's first step moves a weight by
//!   about lr = 3e-4): relative L2 error below 1e-3, so a wrong epsilon, weight decay, bias
//!   correction or clipping shows;
//! - running statistics: within 1e-5 (a biased running variance is off by 1/(n-1) of it, 2e-5
//!   and more at the last stage).

use burn::backend::Autodiff;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use e2e::relative_l2;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use trainer::backend::{CpuBackend, TrainBackend};
use trainer::config::TrainConfig;
use trainer::data::loader::Views;
use trainer::jobs::train::{apply_update, loss_and_gradients, scaled_loss_and_gradients};
use trainer::methods::simclr::SimClr;
use trainer::methods::{MethodConfig, MethodKind};
use trainer::model::{ModelConfig, SslModel};
use trainer::named_params::{
    gradient_values, load_named_tensors, named_tensors, read_safetensors, NamedTensor, TensorMap,
};
use trainer::optim::{with_optimizer, OptimizerTask};
use trainer::Precision;

/// The fixture's tensors by name, and its metadata.
fn golden() -> (TensorMap, BTreeMap<String, String>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/golden_simclr.safetensors"
    );
    read_safetensors(std::path::Path::new(path)).unwrap()
}

static CPU_KERNELS: Mutex<()> = Mutex::new(());

/// Holds the CPU's choice of convolution kernels for the caller (a process-wide switch, so the
/// tests here take turns): `winograd` true is what every run uses (Winograd F(4x4, 3x3) on the
/// 3x3 layers where it is faster: here the 16- and 32-channel stages), false is im2col + GEMM
/// everywhere (`--no-winograd`).
fn cpu_kernels(winograd: bool) -> MutexGuard<'static, ()> {
    let guard = CPU_KERNELS.lock().unwrap_or_else(|e| e.into_inner());
    trainer::kernels::winograd::set_enabled(winograd);
    guard
}

/// The entries under `prefix.`, with the prefix removed.
fn with_prefix(tensors: &TensorMap, prefix: &str) -> TensorMap {
    tensors
        .iter()
        .filter_map(|(name, value)| {
            let name = name.strip_prefix(prefix)?.strip_prefix('.')?;
            Some((name.to_string(), value.clone()))
        })
        .collect()
}

/// What one step of the trainer produced.
struct StepResult {
    loss: f64,
    /// Parameter name -> gradient (before clipping).
    grads: BTreeMap<String, Vec<f32>>,
    grad_norm: f64,
    /// Every tensor of the model after the update.
    after: Vec<NamedTensor>,
}

struct Update<B: TrainBackend> {
    model: SslModel<B>,
    grads: GradientsParams,
    lr: f64,
    grad_clip: f64,
}

impl<B: TrainBackend> OptimizerTask<B> for Update<B> {
    type Output = (SslModel<B>, f64);
    fn run<O: Optimizer<SslModel<B>, B>>(self, mut optimizer: O) -> anyhow::Result<Self::Output> {
        Ok(apply_update(
            self.model,
            &mut optimizer,
            self.grads,
            self.lr,
            self.grad_clip,
        ))
    }
}

/// The trainer's step on backend `B`, from the fixture's weights and views; with
/// `burn_default_adam`, Adam as Burn configures it by default (epsilon 1e-5) instead of the
/// optimizer the trainer builds.
fn trainer_step<B: TrainBackend>(
    golden: &TensorMap,
    metadata: &BTreeMap<String, String>,
    device: &B::Device,
    burn_default_adam: bool,
) -> StepResult {
    trainer_step_in::<B>(Precision::F32, golden, metadata, device, burn_default_adam)
}

/// [`trainer_step`] with the forward pass under `autocast(precision)`.
fn trainer_step_in<B: TrainBackend>(
    precision: Precision,
    golden: &TensorMap,
    metadata: &BTreeMap<String, String>,
    device: &B::Device,
    burn_default_adam: bool,
) -> StepResult {
    let config = TrainConfig::default();
    let MethodConfig::Simclr(nt_xent) = config.method else {
        panic!("the default method is SimCLR")
    };
    // The fixture was made with the default recipe; if a default changes, regenerate it.
    for (key, ours) in [
        ("temperature", nt_xent.temperature),
        ("lr", config.optim.lr),
        ("weight_decay", config.optim.weight_decay),
        ("grad_clip", config.optim.grad_clip),
    ] {
        let theirs: f64 = metadata[key].parse().unwrap();
        assert_eq!(ours, theirs, "default {key} differs from the fixture's");
    }
    let number = |key: &str| metadata[key].parse::<usize>().unwrap();
    let model = ModelConfig::small(number("width"), number("head_hidden"), number("head_out"))
        .init::<B>(device);
    let model = load_named_tensors(model, &with_prefix(golden, "init"), device).unwrap();
    let (shape, views) = golden["views"].clone();
    let views = Tensor::<B, 4>::from_data(TensorData::new(views, shape), device);

    // As a training step: the loss scaled for f16 (PyTorch's 2^16), the gradients unscaled.
    let scaler = trainer::GradScaler::new(precision);
    let step = {
        let _autocast = trainer::autocast(precision);
        scaled_loss_and_gradients(&model, &mut SimClr(nt_xent), views, scaler.loss_factor())
    };
    let (loss, mut grads) = (step.stats.loss, step.grads.expect("finite loss"));
    assert!(
        scaler.unscale(&model, &mut grads),
        "the gradients overflowed"
    );
    let named = named_tensors::<B, _>(&model);
    let grad_values = named
        .iter()
        .filter_map(|t| Some((t.name.clone(), gradient_values::<B>(&grads, t)?)))
        .collect();
    let update = Update {
        model,
        grads,
        lr: config.optim.lr,
        grad_clip: config.optim.grad_clip,
    };
    let (model, grad_norm) = if burn_default_adam {
        let decay = WeightDecayConfig::new(config.optim.weight_decay as f32);
        update.run(AdamConfig::new().with_weight_decay(Some(decay)).init())
    } else {
        with_optimizer::<B, _>(&config.optim, update)
    }
    .unwrap();
    StepResult {
        loss,
        grads: grad_values,
        grad_norm,
        after: named_tensors::<B, _>(&model),
    }
}

/// Compares a step with the fixture; returns a report line per check (worst cases).
fn check_against_golden(step: &StepResult, golden: &TensorMap) -> Vec<String> {
    let mut report = Vec::new();
    let loss = golden["loss"].1[0] as f64;
    let loss_error = (step.loss - loss).abs() / loss;
    assert!(
        loss_error < 1e-5,
        "loss {} vs PyTorch {loss} (relative {loss_error:.2e})",
        step.loss
    );
    report.push(format!(
        "loss {:.6} vs {loss:.6} (relative error {loss_error:.2e})",
        step.loss
    ));

    let reference_grads = with_prefix(golden, "grad");
    assert_eq!(
        step.grads.keys().collect::<Vec<_>>(),
        reference_grads.keys().collect::<Vec<_>>(),
        "the trainer's parameters with gradients differ from PyTorch's"
    );
    let (worst, error) = reference_grads
        .iter()
        .map(|(name, (_, reference))| (name, relative_l2(&step.grads[name], reference)))
        .fold(
            ("", 0.0),
            |acc, (n, e)| if e > acc.1 { (n, e) } else { acc },
        );
    assert!(
        error < 1e-3,
        "gradient of {worst}: relative L2 error {error:.2e} against PyTorch"
    );
    report.push(format!(
        "gradients: worst relative L2 error {error:.2e} ({worst})"
    ));

    let norm = golden["grad_norm"].1[0] as f64;
    let norm_error = (step.grad_norm - norm).abs() / norm;
    assert!(
        norm_error < 1e-4,
        "gradient norm {} vs PyTorch {norm}",
        step.grad_norm
    );
    report.push(format!(
        "gradient norm {:.5} vs {norm:.5} (relative error {norm_error:.2e})",
        step.grad_norm
    ));

    // Parameters: the update each tensor received (after - before) against PyTorch's, as a
    // relative L2 error; running statistics: absolute.
    let reference_after = with_prefix(golden, "after");
    let init = with_prefix(golden, "init");
    assert_eq!(step.after.len(), reference_after.len());
    let (mut worst_update, mut worst_running) = (("", 0.0f64), ("", 0.0f64));
    for tensor in &step.after {
        let (_, reference) = &reference_after[&tensor.name];
        let (_, before) = &init[&tensor.name];
        let (worst, error, tolerance, what) = if tensor.name.contains("running_") {
            let error = e2e::max_abs_diff(&tensor.values, reference) as f64;
            (&mut worst_running, error, 1e-5, "off by up to")
        } else {
            let delta = |after: &[f32]| -> Vec<f32> {
                after.iter().zip(before).map(|(a, b)| a - b).collect()
            };
            let error = relative_l2(&delta(&tensor.values), &delta(reference));
            (&mut worst_update, error, 1e-3, "update's relative L2 error")
        };
        assert!(
            error < tolerance,
            "{} after the step: {what} {error:.2e} against PyTorch",
            tensor.name
        );
        if error > worst.1 {
            *worst = (tensor.name.as_str(), error);
        }
    }
    report.push(format!(
        "updates by Adam: worst relative L2 error {:.2e} ({}); running statistics: worst \
         absolute error {:.2e} ({})",
        worst_update.1, worst_update.0, worst_running.1, worst_running.0
    ));
    report
}

/// The step with the kernels every run uses (Winograd on), and with im2col + GEMM only
/// (`--no-winograd`): both within the same bounds. Winograd's share is checked to be real: two
/// im2col steps agree bit for bit, the Winograd step does not.
#[test]
fn simclr_step_matches_pytorch_on_the_cpu() {
    let (golden, metadata) = golden();
    let device = Default::default();
    let step = |winograd: bool| {
        let _kernels = cpu_kernels(winograd);
        trainer_step::<Autodiff<CpuBackend>>(&golden, &metadata, &device, false)
    };
    let (shipped, im2col, im2col_again) = (step(true), step(false), step(false));
    for (what, step) in [("shipped kernels", &shipped), ("im2col only", &im2col)] {
        for line in check_against_golden(step, &golden) {
            eprintln!("{what}: {line}");
        }
    }
    let worst_difference = |a: &StepResult, b: &StepResult| {
        a.grads
            .iter()
            .map(|(name, grad)| relative_l2(grad, &b.grads[name]))
            .fold(0.0, f64::max)
    };
    assert_eq!(
        worst_difference(&im2col, &im2col_again),
        0.0,
        "im2col is deterministic"
    );
    let moved = worst_difference(&shipped, &im2col);
    eprintln!("Winograd against im2col: worst gradient relative L2 difference {moved:.2e}");
    assert!(
        moved > 0.0,
        "the shipped step's gradients equal im2col's: Winograd did not run"
    );
}

/// The same step on wgpu (on lavapipe in CI): Burn's own convolution and composed BatchNorm
/// (the `NetworkOps` defaults), cubecl's kernels with fusion, autodiff on a GPU backend and the
/// host <-> device transfers. It must match PyTorch with the CPU's tolerances, and the CPU
/// backend's step with the same tolerances (the CPU's step standing in for the fixture).
#[cfg(feature = "wgpu")]
#[test]
fn simclr_step_on_wgpu_matches_pytorch_and_the_cpu() {
    use trainer::backend::{wgpu_adapter, WgpuBackend};
    let _kernels = cpu_kernels(true);
    let (golden, metadata) = golden();
    let adapter = wgpu_adapter().expect("a wgpu adapter (.ci/run installs mesa-vulkan-drivers)");
    eprintln!("wgpu adapter: {adapter}");
    let gpu = trainer_step::<Autodiff<WgpuBackend>>(&golden, &metadata, &Default::default(), false);
    for line in check_against_golden(&gpu, &golden) {
        eprintln!("wgpu vs PyTorch: {line}");
    }
    let cpu = trainer_step::<Autodiff<CpuBackend>>(&golden, &metadata, &Default::default(), false);
    let mut cpu_as_reference: TensorMap = with_prefix(&golden, "init")
        .into_iter()
        .map(|(name, value)| (format!("init.{name}"), value))
        .collect();
    cpu_as_reference.insert("loss".into(), (vec![1], vec![cpu.loss as f32]));
    cpu_as_reference.insert("grad_norm".into(), (vec![1], vec![cpu.grad_norm as f32]));
    for (name, values) in &cpu.grads {
        cpu_as_reference.insert(format!("grad.{name}"), (vec![values.len()], values.clone()));
    }
    for tensor in &cpu.after {
        let entry = (tensor.shape.clone(), tensor.values.clone());
        cpu_as_reference.insert(format!("after.{}", tensor.name), entry);
    }
    for line in check_against_golden(&gpu, &cpu_as_reference) {
        eprintln!("wgpu vs cpu: {line}");
    }
}

/// The SimCLR step with `--precision f16` on wgpu (lavapipe in CI: shaderFloat16) against
/// PyTorch's float64 step, loss scaled by 2^16 as in training. Every convolution and linear
/// rounds its input and weights to f16 (unit roundoff u = 2^-11 = 4.9e-4). Asserted: the loss
/// within 1e-3 relative (measured 1.3e-4: the forward pass is a few u per layer), the global
/// gradient norm within 1e-1 (measured 5.4e-2), every value finite, and the f16 step really
/// different from the f32 one, and the worst single gradient tensor within 1.1 relative L2
/// (measured 0.55, `encoder.blocks.2.downsample.bn.gamma`). That last figure is large, and
/// PyTorch's own `torch.autocast` fp16 step on the same views and weights gives the same: 0.553
/// on the same tensor (`python3 bench/amp_golden.py`; bf16 reaches 1.12): these early-layer
/// gradients are small sums with heavy cancellation. The bound is twice PyTorch's fp16 worst.
#[cfg(feature = "wgpu")]
#[test]
fn f16_step_on_wgpu_matches_pytorch_loss_and_gradient_norm() {
    // wgpu's device is set up once per process: through the same path as the other tests here.
    trainer::backend::wgpu_adapter()
        .expect("a wgpu adapter (.ci/run installs mesa-vulkan-drivers)");
    use trainer::backend::WgpuBackend;
    let _kernels = cpu_kernels(true);
    let (golden, metadata) = golden();
    let device = Default::default();
    let f16 = trainer_step_in::<Autodiff<WgpuBackend>>(
        Precision::F16,
        &golden,
        &metadata,
        &device,
        false,
    );
    let f32 = trainer_step::<Autodiff<WgpuBackend>>(&golden, &metadata, &device, false);
    let loss = golden["loss"].1[0] as f64;
    let loss_error = (f16.loss - loss).abs() / loss;
    let reference_grads = with_prefix(&golden, "grad");
    let worst = |step: &StepResult| {
        reference_grads
            .iter()
            .map(|(name, (_, reference))| (name.clone(), relative_l2(&step.grads[name], reference)))
            .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a })
    };
    let (worst_name, grad_error) = worst(&f16);
    let mut errors: Vec<(f64, &String)> = reference_grads
        .iter()
        .map(|(name, (_, reference))| (relative_l2(&f16.grads[name], reference), name))
        .collect();
    errors.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("f16 gradients, largest errors: {:?}", &errors[..5]);
    let norm = golden["grad_norm"].1[0] as f64;
    let norm_error = (f16.grad_norm - norm).abs() / norm;
    let from_f32 = f32
        .grads
        .iter()
        .map(|(name, grad)| relative_l2(grad, &f16.grads[name]))
        .fold(0.0, f64::max);
    eprintln!(
        "f16 vs PyTorch: loss {:.6} vs {loss:.6} (relative {loss_error:.2e}); gradients: worst \
         relative L2 {grad_error:.2e} ({worst_name}); norm relative {norm_error:.2e}; f16 vs f32 \
         step on wgpu: worst gradient {from_f32:.2e} (f32 step vs PyTorch: {:.2e})",
        f16.loss,
        worst(&f32).1
    );
    assert!(
        loss_error < 1e-3,
        "f16 loss relative error {loss_error:.2e}"
    );
    assert!(
        norm_error < 1e-1,
        "f16 gradient norm relative error {norm_error:.2e}"
    );
    assert!(
        grad_error < 1.1,
        "f16 gradient {worst_name}: relative L2 {grad_error:.2e} (PyTorch's autocast fp16: 0.553 \
         at worst, bench/amp_golden.py)"
    );
    assert!(f16.grads.values().flatten().all(|v| v.is_finite()));
    assert!(
        from_f32 > 1e-5,
        "the f16 step's gradients equal the f32 step's ({from_f32:.2e}): nothing ran in f16"
    );
    assert!(f16
        .after
        .iter()
        .all(|t| t.values.iter().all(|v| v.is_finite())));
}

/// f16 loss scaling on wgpu: with the scale at 2^40 the gradients overflow f16 (largest value
/// 65504) in the backward pass of the projector; the step must be skipped (every weight as it
/// was), the scale halved and the skip counted; at PyTorch's initial 2^16 the next step updates.
#[cfg(feature = "wgpu")]
#[test]
fn f16_overflow_skips_the_step_and_halves_the_loss_scale() {
    // wgpu's device is set up once per process: through the same path as the other tests here.
    trainer::backend::wgpu_adapter()
        .expect("a wgpu adapter (.ci/run installs mesa-vulkan-drivers)");
    use trainer::backend::WgpuBackend;
    use trainer::jobs::train::train_step;
    use trainer::optim::Schedule;
    use trainer::{GradScaler, PairBatch};
    type B = Autodiff<WgpuBackend>;
    struct Steps(SslModel<B>, Vec<f32>);
    impl OptimizerTask<B> for Steps {
        type Output = Vec<(GradScaler, bool, Vec<NamedTensor>)>;
        fn run<O: Optimizer<SslModel<B>, B>>(
            self,
            mut optimizer: O,
        ) -> anyhow::Result<Self::Output> {
            let Steps(mut model, views) = self;
            let schedule = Schedule {
                batch_size: 8,
                steps_per_epoch: 1,
                total_steps: 2,
            };
            let MethodConfig::Simclr(nt_xent) = TrainConfig::default().method else {
                panic!()
            };
            let mut method = SimClr(nt_xent);
            let mut out = Vec::new();
            for (step, scale) in [2f64.powi(40), 65536.0].into_iter().enumerate() {
                let mut scaler = GradScaler::with_scale(Precision::F16, scale);
                let batch = PairBatch {
                    size: 8,
                    side: 32,
                    views: views.clone(),
                };
                let (next, stats) = train_step(
                    model,
                    &mut method,
                    &mut optimizer,
                    &mut scaler,
                    batch,
                    3e-4,
                    1.0,
                    (step, &schedule),
                    &Default::default(),
                );
                model = next;
                out.push((scaler, stats.skipped, named_tensors::<B, _>(&model)));
            }
            Ok(out)
        }
    }
    let (golden, metadata) = golden();
    let number = |key: &str| metadata[key].parse::<usize>().unwrap();
    let device = Default::default();
    let model = ModelConfig::small(number("width"), number("head_hidden"), number("head_out"))
        .init::<B>(&device);
    let model = load_named_tensors(model, &with_prefix(&golden, "init"), &device).unwrap();
    let views = golden["views"].1.clone();
    let steps = with_optimizer::<B, _>(&TrainConfig::default().optim, Steps(model, views)).unwrap();
    let init = with_prefix(&golden, "init");
    let moved = |after: &[NamedTensor]| {
        after
            .iter()
            .filter(|t| !t.name.contains("running_"))
            .filter(|t| t.values != init[&t.name].1)
            .count()
    };
    let (overflowed, skipped, after) = &steps[0];
    assert!(skipped, "the step at loss scale 2^40 was not skipped");
    assert_eq!(
        (overflowed.scale, overflowed.skipped_steps),
        (2f64.powi(39), 1)
    );
    assert_eq!(moved(after), 0, "a skipped step changed weights");
    let (normal, skipped, after) = &steps[1];
    assert!(!skipped, "the step at loss scale 2^16 was skipped");
    assert_eq!((normal.scale, normal.good_steps), (65536.0, 1));
    assert!(
        moved(after) > 10,
        "the step at 2^16 did not update the weights"
    );
}

/// The shipped kernels' bound on a gradient's relative L2 error: 3x what they measured on it.
/// Winograd F(4x4, 3x3) rounds its input and output transforms in float32, so its absolute error
/// is a few times im2col's. Where a method's gradients are small next to the activations they sum
/// over, that is a large relative error: MoCo v2's fixture step (loss 0.39, its positives nearly
/// certain against a random queue) has gradients of 1e-3 to 1e-2 relative error throughout the
/// encoder, measured per tensor below; BYOL's, VICReg's and Barlow Twins' worst is 2.3e-5, so
/// 1e-4 bounds them (4x that). A kernel change that loses accuracy fails on the tensor it
/// touches, where one bound of 5e-2 for all let 50x im2col's error through.
fn shipped_bound(method: &str, tensor: &str) -> f64 {
    const FACTOR: f64 = 3.0;
    match method {
        "mocov2" => MOCO_SHIPPED_ERRORS
            .iter()
            .find(|(name, _)| *name == tensor)
            .map_or(1e-4, |(_, measured)| FACTOR * measured),
        // Sinkhorn-Knopp takes exp(scores / 0.05): the scores' float32 rounding reaches the
        // assignments twenty-fold. With a queue in its input, the worst gradient is 8.8e-5 on
        // im2col and 1.09e-4 on the shipped kernels (encoder.blocks.1.bn1.gamma).
        "swav" => FACTOR * 1.1e-4,
        _ => 1e-4,
    }
}

/// MoCo v2's measured relative L2 error of each encoder gradient on the shipped kernels (the
/// rest, heads included, below 1e-4): `cargo test --release --test golden_step --
/// --nocapture every_method` prints the tensors above 1e-4.
const MOCO_SHIPPED_ERRORS: &[(&str, f64)] = &[
    ("encoder.stem_conv.weight", 1.388e-2),
    ("encoder.stem_bn.gamma", 1.263e-2),
    ("encoder.stem_bn.beta", 1.070e-2),
    ("encoder.blocks.0.conv1.weight", 9.936e-3),
    ("encoder.blocks.0.bn1.gamma", 8.175e-3),
    ("encoder.blocks.0.bn1.beta", 8.528e-3),
    ("encoder.blocks.0.conv2.weight", 1.213e-2),
    ("encoder.blocks.0.bn2.gamma", 6.200e-3),
    ("encoder.blocks.0.bn2.beta", 4.814e-3),
    ("encoder.blocks.1.conv1.weight", 7.556e-3),
    ("encoder.blocks.1.bn1.gamma", 1.109e-2),
    ("encoder.blocks.1.bn1.beta", 1.162e-2),
    ("encoder.blocks.1.conv2.weight", 8.722e-3),
    ("encoder.blocks.1.bn2.gamma", 5.140e-3),
    ("encoder.blocks.1.bn2.beta", 7.483e-3),
    ("encoder.blocks.2.conv1.weight", 8.201e-3),
    ("encoder.blocks.2.bn1.gamma", 8.248e-3),
    ("encoder.blocks.2.bn1.beta", 1.941e-2),
    ("encoder.blocks.2.conv2.weight", 9.036e-3),
    ("encoder.blocks.2.bn2.gamma", 7.994e-3),
    ("encoder.blocks.2.bn2.beta", 9.006e-3),
    ("encoder.blocks.2.downsample.conv.weight", 2.975e-3),
    ("encoder.blocks.2.downsample.bn.gamma", 6.486e-3),
    ("encoder.blocks.2.downsample.bn.beta", 9.006e-3),
    ("encoder.blocks.3.conv1.weight", 7.709e-3),
    ("encoder.blocks.3.bn1.gamma", 2.583e-3),
    ("encoder.blocks.3.bn1.beta", 1.195e-2),
    ("encoder.blocks.3.conv2.weight", 6.936e-3),
    ("encoder.blocks.3.bn2.gamma", 3.339e-3),
    ("encoder.blocks.3.bn2.beta", 6.300e-3),
    ("encoder.blocks.4.conv1.weight", 8.428e-3),
    ("encoder.blocks.4.bn1.gamma", 1.082e-2),
    ("encoder.blocks.4.bn1.beta", 1.325e-2),
    ("encoder.blocks.4.conv2.weight", 8.296e-3),
    ("encoder.blocks.4.bn2.gamma", 5.506e-3),
    ("encoder.blocks.4.bn2.beta", 1.062e-2),
    ("encoder.blocks.4.downsample.conv.weight", 1.023e-2),
    ("encoder.blocks.4.downsample.bn.gamma", 7.124e-3),
    ("encoder.blocks.4.downsample.bn.beta", 1.062e-2),
    ("encoder.blocks.5.conv1.weight", 7.544e-3),
    ("encoder.blocks.5.bn1.gamma", 3.955e-3),
    ("encoder.blocks.5.bn1.beta", 7.130e-3),
    ("encoder.blocks.5.conv2.weight", 7.213e-3),
    ("encoder.blocks.5.bn2.gamma", 1.248e-2),
    ("encoder.blocks.5.bn2.beta", 1.167e-2),
    ("encoder.blocks.6.conv1.weight", 8.168e-3),
    ("encoder.blocks.6.bn1.gamma", 7.577e-3),
    ("encoder.blocks.6.bn1.beta", 9.794e-3),
    ("encoder.blocks.6.conv2.weight", 8.790e-3),
    ("encoder.blocks.6.bn2.gamma", 3.918e-3),
    ("encoder.blocks.6.bn2.beta", 2.070e-3),
    ("encoder.blocks.6.downsample.conv.weight", 8.904e-3),
    ("encoder.blocks.6.downsample.bn.gamma", 3.949e-3),
    ("encoder.blocks.6.downsample.bn.beta", 2.070e-3),
    ("encoder.blocks.7.conv1.weight", 1.064e-2),
    ("encoder.blocks.7.bn1.gamma", 7.428e-3),
    ("encoder.blocks.7.bn1.beta", 2.733e-2),
];

/// One step of BYOL, MoCo v2, VICReg, Barlow Twins (`bench/golden_methods.py`), SimSiam and MoCo
/// v3 (`bench/golden_siamese.py`: bias-free Linears, a projector ending in a BatchNorm without
/// affine parameters), SwAV (`bench/golden_swav.py`: multi-crop, and two views with a queue in
/// the Sinkhorn-Knopp input) and DINO with multi-crop (`bench/golden_dino.py`: two global and two local views, prototypes of fixed and
/// of trained norm) against PyTorch: each method's heads at a small width, its loss as the
/// reference code writes it, momentum copies of the online network; the loss within 1e-5
/// relative, every gradient within 1e-3 relative L2 with im2col, as for SimCLR, and within
/// [`shipped_bound`] on the shipped kernels.
#[test]
fn every_method_step_matches_pytorch() {
    type B = Autodiff<CpuBackend>;
    let fixture = |name: &str| {
        let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        read_safetensors(std::path::Path::new(&path)).unwrap()
    };
    let device = Default::default();
    let tensor = |(shape, values): &(Vec<usize>, Vec<f32>)| {
        Tensor::<B, 4>::from_data(TensorData::new(values.clone(), shape.clone()), &device)
    };
    let (golden, metadata) = fixture("golden_methods.safetensors");
    let pair = tensor(&golden["views"]);
    let two_views = Views::from(pair);
    for kind in [
        MethodKind::Byol,
        MethodKind::Mocov2,
        MethodKind::Vicreg,
        MethodKind::Barlow,
    ] {
        let fixture = with_prefix(&golden, kind.name());
        for winograd in [false, true] {
            check_method_step(kind, kind.name(), &fixture, &metadata, &two_views, winograd);
        }
    }
    let (golden, metadata) = fixture("golden_siamese.safetensors");
    let two_views = Views::from(tensor(&golden["views"]));
    for kind in [MethodKind::Simsiam, MethodKind::Mocov3] {
        let fixture = with_prefix(&golden, kind.name());
        for winograd in [false, true] {
            check_method_step(kind, kind.name(), &fixture, &metadata, &two_views, winograd);
        }
    }
    let (golden, metadata) = fixture("golden_dino.safetensors");
    let multi_crop = Views {
        images: golden["views.global"].0[0] / 2,
        groups: vec![
            tensor(&golden["views.global"]),
            tensor(&golden["views.local"]),
        ],
    };
    for variant in ["dino", "dino_scaled"] {
        let fixture = with_prefix(&golden, variant);
        for winograd in [false, true] {
            check_method_step(
                MethodKind::Dino,
                variant,
                &fixture,
                &metadata,
                &multi_crop,
                winograd,
            );
        }
    }
    let (golden, metadata) = fixture("golden_swav.safetensors");
    let global = tensor(&golden["views.global"]);
    let images = golden["views.global"].0[0] / 2;
    let multi_crop = Views {
        images,
        groups: vec![global.clone(), tensor(&golden["views.local"])],
    };
    let two_views = Views::from(global);
    for (variant, views) in [("swav", &multi_crop), ("swav_queue", &two_views)] {
        let fixture = with_prefix(&golden, variant);
        for winograd in [false, true] {
            check_method_step(
                MethodKind::Swav,
                variant,
                &fixture,
                &metadata,
                views,
                winograd,
            );
        }
    }
}

/// `kind`'s step on `views` from the weights of `fixture` (one method's tensors of a golden
/// file) against its PyTorch loss and gradients; `label` names it in messages.
fn check_method_step(
    kind: MethodKind,
    label: &str,
    fixture: &TensorMap,
    metadata: &BTreeMap<String, String>,
    views: &Views<Autodiff<CpuBackend>>,
    winograd: bool,
) {
    use trainer::methods::mocov2::MocoV2;
    use trainer::methods::swav::Swav;
    type B = Autodiff<CpuBackend>;
    let device = Default::default();
    let _kernels = cpu_kernels(winograd);
    let kernels = if winograd {
        "shipped kernels"
    } else {
        "im2col only"
    };
    let init = with_prefix(fixture, "init");
    // The preset's heads (layers, BatchNorm), at the fixture's sizes ([in, out] weights).
    let mut config = TrainConfig::preset(kind, 8);
    config.model.width = metadata["width"].parse().unwrap();
    let last = if init.contains_key("head.fc3.weight") {
        "fc3"
    } else {
        "fc2"
    };
    config.model.head.hidden = init["head.fc1.weight"].0[1];
    config.model.head.out = init[&format!("head.{last}.weight")].0[1];
    if let Some(predictor) = &mut config.model.predictor {
        predictor.hidden = init["predictor.fc1.weight"].0[1];
        predictor.out = config.model.head.out;
    }
    if let Some(prototypes) = &mut config.model.prototypes {
        prototypes.count = init["prototypes.weight_v"].0[1];
        prototypes.normalized = !init.contains_key("prototypes.weight_g");
    }
    let model = config.model.init::<B>(&device);
    let model = load_named_tensors(model, &init, &device).unwrap();
    let mut method: Box<dyn trainer::methods::Method<B>> = match config.method {
        MethodConfig::Mocov2(mut moco) => {
            let (queue_shape, queue) = fixture["queue"].clone();
            moco.queue_size = queue_shape[1];
            let queue = Tensor::from_data(TensorData::new(queue, queue_shape), &device);
            Box::new(MocoV2::new(moco, &config.model, &model, &device).with_queue(queue))
        }
        MethodConfig::Swav(mut swav) if fixture.contains_key("queue") => {
            // The queue takes part from the first epoch, holding PyTorch's.
            let (queue_shape, queue) = fixture["queue"].clone();
            swav.queue_size = queue_shape[1];
            swav.queue_start_epoch = 0;
            let queue = Tensor::from_data(TensorData::new(queue, queue_shape), &device);
            Box::new(Swav::new(swav, config.model.head.out, &device).with_queue(queue))
        }
        _ => config.method.build(&config.model, &model, &device),
    };
    let step = loss_and_gradients(&model, method.as_mut(), views.clone());
    let reference = fixture["loss"].1[0] as f64;
    // Relative to the loss, or to 0.1 for a loss near zero (SimSiam's, a mean of cosines, is
    // -0.03 at the start: there 1e-5 relative would ask for 3e-7 absolute, finer than float32
    // sums of cosines of 1 carry).
    let error = (step.stats.loss - reference).abs() / reference.abs().max(0.1);
    assert!(
        error < 1e-5,
        "{label}: loss {} vs PyTorch {reference} (relative {error:.2e})",
        step.stats.loss
    );
    let grads = step.grads.expect("finite loss");
    let reference_grads = with_prefix(fixture, "grad");
    let mut worst = (String::new(), 0.0f64);
    let mut compared = 0;
    for tensor in named_tensors::<B, _>(&model) {
        let Some(ours) = gradient_values::<B>(&grads, &tensor) else {
            continue;
        };
        let (_, theirs) = &reference_grads[&tensor.name];
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        if norm(theirs) < 1e-7 {
            // A Linear bias right before BatchNorm: the normalisation cancels it, so its
            // gradient is 0 up to rounding (1e-17 in PyTorch's float64, ~1e-9 in float32).
            assert!(
                norm(&ours) < 1e-5,
                "{label}: gradient of {} should vanish, has norm {:.2e}",
                tensor.name,
                norm(&ours)
            );
            compared += 1;
            continue;
        }
        let error = relative_l2(&ours, theirs);
        let gradient_bound = if winograd {
            shipped_bound(kind.name(), &tensor.name)
        } else {
            1e-3
        };
        if winograd && error > 1e-4 {
            eprintln!("{label} (shipped kernels): {} {error:.3e}", tensor.name);
        }
        assert!(
            error < gradient_bound,
            "{label} ({kernels}): gradient of {}: relative L2 error {error:.2e} against PyTorch",
            tensor.name
        );
        if error > worst.1 {
            worst = (tensor.name.clone(), error);
        }
        compared += 1;
    }
    assert_eq!(
        compared,
        reference_grads.len(),
        "{label}: gradients compared"
    );
    eprintln!(
        "{label} ({kernels}): loss {:.6} vs {reference:.6}; {compared} gradients, worst \
         relative L2 error {:.2e} ({})",
        step.stats.loss, worst.1, worst.0
    );
}

/// The message with which `check_against_golden` rejects `step`; panics with `what` if it passes.
fn rejection(step: &StepResult, golden: &TensorMap, what: &str) -> String {
    let failure = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_against_golden(step, golden)
    }));
    *failure.expect_err(what).downcast::<String>().unwrap()
}

#[test]
fn the_golden_check_catches_a_wrong_step() {
    // The same check must fail on steps that differ from PyTorch's in ways that matter.
    let _kernels = cpu_kernels(true);
    let (golden, metadata) = golden();
    let device = Default::default();
    // Adam with Burn's default epsilon (1e-5 instead of PyTorch's 1e-8).
    let step = trainer_step::<Autodiff<CpuBackend>>(&golden, &metadata, &device, true);
    let message = rejection(&step, &golden, "Adam with epsilon 1e-5 must fail");
    assert!(message.contains("after the step"), "{message}");

    // A biased running variance (what Burn's own BatchNorm keeps): undo the n/(n-1) in the last
    // stage's running variances (n = 16 views x 4 x 4 positions).
    let mut step = trainer_step::<Autodiff<CpuBackend>>(&golden, &metadata, &device, false);
    let n = 16.0 * 16.0;
    let init = with_prefix(&golden, "init");
    for tensor in step.after.iter_mut() {
        if tensor.name.starts_with("encoder.blocks.7") && tensor.name.ends_with("running_var") {
            for (v, old) in tensor.values.iter_mut().zip(&init[&tensor.name].1) {
                let batch_var = (*v - 0.9 * old) / 0.1;
                *v = 0.9 * old + 0.1 * batch_var * (n - 1.0) / n;
            }
        }
    }
    let message = rejection(&step, &golden, "a biased running variance must fail");
    assert!(message.contains("running_var after the step"), "{message}");

    // One gradient 1 % off in two of its entries.
    let (name, values) = step.grads.iter_mut().next().unwrap();
    let name = name.clone();
    values[0] *= 1.01;
    values[1] *= 0.99;
    let message = rejection(&step, &golden, "a 1 % error in one gradient must fail");
    assert!(
        message.contains(&format!("gradient of {name}")),
        "{message}"
    );
}
