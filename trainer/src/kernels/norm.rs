//! BatchNorm's forward (training and inference mode), laid out for fast CPU kernels.
//!
//! Burn's `BatchNorm::forward` gathers each channel with `swap_dims(0, 1)` and broadcasts
//! `[1, C, 1, 1]` operands over the activations; the flex backend walks both element by element
//! through a strided iterator (about a third of the SimCLR step in a profile). Here the
//! activations are viewed as rows `[N*C, H*W]`, statistics are reduced along contiguous rows and
//! per-channel values are applied as contiguous columns `[N*C, 1]`. Same parameters and same
//! outputs as Burn's module in both modes (tested below), so checkpoints and exports are
//! unaffected; the running variance is PyTorch's (unbiased), see `update_running_statistics`.

use crate::distributed::collective::CollectiveBackend;
use crate::distributed::{self, sync::synced_moments};
use crate::kernels::norm_kernels::{self, NormShape};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{activation, TensorPrimitive};

/// Output, batch mean and batch (biased) variance of a fused training-mode BatchNorm.
pub type FusedNorm<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

/// A backend's fused training-mode BatchNorm (+ ReLU). The default has none, and
/// [`batch_norm`] composes Burn tensor ops instead (what cuda, ndarray and candle run).
pub trait NormBackend: Backend {
    /// `relu?(BatchNorm(x))` with batch statistics, `x` `[N, C, H, W]`, `gamma`/`beta` `[C]`;
    /// `None` where this backend has no fused kernel for it.
    fn fused_batch_norm(
        _x: FloatTensor<Self>,
        _gamma: FloatTensor<Self>,
        _beta: FloatTensor<Self>,
        _epsilon: f64,
        _relu: bool,
    ) -> Option<FusedNorm<Self>> {
        None
    }

    /// Gradients (x, gamma, beta) of [`NormBackend::fused_batch_norm`], given its inputs, output,
    /// statistics and the output's gradient. Called only where the forward pass returned `Some`.
    #[allow(clippy::too_many_arguments)]
    fn fused_batch_norm_backward(
        _x: FloatTensor<Self>,
        _output: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _gamma: FloatTensor<Self>,
        _statistics: (FloatTensor<Self>, FloatTensor<Self>),
        _epsilon: f64,
        _relu: bool,
    ) -> [FloatTensor<Self>; 3] {
        unreachable!("fused_batch_norm_backward without a fused forward pass")
    }
}

/// `relu?(bn(x))`: training mode (batch statistics, running averages updated) under autodiff,
/// inference mode (running statistics) otherwise. The backend's fused kernel where it has one,
/// except under synchronised BatchNorm (statistics over all ranks of a data-parallel run).
pub fn batch_norm<B: NormBackend + CollectiveBackend>(
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
    relu: bool,
) -> Tensor<B, 4> {
    let synced = distributed::current().is_some_and(|p| p.sync_batchnorm);
    if B::ad_enabled(&x.device()) && !synced {
        let [n, c, h, w] = x.dims();
        let fused = B::fused_batch_norm(
            x.clone().into_primitive().tensor(),
            bn.gamma.val().into_primitive().tensor(),
            bn.beta.val().into_primitive().tensor(),
            bn.epsilon,
            relu,
        );
        if let Some((y, mean, var)) = fused {
            let stat =
                |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t)).reshape([1, c]);
            update_running_statistics(bn, stat(mean), stat(var), n * h * w);
            return Tensor::from_primitive(TensorPrimitive::Float(y));
        }
    }
    let y = batch_norm_2d(bn, x);
    if relu {
        activation::relu(y)
    } else {
        y
    }
}

#[cfg(feature = "cuda")]
impl NormBackend for burn::backend::Cuda {}
#[cfg(feature = "wgpu")]
impl NormBackend for burn::backend::Wgpu {}
#[cfg(feature = "ndarray")]
impl NormBackend for burn::backend::NdArray {}
#[cfg(feature = "candle")]
#[allow(deprecated)]
impl NormBackend for burn::backend::Candle {}

#[cfg(feature = "flex")]
mod flex {
    use super::*;
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::tensor::{DType, TensorData};

