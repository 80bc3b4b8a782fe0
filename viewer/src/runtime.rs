//! ONNX Runtime Web through `ort` + `ort-web`: loading the runtime from the page's own origin
//! (no CDN), opening an encoder, and embedding batches of images.

use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use ort::session::{RunOptions, Session};
use ort::value::{Tensor, ValueType};

use crate::contract::{self, Port};
use crate::dom;

/// Where trunk copies onnxruntime-web's files, relative to the page.
pub const ORT_DIR: &str = "ort/";
const ORT_SCRIPT: &str = "ort.wasm.min.js";
const ORT_BINARY: &str = "ort-wasm-simd-threaded.wasm";
/// ort-web waits forever when its script never arrives; nothing healthy takes this long.
const LOAD_TIMEOUT_MS: i32 = 30_000;

/// Loads ONNX Runtime Web and creates the one `ort` environment of the page.
pub async fn load() -> Result<Environment> {
    let base = dom::absolute_url(ORT_DIR)?;
    // Probe first: a missing file would otherwise leave ort-web's loader hanging.
    let script = format!("{base}{ORT_SCRIPT}");
    dom::fetch_bytes(&script, LOAD_TIMEOUT_MS)
        .await
        .with_context(|| {
            "ONNX Runtime Web is missing from this page: run `npm install` in viewer/ before \
         `trunk build` (its files are copied from node_modules/onnxruntime-web/dist)"
        })?;
    let dist = ort_web::Dist::new(base).with_binary_name(ORT_BINARY);
    let api = dom::with_timeout(
        async move { ort_web::api(dist).await.map_err(|e| anyhow!("{e}")) },
        LOAD_TIMEOUT_MS,
        "ONNX Runtime Web did not start within 30 s",
    )
    .await
    .context("cannot start ONNX Runtime Web")?;
    ort::set_api(api);
    use_all_cores();
    ort::init()
        .with_name("selfsup-viewer")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow!("cannot create the ONNX Runtime environment: {e}"))
}

/// Lets ONNX Runtime Web use a thread per core (it defaults to half the cores) where the page
/// is cross-origin isolated, which threads need; elsewhere it stays single-threaded. Read when
/// the first session starts the runtime.
fn use_all_cores() {
    use js_sys::Reflect;
    let window = dom::window();
    let isolated = Reflect::get(&window, &"crossOriginIsolated".into())
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let cores = window.navigator().hardware_concurrency();
    let wasm_env = Reflect::get(&window, &"ort".into())
        .and_then(|ort| Reflect::get(&ort, &"env".into()))
        .and_then(|env| Reflect::get(&env, &"wasm".into()));
    if let (true, Ok(wasm_env)) = (isolated, wasm_env) {
        let threads = cores.clamp(1.0, 8.0);
        let _ = Reflect::set(&wasm_env, &"numThreads".into(), &threads.into());
    }
}

/// An opened encoder and the width of its embeddings.
pub struct Encoder {
    session: Session,
    pub dim: usize,
    /// Side of the square images it takes.
    pub side: usize,
    pub input_name: String,
    pub output_name: String,
}

fn port(name: &str, dtype: &ValueType) -> Port {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => Port {
            name: name.to_string(),
            is_f32: *ty == ort::value::TensorElementType::Float32,
            dims: shape.to_vec(),
        },
        _ => Port {
            name: name.to_string(),
            is_f32: false,
            dims: Vec::new(),
        },
    }
}

impl Encoder {
    /// Opens `bytes` (an `.onnx` file named `name`, for messages) and checks its shapes.
    pub async fn open(env: &Environment, bytes: &[u8], name: &str) -> Result<Encoder> {
        let session = Session::builder(env)
            .map_err(|e| anyhow!("{e}"))?
            .commit_from_memory(bytes)
            .await
            .map_err(|e| anyhow!("{name} is not a model ONNX Runtime can load: {e}"))?;
        let inputs: Vec<Port> = session
            .inputs()
            .iter()
            .map(|o| port(o.name(), o.dtype()))
            .collect();
        let outputs: Vec<Port> = session
            .outputs()
            .iter()
            .map(|o| port(o.name(), o.dtype()))
            .collect();
        let shapes = contract::check(&inputs, &outputs).with_context(|| name.to_string())?;
        Ok(Encoder {
            session,
            dim: shapes.dim,
            side: shapes.side,
            input_name: inputs[0].name.clone(),
            output_name: outputs[0].name.clone(),
        })
    }

    /// Embeddings (n x dim) of `n` images given as the encoder's input ([n, 3, S, S] in [0, 1]).
    pub async fn embed(&mut self, input: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        let s = self.side;
        let tensor = Tensor::from_array(([n, 3, s, s], input)).map_err(|e| anyhow!("{e}"))?;
        let options = RunOptions::new().map_err(|e| anyhow!("{e}"))?;
        let mut outputs = self
            .session
            .run_async(ort::inputs![self.input_name.as_str() => tensor], &options)
            .await
            .map_err(|e| anyhow!("the encoder failed on a batch of {n} images: {e}"))?;
        ort_web::sync_outputs(&mut outputs)
            .await
            .map_err(|e| anyhow!("cannot read the embeddings back: {e}"))?;
        let (shape, values) = outputs[self.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("{e}"))?;
        if shape.len() != 2 || shape[0] as usize != n || shape[1] as usize != self.dim {
            bail!(
                "the encoder returned shape {:?} for {n} images, expected [{n}, {}]",
                shape.to_vec(),
                self.dim
            );
        }
        Ok(values.to_vec())
    }
}
