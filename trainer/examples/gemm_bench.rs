//! Times the batch-1 inference products: `gemm` (repacking the weights each call) against
//! `packed_gemm` (weights packed once), with the weights in cache (the same matrix again and
//! again) or, with `cold`, cycling through more weights than the caches hold, as the network's
//! 45 MB do: `cargo run --release -p trainer --example gemm_bench -- [cold]`
use std::time::Instant;
use trainer::kernels::matmul::{matmul, Matrix};
use trainer::kernels::packed_gemm::{multiply, PackedRows};

fn best(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    best
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("cold") {
        cold(512, 4608, 16, 6);
        cold(256, 2304, 64, 6);
        return;
    }
    // (rows = c_out, depth, cols, repeats): im2col products of one image, Winograd positions.
    for (m, k, n, reps) in [
        (512, 4608, 16, 1),
        (512, 2304, 16, 1),
        (256, 2304, 64, 1),
        (256, 1152, 64, 1),
        (128, 1152, 256, 1),
        (128, 576, 256, 1),
        (128, 128, 16, 36),
        (64, 64, 64, 36),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut out1 = vec![0.0f32; m * n];
        let mut out2 = vec![0.0f32; m * n];
        for parallel in [false, true] {
            let t1 = best(|| {
                for _ in 0..reps {
                    matmul(
                        &mut out1,
                        Matrix::new(0, m, n, n),
                        false,
                        &a,
                        Matrix::new(0, m, k, k),
                        &b,
                        Matrix::new(0, k, n, n),
                        parallel,
                    )
                }
            });
            let packed = PackedRows::pack(&a, m, k, k);
            let t2 = best(|| {
                for _ in 0..reps {
                    multiply(&packed, &b, n, n, &mut out2, n, parallel)
                }
            });
            let diff = out1
                .iter()
                .zip(&out2)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            let gflops = 2.0 * (m * k * n * reps) as f64 / 1e6;
            println!("{m:>4}x{k:>4}x{n:>4} x{reps:<2} {} gemm {t1:6.3} ms ({:5.1} GFLOP/s)  packed {t2:6.3} ms ({:5.1} GFLOP/s)  diff {diff:.1e}",
                if parallel { "2 threads" } else { "1 thread " }, gflops / t1, gflops / t2);
        }
    }
}

/// Weights that do not fit in the caches, as the whole network's (45 MB) do not: the product
/// cycles through `copies` packed matrices.
fn cold(m: usize, k: usize, n: usize, copies: usize) {
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let packed: Vec<PackedRows> = (0..copies)
        .map(|c| {
            let a: Vec<f32> = (0..m * k).map(|i| ((i + c) % 7) as f32 * 0.1).collect();
            PackedRows::pack(&a, m, k, k)
        })
        .collect();
    let mut out = vec![0.0f32; m * n];
    for parallel in [false, true] {
        let t = best(|| {
            for p in &packed {
                multiply(p, &b, n, n, &mut out, n, parallel)
            }
        }) / copies as f64;
        let gflops = 2.0 * (m * k * n) as f64 / 1e6;
        let gbs = (m * k * 4) as f64 / 1e6 / t;
        println!("cold {m}x{k}x{n} ({copies} copies) {}: {t:.3} ms per product, {:.1} GFLOP/s, weights {gbs:.1} GB/s",
            if parallel { "2 threads" } else { "1 thread" }, gflops / t);
    }
}
