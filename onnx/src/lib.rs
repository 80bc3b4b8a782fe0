//! Export of Burn encoders to standard ONNX (opset 17).
//!
//! [`GraphBuilder`] has one function per ONNX operator and one per Burn building block
//! (`Conv2d`, `BatchNorm`, `Linear`), each appending nodes and initializers and returning the name
//! of its output. A network exports itself by implementing [`ToOnnx`] in terms of these, block by
//! block, the way its `forward` reads. Burn 0.21 has no ONNX exporter; this one needs no protoc.

pub mod proto;

use anyhow::{bail, ensure, Context, Result};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::prelude::*;
use proto::*;
use std::path::Path;

/// ONNX opset the graph targets; every operator used exists unchanged since opset 15.
pub const OPSET: i64 = 17;
/// IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;

#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Fold each BatchNorm into the convolution before it (fewer nodes, same outputs to ~1e-6).
    pub fold_batch_norm: bool,
}

/// A network (or block) that can append itself to an ONNX graph.
pub trait ToOnnx {
    /// Appends the nodes computing `self.forward(input)` and returns the output's name.
    fn to_onnx(&self, graph: &mut GraphBuilder, input: &str, options: &ExportOptions) -> String;
}

/// Host copy of a Burn tensor's values, as f32.
pub fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("float tensor data")
}

/// A BatchNorm in inference mode as per-channel `(scale, shift)`:
/// `gamma * (y - mean) / sqrt(var + eps) + beta = scale * y + shift`, what folding it into the
/// convolution before it multiplies and adds.
pub fn batch_norm_scale_shift<B: Backend>(bn: &BatchNorm<B>) -> (Vec<f32>, Vec<f32>) {
    let gamma = values(bn.gamma.val());
    let beta = values(bn.beta.val());
    let mean = values(bn.running_mean.value());
    let var = values(bn.running_var.value());
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + bn.epsilon as f32).sqrt())
        .collect();
    let shift = (0..gamma.len())
        .map(|c| beta[c] - mean[c] * scale[c])
        .collect();
    (scale, shift)
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: attribute_type::INTS,
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: attribute_type::INT,
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: attribute_type::FLOAT,
        ..Default::default()
    }
}

