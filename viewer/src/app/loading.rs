//! Loading: the runtime and its backend, the sample images and the encoder (ONNX file,
//! fetched or dropped).

use super::*;

pub(super) async fn environment() -> Result<Rc<Runtime>> {
    if let Some(runtime) = with_app(|a| a.env.clone()) {
        return Ok(runtime);
    }
    let t0 = dom::now_ms();
    let runtime = Rc::new(runtime::load(query_param("backend").as_deref()).await?);
    dom::set_body_data("threads", &runtime.threads.to_string());
    show_backend(&runtime.backend, runtime.threads, None);
    with_app(|a| {
        a.env = Some(runtime.clone());
        a.timings.runtime_ms = dom::now_ms() - t0;
    });
    Ok(runtime)
}

/// Says on the page where the encoder runs (`started`: whether WebGPU came up, once known).
pub(super) fn show_backend(backend: &Backend, threads: usize, started: Option<bool>) {
    let wasm = match threads {
        1 => "wasm, 1 thread (this page is not cross-origin isolated: served with the COOP/COEP \
              headers, as by `trunk serve`, it uses a thread per core)"
            .to_string(),
        n => format!("wasm, {n} threads"),
    };
    let (kind, text) = match (backend, started) {
        (Backend::Wasm, _) => ("wasm", wasm),
        (Backend::WebGpu(adapter), Some(false)) => (
            "wasm",
            format!("WebGPU ({adapter}) did not start; running on {wasm}"),
        ),
        (Backend::WebGpu(adapter), _) => ("webgpu", format!("WebGPU ({adapter})")),
    };
    dom::set_body_data("backend", kind);
    dom::set_text("backend", &format!("ONNX Runtime Web: {text}"));
}

/// Where `samples.json`, `samples.bin` and `embeddings.bin` are (`?samples=`, else assets/).
pub(super) fn samples_base() -> String {
    query_param("samples").unwrap_or_else(|| DEFAULT_SAMPLES.to_string())
}

pub(super) async fn samples() -> Result<Rc<SampleSet>> {
    if let Some(samples) = with_app(|a| a.samples.clone()) {
        return Ok(samples);
    }
    let base = samples_base();
    let meta_url = format!("{base}samples.json");
    let bin_url = format!("{base}samples.bin");
    let meta = dom::fetch_optional(&meta_url, FETCH_TIMEOUT_MS)
        .await?
        .ok_or_else(|| anyhow!("no sample images at {meta_url}: {HOW_TO_EXPORT}"))?;
    let pixels = dom::fetch_bytes(&bin_url, FETCH_TIMEOUT_MS).await?;
    let set = Rc::new(SampleSet::parse(&meta, pixels).with_context(|| base.clone())?);
    with_app(|a| {
        a.samples = Some(set.clone());
        a.hidden = vec![false; set.classes.len()];
    });
    upload_atlas(&set);
    draw_legend(&set);
    Ok(set)
}

/// The thumbnail of sample `i` (made when needed: 10,000 photos at 96 px would be 370 MB).
pub(super) fn thumb(set: &SampleSet, i: usize) -> Vec<u8> {
    planar_to_rgba(set.image(i))
}

/// Opens an encoder and puts every sample on the map: from the shipped embeddings when the
/// export has them (then checks a random few here), else embedding them in the browser.
pub(super) async fn open_model(bytes: Vec<u8>, name: String) -> Result<()> {
    let job = with_app(|a| {
        a.job += 1;
        a.job
    });
    set_status("loading");
    show_message(&format!("loading {name} ..."), false);
    let env = environment().await?;
    let t0 = dom::now_ms();
    let mut encoder = Encoder::open(&env.env, &env.backend, &bytes, &name).await?;
    if env.backend != Backend::Wasm {
        show_backend(&env.backend, env.threads, Some(runtime::webgpu_started()));
    }
    let model_ms = dom::now_ms() - t0;
    let set = samples().await?;
    ensure!(
        encoder.side == set.side,
        "{name} takes {s}x{s} images but the samples are {t}x{t}: export the viewer files from \
         the same run (`trainer export --checkpoint RUN --viewer`)",
        s = encoder.side,
        t = set.side
    );
    dom::set_text(
        "model-name",
        &format!(
            "{name} ({:.1} MB, {s}x{s} px in, {}-d embeddings)",
            bytes.len() as f64 / 1e6,
            encoder.dim,
            s = encoder.side
        ),
    );
    with_app(|a| {
        if let Some(w) = a.worker.take() {
            w.terminate();
        }
        a.encoder = None;
        a.model_name = name.clone();
        a.dim = encoder.dim;
        a.embeddings.clear();
        a.unit.clear();
        a.coords.clear();
        a.auto_fit = true;
        a.selected = None;
        a.highlight.clear();
        a.query_marks.clear(); // placed by the old model's neighbours
        a.sample_check = None;
        // An earlier model's embedding that failed or was cut short leaves nothing behind.
        a.embedding = false;
        a.mapped = 0;
        a.followers.clear();
        a.timings.model_ms = model_ms;
        a.timings.embed_ms = 0.0;
    });
    let browser_only = query_param("embed").as_deref() == Some("browser");
    match set.embeddings.clone().filter(|_| !browser_only) {
        Some(meta) => {
            let url = format!("{}{}", samples_base(), meta.file);
            let raw = dom::fetch_bytes(&url, FETCH_TIMEOUT_MS).await?;
            let rows = meta.decode(&raw, set.len(), encoder.dim)?;
            if with_app(|a| a.job) != job {
                return Ok(()); // a newer model took over
            }
            add_points(&rows);
            mark_drawn(true);
            publish();
            project();
            show_message(
                &format!(
                    "{} images mapped from their shipped {} embeddings; checking {} of them \
                     here ...",
                    set.len(),
                    meta.dtype,
                    shipped::CHECKED.min(set.len())
                ),
                false,
            );
            if !check_shipped(&mut encoder, &set, &meta, &rows, job).await? {
                return Ok(());
            }
        }
        None => {
            if !embed_all(&mut encoder, &set, job).await? {
                return Ok(());
            }
            publish();
            // t-SNE / UMAP of every point goes on from the layout that grew meanwhile.
            let grown = with_app(|a| (a.mapped > 0).then(|| start_layout(a)));
            project_from(grown);
        }
    }
    with_app(|a| a.encoder = Some(encoder));
    Ok(())
}
