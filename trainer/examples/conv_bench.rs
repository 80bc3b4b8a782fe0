//! Times the three passes (output, input gradient, weight gradient) of every convolution of the
//! CIFAR ResNet-18 (width 64): flex's own ops, `trainer::kernels::conv_kernels` (im2col + GEMM)
//! and, for the 3x3 stride-1 layers, `trainer::kernels::winograd`; checks that all give the same
//! values.
//!
//! `cargo run --release -p trainer --example conv_bench -- [VIEWS]` (default 64 = batch 32 pairs)
use burn::backend::Flex;
use burn::tensor::ops::{ConvOptions, ModuleOps};
use burn::tensor::{Distribution, Tensor, TensorPrimitive};
use e2e::max_abs_diff;
use std::time::Instant;
use trainer::kernels::conv_kernels::{self, ConvShape};
use trainer::kernels::winograd;

fn prim(t: Tensor<Flex, 4>) -> burn::tensor::ops::FloatTensor<Flex> {
    t.into_primitive().tensor()
}
fn back(t: burn::tensor::ops::FloatTensor<Flex>) -> Vec<f32> {
    Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .to_vec()
        .unwrap()
}
/// Fastest of three runs after a warm-up (the machine is shared: the minimum is the stable figure).
fn time<T>(f: impl Fn() -> T) -> (f64, T) {
    let mut result = f();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        result = f();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    (best, result)
}
fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(64);
    let d = Default::default();
    // (c_in, c_out, size, kernel, stride, count in the network)
    let layers = [
        (3, 64, 32, 3, 1, 1),
        (64, 64, 32, 3, 1, 4),
        (64, 128, 32, 3, 2, 1),
        (128, 128, 16, 3, 1, 3),
        (64, 128, 32, 1, 2, 1),
        (128, 256, 16, 3, 2, 1),
        (256, 256, 8, 3, 1, 3),
        (128, 256, 16, 1, 2, 1),
        (256, 512, 8, 3, 2, 1),
        (512, 512, 4, 3, 1, 3),
        (256, 512, 8, 1, 2, 1),
    ];
    let mut tot = [0.0f64; 12];
    println!("layer                     | flex fwd  x-grad  w-grad | im2col fwd x-grad w-grad | winograd fwd x-grad w-grad (ms, x count)");
    for (c_in, c_out, size, k, stride, count) in layers {
        let pad = k / 2;
        let s = ConvShape {
            batch,
            c_in,
            height: size,
            width: size,
            c_out,
            kernel: k,
            stride,
            padding: pad,
        };
        let x = Tensor::<Flex, 4>::random(
            [batch, c_in, size, size],
            Distribution::Normal(0.0, 1.0),
            &d,
        );
        let w = Tensor::<Flex, 4>::random([c_out, c_in, k, k], Distribution::Normal(0.0, 0.1), &d);
        let dy = Tensor::<Flex, 4>::random(
            [batch, c_out, s.out_height(), s.out_width()],
            Distribution::Normal(0.0, 1.0),
            &d,
        );
        let opts = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
        let (xv, wv, dyv): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            x.clone().into_data().to_vec().unwrap(),
            w.clone().into_data().to_vec().unwrap(),
            dy.clone().into_data().to_vec().unwrap(),
        );
        let (f1, y1) = time(|| {
            back(Flex::conv2d(
                prim(x.clone()),
                prim(w.clone()),
                None,
                opts.clone(),
            ))
        });
        let (f2, dx1) = time(|| {
            back(Flex::conv2d_x_backward(
                prim(x.clone()),
                prim(w.clone()),
                prim(dy.clone()),
                opts.clone(),
            ))
        });
        let (f3, dw1) = time(|| {
            back(Flex::conv2d_weight_backward(
                prim(x.clone()),
                prim(w.clone()),
                prim(dy.clone()),
                opts.clone(),
            ))
        });
        let (o1, y2) = time(|| conv_kernels::conv2d(&xv, &wv, &s));
        let (o2, dx2) = time(|| conv_kernels::conv2d_input_grad(&dyv, &wv, &s));
        let (o3, dw2) = time(|| conv_kernels::conv2d_weight_grad(&xv, &dyv, &s));
        // Winograd where it applies; elsewhere the network runs im2col, counted as such.
        let (w1, w2, w3, wino_diff) = if winograd::applies(&s) {
            let (w1, y3) = time(|| winograd::conv2d(&xv, &wv, &s));
            let (w2, dx3) = time(|| winograd::conv2d_input_grad(&dyv, &wv, &s));
            let (w3, dw3) = time(|| winograd::conv2d_weight_grad(&xv, &dyv, &s));
            let diff = format!(
                "winograd-flex {:.1e} {:.1e} {:.1e}",
                max_abs_diff(&y1, &y3),
                max_abs_diff(&dx1, &dx3),
                max_abs_diff(&dw1, &dw3)
            );
            (w1, w2, w3, diff)
        } else {
            (o1, o2, o3, String::new())
        };
        // What the network runs: the faster kernel by `faster_than_im2col`.
        let (n1, n2, n3) = if winograd::faster_than_im2col(&s) {
            (w1, w2, w3)
        } else {
            (o1, o2, o3)
        };
        let c = count as f64;
        for (t, v) in tot
            .iter_mut()
            .zip([f1, f2, f3, o1, o2, o3, w1, w2, w3, n1, n2, n3])
        {
            *t += v * c;
        }
        println!("{c_in:>3}->{c_out:>3} {size:>2}px k{k} s{stride} x{count} | {f1:7.1} {f2:7.1} {f3:7.1} | {o1:7.1} {o2:7.1} {o3:7.1} | {w1:7.1} {w2:7.1} {w3:7.1}  max diff im2col-flex {:.1e} {:.1e} {:.1e} {wino_diff}",
            max_abs_diff(&y1, &y2), max_abs_diff(&dx1, &dx2), max_abs_diff(&dw1, &dw2));
    }
    println!(
        "total (ms)                | {:7.1} {:7.1} {:7.1} | {:7.1} {:7.1} {:7.1} | {:7.1} {:7.1} {:7.1}",
        tot[0], tot[1], tot[2], tot[3], tot[4], tot[5], tot[6], tot[7], tot[8]
    );
    println!(
        "sum flex {:.0} ms, im2col {:.0} ms, winograd where it applies {:.0} ms, as the network runs {:.0} ms ({:.1} {:.1} {:.1})",
        tot[0] + tot[1] + tot[2],
        tot[3] + tot[4] + tot[5],
        tot[6] + tot[7] + tot[8],
        tot[9] + tot[10] + tot[11],
        tot[9],
        tot[10],
        tot[11]
    );
}