/// A float tensor value with a shape whose dimensions are numbers or named (dynamic) axes.
pub fn tensor_value(name: &str, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Ok(v) => Dimension {
                                dim_value: Some(*v),
                                dim_param: None,
                            },
                            Err(p) => Dimension {
                                dim_value: None,
                                dim_param: Some(p.to_string()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// Builds one ONNX graph: nodes in execution order, weights as initializers.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a float constant and returns its name.
    pub fn initializer(&mut self, hint: &str, dims: &[usize], data: Vec<f32>) -> String {
        assert_eq!(
            dims.iter().product::<usize>(),
            data.len(),
            "{hint}: shape and data disagree"
        );
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: name.clone(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// Appends a node with one output and returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        let output = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.into(),
            attribute: attributes,
            domain: String::new(),
        });
        output
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], vec![])
    }

    /// ONNX `MaxPool` with a square window (padding never wins: it counts as -infinity).
    pub fn max_pool(&mut self, x: &str, kernel: usize, stride: usize, padding: usize) -> String {
        let (k, s, p) = (kernel as i64, stride as i64, padding as i64);
        self.node(
            "MaxPool",
            &[x],
            vec![
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("strides", &[s, s]),
                attr_ints("pads", &[p, p, p, p]),
            ],
        )
    }

    pub fn global_average_pool(&mut self, x: &str) -> String {
        self.node("GlobalAveragePool", &[x], vec![])
    }

    /// `[N, d1, d2, ...] -> [N, d1*d2*...]`.
    pub fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], vec![attr_int("axis", 1)])
    }

    /// `(x - mean) / std` per channel of an `[N, C, H, W]` input.
    pub fn normalize(&mut self, x: &str, mean: &[f32], std: &[f32]) -> String {
        let c = mean.len();
        let mean = self.initializer("mean", &[1, c, 1, 1], mean.to_vec());
        let std = self.initializer("std", &[1, c, 1, 1], std.to_vec());
        let centered = self.node("Sub", &[x, &mean], vec![]);
        self.node("Div", &[&centered, &std], vec![])
    }

    /// ONNX `Conv` from raw weights `[C_out, C_in/groups, kH, kW]` and an optional bias.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_raw(
        &mut self,
        x: &str,
        weight: (Vec<usize>, Vec<f32>),
        bias: Option<Vec<f32>>,
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        groups: usize,
    ) -> String {
        let (dims, data) = weight;
        let kernel = [dims[2] as i64, dims[3] as i64];
        let w = self.initializer("conv_weight", &dims, data);
        let b = bias.map(|b| {
            let len = b.len();
            self.initializer("conv_bias", &[len], b)
        });
        let mut inputs = vec![x, w.as_str()];
        if let Some(b) = &b {
            inputs.push(b);
        }
        let ints = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        self.node(
            "Conv",
            &inputs,
            vec![
                attr_ints("kernel_shape", &kernel),
                attr_ints("strides", &ints(&stride)),
                // Burn's Explicit(top, left, bottom, right) is ONNX's [x1_begin, x2_begin, x1_end, x2_end].
                attr_ints("pads", &ints(&padding)),
                attr_ints("dilations", &ints(&dilation)),
                attr_int("group", groups as i64),
            ],
        )
    }

    pub fn conv2d<B: Backend>(&mut self, x: &str, conv: &Conv2d<B>) -> String {
        self.conv2d_scaled(x, conv, None)
    }

    /// A Conv2d, optionally with a per-output-channel `(scale, shift)` folded into it.
    fn conv2d_scaled<B: Backend>(
        &mut self,
        x: &str,
        conv: &Conv2d<B>,
        fold: Option<(Vec<f32>, Vec<f32>)>,
    ) -> String {
        let weight = conv.weight.val();
        let dims = weight.dims().to_vec();
        let mut w = values(weight);
        let mut bias = conv.bias.as_ref().map(|b| values(b.val()));
        if let Some((scale, shift)) = fold {
            let per_out = w.len() / dims[0];
            for (o, chunk) in w.chunks_mut(per_out).enumerate() {
                chunk.iter_mut().for_each(|v| *v *= scale[o]);
            }
            let old = bias.unwrap_or_else(|| vec![0.0; dims[0]]);
            bias = Some((0..dims[0]).map(|o| old[o] * scale[o] + shift[o]).collect());
        }
        let padding = match &conv.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right) => [*top, *left, *bottom, *right],
            PaddingConfig2d::Valid => [0; 4],
            PaddingConfig2d::Same => {
                let [kh, kw] = conv.kernel_size;
                let (ph, pw) = ((kh - 1) / 2, (kw - 1) / 2);
                [ph, pw, kh - 1 - ph, kw - 1 - pw]
            }
        };
        self.conv_raw(
            x,
            (dims, w),
            bias,
            conv.stride,
            padding,
            conv.dilation,
            conv.groups,
        )
    }

    /// ONNX `BatchNormalization` in inference mode, with the module's running statistics.
    pub fn batch_norm<B: Backend>(&mut self, x: &str, bn: &BatchNorm<B>) -> String {
        let c = bn.gamma.val().dims()[0];
        let scale = self.initializer("bn_scale", &[c], values(bn.gamma.val()));
        let bias = self.initializer("bn_bias", &[c], values(bn.beta.val()));
        let mean = self.initializer("bn_mean", &[c], values(bn.running_mean.value()));
        let var = self.initializer("bn_var", &[c], values(bn.running_var.value()));
        self.node(
            "BatchNormalization",
            &[x, &scale, &bias, &mean, &var],
            vec![attr_float("epsilon", bn.epsilon as f32)],
        )
    }

    /// Conv2d then BatchNorm, as two nodes or as one folded Conv.
    pub fn conv_batch_norm<B: Backend>(
        &mut self,
        x: &str,
        conv: &Conv2d<B>,
        bn: &BatchNorm<B>,
        options: &ExportOptions,
    ) -> String {
        if !options.fold_batch_norm {
            let y = self.conv2d(x, conv);
            return self.batch_norm(&y, bn);
        }
        self.conv2d_scaled(x, conv, Some(batch_norm_scale_shift(bn)))
    }

    /// ONNX `Gemm` computing Burn's `Linear` (`x W + b`, W stored `[d_in, d_out]`).
    pub fn linear<B: Backend>(&mut self, x: &str, linear: &Linear<B>) -> String {
        let [d_in, d_out] = linear.weight.val().dims();
        let w = self.initializer("linear_weight", &[d_in, d_out], values(linear.weight.val()));
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = &linear.bias {
            inputs.push(self.initializer("linear_bias", &[d_out], values(b.val())));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node("Gemm", &inputs, vec![])
    }

    /// Wraps the graph into a model whose input and output are `input` and `output`.
    pub fn finish(
        self,
        input: ValueInfoProto,
        output_name: &str,
        output: ValueInfoProto,
        metadata: &[(&str, String)],
    ) -> ModelProto {
        let mut nodes = self.nodes;
        // Rename the last node's output to the public output name.
        if let Some(last) = nodes.iter_mut().rev().find(|n| n.output[0] == output_name) {
            last.output[0] = output.name.clone();
        }
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "selfsup".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: String::new(),
            model_version: 1,
            doc_string: String::new(),
            graph: Some(GraphProto {
                node: nodes,
                name: "encoder".into(),
                initializer: self.initializers,
                doc_string: String::new(),
                input: vec![input],
                output: vec![output],
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.to_string(),
                    value: v.clone(),
                })
                .collect(),
        }
    }
}

