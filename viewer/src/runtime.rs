//! ONNX Runtime Web through `ort` + `ort-web`: loading the runtime from the page's own origin
//! (no CDN), opening an encoder, and embedding batches of images. WebGPU when the browser has
//! a hardware adapter (or `?backend=webgpu`), else the plain wasm bundle, which runs faster on
//! the CPU than the WebGPU bundle's own wasm; one bundle per page (both define `window.ort`).

use anyhow::{anyhow, bail, Context, Result};
use js_sys::Reflect;
use ort::environment::Environment;
use ort::session::{RunOptions, Session};
use ort::value::{Tensor, ValueType};
use wasm_bindgen::JsCast;

use crate::contract::{self, Port};
use crate::dom;

/// Where trunk copies onnxruntime-web's files, relative to the page.
pub const ORT_DIR: &str = "ort/";
const ORT_SCRIPT: &str = "ort.wasm.min.js";
const ORT_BINARY: &str = "ort-wasm-simd-threaded.wasm";
const ORT_WEBGPU_SCRIPT: &str = "ort.webgpu.min.js";
const ORT_WEBGPU_BINARY: &str = "ort-wasm-simd-threaded.asyncify.wasm";
/// ort-web waits forever when its script never arrives; nothing healthy takes this long.
const LOAD_TIMEOUT_MS: i32 = 30_000;

/// Where the encoder runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Wasm,
    /// ONNX Runtime Web's WebGPU execution provider on this adapter (its description).
    WebGpu(String),
}

/// The runtime the page loaded.
pub struct Runtime {
    pub env: Environment,
    pub backend: Backend,
    /// wasm threads (1 where the page is not cross-origin isolated).
    pub threads: usize,
}

/// The browser's WebGPU adapter, if any: its description and whether it is a software one
/// (SwiftShader, a "fallback adapter"), which is far slower than wasm.
async fn webgpu_adapter() -> Option<(String, bool)> {
    let gpu = Reflect::get(&dom::window().navigator(), &"gpu".into()).ok()?;
    if gpu.is_undefined() || gpu.is_null() {
        return None;
    }
    let request: js_sys::Function = Reflect::get(&gpu, &"requestAdapter".into())
        .ok()?
        .dyn_into()
        .ok()?;
    let promise: js_sys::Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
    let adapter = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
    if adapter.is_undefined() || adapter.is_null() {
        return None;
    }
    let info = Reflect::get(&adapter, &"info".into()).unwrap_or_default();
    let text = |key: &str| {
        Reflect::get(&info, &key.into())
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    };
    let fallback = Reflect::get(&info, &"isFallbackAdapter".into())
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let (vendor, architecture) = (text("vendor"), text("architecture"));
    let software = fallback || architecture == "swiftshader";
    Some((
        format!("{vendor} {architecture}").trim().to_string(),
        software,
    ))
}

/// WebGPU when asked (`?backend=webgpu`) or when the browser has a hardware adapter; wasm
/// when asked (`?backend=wasm`) or otherwise.
async fn choose_backend(asked: Option<&str>) -> Result<Backend> {
    let adapter = webgpu_adapter().await;
    match (asked, adapter) {
        (Some("wasm"), _) => Ok(Backend::Wasm),
        (Some("webgpu"), Some((name, _))) => Ok(Backend::WebGpu(name)),
        (Some("webgpu"), None) => bail!(
            "?backend=webgpu: this browser offers no WebGPU adapter (Chromium: \
             --enable-unsafe-webgpu on Linux); leave the parameter out to use wasm"
        ),
        (Some(other), _) => bail!("?backend={other}: use webgpu or wasm"),
        (None, Some((name, false))) => Ok(Backend::WebGpu(name)),
        (None, _) => Ok(Backend::Wasm),
    }
}

