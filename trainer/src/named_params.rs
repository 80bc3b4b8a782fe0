//! Every float tensor of a module (parameters and BatchNorm running statistics) by its path in
//! the module tree, e.g. `encoder.blocks.2.downsample.bn.running_var`: read them out, or replace
//! them from a name -> values map. This is how weights cross to and from other frameworks (the
//! golden-step test loads PyTorch's weights this way) and how tests look up one gradient.

use anyhow::{bail, Context, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::TensorData;
use std::collections::BTreeMap;
use std::path::Path;

/// Tensors by name: shape and float32 values.
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// One float tensor of a module: its path, its parameter id (for looking up its gradient), its
/// shape and values.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub name: String,
    pub id: ParamId,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The gradient of `tensor` (a parameter of the model `grads` came from), flattened; `None` if
/// it has none.
pub fn gradient_values<B: burn::tensor::backend::AutodiffBackend>(
    grads: &burn::optim::GradientsParams,
    tensor: &NamedTensor,
) -> Option<Vec<f32>> {
    let data = match tensor.shape.len() {
        1 => grads.get::<B::InnerBackend, 1>(tensor.id)?.into_data(),
        2 => grads.get::<B::InnerBackend, 2>(tensor.id)?.into_data(),
        3 => grads.get::<B::InnerBackend, 3>(tensor.id)?.into_data(),
        4 => grads.get::<B::InnerBackend, 4>(tensor.id)?.into_data(),
        d => panic!("{}: unexpected rank {d}", tensor.name),
    };
    Some(data.convert::<f32>().to_vec().expect("float values"))
}

/// Tracks the dotted path of the module being visited.
#[derive(Default)]
struct ModulePath(Vec<String>);

impl ModulePath {
    /// Enters module `name` of a container of `container_type`. An enum's variant (a backbone's
    /// name) is not a level of the path: the backbone's parameters keep their own paths.
    fn enter(&mut self, name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.push(name.to_string());
        }
    }
    fn exit(&mut self, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.pop();
        }
    }
    fn dotted(&self) -> String {
        self.0.join(".")
    }
}

struct Reader {
    path: ModulePath,
    tensors: Vec<NamedTensor>,
}

impl<B: Backend> ModuleVisitor<B> for Reader {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        self.tensors.push(NamedTensor {
            name: self.path.dotted(),
            id: param.id,
            shape: tensor.dims().to_vec(),
            values: tensor.into_data().convert::<f32>().to_vec().unwrap(),
        });
    }
}

/// All float tensors of `module` in the order Burn visits them.
pub fn named_tensors<B: Backend, M: Module<B>>(module: &M) -> Vec<NamedTensor> {
    // A training-mode forward pass leaves BatchNorm's running-statistics update pending; a
    // visitor would read the stale value. Making a record applies pending updates (clones
    // share the running state).
    let _ = module.clone().into_record();
    let mut reader = Reader {
        path: ModulePath::default(),
        tensors: Vec::new(),
    };
    module.visit(&mut reader);
    reader.tensors
}

struct Writer<'a, B: Backend> {
    path: ModulePath,
    values: &'a TensorMap,
    device: B::Device,
    problems: Vec<String>,
    used: usize,
}

impl<B: Backend> ModuleMapper<B> for Writer<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = self.path.dotted();
        let expected = param.val().dims().to_vec();
        match self.values.get(&name) {
            None => self.problems.push(format!("{name}: missing")),
            Some((shape, _)) if *shape != expected => self.problems.push(format!(
                "{name}: shape {shape:?}, the model has {expected:?}"
            )),
            Some((shape, values)) => {
                self.used += 1;
                let tensor =
                    Tensor::from_data(TensorData::new(values.clone(), shape.clone()), &self.device);
                // Trainable parameters stay trainable; running statistics stay untracked.
                return param.map(|old| tensor.set_require_grad(old.is_require_grad()));
            }
        }
        param
    }
}

