//! The ResNet-18 backbone (see the diagram in `model`): a stem (CIFAR's 3x3 stride 1 without
//! max-pool, or ImageNet's 7x7 stride 2 and a 3x3 stride-2 max-pool), four stages of two
//! BasicBlocks, global average pooling.
//!
//! Initialised as torchvision's `resnet18` is: every convolution
//! `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, BatchNorm weight 1 and bias 0,
//! `zero_init_residual=False`. The CIFAR stem is the 3x3 convolution that replaces torchvision's
//! `conv1` after construction (solo-learn, SimCLR's CIFAR code), so it keeps PyTorch's default
//! `Conv2d` initialisation, Kaiming uniform with `a=sqrt(5)` (bound `1/sqrt(fan_in)`), which is
//! also Burn's default.

use crate::kernels::conv::conv2d;
use crate::kernels::norm::batch_norm;
use crate::model::{NetworkOps, Stem};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d, Relu};
use burn::prelude::*;
use burn::tensor::module::max_pool2d;
use onnx::{ExportOptions, GraphBuilder, ToOnnx};

/// torchvision's ResNet initialisation of its convolutions: `kaiming_normal_(mode="fan_out",
/// nonlinearity="relu")`, a normal of std `sqrt(2 / (c_out * kh * kw))`.
pub fn torchvision_conv_init() -> Initializer {
    Initializer::KaimingNormal {
        gain: std::f64::consts::SQRT_2,
        fan_out_only: true,
    }
}

/// A block's 3x3 convolution (`padding 1`, torchvision's initialisation).
fn conv3x3<B: Backend>(c_in: usize, c_out: usize, stride: usize, device: &B::Device) -> Conv2d<B> {
    // No bias: every convolution is followed by BatchNorm, which has its own shift.
    cifar_stem_conv(c_in, c_out, stride)
        .with_initializer(torchvision_conv_init())
        .init(device)
}

/// A 3x3 convolution with padding 1 and PyTorch's default initialisation (the CIFAR stem's).
fn cifar_stem_conv(c_in: usize, c_out: usize, stride: usize) -> Conv2dConfig {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
}

/// The 1x1 strided convolution + BatchNorm that matches the shortcut to a block's output shape.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
}

/// ResNet BasicBlock: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm<B>,
    pub downsample: Option<Downsample<B>>,
    pub relu: Relu,
}

impl<B: Backend> BasicBlock<B> {
    pub fn new(c_in: usize, c_out: usize, stride: usize, device: &B::Device) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| Downsample {
            conv: Conv2dConfig::new([c_in, c_out], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .with_initializer(torchvision_conv_init())
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        });
        Self {
            conv1: conv3x3(c_in, c_out, stride, device),
            bn1: BatchNormConfig::new(c_out).init(device),
            conv2: conv3x3(c_out, c_out, 1, device),
            bn2: BatchNormConfig::new(c_out).init(device),
            downsample,
            relu: Relu::new(),
        }
    }
}

impl<B: NetworkOps> BasicBlock<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let shortcut = match &self.downsample {
            Some(down) => batch_norm(&down.bn, conv2d(&down.conv, x.clone()), false),
            None => x.clone(),
        };
        let out = batch_norm(&self.bn1, conv2d(&self.conv1, x), true);
        let out = batch_norm(&self.bn2, conv2d(&self.conv2, out), false);
        self.relu.forward(out + shortcut)
    }
}

/// The ImageNet stem's max-pool: 3x3, stride 2, padding 1 (torchvision's `resnet18`).
pub const STEM_POOL: (usize, usize, usize) = (3, 2, 1);

/// ResNet-18 without its classifier: maps `[N, 3, H, W]` normalised images to `[N, 8*width]`.
#[derive(Module, Debug)]
pub struct ResNet18<B: Backend> {
    pub stem_conv: Conv2d<B>,
    pub stem_bn: BatchNorm<B>,
    /// The ImageNet stem's max-pool after the stem's ReLU (a constant: no weights).
    pub stem_pool: bool,
    pub blocks: Vec<BasicBlock<B>>,
    pub relu: Relu,
}

