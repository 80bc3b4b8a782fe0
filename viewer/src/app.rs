//! The page: loads the runtime, the encoder and the samples, embeds them, projects them and
//! draws the interactive map.
//!
//! The map is useful at once: from the embeddings shipped with the samples (`trainer export
//! --embeddings`, checked by re-embedding a random few here), or growing batch by batch while
//! the browser embeds the images itself.
//!
//! State lives in one thread-local `App`; async steps never hold its borrow across an await.
//! `document.body.dataset` carries what scripts and tests read: `status` (`loading`,
//! `embedding`, `projecting`, `ready`, `error`), `points`, `visiblePoints`, `queries`,
//! `mapFrames` (t-SNE / UMAP layouts drawn), `firstPointsMs` / `allPointsMs` (page time when the first / every point was
//! drawn), `sampleCheck` (`passed`, `failed`); `window.selfsupViewer` holds the embeddings,
//! the sample check and the timings.

use anyhow::{anyhow, ensure, Context, Result};
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    DragEvent, Event, HtmlCanvasElement, HtmlElement, HtmlInputElement, MessageEvent, MouseEvent,
    WheelEvent, Worker,
};

use crate::atlas;
use crate::dom::{self, by_id};
use crate::gl::{self, PointRenderer};
use crate::neighbors::{l2_normalized, nearest};
use crate::projection::{max_perplexity, pca_2d, TsneParams};
use crate::runtime::{self, Backend, Encoder, Runtime};
use crate::samples::{planar_to_rgba, rgba_to_input, SampleSet};
use crate::shipped::{self, Comparison};
use crate::umap::UmapParams;
use crate::view::View;
use crate::worker::Method;
use crate::NEIGHBOURS;

const DEFAULT_MODEL: &str = "assets/encoder.onnx";
const DEFAULT_SAMPLES: &str = "assets/";
const BATCH: usize = 16;
/// In-browser embedding runs on the page's thread: batches sized to take about this long keep
/// the page painting and answering the mouse between them.
const BATCH_MS: f64 = 60.0;
const MAX_BATCH: usize = 64;
/// Largest side of the thumbnail texture (every WebGL2 device has at least 2048).
const ATLAS_SIDE: usize = 2048;
/// While the browser embeds, t-SNE / UMAP starts at this many points and restarts, from the
/// layout so far, each time their number doubles.
const GROW_FROM: usize = 64;
/// Side of a point drawn as its image, in pixels.
const IMAGE_SPRITE: f32 = 28.0;
const FETCH_TIMEOUT_MS: i32 = 60_000;
/// Colours of the classes (matplotlib's tab10).
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
/// The one colour of unlabeled images.
const UNLABELED_COLOUR: &str = "#1f77b4";
const HOW_TO_EXPORT: &str = "create them with `cargo run -p trainer --release -- export \
     --checkpoint runs/<run> --viewer` in the repository root, then reload; \
     or drop an encoder .onnx here";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Tsne,
    Umap,
    Pca,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Tsne => "t-SNE",
            Mode::Umap => "UMAP",
            Mode::Pca => "PCA",
        }
    }
}

#[derive(Default)]
struct Timings {
    runtime_ms: f64,
    model_ms: f64,
    embed_ms: f64,
    tsne_s: f64,
    umap_s: f64,
    /// Page time (ms since navigation) when the first point / every point was on the map.
    first_points_ms: f64,
    all_points_ms: f64,
}

struct App {
    env: Option<Rc<Runtime>>,
    encoder: Option<Encoder>,
    model_name: String,
    samples: Option<Rc<SampleSet>>,
    /// Classes left off the map (the legend's toggles, the search box).
    hidden: Vec<bool>,
    /// The WebGL2 point renderer (None: canvas 2D).
    gl: Option<PointRenderer>,
    /// Points drawn as their thumbnails.
    images_on_map: bool,
    dim: usize,
    embeddings: Vec<f32>,
    unit: Vec<f32>,
    coords: Vec<f64>,
    view: View,
    auto_fit: bool,
    mode: Mode,
    perplexity: f64,
    selected: Option<usize>,
    highlight: Vec<usize>,
    drag: Option<(f64, f64)>,
    dragged: bool,
    worker: Option<Worker>,
    /// What the worker gets once it says it is ready.
    map_request: Option<JsValue>,
    /// How many points (the first ones) the running worker lays out; later ones follow the
    /// nearest of those (`followers`) until the next restart.
    mapped: usize,
    followers: Vec<usize>,
    /// The browser is embedding the samples (the map still grows).
    embedding: bool,
    map_frames: usize,
    /// Bumped by every new model; older async jobs stop when they see a newer one.
    job: u32,
    queries: usize,
    /// Dropped images on the map: their thumbnail and nearest samples (placed among them).
    query_marks: Vec<(HtmlCanvasElement, Vec<usize>)>,
    /// Shipped embeddings re-embedded here: the rows' indices, the browser's rows, the outcome.
    sample_check: Option<(Vec<usize>, Vec<f32>, Comparison)>,
    timings: Timings,
}

