//! The network's convolutions as a Burn backend extension, so the CPU backend can run them with
//! the GEMM kernels of [`crate::kernels::conv_kernels`] (3.3x faster than flex's own over the three passes of
//! a ResNet-18 step: `cargo run --release -p trainer --example conv_bench`), while every other
//! backend keeps Burn's.
//!
//! Only how the output and the two gradients are computed changes: the parameters are Burn's
//! `Conv2d` weights, so checkpoints, ONNX export and the optimizer see the same model.

use crate::kernels::conv_kernels;
use crate::kernels::conv_shape::ConvShape;
use crate::kernels::winograd;
use crate::precision;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::FloatDType;
use burn::tensor::TensorPrimitive;

/// Stride and padding of a bias-free convolution with a square kernel (all the network uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    fn options(self) -> ConvOptions<2> {
        ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1)
    }
}

/// A backend's convolution passes. The defaults are Burn's own ops; a backend overrides them
/// where it has faster kernels.
pub trait ConvBackend: Backend {
    /// Whether inference runs the encoder prepared for the CPU kernels
    /// ([`crate::model::prepared::InferenceEncoder`]) instead of the module's forward pass.
    const PREPARED_INFERENCE: bool = false;

    fn conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, g: ConvGeometry) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, g.options())
    }
    fn conv_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        g: ConvGeometry,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, grad, g.options())
    }
    fn conv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        g: ConvGeometry,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, grad, g.options())
    }
    /// Mixed precision: the convolution of f32 `x` and `weight` rounded to `dtype`, computed in
    /// `dtype`, returned in f32. Under autodiff the input gradient is computed in `dtype` too,
    /// the weight gradient in f32 from the rounded input (it sums over the whole batch and
    /// plane, N x H x W terms, which a half-precision accumulator cannot hold).
    fn conv_mixed(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        g: ConvGeometry,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        let y = Self::conv2d(
            Self::float_cast(x, dtype),
            Self::float_cast(weight, dtype),
            None,
            g.options(),
        );
        Self::float_cast(y, FloatDType::F32)
    }
}

/// Applies `conv` through the backend's [`ConvBackend`] passes when it is one they cover (no
/// bias, no groups or dilation, square kernel, symmetric padding: every convolution of the
/// network), else through Burn's `Conv2d::forward`.
pub fn conv2d<B: ConvBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(g) = geometry(conv) else {
        return conv.forward(x);
    };
    if let Some(dtype) = precision::current().compute_dtype() {
        // Mixed precision: Burn's convolution in the low dtype (the kernels here are f32).
        let weight = conv.weight.val().into_primitive().tensor();
        let y = B::conv_mixed(x.into_primitive().tensor(), weight, g, dtype);
        return Tensor::from_primitive(TensorPrimitive::Float(y));
    }
    let weight = conv.weight.val().into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::conv(
        x.into_primitive().tensor(),
        weight,
        g,
    )))
}

/// Stride and padding of `conv` when the kernels here cover it (no bias, no groups or dilation,
/// square kernel, equal strides, symmetric padding: every convolution of the network).
pub fn geometry<B: Backend>(conv: &Conv2d<B>) -> Option<ConvGeometry> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => Some(0),
        PaddingConfig2d::Explicit(top, left, bottom, right)
            if top == left && left == bottom && bottom == right =>
        {
            Some(top)
        }
        _ => None,
    };
    let [kernel_h, kernel_w] = conv.kernel_size;
    let covered = conv.bias.is_none()
        && conv.groups == 1
        && conv.dilation == [1, 1]
        && kernel_h == kernel_w
        && conv.stride[0] == conv.stride[1];
    padding.filter(|_| covered).map(|padding| ConvGeometry {
        stride: conv.stride[0],
        padding,
    })
}

#[cfg(feature = "cuda")]
impl ConvBackend for burn::backend::Cuda {}
#[cfg(feature = "wgpu")]
impl ConvBackend for burn::backend::Wgpu {}
#[cfg(feature = "ndarray")]
impl ConvBackend for burn::backend::NdArray {}
#[cfg(feature = "candle")]
#[allow(deprecated)]
impl ConvBackend for burn::backend::Candle {}

#[cfg(feature = "flex")]
mod flex {
    use super::*;
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::tensor::ops::ModuleOps;
    use burn::tensor::{DType, TensorData};

    /// Shape of the convolution of `x` by `weight`, when both are f32 (else Burn's path runs).
    fn shape_of(x: &FlexTensor, weight: &FlexTensor, g: ConvGeometry) -> Option<ConvShape> {
        let (xs, ws) = (x.layout().shape(), weight.layout().shape());
        let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
        (f32s && xs.num_dims() == 4 && ws.num_dims() == 4 && ws[2] == ws[3] && ws[1] == xs[1]).then(
            || ConvShape {
                batch: xs[0],
                c_in: xs[1],
                height: xs[2],
                width: xs[3],
                c_out: ws[0],
                kernel: ws[2],
                stride: g.stride,
                padding: g.padding,
            },
        )
    }

    fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    impl ConvBackend for Flex {
        const PREPARED_INFERENCE: bool = true;

        fn conv(x: FlexTensor, weight: FlexTensor, g: ConvGeometry) -> FlexTensor {
            let Some(s) = shape_of(&x, &weight, g) else {
                return Flex::conv2d(x, weight, None, g.options());
            };
            let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
            let y = if winograd::faster_than_im2col(&s) {
                winograd::conv2d(x.storage(), weight.storage(), &s)
            } else {
                conv_kernels::conv2d(x.storage(), weight.storage(), &s)
            };
            tensor(y, [s.batch, s.c_out, s.out_height(), s.out_width()])
        }

        fn conv_input_grad(
            x: FlexTensor,
            weight: FlexTensor,
            grad: FlexTensor,
            g: ConvGeometry,
        ) -> FlexTensor {
            let Some(s) = shape_of(&x, &weight, g) else {
                return Flex::conv2d_x_backward(x, weight, grad, g.options());
            };
            let (grad, weight) = (grad.to_contiguous(), weight.to_contiguous());
            let dx = if winograd::faster_than_im2col(&s) {
                winograd::conv2d_input_grad(grad.storage(), weight.storage(), &s)
            } else {
                conv_kernels::conv2d_input_grad(grad.storage(), weight.storage(), &s)
            };
            tensor(dx, [s.batch, s.c_in, s.height, s.width])
        }

        fn conv_weight_grad(
            x: FlexTensor,
            weight: FlexTensor,
            grad: FlexTensor,
            g: ConvGeometry,
        ) -> FlexTensor {
            let Some(s) = shape_of(&x, &weight, g) else {
                return Flex::conv2d_weight_backward(x, weight, grad, g.options());
            };
            let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
            let dw = if winograd::faster_than_im2col(&s) {
                winograd::conv2d_weight_grad(x.storage(), grad.storage(), &s)
            } else {
                conv_kernels::conv2d_weight_grad(x.storage(), grad.storage(), &s)
            };
            tensor(dw, [s.c_out, s.c_in, s.kernel, s.kernel])
        }
    }
}

/// Under autodiff the forward pass records one node whose backward step calls the inner
/// backend's two gradient passes.
impl<B: ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, g: ConvGeometry) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ConvBackward;

        impl<B: ConvBackend> Backward<B, 2> for ConvBackward {
            type State = (NodeId, NodeId, ConvGeometry);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state, g) = ops.state;
                let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
                let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_state);
                if let Some(node) = node_x {
                    let dx = B::conv_input_grad(x.clone(), weight.clone(), grad.clone(), g);
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_weight {
                    grads.register::<B>(node.id, B::conv_weight_grad(x, weight, grad, g));
                }
            }
        }

        match ConvBackward
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish(
                    (x_state, weight_state, g),
                    B::conv(x.primitive, weight.primitive, g),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv(x.primitive, weight.primitive, g)),
        }
    }

    fn conv_mixed(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        g: ConvGeometry,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MixedConvBackward;

        impl<B: ConvBackend> Backward<B, 2> for MixedConvBackward {
            type State = (NodeId, NodeId, ConvGeometry, FloatDType);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state, g, dtype) = ops.state;
                let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
                let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_state);
                let low = |t| B::float_cast(t, dtype);
                let x = low(x);
                if let Some(node) = node_x {
                    let dx = B::conv2d_x_backward(
                        x.clone(),
                        low(weight.clone()),
                        low(grad.clone()),
                        g.options(),
                    );
                    grads.register::<B>(node.id, B::float_cast(dx, FloatDType::F32));
                }
                if let Some(node) = node_weight {
                    let x = B::float_cast(x, FloatDType::F32);
                    let dw = B::conv2d_weight_backward(x, weight, grad, g.options());
                    grads.register::<B>(node.id, dw);
                }
            }
        }

        match MixedConvBackward
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish(
                    (x_state, weight_state, g, dtype),
                    B::conv_mixed(x.primitive, weight.primitive, g, dtype),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv_mixed(x.primitive, weight.primitive, g, dtype))
            }
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    type Ad = Autodiff<Flex>;

    fn max_diff<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Output and both gradients equal Burn's own `Conv2d` (forward + autodiff) on the same weights.
    #[test]
    fn matches_burn_conv2d_forward_and_gradients() {
        let device = Default::default();
        // (16, 16, 3, 1): the Winograd kernels (forward and weight gradient on an 8x8 plane).
        for (c_in, c_out, kernel, stride) in
            [(3, 8, 3, 1), (16, 16, 3, 1), (8, 16, 3, 2), (8, 16, 1, 2)]
        {
            let conv: Conv2d<Ad> = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    kernel / 2,
                    kernel / 2,
                    kernel / 2,
                    kernel / 2,
                ))
                .with_bias(false)
                .init(&device);
            let x =
                Tensor::<Ad, 4>::random([4, c_in, 8, 8], Distribution::Normal(0.0, 1.0), &device)
                    .require_grad();
            let target = Tensor::<Ad, 4>::random(
                [4, c_out, 8 / stride, 8 / stride],
                Distribution::Default,
                &device,
            );

            let ours = conv2d(&conv, x.clone());
            let burns = conv.forward(x.clone());
            assert_eq!(ours.dims(), burns.dims());
            assert!(max_diff(ours.clone().inner(), burns.clone().inner()) < 1e-5);

            // A loss that weights every output differently, so each gradient entry is tested.
            let grads_ours = (ours * target.clone()).sum().backward();
            let grads_burn = (burns * target).sum().backward();
            let dx = (x.grad(&grads_ours).unwrap(), x.grad(&grads_burn).unwrap());
            let dw = (
                conv.weight.grad(&grads_ours).unwrap(),
                conv.weight.grad(&grads_burn).unwrap(),
            );
            assert!(
                max_diff(dx.0, dx.1) < 1e-4,
                "input gradient, {c_in}->{c_out} k{kernel} s{stride}"
            );
            assert!(
                max_diff(dw.0, dw.1) < 1e-3,
                "weight gradient, {c_in}->{c_out} k{kernel} s{stride}"
            );
        }
    }
}