impl<B: Backend> ResNet18<B> {
    /// The CIFAR ResNet-18 (3x3 stem, no max-pool).
    pub fn new(width: usize, device: &B::Device) -> Self {
        Self::with_stem(width, Stem::Cifar, device)
    }

    /// A ResNet-18 with `stem`: [`Stem::Imagenet`] is torchvision's `resnet18` stem (7x7 stride
    /// 2, padding 3, then the 3x3 stride-2 max-pool), for images larger than about 64 px.
    pub fn with_stem(width: usize, stem: Stem, device: &B::Device) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = width;
        for (stage, stride) in [1, 2, 2, 2].into_iter().enumerate() {
            let c_out = width << stage;
            blocks.push(BasicBlock::new(c_in, c_out, stride, device));
            blocks.push(BasicBlock::new(c_out, c_out, 1, device));
            c_in = c_out;
        }
        let imagenet = stem == Stem::Imagenet;
        let stem_conv = if imagenet {
            Conv2dConfig::new([3, width], [7, 7])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                .with_bias(false)
                .with_initializer(torchvision_conv_init())
                .init(device)
        } else {
            cifar_stem_conv(3, width, 1).init(device)
        };
        Self {
            stem_conv,
            stem_bn: BatchNormConfig::new(width).init(device),
            stem_pool: imagenet,
            blocks,
            relu: Relu::new(),
        }
    }
}

impl<B: Backend> ResNet18<B> {
    /// Size of the embedding: the last stage's channels.
    pub fn embedding_dim(&self) -> usize {
        self.blocks
            .last()
            .map_or(self.stem_bn.gamma.dims()[0], |b| b.bn2.gamma.dims()[0])
    }
}

impl<B: NetworkOps> ResNet18<B> {
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = batch_norm(&self.stem_bn, conv2d(&self.stem_conv, images), true);
        if self.stem_pool {
            let (k, s, p) = STEM_POOL;
            x = max_pool2d(x, [k, k], [s, s], [p, p], [1, 1], false);
        }
        for block in &self.blocks {
            x = block.forward(x);
        }
        // Global average pool as a mean over the flattened spatial axis: the same as
        // AdaptiveAvgPool2d([1, 1]), and supported by every backend.
        let [n, c, h, w] = x.dims();
        x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
    }
}

impl<B: Backend> ToOnnx for BasicBlock<B> {
    fn to_onnx(&self, g: &mut GraphBuilder, x: &str, options: &ExportOptions) -> String {
        let shortcut = match &self.downsample {
            Some(down) => g.conv_batch_norm(x, &down.conv, &down.bn, options),
            None => x.to_string(),
        };
        let out = g.conv_batch_norm(x, &self.conv1, &self.bn1, options);
        let out = g.relu(&out);
        let out = g.conv_batch_norm(&out, &self.conv2, &self.bn2, options);
        let out = g.add(&out, &shortcut);
        g.relu(&out)
    }
}