    fn shape_of(x: &FlexTensor) -> Option<NormShape> {
        let dims = x.layout().shape();
        (x.dtype() == DType::F32 && dims.num_dims() == 4).then(|| NormShape {
            images: dims[0],
            channels: dims[1],
            plane: dims[2] * dims[3],
        })
    }

    fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    impl NormBackend for Flex {
        fn fused_batch_norm(
            x: FlexTensor,
            gamma: FlexTensor,
            beta: FlexTensor,
            epsilon: f64,
            relu: bool,
        ) -> Option<FusedNorm<Self>> {
            let s = shape_of(&x)?;
            let shape = x.layout().shape().to_vec();
            let (x, gamma, beta) = (
                x.to_contiguous(),
                gamma.to_contiguous(),
                beta.to_contiguous(),
            );
            let out = norm_kernels::forward(
                x.storage(),
                gamma.storage(),
                beta.storage(),
                epsilon,
                relu,
                s,
            );
            let channels = vec![s.channels];
            Some((
                tensor(out.output, shape),
                tensor(out.mean, channels.clone()),
                tensor(out.var, channels),
            ))
        }

        fn fused_batch_norm_backward(
            x: FlexTensor,
            output: FlexTensor,
            grad: FlexTensor,
            gamma: FlexTensor,
            statistics: (FlexTensor, FlexTensor),
            epsilon: f64,
            relu: bool,
        ) -> [FlexTensor; 3] {
            let s = shape_of(&x).expect("the forward pass was fused, so x is f32 [N, C, H, W]");
            let shape = x.layout().shape().to_vec();
            let [x, output, grad, gamma, mean, var] =
                [x, output, grad, gamma, statistics.0, statistics.1].map(|t| t.to_contiguous());
            let grads = norm_kernels::backward(
                x.storage(),
                output.storage(),
                grad.storage(),
                gamma.storage(),
                (mean.storage(), var.storage()),
                epsilon,
                relu,
                s,
            );
            let channels = vec![s.channels];
            [
                tensor(grads.x, shape),
                tensor(grads.gamma, channels.clone()),
                tensor(grads.beta, channels),
            ]
        }
    }
}

/// Under autodiff: one node with parents x, gamma and beta whose backward step is the inner
/// backend's fused backward pass; the statistics come out untracked (they feed only the
/// running averages).
impl<B: NormBackend, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> Option<FusedNorm<Self>> {
        #[derive(Debug)]
        struct NormBackward;

        type State<B> = (
            FloatTensor<B>,
            FloatTensor<B>,
            FloatTensor<B>,
            FloatTensor<B>,
            FloatTensor<B>,
            f64,
            bool,
        );

        impl<B: NormBackend> Backward<B, 3> for NormBackward {
            type State = State<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, output, gamma, mean, var, epsilon, relu) = ops.state;
                let all = B::fused_batch_norm_backward(
                    x,
                    output,
                    grad,
                    gamma,
                    (mean, var),
                    epsilon,
                    relu,
                );
                for (node, grad) in ops.parents.into_iter().zip(all) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        let (output, mean, var) = B::fused_batch_norm(
            x.primitive.clone(),
            gamma.primitive.clone(),
            beta.primitive,
            epsilon,
            relu,
        )?;
        let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        let output = match NormBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (
                    x.primitive,
                    output.clone(),
                    gamma.primitive,
                    mean.clone(),
                    var.clone(),
                    epsilon,
                    relu,
                );
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        Some((output, Self::from_inner(mean), Self::from_inner(var)))
    }
}