/// `module` with every float tensor replaced by the entry of `values` under its name. Fails,
/// listing every problem, if a tensor is missing, has another shape, or `values` holds names
/// the module does not have.
pub fn load_named_tensors<B: Backend, M: Module<B>>(
    module: M,
    values: &TensorMap,
    device: &B::Device,
) -> Result<M> {
    let mut writer = Writer {
        path: ModulePath::default(),
        values,
        device: device.clone(),
        problems: Vec::new(),
        used: 0,
    };
    let module = module.map(&mut writer);
    if writer.used < values.len() {
        let known: Vec<String> = named_tensors::<B, M>(&module)
            .into_iter()
            .map(|t| t.name)
            .collect();
        for name in values.keys().filter(|name| !known.contains(name)) {
            writer
                .problems
                .push(format!("{name}: not a tensor of this model"));
        }
    }
    if !writer.problems.is_empty() {
        bail!(
            "{} tensor(s) do not fit the model: {}",
            writer.problems.len(),
            writer.problems.join("; ")
        );
    }
    Ok(module)
}

/// The float32 tensors and the metadata of a safetensors file (the format PyTorch, JAX and
/// Hugging Face write weights in).
pub fn read_safetensors(path: &Path) -> Result<(TensorMap, BTreeMap<String, String>)> {
    use safetensors::{Dtype, SafeTensors};
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let not_safetensors = |e| {
        anyhow::anyhow!(
            "{} is not a readable safetensors file ({e}); is it truncated?",
            path.display()
        )
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(not_safetensors)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let file = SafeTensors::deserialize(&bytes).map_err(not_safetensors)?;
    let mut tensors = TensorMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor {name} is {:?}; only float32 tensors are supported (convert with \
                 tensor.float() before saving)",
                path.display(),
                view.dtype()
            );
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    Ok((tensors, metadata.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::model::ModelConfig;

    fn small() -> ModelConfig {
        ModelConfig::small(4, 8, 4)
    }

    #[test]
    fn names_follow_the_module_tree() {
        let model = small().init::<CpuBackend>(&Default::default());
        let names: Vec<String> = named_tensors::<CpuBackend, _>(&model)
            .into_iter()
            .map(|t| t.name)
            .collect();
        for name in [
            "encoder.stem_conv.weight",
            "encoder.stem_bn.gamma",
            "encoder.stem_bn.running_var",
            "encoder.blocks.2.downsample.conv.weight",
            "encoder.blocks.7.bn2.beta",
            "head.fc2.bias",
        ] {
            assert!(names.contains(&name.to_string()), "{name} not in {names:?}");
        }
        // 20 convolutions, 20 BatchNorms with 4 tensors each, two linear layers with bias.
        assert_eq!(names.len(), 20 + 20 * 4 + 4);
    }

    #[test]
    fn loading_replaces_values_and_reports_what_does_not_fit() {
        let device = Default::default();
        let model = small().init::<CpuBackend>(&device);
        let mut values: BTreeMap<_, _> = named_tensors::<CpuBackend, _>(&model)
            .into_iter()
            .map(|t| {
                let values = t.values.iter().map(|v| v + 1.0).collect();
                (t.name, (t.shape, values))
            })
            .collect();
        let before = named_tensors::<CpuBackend, _>(&model);
        let loaded = load_named_tensors(model.clone(), &values, &device).unwrap();
        for (old, new) in before.iter().zip(named_tensors::<CpuBackend, _>(&loaded)) {
            assert_eq!(old.name, new.name);
            for (a, b) in old.values.iter().zip(&new.values) {
                assert!((a + 1.0 - b).abs() < 1e-6);
            }
        }
        values.get_mut("head.fc1.weight").unwrap().0 = vec![8, 32];
        values.remove("encoder.stem_bn.gamma");
        values.insert("encoder.extra".into(), (vec![1], vec![0.0]));
        let error = load_named_tensors(model, &values, &device)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("3 tensor(s)"), "{error}");
        assert!(error.contains("head.fc1.weight: shape [8, 32], the model has [32, 8]"));
        assert!(error.contains("encoder.stem_bn.gamma: missing"));
        assert!(error.contains("encoder.extra: not a tensor of this model"));
    }
}