/// The ONNX graph of the same computation in inference mode (BatchNorm on running statistics).
impl<B: Backend> ToOnnx for ResNet18<B> {
    fn to_onnx(&self, g: &mut GraphBuilder, x: &str, options: &ExportOptions) -> String {
        let stem = g.conv_batch_norm(x, &self.stem_conv, &self.stem_bn, options);
        let mut x = g.relu(&stem);
        if self.stem_pool {
            let (k, s, p) = STEM_POOL;
            x = g.max_pool(&x, k, s, p);
        }
        for block in &self.blocks {
            x = block.to_onnx(g, &x, options);
        }
        let pooled = g.global_average_pool(&x);
        g.flatten(&pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    #[test]
    fn encoder_has_resnet18_parameter_count() {
        let device = Default::default();
        let encoder = ResNet18::<CpuBackend>::new(64, &device);
        let params = encoder.num_params() as f64 / 1e6;
        // The torchvision ResNet-18 with a 3x3 stem and no fc layer has 11.17 M parameters.
        assert!(
            (params - 11.17).abs() <= 0.01,
            "encoder has {params:.4} M parameters"
        );
        // torchvision's resnet18 without fc: 11.18 M (the 7x7 stem has 9,408 weights, not 1,728).
        let imagenet = ResNet18::<CpuBackend>::with_stem(64, Stem::Imagenet, &device);
        assert_eq!(imagenet.num_params() - encoder.num_params(), 9408 - 1728);
    }

    /// The standard deviation of a tensor's values.
    fn std_of<const D: usize>(t: Tensor<CpuBackend, D>) -> f64 {
        let values: Vec<f32> = t.into_data().to_vec().unwrap();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        (values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt()
    }

    /// Every layer's weights against torchvision's formulas, on full-width networks (enough
    /// values per layer that the sample std is within a few percent): convolutions of the blocks,
    /// the shortcuts and the ImageNet stem `sqrt(2 / fan_out)`; the CIFAR stem PyTorch's default,
    /// uniform on `+-1/sqrt(fan_in)` (std `1/sqrt(3 fan_in)`); BatchNorm 1 and 0. Burn's default
    /// everywhere (`1/sqrt(3 fan_in)`) fails the block convolutions by 2.4x.
    #[test]
    fn every_layer_is_initialised_as_torchvision_does() {
        let device = Default::default();
        let check = |what: String, conv: &Conv2d<CpuBackend>, expected: f64| {
            let [c_out, c_in, kh, kw] = conv.weight.dims();
            let count = c_out * c_in * kh * kw;
            // The sample std of `count` normal values is within 4 standard errors of the truth.
            let tolerance = 4.0 / (2.0 * count as f64).sqrt() + 0.01;
            let std = std_of(conv.weight.val());
            assert!(
                (std / expected - 1.0).abs() <= tolerance,
                "{what} [{c_out}, {c_in}, {kh}, {kw}]: std {std:.5}, expected {expected:.5}"
            );
        };
        let fan_out = |conv: &Conv2d<CpuBackend>| {
            let [c_out, _, kh, kw] = conv.weight.dims();
            (c_out * kh * kw) as f64
        };
        let fan_in = |conv: &Conv2d<CpuBackend>| {
            let [_, c_in, kh, kw] = conv.weight.dims();
            (c_in * kh * kw) as f64
        };
        for stem in [Stem::Cifar, Stem::Imagenet] {
            let net = ResNet18::<CpuBackend>::with_stem(64, stem, &device);
            let stem_expected = match stem {
                Stem::Cifar | Stem::Auto => 1.0 / (3.0 * fan_in(&net.stem_conv)).sqrt(),
                Stem::Imagenet => (2.0 / fan_out(&net.stem_conv)).sqrt(),
            };
            check(format!("{stem:?} stem"), &net.stem_conv, stem_expected);
            let mut norms = vec![&net.stem_bn];
            for (i, block) in net.blocks.iter().enumerate() {
                for (name, conv) in [("conv1", &block.conv1), ("conv2", &block.conv2)] {
                    let expected = (2.0 / fan_out(conv)).sqrt();
                    check(format!("blocks.{i}.{name}"), conv, expected);
                }
                norms.extend([&block.bn1, &block.bn2]);
                if let Some(down) = &block.downsample {
                    let expected = (2.0 / fan_out(&down.conv)).sqrt();
                    check(format!("blocks.{i}.downsample"), &down.conv, expected);
                    norms.push(&down.bn);
                }
            }
            for bn in norms {
                let gamma: Vec<f32> = bn.gamma.val().into_data().to_vec().unwrap();
                let beta: Vec<f32> = bn.beta.val().into_data().to_vec().unwrap();
                assert!(gamma.iter().all(|&g| g == 1.0) && beta.iter().all(|&b| b == 0.0));
            }
        }
    }

    #[test]
    fn imagenet_stem_quarters_the_plane_before_the_stages() {
        let device = Default::default();
        let encoder = ResNet18::<CpuBackend>::with_stem(4, Stem::Imagenet, &device);
        let images = Tensor::<CpuBackend, 4>::ones([2, 3, 96, 96], &device);
        assert_eq!(encoder.forward(images).dims(), [2, 32]);
        let stem = conv2d(&encoder.stem_conv, Tensor::ones([1, 3, 96, 96], &device));
        assert_eq!(stem.dims(), [1, 4, 48, 48]);
    }
}
