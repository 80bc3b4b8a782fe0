//! The map: t-SNE / UMAP / PCA layouts in the worker, points that follow the layout as it
//! moves, and the messages the worker sends back.

use super::*;

/// Points embedded since the worker started follow their nearest laid-out point.
pub(super) fn add_followers(a: &mut App) {
    let d = a.dim.max(1);
    let (m, n) = (a.mapped, a.unit.len() / d);
    for k in m + a.followers.len()..n {
        let query = &a.unit[k * d..(k + 1) * d];
        let hit = nearest(&a.unit[..m * d], d, query, 1, None);
        a.followers.push(hit.first().map_or(0, |h| h.0));
    }
}

/// The map: the worker's points where it put them, each follower on its nearest one.
pub(super) fn place_followers(a: &mut App) {
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
pub(super) fn start_layout(a: &mut App) -> Vec<f64> {
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
pub(super) fn project() {
    project_from(None);
}

/// [`project`], with t-SNE / UMAP started from `init` (the layout of a map that grew) instead
/// of PCA.
pub(super) fn project_from(init: Option<Vec<f64>>) {
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
pub(super) fn start_map_worker(mode: Mode, init: Option<Vec<f64>>) -> Result<()> {
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

pub(super) fn on_map_message(event: MessageEvent) {
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
