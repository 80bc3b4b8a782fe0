//! The page: loads the runtime, the encoder and the samples, embeds them, projects them and
//! draws the interactive map.
//!
//! The map is useful at once: from the embeddings shipped with the samples (`trainer export
//! --embeddings`, checked by re-embedding a random few here), or growing batch by batch while
//! the browser embeds the images itself.
//!
//! This file holds the state (one thread-local `App`) and the start; the page's parts are one
//! file each: `loading`, `embedding`, `map`, `drawing`, `panel`, `events`.
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

mod drawing;
mod embedding;
mod events;
mod loading;
mod map;
mod panel;

use drawing::*;
use embedding::*;
use events::*;
use loading::*;
use map::*;
use panel::*;

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