thread_local! {
    static APP: RefCell<App> = RefCell::new(App {
        env: None,
        encoder: None,
        model_name: String::new(),
        samples: None,
        hidden: Vec::new(),
        gl: None,
        images_on_map: false,
        dim: 0,
        embeddings: Vec::new(),
        unit: Vec::new(),
        coords: Vec::new(),
        view: View::default(),
        auto_fit: true,
        mode: Mode::Tsne,
        perplexity: TsneParams::default().perplexity,
        selected: None,
        highlight: Vec::new(),
        drag: None,
        dragged: false,
        worker: None,
        map_request: None,
        mapped: 0,
        followers: Vec::new(),
        embedding: false,
        map_frames: 0,
        job: 0,
        queries: 0,
        query_marks: Vec::new(),
        sample_check: None,
        timings: Timings::default(),
    });
}

fn with_app<R>(f: impl FnOnce(&mut App) -> R) -> R {
    APP.with(|app| f(&mut app.borrow_mut()))
}

fn set_status(status: &str) {
    dom::set_body_data("status", status);
    dom::set_text("status", status);
}

fn show_message(text: &str, is_error: bool) {
    let el: HtmlElement = by_id("message");
    el.set_text_content(Some(text));
    el.set_class_name(if is_error { "error" } else { "info" });
}

fn fail(error: &anyhow::Error) {
    // A map that went wrong stops refining (and cannot turn "ready" later). `try_` because a
    // panic can land here while the state is borrowed.
    let _ = APP.try_with(|app| {
        if let Some(w) = app.try_borrow_mut().ok().and_then(|mut a| a.worker.take()) {
            w.terminate();
        }
    });
    let text = format!("{error:#}");
    web_sys::console::error_1(&text.clone().into());
    show_message(&text, true);
    set_status("error");
}

fn spawn(work: impl std::future::Future<Output = Result<()>> + 'static) {
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = work.await {
            fail(&e);
        }
    });
}

fn query_param(name: &str) -> Option<String> {
    let search = dom::window().location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search)
        .ok()?
        .get(name)
        .filter(|v| !v.is_empty())
}

/// Entry point of the page.
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        fail(&anyhow!("internal error: {info}"));
    }));
    set_status("loading");
    start_renderer();
    install_handlers();
    // ?map=tsne|umap|pca picks the first map (a demo link can open on UMAP).
    let first_map = match query_param("map").as_deref() {
        Some("umap") => Some(("mode-umap", Mode::Umap)),
        Some("pca") => Some(("mode-pca", Mode::Pca)),
        _ => None,
    };
    if let Some((id, mode)) = first_map {
        by_id::<HtmlInputElement>(id).set_checked(true);
        with_app(|a| a.mode = mode);
    }
    let model = query_param("model").unwrap_or_else(|| DEFAULT_MODEL.to_string());
    spawn(async move {
        let bytes = dom::fetch_optional(&model, FETCH_TIMEOUT_MS).await?;
        match bytes {
            Some(bytes) => open_model(bytes, model).await,
            None => Err(anyhow!("no encoder at {model}: {HOW_TO_EXPORT}")),
        }
    });
}