/// Writes `model` to `path` through a temporary file, so a failure leaves no partial `.onnx`.
pub fn write_model(model: &ModelProto, path: &Path) -> Result<()> {
    let tmp = path.with_extension("onnx.tmp");
    let result = std::fs::write(&tmp, model.to_bytes()).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// Reads an ONNX file written by any exporter, with a clear error for a non-ONNX or cut file.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let model = ModelProto::from_bytes(&bytes).with_context(|| {
        format!(
            "{}: not a valid ONNX model (corrupt or truncated)",
            path.display()
        )
    })?;
    ensure!(
        model.graph.is_some(),
        "{}: ONNX model has no graph",
        path.display()
    );
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::BatchNormConfig;

    #[test]
    fn conv_node_carries_weights_and_attributes() {
        let device = Default::default();
        let conv: Conv2d<Flex> = Conv2dConfig::new([3, 4], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let mut graph = GraphBuilder::new();
        let y = graph.conv2d("x", &conv);
        let model = graph.finish(
            tensor_value("x", &[Err("N"), Ok(3), Ok(8), Ok(8)]),
            &y,
            tensor_value("y", &[]),
            &[],
        );
        let bytes = model.to_bytes();
        let back = ModelProto::from_bytes(&bytes).unwrap();
        let graph = back.graph.unwrap();
        let node = &graph.node[0];
        assert_eq!(node.op_type, "Conv");
        assert_eq!(node.output, vec!["y"]);
        let attr = |n: &str| {
            node.attribute
                .iter()
                .find(|a| a.name == n)
                .unwrap()
                .ints
                .clone()
        };
        assert_eq!(attr("strides"), vec![2, 2]);
        assert_eq!(attr("pads"), vec![1, 1, 1, 1]);
        assert_eq!(attr("kernel_shape"), vec![3, 3]);
        let w = &graph.initializer[0];
        assert_eq!(w.dims, vec![4, 3, 3, 3]);
        assert_eq!(w.raw_data.len(), 4 * 3 * 3 * 3 * 4);
        let first = f32::from_le_bytes(w.raw_data[..4].try_into().unwrap());
        assert_eq!(first, values(conv.weight.val())[0]);
        assert_eq!(graph.initializer[1].dims, vec![4], "bias");
    }

    #[test]
    fn folded_batch_norm_scales_weights_and_shifts_bias() {
        let device = Default::default();
        let conv: Conv2d<Flex> = Conv2dConfig::new([1, 2], [1, 1])
            .with_bias(false)
            .init(&device);
        let mut bn: BatchNorm<Flex> = BatchNormConfig::new(2).with_epsilon(0.0).init(&device);
        bn.gamma = bn.gamma.map(|_| Tensor::from_floats([2.0, 3.0], &device));
        bn.beta = bn.beta.map(|_| Tensor::from_floats([0.5, -1.0], &device));
        bn.running_mean = burn::module::RunningState::new(Tensor::from_floats([1.0, 0.0], &device));
        bn.running_var = burn::module::RunningState::new(Tensor::from_floats([4.0, 9.0], &device));
        let w = values(conv.weight.val());
        let mut graph = GraphBuilder::new();
        let y = graph.conv_batch_norm(
            "x",
            &conv,
            &bn,
            &ExportOptions {
                fold_batch_norm: true,
            },
        );
        let model = graph.finish(tensor_value("x", &[]), &y, tensor_value("y", &[]), &[]);
        let g = model.graph.unwrap();
        assert_eq!(g.node.len(), 1);
        let floats = |t: &TensorProto| -> Vec<f32> {
            t.raw_data
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        // scale = gamma / sqrt(var) = [1, 1]; shift = beta - mean * scale = [-0.5, -1].
        assert_eq!(floats(&g.initializer[0]), w);
        assert_eq!(floats(&g.initializer[1]), vec![-0.5, -1.0]);
    }

    #[test]
    fn non_onnx_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("onnx-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.onnx");
        std::fs::write(&path, b"\xff\xff\xff not protobuf").unwrap();
        let err = format!("{:#}", read_model(&path).unwrap_err());
        assert!(
            err.contains("bad.onnx") && err.contains("not a valid ONNX"),
            "{err}"
        );
    }
}