/// BatchNorm composed from Burn tensor ops (no ReLU), for backends without a fused kernel, for
/// synchronised BatchNorm and for inference mode.
pub fn batch_norm_2d<B: CollectiveBackend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    // One row per (image, channel): every reduction runs along contiguous rows, and every
    // per-channel operand is a contiguous column [N*C, 1], the broadcast CPU kernels take fast.
    let rows = x.reshape([n * c, h * w]);
    let per_row = |channel: Tensor<B, 2>| channel.repeat_dim(0, n).reshape([n * c, 1]);
    let training = B::ad_enabled(&rows.device());
    let synced = if training {
        synced_moments(rows.clone(), n)
    } else {
        None
    };
    let (centered, var) = if let Some((mean, var, count)) = synced {
        update_running_statistics(bn, mean.clone(), var.clone(), count);
        (rows - per_row(mean), var)
    } else if training {
        let mean = rows.clone().mean_dim(1).reshape([n, c]).mean_dim(0); // [1, C]
        let centered = rows - per_row(mean.clone());
        let var = centered
            .clone()
            .square()
            .mean_dim(1)
            .reshape([n, c])
            .mean_dim(0); // biased, as Burn
        update_running_statistics(bn, mean, var.clone(), n * h * w);
        (centered, var)
    } else {
        // Inference: the running statistics, as Burn's BatchNorm::forward uses them.
        let device = rows.device();
        let mean = bn.running_mean.value().to_device(&device).reshape([1, c]);
        let var = bn.running_var.value().to_device(&device).reshape([1, c]);
        (rows - per_row(mean), var)
    };
    let scale = bn.gamma.val().reshape([1, c]) / var.add_scalar(bn.epsilon).sqrt();
    let y = centered * per_row(scale) + per_row(bn.beta.val().reshape([1, c]));
    y.reshape([n, c, h, w])
}