async fn environment() -> Result<Rc<Runtime>> {
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
fn show_backend(backend: &Backend, threads: usize, started: Option<bool>) {
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
fn samples_base() -> String {
    query_param("samples").unwrap_or_else(|| DEFAULT_SAMPLES.to_string())
}

async fn samples() -> Result<Rc<SampleSet>> {
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
fn thumb(set: &SampleSet, i: usize) -> Vec<u8> {
    planar_to_rgba(set.image(i))
}

/// Opens an encoder and puts every sample on the map: from the shipped embeddings when the
/// export has them (then checks a random few here), else embedding them in the browser.
async fn open_model(bytes: Vec<u8>, name: String) -> Result<()> {
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

/// Appends embedded rows to the map's points.
fn add_points(rows: &[f32]) {
    with_app(|a| {
        a.unit.extend(l2_normalized(rows, a.dim.max(1)));
        a.embeddings.extend_from_slice(rows);
    });
}

/// Records when the first point, and when every point, reached the map.
fn mark_drawn(all: bool) {
    let now = dom::now_ms();
    with_app(|a| {
        if a.timings.first_points_ms == 0.0 {
            a.timings.first_points_ms = now;
            dom::set_body_data("firstPointsMs", &format!("{now:.0}"));
        }
        if all && a.timings.all_points_ms == 0.0 {
            a.timings.all_points_ms = now;
            dom::set_body_data("allPointsMs", &format!("{now:.0}"));
        }
    });
}

/// Embeds every sample in the browser, drawing the map as it grows (PCA of the points so far,
/// redrawn when their number grew by a quarter: about 30 layouts for 10,000 images). False when
/// a newer model took over.
async fn embed_all(encoder: &mut Encoder, set: &SampleSet, job: u32) -> Result<bool> {
    set_status("embedding");
    with_app(|a| {
        a.embedding = true;
        a.mapped = 0;
        a.followers.clear();
    });
    let n = set.len();
    let t0 = dom::now_ms();
    let mut drawn = 0;
    let (mut start, mut batch) = (0, 1);
    while start < n {
        let end = (start + batch).min(n);
        let t_batch = dom::now_ms();
        let rows = encoder
            .embed(set.input_batch(start..end), end - start)
            .await?;
        // The next batch takes about BATCH_MS at this batch's speed.
        let ms_per_image = (dom::now_ms() - t_batch) / (end - start) as f64;
        batch = ((BATCH_MS / ms_per_image.max(1e-3)) as usize).clamp(1, MAX_BATCH);
        if with_app(|a| a.job) != job {
            return Ok(false);
        }
        add_points(&rows);
        let (mode, mapped) = with_app(|a| (a.mode, a.mapped));
        if mode != Mode::Pca && end < n && end >= GROW_FROM.max(2 * mapped) {
            // (Re)start t-SNE / UMAP on the points so far, from their layout so far.
            let init = with_app(|a| (a.mapped > 0).then(|| start_layout(a)));
            with_app(|a| {
                if a.mapped == 0 {
                    a.coords = pca_2d(&a.unit, a.dim.max(1)); // where the worker starts
                }
                a.mapped = end;
                a.followers.clear();
            });
            start_map_worker(mode, init)?;
        } else if mapped > 0 {
            with_app(|a| {
                add_followers(a);
                place_followers(a);
            });
        }
        let growing_map = with_app(|a| a.mapped > 0);
        if growing_map {
            dom::set_body_data("points", &end.to_string());
            redraw();
            mark_drawn(end == n);
        } else if end == n || drawn == 0 || end >= drawn + drawn / 4 {
            with_app(|a| a.coords = pca_2d(&a.unit, a.dim.max(1)));
            dom::set_body_data("points", &end.to_string());
            redraw();
            mark_drawn(end == n);
            drawn = end;
        }
        let elapsed = (dom::now_ms() - t0) / 1000.0;
        show_progress(end, n, end as f64 / elapsed.max(1e-9));
        // Between batches the page answers the mouse and shows the map as it grows.
        dom::yield_to_browser().await;
        start = end;
    }
    let embed_ms = dom::now_ms() - t0;
    with_app(|a| {
        a.timings.embed_ms = embed_ms;
        a.embedding = false;
    });
    show_message(
        &format!(
            "{n} images embedded in {:.1} s ({:.1} ms per image)",
            embed_ms / 1000.0,
            embed_ms / n as f64
        ),
        false,
    );
    Ok(true)
}

/// Re-embeds a random few of the samples here and compares them with the shipped rows: the
/// map stays only if they belong to this model. False when a newer model took over.
async fn check_shipped(
    encoder: &mut Encoder,
    set: &SampleSet,
    meta: &shipped::ShippedMeta,
    rows: &[f32],
    job: u32,
) -> Result<bool> {
    let indices = shipped::random_indices(set.len(), shipped::CHECKED, js_sys::Math::random);
    let t0 = dom::now_ms();
    let mut browser = Vec::with_capacity(indices.len() * encoder.dim);
    for chunk in indices.chunks(BATCH) {
        let input: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| set.input_batch(i..i + 1))
            .collect();
        browser.extend(encoder.embed(input, chunk.len()).await?);
        if with_app(|a| a.job) != job {
            return Ok(false);
        }
    }
    let ms_per_image = (dom::now_ms() - t0) / indices.len().max(1) as f64;
    let comparison = shipped::compare(meta, rows, encoder.dim, &indices, &browser);
    let passed = comparison.passed();
    dom::set_body_data("sampleCheck", if passed { "passed" } else { "failed" });
    with_app(|a| {
        a.sample_check = Some((indices.clone(), browser, comparison.clone()));
        a.timings.embed_ms = ms_per_image * set.len() as f64;
    });
    publish();
    ensure!(
        passed,
        "the shipped embeddings ({file}) do not belong to this model: image #{i} embedded here \
         differs from its shipped vector by {d:.3e} (at most {t:.1e} allowed for {dtype}); export \
         the model and the embeddings together: `trainer export --checkpoint RUN --viewer \
         --embeddings {dtype}`",
        file = meta.file,
        i = comparison.worst,
        d = comparison.max_diff,
        t = comparison.tolerance,
        dtype = meta.dtype,
    );
    show_message(
        &format!(
            "{} images mapped from their shipped {} embeddings; {} re-embedded here match them \
             (largest difference {:.1e}, {:.1} ms per image)",
            set.len(),
            meta.dtype,
            indices.len(),
            comparison.max_diff,
            ms_per_image
        ),
        false,
    );
    Ok(true)
}

fn show_progress(done: usize, total: usize, per_second: f64) {
    let bar: HtmlElement = by_id("progress");
    let _ = bar.set_attribute("max", &total.to_string());
    let _ = bar.set_attribute("value", &done.to_string());
    dom::set_text(
        "progress-text",
        &format!("{done} / {total} images · {per_second:.1} images/s"),
    );
}

/// Exposes the embeddings and timings as `window.selfsupViewer`.
fn publish() {
    with_app(|a| {
        let obj = js_sys::Object::new();
        let set = |k: &str, v: JsValue| {
            let _ = js_sys::Reflect::set(&obj, &k.into(), &v);
        };
        set(
            "embeddings",
            js_sys::Float32Array::from(a.embeddings.as_slice()).into(),
        );
        set("dim", (a.dim as f64).into());
        set(
            "coords",
            js_sys::Float64Array::from(a.coords.as_slice()).into(),
        );
        let count = a.embeddings.len() / a.dim.max(1);
        set("count", (count as f64).into());
        set("model", a.model_name.as_str().into());
        if let Some((indices, rows, c)) = &a.sample_check {
            let check = js_sys::Object::new();
            let put = |k: &str, v: JsValue| {
                let _ = js_sys::Reflect::set(&check, &k.into(), &v);
            };
            let idx: Vec<f64> = indices.iter().map(|&i| i as f64).collect();
            put("indices", js_sys::Float64Array::from(idx.as_slice()).into());
            put(
                "browser",
                js_sys::Float32Array::from(rows.as_slice()).into(),
            );
            put("max_diff", c.max_diff.into());
            put("tolerance", c.tolerance.into());
            put("worst", (c.worst as f64).into());
            put("passed", c.passed().into());
            set("sample_check", check.into());
        }
        let n = count.max(1) as f64;
        let timings = js_sys::Object::new();
        for (k, v) in [
            ("runtime_load_ms", a.timings.runtime_ms),
            ("model_load_ms", a.timings.model_ms),
            ("embed_ms", a.timings.embed_ms),
            ("ms_per_image", a.timings.embed_ms / n),
            ("tsne_s", a.timings.tsne_s),
            ("umap_s", a.timings.umap_s),
            ("first_points_ms", a.timings.first_points_ms),
            ("all_points_ms", a.timings.all_points_ms),
        ] {
            let _ = js_sys::Reflect::set(&timings, &k.into(), &v.into());
        }
        set("timings", timings.into());
        let _ = js_sys::Reflect::set(&dom::window(), &"selfsupViewer".into(), &obj);
        dom::set_text(
            "timings",
            &format!(
                "runtime {:.0} ms · model {:.0} ms · {:.1} ms/image · t-SNE {:.1} s · UMAP {:.1} s",
                a.timings.runtime_ms,
                a.timings.model_ms,
                a.timings.embed_ms / n,
                a.timings.tsne_s,
                a.timings.umap_s
            ),
        );
    });
}

/// Points embedded since the worker started follow their nearest laid-out point.
fn add_followers(a: &mut App) {
    let d = a.dim.max(1);
    let (m, n) = (a.mapped, a.unit.len() / d);
    for k in m + a.followers.len()..n {
        let query = &a.unit[k * d..(k + 1) * d];
        let hit = nearest(&a.unit[..m * d], d, query, 1, None);
        a.followers.push(hit.first().map_or(0, |h| h.0));
    }
}

/// The map: the worker's points where it put them, each follower on its nearest one.
fn place_followers(a: &mut App) {
    a.coords.truncate(2 * a.mapped);
    for k in 0..a.followers.len() {
        let j = a.followers[k];
        match a.coords.get(2 * j..2 * j + 2) {
            Some(&[x, y]) => a.coords.extend([x, y]),
            _ => break,
        }
    }
}

/// Where the next run starts: the layout so far, followers nudged off their anchor (two points
/// on one spot get no force apart).
fn start_layout(a: &mut App) -> Vec<f64> {
    add_followers(a);
    place_followers(a);
    let spread = (a.coords.iter().map(|v| v * v).sum::<f64>() / a.coords.len().max(1) as f64)
        .sqrt()
        .max(1e-6);
    let mut init = a.coords.clone();
    for (k, v) in init.iter_mut().enumerate().skip(2 * a.mapped) {
        *v += spread * 1e-3 * (((k * 7919) % 13) as f64 - 6.0);
    }
    init
}

/// Lays the points out with the chosen projection: PCA at once, t-SNE or UMAP animated from a
/// worker.
fn project() {
    project_from(None);
}

/// [`project`], with t-SNE / UMAP started from `init` (the layout of a map that grew) instead
/// of PCA.
fn project_from(init: Option<Vec<f64>>) {
    let (mode, n) = with_app(|a| {
        if let Some(w) = a.worker.take() {
            w.terminate();
        }
        a.coords = match (&init, a.mode) {
            (Some(init), Mode::Tsne | Mode::Umap) => init.clone(),
            _ => pca_2d(&a.unit, a.dim.max(1)),
        };
        a.mapped = a.unit.len() / a.dim.max(1);
        a.followers.clear();
        a.auto_fit = true;
        a.map_frames = 0;
        (a.mode, a.unit.len() / a.dim.max(1))
    });
    dom::set_body_data("points", &n.to_string());
    redraw();
    if mode == Mode::Pca || n < 4 {
        set_status("ready");
        return;
    }
    set_status("projecting");
    if let Err(e) = start_map_worker(mode, init) {
        fail(&e);
    }
}

/// Starts t-SNE or UMAP of every point embedded so far in a new worker (ending the old one).
fn start_map_worker(mode: Mode, init: Option<Vec<f64>>) -> Result<()> {
    if let Some(w) = with_app(|a| a.worker.take()) {
        w.terminate();
    }
    let name = mode.name();
    let worker = Worker::new("./tsne_worker_loader.js")
        .map_err(|e| anyhow!("cannot start the {name} worker: {}", dom::js_error(e)))?;
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(on_map_message);
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    let on_error = Closure::<dyn FnMut(Event)>::new(move |e: Event| {
        let text = e
            .dyn_ref::<web_sys::ErrorEvent>()
            .map(|e| e.message())
            .unwrap_or_default();
        fail(&anyhow!("the {name} worker failed: {text}"));
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    let request = with_app(|a| {
        let n = a.unit.len() / a.dim;
        let method = match mode {
            Mode::Umap => Method::Umap(UmapParams::for_points(n)),
            _ => Method::Tsne(TsneParams {
                perplexity: a.perplexity.min(max_perplexity(n)).max(1.0),
                ..TsneParams::default()
            }),
        };
        crate::worker::request(&a.unit, a.dim, method, init.as_deref(), 10)
    });
    with_app(|a| {
        a.worker = Some(worker);
        a.map_request = Some(request);
    });
    Ok(())
}

fn on_map_message(event: MessageEvent) {
    let name = with_app(|a| a.mode.name());
    let data = event.data();
    let get = |k: &str| js_sys::Reflect::get(&data, &k.into()).unwrap_or(JsValue::UNDEFINED);
    let kind = get("kind").as_string().unwrap_or_default();
    if kind == "ready" {
        let sent = with_app(|a| match (&a.worker, a.map_request.take()) {
            (Some(worker), Some(request)) => worker.post_message(&request).map_err(dom::js_error),
            _ => Ok(()),
        });
        if let Err(e) = sent {
            fail(&e.context(format!("cannot message the {name} worker")));
        }
        return;
    }
    if kind == "error" {
        fail(&anyhow!(
            "{name}: {}",
            get("message").as_string().unwrap_or_default()
        ));
        return;
    }
    if let Ok(coords) = get("coords").dyn_into::<js_sys::Float64Array>() {
        with_app(|a| {
            a.coords = coords.to_vec();
            place_followers(a);
        });
        redraw();
    }
    if kind == "progress" {
        let epoch = get("epoch").as_f64().unwrap_or(0.0);
        let epochs = get("epochs").as_f64().unwrap_or(0.0);
        // How many intermediate layouts were drawn: the animation, for tests.
        let frames = with_app(|a| {
            a.map_frames += 1;
            a.map_frames
        });
        dom::set_body_data("mapFrames", &frames.to_string());
        if with_app(|a| a.embedding) {
            // The progress line stays the embedding's; the map redraws as the layout moves.
            dom::set_body_data("mapFramesWhileEmbedding", &frames.to_string());
        } else {
            dom::set_text(
                "progress-text",
                &format!("{name} epoch {epoch:.0} / {epochs:.0}"),
            );
        }
    } else if kind == "done" {
        if with_app(|a| a.embedding) {
            return; // a layout of the points so far; the map keeps growing
        }
        let seconds = get("seconds").as_f64().unwrap_or(0.0);
        with_app(|a| {
            match a.mode {
                Mode::Umap => a.timings.umap_s = seconds,
                _ => a.timings.tsne_s = seconds,
            }
            a.worker = None;
        });
        dom::set_text("progress-text", &format!("{name} done in {seconds:.1} s"));
        publish();
        set_status("ready");
    }
}

/// The WebGL canvas the points are drawn on (or nothing, without WebGL2).
fn canvas() -> HtmlCanvasElement {
    by_id("map")
}

/// The 2-D canvas above it: marks, highlights, dropped images (and the points without WebGL2);
/// it receives the mouse.
fn overlay() -> HtmlCanvasElement {
    by_id("overlay")
}

/// Matches both canvases' pixel size to their size on screen.
fn resize_canvas() {
    for c in [canvas(), overlay()] {
        let (w, h) = (
            c.client_width().max(100) as u32,
            c.client_height().max(100) as u32,
        );
        if c.width() != w || c.height() != h {
            c.set_width(w);
            c.set_height(h);
        }
    }
}

/// Draws the points with WebGL2 where the browser has it, else on the 2-D canvas.
fn start_renderer() {
    match PointRenderer::new(&canvas()) {
        Ok(renderer) => {
            with_app(|a| a.gl = Some(renderer));
            dom::set_body_data("renderer", "webgl");
        }
        Err(e) => {
            web_sys::console::warn_1(&format!("map drawn with canvas 2D: {e:#}").into());
            dom::set_body_data("renderer", "canvas");
        }
    }
}

/// Gives the renderer the thumbnails of `set`.
fn upload_atlas(set: &SampleSet) {
    let result = with_app(|a| match a.gl.as_mut() {
        Some(gl) => gl.set_atlas(&atlas::build(set, atlas::cell_size(set.len(), ATLAS_SIDE))),
        None => Ok(()),
    });
    if let Err(e) = result {
        web_sys::console::warn_1(&format!("no images on the map: {e:#}").into());
    }
}

fn redraw() {
    resize_canvas();
    let c = overlay();
    let ctx = dom::context_2d(&c);
    let (w, h) = (c.width() as f64, c.height() as f64);
    ctx.clear_rect(0.0, 0.0, w, h);
    with_app(|a| {
        if a.auto_fit {
            a.view = View::fit(&a.coords, w, h, 20.0);
        }
        let Some(set) = a.samples.clone() else { return };
        let colour = |i: usize| match set.labelled {
            true => PALETTE[set.labels[i] as usize % PALETTE.len()],
            false => UNLABELED_COLOUR,
        };
        let shown: Vec<(usize, f64, f64)> = a
            .coords
            .chunks(2)
            .enumerate()
            .filter(|&(i, _)| {
                let class = if set.labelled {
                    set.labels[i] as usize
                } else {
                    0
                };
                !a.hidden.get(class).copied().unwrap_or(false)
            })
            .map(|(i, p)| {
                let (x, y) = a.view.to_screen(p[0], p[1]);
                (i, x, y)
            })
            .collect();
        dom::set_body_data("visiblePoints", &shown.len().to_string());
        // Where one drawn point is, for scripts and tests that click or hover one.
        if let Some(&(_, x, y)) = shown.last() {
            dom::set_body_data("pointAt", &format!("{x:.0},{y:.0}"));
        }
        match &a.gl {
            Some(gl) => {
                let mut buffer = Vec::with_capacity(shown.len() * 6);
                for &(i, x, y) in &shown {
                    let [r, g, b] = gl::rgb(colour(i));
                    buffer.extend_from_slice(&[x as f32, y as f32, r, g, b, i as f32]);
                }
                let size = if a.images_on_map { IMAGE_SPRITE } else { 5.0 };
                gl.draw(&buffer, w as u32, h as u32, size, a.images_on_map);
            }
            None => {
                for &(i, x, y) in &shown {
                    ctx.set_fill_style_str(colour(i));
                    ctx.fill_rect(x - 2.5, y - 2.5, 5.0, 5.0);
                }
            }
        }
        ctx.set_line_width(2.0);
        ctx.set_stroke_style_str("#000");
        // A dropped image sits at the mean position of its nearest samples.
        for (thumb, hits) in &a.query_marks {
            let points: Vec<&[f64]> = hits
                .iter()
                .filter_map(|&i| a.coords.get(2 * i..2 * i + 2))
                .collect();
            if points.is_empty() {
                continue;
            }
            let k = points.len() as f64;
            let mx = points.iter().map(|p| p[0]).sum::<f64>() / k;
            let my = points.iter().map(|p| p[1]).sum::<f64>() / k;
            let (x, y) = a.view.to_screen(mx, my);
            let _ = ctx.draw_image_with_html_canvas_element_and_dw_and_dh(
                thumb,
                x - 12.0,
                y - 12.0,
                24.0,
                24.0,
            );
            ctx.stroke_rect(x - 13.0, y - 13.0, 26.0, 26.0);
        }
        for &i in a.highlight.iter().chain(a.selected.iter()) {
            if let Some(p) = a.coords.get(2 * i..2 * i + 2) {
                let (x, y) = a.view.to_screen(p[0], p[1]);
                let r = if Some(i) == a.selected { 8.0 } else { 5.0 };
                ctx.stroke_rect(x - r, y - r, 2.0 * r, 2.0 * r);
            }
        }
    });
}

/// The visible point nearest to screen position (x, y), within 6 px.
fn pick(a: &App, x: f64, y: f64) -> Option<usize> {
    let set = a.samples.as_ref()?;
    a.view.pick_where(&a.coords, x, y, 6.0, |i| {
        let class = set.labels.get(i).copied().unwrap_or(0) as usize;
        !a.hidden.get(class).copied().unwrap_or(false)
    })
}

/// The legend: one line per class with its count; clicking a line shows or hides the class.
fn draw_legend(set: &SampleSet) {
    let legend: HtmlElement = by_id("legend");
    legend.set_inner_html("");
    if !set.labelled {
        legend.set_text_content(Some(&format!("{} unlabeled images", set.len())));
        return;
    }
    let doc = dom::document();
    for (c, class) in set.classes.iter().enumerate() {
        let count = set.labels.iter().filter(|&&l| l as usize == c).count();
        let item = doc.create_element("li").expect("li");
        item.set_id(&format!("class-{c}"));
        let swatch = doc.create_element("span").expect("span");
        swatch.set_class_name("swatch");
        let _ = swatch.set_attribute("style", &format!("background:{}", PALETTE[c % 10]));
        item.append_with_node_1(&swatch).ok();
        item.append_with_str_1(&format!("{class} ({count})")).ok();
        listen(&item.clone().into(), "click", move |_: MouseEvent| {
            with_app(|a| {
                if let Some(h) = a.hidden.get_mut(c) {
                    *h = !*h;
                }
            });
            show_hidden_classes();
        });
        legend.append_with_node_1(&item).ok();
    }
}

/// Shows only the classes whose name contains the search box's text (all when it is empty).
fn search_classes(text: &str) {
    let text = text.trim().to_lowercase();
    with_app(|a| {
        let Some(set) = a.samples.clone() else { return };
        a.hidden = set
            .classes
            .iter()
            .map(|name| !name.to_lowercase().contains(&text))
            .collect();
    });
    show_hidden_classes();
}

/// Greys out the hidden classes' legend lines and redraws the map without them.
fn show_hidden_classes() {
    let hidden = with_app(|a| a.hidden.clone());
    for (c, off) in hidden.iter().enumerate() {
        if let Some(item) = dom::document().get_element_by_id(&format!("class-{c}")) {
            item.set_class_name(if *off { "off" } else { "" });
        }
    }
    redraw();
}

/// Side of the square images an RGBA buffer holds.
fn rgba_side(rgba: &[u8]) -> u32 {
    ((rgba.len() / 4) as f64).sqrt().round() as u32
}

/// A thumbnail with a caption, for the neighbour lists (larger for larger images, so 96 px
/// photos are not shrunk to CIFAR's 48 px).
fn figure(rgba: &[u8], caption: &str, class: &str) -> web_sys::Element {
    let doc = dom::document();
    let fig = doc.create_element("figure").expect("figure");
    fig.set_class_name(class);
    let side = rgba_side(rgba);
    let css_px = side.clamp(48, 96);
    fig.append_with_node_1(&dom::image_canvas(rgba, side, css_px))
        .ok();
    let cap = doc.create_element("figcaption").expect("figcaption");
    cap.set_text_content(Some(caption));
    fig.append_with_node_1(&cap).ok();
    fig
}

fn neighbour_figures(hits: &[(usize, f32)]) -> Vec<web_sys::Element> {
    with_app(|a| {
        let set = a.samples.clone().expect("samples are loaded");
        hits.iter()
            .map(|&(i, sim)| {
                let label = set.caption(i);
                figure(&thumb(&set, i), &format!("{label} {sim:.2}"), "neighbour")
            })
            .collect()
    })
}

/// Lists the nearest samples of point `i` and marks them on the map.
fn select_point(i: usize) {
    let (hits, caption, rgba) = with_app(|a| {
        let d = a.dim;
        let hits = nearest(&a.unit, d, &a.unit[i * d..(i + 1) * d], NEIGHBOURS, Some(i));
        let set = a.samples.clone().expect("samples are loaded");
        a.selected = Some(i);
        a.highlight = hits.iter().map(|h| h.0).collect();
        let caption = format!("#{i} {}", set.caption(i));
        (hits, caption, thumb(&set, i))
    });
    let panel: HtmlElement = by_id("selection");
    panel.set_inner_html("");
    panel
        .append_with_node_1(&figure(&rgba, &caption, "chosen"))
        .ok();
    for fig in neighbour_figures(&hits) {
        panel.append_with_node_1(&fig).ok();
    }
    redraw();
}

/// Embeds a dropped image and lists its nearest samples.
async fn query_image(file: web_sys::File) -> Result<()> {
    let encoder = with_app(|a| a.encoder.take())
        .ok_or_else(|| anyhow!("no encoder is loaded yet: wait for the map, then drop again"))?;
    let mut encoder = encoder;
    let rgba = match dom::decode_image(&file, encoder.side as u32).await {
        Ok(rgba) => rgba,
        Err(e) => {
            with_app(|a| a.encoder = Some(encoder));
            return Err(e);
        }
    };
    let result = encoder.embed(rgba_to_input(&rgba), 1).await;
    with_app(|a| a.encoder = Some(encoder));
    let embedding = result?;
    let hits = with_app(|a| {
        let hits = nearest(&a.unit, a.dim, &embedding, NEIGHBOURS, None);
        a.highlight = hits.iter().map(|h| h.0).collect();
        a.selected = None;
        a.queries += 1;
        dom::set_body_data("queries", &a.queries.to_string());
        let mark = dom::image_canvas(&rgba, rgba_side(&rgba), 24);
        a.query_marks
            .push((mark, hits.iter().map(|h| h.0).collect()));
        hits
    });
    let list: HtmlElement = by_id("queries");
    let row = dom::document().create_element("div").expect("div");
    row.set_class_name("query");
    row.append_with_node_1(&figure(&rgba, &file.name(), "chosen"))
        .ok();
    for fig in neighbour_figures(&hits) {
        row.append_with_node_1(&fig).ok();
    }
    list.prepend_with_node_1(&row).ok();
    redraw();
    Ok(())
}

/// A dropped or picked file: an `.onnx` replaces the encoder, an image is queried.
fn handle_files(files: Option<web_sys::FileList>) {
    let Some(files) = files else { return };
    for i in 0..files.length() {
        let Some(file) = files.get(i) else { continue };
        if file.name().to_lowercase().ends_with(".onnx") {
            spawn(async move {
                let bytes = dom::file_bytes(&file).await?;
                open_model(bytes, file.name()).await
            });
        } else {
            spawn(query_image(file));
        }
    }
}

fn listen<E: wasm_bindgen::convert::FromWasmAbi + 'static>(
    target: &web_sys::EventTarget,
    event: &str,
    handler: impl FnMut(E) + 'static,
) {
    let closure = Closure::<dyn FnMut(E)>::new(handler);
    target
        .add_event_listener_with_callback(event, closure.as_ref().unchecked_ref())
        .expect("event listener");
    closure.forget(); // handlers live as long as the page
}

fn install_handlers() {
    let doc: web_sys::EventTarget = dom::document().into();
    listen(&doc, "dragover", |e: DragEvent| e.prevent_default());
    listen(&doc, "drop", |e: DragEvent| {
        e.prevent_default();
        handle_files(e.data_transfer().and_then(|d| d.files()));
    });
    for id in ["model-input", "image-input"] {
        let input: HtmlInputElement = by_id(id);
        let target = input.clone();
        listen(&input.into(), "change", move |_: Event| {
            handle_files(target.files());
            target.set_value("");
        });
    }
    let search: HtmlInputElement = by_id("search");
    let field = search.clone();
    listen(&search.into(), "input", move |_: Event| {
        search_classes(&field.value())
    });
    let perplexity: HtmlInputElement = by_id("perplexity");
    let slider = perplexity.clone();
    listen(&perplexity.into(), "change", move |_: Event| {
        let value = slider.value_as_number();
        dom::set_text("perplexity-value", &format!("{value:.0}"));
        with_app(|a| a.perplexity = value);
        rerun_projection();
    });
    for (id, mode) in [
        ("mode-tsne", Mode::Tsne),
        ("mode-umap", Mode::Umap),
        ("mode-pca", Mode::Pca),
    ] {
        let radio: HtmlInputElement = by_id(id);
        listen(&radio.into(), "change", move |_: Event| {
            with_app(|a| a.mode = mode);
            rerun_projection();
        });
    }
    let images: HtmlInputElement = by_id("images-on-map");
    let checkbox = images.clone();
    listen(&images.into(), "change", move |_: Event| {
        with_app(|a| a.images_on_map = checkbox.checked());
        redraw();
    });
    let target: web_sys::EventTarget = overlay().into();
    listen(&target, "wheel", |e: WheelEvent| {
        e.prevent_default();
        let factor = (-e.delta_y() * 0.0015).exp();
        with_app(|a| {
            a.auto_fit = false;
            a.view
                .zoom_at(e.offset_x() as f64, e.offset_y() as f64, factor);
        });
        redraw();
    });
    listen(&target, "mousedown", |e: MouseEvent| {
        with_app(|a| {
            a.drag = Some((e.offset_x() as f64, e.offset_y() as f64));
            a.dragged = false;
        });
    });
    listen(&target, "mousemove", on_mouse_move);
    listen(&target, "mouseup", |e: MouseEvent| {
        let (clicked, pick) = with_app(|a| {
            let clicked = a.drag.take().is_some() && !a.dragged;
            (clicked, pick(a, e.offset_x() as f64, e.offset_y() as f64))
        });
        if let (true, Some(i)) = (clicked, pick) {
            select_point(i);
        }
    });
    listen(&target, "mouseleave", |_: MouseEvent| {
        with_app(|a| a.drag = None);
        by_id::<HtmlElement>("tooltip").set_hidden(true);
    });
    listen(&target, "dblclick", |_: MouseEvent| {
        with_app(|a| a.auto_fit = true);
        redraw();
    });
    let win: web_sys::EventTarget = dom::window().into();
    listen(&win, "resize", |_: Event| redraw());
}

fn rerun_projection() {
    let ready = with_app(|a| !a.unit.is_empty());
    if ready {
        project();
    }
}

fn on_mouse_move(e: MouseEvent) {
    let (x, y) = (e.offset_x() as f64, e.offset_y() as f64);
    let panned = with_app(|a| match a.drag {
        Some((px, py)) if (x - px).abs() + (y - py).abs() > 0.0 => {
            a.view.pan(x - px, y - py);
            a.drag = Some((x, y));
            a.dragged = true;
            a.auto_fit = false;
            true
        }
        _ => false,
    });
    if panned {
        redraw();
        return;
    }
    let tooltip: HtmlElement = by_id("tooltip");
    let hover = with_app(|a| {
        let i = pick(a, x, y)?;
        let set = a.samples.clone()?;
        Some((thumb(&set, i), format!("#{i} {}", set.caption(i))))
    });
    match hover {
        Some((rgba, caption)) => {
            tooltip.set_inner_html("");
            tooltip
                .append_with_node_1(&figure(&rgba, &caption, "hover"))
                .ok();
            let style = tooltip.style();
            let _ = style.set_property("left", &format!("{}px", x + 14.0));
            let _ = style.set_property("top", &format!("{}px", y + 14.0));
            tooltip.set_hidden(false);
        }
        None => tooltip.set_hidden(true),
    }
}