/// Loads ONNX Runtime Web (the bundle of the chosen backend) and creates the one `ort`
/// environment of the page.
pub async fn load(asked: Option<&str>) -> Result<Runtime> {
    let backend = choose_backend(asked).await?;
    let (script_name, binary) = match backend {
        Backend::Wasm => (ORT_SCRIPT, ORT_BINARY),
        Backend::WebGpu(_) => (ORT_WEBGPU_SCRIPT, ORT_WEBGPU_BINARY),
    };
    let base = dom::absolute_url(ORT_DIR)?;
    // Probe first: a missing file would otherwise leave ort-web's loader hanging.
    let script = format!("{base}{script_name}");
    dom::fetch_bytes(&script, LOAD_TIMEOUT_MS)
        .await
        .with_context(|| {
            "ONNX Runtime Web is missing from this page: run `npm install` in viewer/ before \
         `trunk build` (its files are copied from node_modules/onnxruntime-web/dist)"
        })?;
    let dist = ort_web::Dist::new(base)
        .with_script_name(script_name)
        .with_binary_name(binary);
    let api = dom::with_timeout(
        async move { ort_web::api(dist).await.map_err(|e| anyhow!("{e}")) },
        LOAD_TIMEOUT_MS,
        "ONNX Runtime Web did not start within 30 s",
    )
    .await
    .context("cannot start ONNX Runtime Web")?;
    ort::set_api(api);
    let threads = use_all_cores();
    let env = ort::init()
        .with_name("selfsup-viewer")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow!("cannot create the ONNX Runtime environment: {e}"))?;
    Ok(Runtime {
        env,
        backend,
        threads,
    })
}

/// Whether ONNX Runtime Web started its WebGPU device (`ort.env.webgpu.device`, set when a
/// session initialises the WebGPU execution provider; unset if it fell back to wasm).
pub fn webgpu_started() -> bool {
    Reflect::get(&dom::window(), &"ort".into())
        .and_then(|ort| Reflect::get(&ort, &"env".into()))
        .and_then(|env| Reflect::get(&env, &"webgpu".into()))
        .and_then(|webgpu| Reflect::get(&webgpu, &"device".into()))
        .is_ok_and(|device| device.is_object())
}

/// Adds an execution provider by the short name ort-web knows ("WebGPU", "WASM"): ort's own
/// `ep::WebGPU` sends the long name, which ort-web 0.5 rejects (and ort only logs that).
fn append_provider(
    builder: &mut ort::session::builder::SessionBuilder,
    name: &std::ffi::CStr,
) -> Result<()> {
    use ort::AsPointer;
    let api = ort::api();
    let null = std::ptr::null();
    // SAFETY: a live session builder's options, a NUL-terminated name and no provider options;
    // a returned status is read and released here.
    let status = unsafe {
        (api.SessionOptionsAppendExecutionProvider)(builder.ptr_mut(), name.as_ptr(), null, null, 0)
    };
    if status.0.is_null() {
        return Ok(());
    }
    let message = unsafe { std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0)) }
        .to_string_lossy()
        .into_owned();
    unsafe { (api.ReleaseStatus)(status.0) };
    bail!(
        "cannot use the {} execution provider: {message}",
        name.to_string_lossy()
    )
}

/// Lets ONNX Runtime Web use a thread per core (it defaults to half the cores) where the page
/// is cross-origin isolated, which threads need; elsewhere it stays single-threaded. Read when
/// the first session starts the runtime. Returns the number of threads.
fn use_all_cores() -> usize {
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
    match (isolated, wasm_env) {
        (true, Ok(wasm_env)) => {
            let threads = cores.clamp(1.0, 8.0);
            let _ = Reflect::set(&wasm_env, &"numThreads".into(), &threads.into());
            threads as usize
        }
        _ => 1,
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
    /// Opens `bytes` (an `.onnx` file named `name`, for messages) on `backend` and checks its
    /// shapes.
    pub async fn open(
        env: &Environment,
        backend: &Backend,
        bytes: &[u8],
        name: &str,
    ) -> Result<Encoder> {
        let mut builder = Session::builder(env).map_err(|e| anyhow!("{e}"))?;
        if let Backend::WebGpu(_) = backend {
            // wasm second: ONNX Runtime Web runs what WebGPU cannot on it.
            append_provider(&mut builder, c"WebGPU")?;
            append_provider(&mut builder, c"WASM")?;
        }
        let session = builder
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