/// Moves the running averages towards the batch statistics (`[1, C]`, biased variance over
/// `count` values per channel). The running variance takes the unbiased estimate, as PyTorch's
/// BatchNorm2d (Burn's module takes the biased one): a checkpoint then holds the statistics a
/// PyTorch run of the same recipe would, and exported models normalise the same way.
fn update_running_statistics<B: Backend>(
    bn: &BatchNorm<B>,
    mean: Tensor<B, 2>,
    var: Tensor<B, 2>,
    count: usize,
) {
    let c = mean.dims()[1];
    let var = var.mul_scalar(count as f64 / (count.max(2) - 1) as f64);
    let momentum = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&mean.device());
    let running_var = bn.running_var.value_sync().to_device(&var.device());
    bn.running_mean.update(
        (running_mean.mul_scalar(1.0 - momentum) + mean.detach().reshape([c]).mul_scalar(momentum))
            .detach(),
    );
    bn.running_var.update(
        (running_var.mul_scalar(1.0 - momentum) + var.detach().reshape([c]).mul_scalar(momentum))
            .detach(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    type B = Autodiff<CpuBackend>;

    #[test]
    fn matches_burn_batchnorm_outputs_gradients_and_running_stats() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([4, 3, 5, 6], Distribution::Normal(1.0, 2.0), &device);
        let ours = BatchNormConfig::new(3).init::<B>(&device);
        // Not a clone: clones share their running statistics.
        let theirs = BatchNormConfig::new(3).init::<B>(&device);
        let expected = expected_running_statistics(&x);
        let xa = x.clone().require_grad();
        let xb = x.require_grad();
        let ya = batch_norm_2d(&ours, xa.clone());
        let yb = theirs.forward(xb.clone());
        let close = |a: Tensor<CpuBackend, 4>, b: Tensor<CpuBackend, 4>| {
            let d: f32 = (a - b).abs().max().into_scalar();
            assert!(d < 1e-4, "max difference {d}");
        };
        close(ya.clone().inner(), yb.clone().inner());
        let weights = Tensor::<B, 4>::random([4, 3, 5, 6], Distribution::Default, &device);
        let ga = (ya * weights.clone()).sum().backward();
        let gb = (yb * weights).sum().backward();
        close(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
        assert_running_statistics(&ours, &expected);
    }

    /// Running mean and variance after one training step from the initial (0, 1): momentum 0.1
    /// towards the batch mean and the unbiased batch variance of each channel, as PyTorch.
    fn expected_running_statistics(x: &Tensor<B, 4>) -> [Vec<f64>; 2] {
        let [n, c, h, w] = x.dims();
        let values: Vec<f32> = x.to_data().to_vec().unwrap();
        let count = (n * h * w) as f64;
        let mut running = [vec![0.0; c], vec![0.0; c]];
        for ch in 0..c {
            let channel: Vec<f64> = (0..n)
                .flat_map(|i| &values[(i * c + ch) * h * w..(i * c + ch + 1) * h * w])
                .map(|&v| v as f64)
                .collect();
            let mean = channel.iter().sum::<f64>() / count;
            let var = channel.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (count - 1.0);
            running[0][ch] = 0.1 * mean;
            running[1][ch] = 0.9 + 0.1 * var;
        }
        running
    }

    fn assert_running_statistics(bn: &BatchNorm<B>, expected: &[Vec<f64>; 2]) {
        let actual = [bn.running_mean.value_sync(), bn.running_var.value_sync()]
            .map(|t| t.into_data().to_vec::<f32>().unwrap());
        for (what, (actual, expected)) in ["mean", "var"].iter().zip(actual.iter().zip(expected)) {
            for (a, e) in actual.iter().zip(expected) {
                assert!((*a as f64 - e).abs() < 1e-5, "running {what}: {a} vs {e}");
            }
        }
    }

    /// The fused kernel (what `batch_norm` runs on flex under autodiff) against Burn's module:
    /// output, all three gradients and the running statistics, with and without ReLU.
    #[test]
    fn fused_batch_norm_matches_burn_batchnorm() {
        let device = Default::default();
        for relu in [false, true] {
            let x = Tensor::<B, 4>::random([4, 3, 5, 6], Distribution::Normal(1.0, 2.0), &device);
            let mut ours = BatchNormConfig::new(3).init::<B>(&device);
            // Not a clone: clones share their running statistics.
            let mut theirs = BatchNormConfig::new(3).init::<B>(&device);
            // Non-trivial affine parameters, so their gradients and uses are checked too.
            for bn in [&mut ours, &mut theirs] {
                bn.gamma = Param::from_tensor(Tensor::from_floats([1.3, 0.8, -0.5], &device));
                bn.beta = Param::from_tensor(Tensor::from_floats([0.3, -0.1, 0.2], &device));
            }
            let expected = expected_running_statistics(&x);
            let (xa, xb) = (x.clone().require_grad(), x.require_grad());
            let ya = batch_norm(&ours, xa.clone(), relu);
            let yb = theirs.forward(xb.clone());
            let yb = if relu { activation::relu(yb) } else { yb };
            let max_diff = |a: Tensor<CpuBackend, 1>, b: Tensor<CpuBackend, 1>| -> f32 {
                (a - b).abs().max().into_scalar()
            };
            let flat = |t: Tensor<CpuBackend, 4>| t.flatten::<1>(0, 3);
            assert!(
                max_diff(flat(ya.clone().inner()), flat(yb.clone().inner())) < 1e-4,
                "output, relu {relu}"
            );
            let weights = Tensor::<B, 4>::random([4, 3, 5, 6], Distribution::Default, &device);
            let ga = (ya * weights.clone()).sum().backward();
            let gb = (yb * weights).sum().backward();
            let dx = max_diff(flat(xa.grad(&ga).unwrap()), flat(xb.grad(&gb).unwrap()));
            let dgamma = max_diff(
                ours.gamma.grad(&ga).unwrap(),
                theirs.gamma.grad(&gb).unwrap(),
            );
            let dbeta = max_diff(ours.beta.grad(&ga).unwrap(), theirs.beta.grad(&gb).unwrap());
            assert!(
                dx < 1e-4 && dgamma < 1e-4 && dbeta < 1e-4,
                "relu {relu}: {dx} {dgamma} {dbeta}"
            );
            assert_running_statistics(&ours, &expected);
        }
    }

    #[test]
    fn inference_mode_matches_burn_batchnorm() {
        let device = Default::default();
        let x =
            Tensor::<CpuBackend, 4>::random([3, 2, 4, 5], Distribution::Normal(0.5, 1.5), &device);
        let mut bn = BatchNormConfig::new(2).init::<CpuBackend>(&device);
        bn.running_mean =
            burn::module::RunningState::new(Tensor::from_floats([0.3, -1.0], &device));
        bn.running_var = burn::module::RunningState::new(Tensor::from_floats([2.0, 0.5], &device));
        let d: f32 = (batch_norm_2d(&bn, x.clone()) - bn.forward(x))
            .abs()
            .max()
            .into_scalar();
        assert!(d < 1e-5, "max difference {d}");
    }
}
