//! Encoder inference throughput on the CPU backend at one batch size (no ONNX Runtime, no
//! training): `cargo run --release -p trainer --example infer_bench -- [BATCH] [SECONDS] [module|prepared]`.
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;
use trainer::backend::CpuBackend;
use trainer::model::prepared::InferenceEncoder;
use trainer::model::{BackboneKind, Stem};

fn main() {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(1);
    let seconds: f64 = args.next().map(|a| a.parse().unwrap()).unwrap_or(5.0);
    let only: Option<String> = args.next();
    let device = Default::default();
    let encoder = BackboneKind::Resnet18.init::<CpuBackend>(64, Stem::Cifar, &device);
    let images = Tensor::<CpuBackend, 4>::random(
        [batch, 3, 32, 32],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    for (name, model) in [
        ("module forward", InferenceEncoder::unprepared(&encoder)),
        ("prepared", InferenceEncoder::new(&encoder)),
    ] {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        for _ in 0..2 {
            std::hint::black_box(model.forward(images.clone()).into_data());
        }
        let mut times = Vec::new();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds {
            let t = Instant::now();
            std::hint::black_box(model.forward(images.clone()).into_data());
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{name:>14}, batch {batch}: {} passes, median {:.2} ms, {:.1} img/s (best {:.2} ms)",
            times.len(),
            median * 1e3,
            batch as f64 / median,
            times[0] * 1e3
        );
    }
}
