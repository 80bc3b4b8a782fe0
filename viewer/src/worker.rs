//! The map's Web Worker (t-SNE or UMAP) and its messages.
//!
//! Worker -> page, once started: `{kind: "ready"}` (a message sent before the worker's wasm has
//! loaded would be lost, so the page waits for this).
//! Page -> worker: `{method: "tsne", rows: Float32Array, dim, perplexity, epochs, every}` or
//! `{method: "umap", rows, dim, neighbours, epochs, every}`, either with an optional
//! `init: Float64Array` (n x 2) to start from (a map that grows keeps its layout).
//! Worker -> page: `{kind: "progress", epoch, coords: Float64Array}` every `every` epochs,
//! then `{kind: "done", coords, seconds}`, or `{kind: "error", message}`.

use anyhow::{anyhow, Result};
use js_sys::{Float32Array, Float64Array, Object, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use crate::projection::{tsne_2d_from, TsneParams};
use crate::reduce::{principal_components, NEIGHBOUR_DIMS};
use crate::umap::{umap_2d_from, UmapParams};

/// Which map the worker computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    Tsne(TsneParams),
    Umap(UmapParams),
}

fn set(obj: &Object, key: &str, value: &JsValue) {
    let _ = Reflect::set(obj, &key.into(), value);
}

fn number(obj: &JsValue, key: &str) -> Result<f64> {
    Reflect::get(obj, &key.into())
        .ok()
        .and_then(|v| v.as_f64())
        .ok_or_else(|| anyhow!("map request without a number '{key}'"))
}

/// The request the page sends.
pub fn request(
    rows: &[f32],
    dim: usize,
    method: Method,
    init: Option<&[f64]>,
    every: usize,
) -> JsValue {
    let msg = Object::new();
    if let Some(init) = init {
        set(&msg, "init", &Float64Array::from(init).into());
    }
    set(&msg, "rows", &Float32Array::from(rows).into());
    set(&msg, "dim", &(dim as f64).into());
    set(&msg, "every", &(every as f64).into());
    match method {
        Method::Tsne(params) => {
            set(&msg, "method", &"tsne".into());
            set(&msg, "perplexity", &params.perplexity.into());
            set(&msg, "epochs", &(params.epochs as f64).into());
        }
        Method::Umap(params) => {
            set(&msg, "method", &"umap".into());
            set(&msg, "neighbours", &(params.neighbours as f64).into());
            set(&msg, "epochs", &(params.epochs as f64).into());
        }
    }
    msg.into()
}

fn reply(scope: &DedicatedWorkerGlobalScope, kind: &str, fill: impl FnOnce(&Object)) {
    let msg = Object::new();
    set(&msg, "kind", &kind.into());
    fill(&msg);
    let _ = scope.post_message(&msg);
}

fn run(scope: &DedicatedWorkerGlobalScope, data: &JsValue) -> Result<()> {
    let rows: Float32Array = Reflect::get(data, &"rows".into())
        .ok()
        .and_then(|v| v.dyn_into().ok())
        .ok_or_else(|| anyhow!("map request without Float32Array 'rows'"))?;
    let dim = number(data, "dim")? as usize;
    let every = (number(data, "every")? as usize).max(1);
    let epochs = number(data, "epochs")? as usize;
    let method = Reflect::get(data, &"method".into())
        .ok()
        .and_then(|v| v.as_string())
        .unwrap_or_default();
    // Neighbours are searched among the top principal components (crate::reduce).
    let (rows, dim) = principal_components(&rows.to_vec(), dim, NEIGHBOUR_DIMS);
    let init = Reflect::get(data, &"init".into())
        .ok()
        .and_then(|v| v.dyn_into::<Float64Array>().ok())
        .map(|a| a.to_vec());
    let start = js_sys::Date::now();
    let progress = |epoch: usize, coords: &[f64]| {
        if epoch.is_multiple_of(every) {
            reply(scope, "progress", |m| {
                set(m, "epoch", &(epoch as f64).into());
                set(m, "epochs", &(epochs as f64).into());
                set(m, "coords", &Float64Array::from(coords).into());
            });
        }
    };
    let coords = match method.as_str() {
        "umap" => {
            let params = UmapParams {
                neighbours: number(data, "neighbours")? as usize,
                epochs,
                ..UmapParams::for_points(rows.len() / dim.max(1))
            };
            umap_2d_from(&rows, dim, params, init, progress)?
        }
        _ => {
            let params = TsneParams {
                perplexity: number(data, "perplexity")?,
                epochs,
                ..TsneParams::default()
            };
            tsne_2d_from(&rows, dim, params, init, progress)?
        }
    };
    let seconds = (js_sys::Date::now() - start) / 1000.0;
    reply(scope, "done", |m| {
        set(m, "coords", &Float64Array::from(coords.as_slice()).into());
        set(m, "seconds", &seconds.into());
    });
    Ok(())
}

/// Worker entry point: answers every request with progress and the final layout.
pub fn serve() {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let reply_scope = scope.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        if let Err(e) = run(&reply_scope, &event.data()) {
            reply(&reply_scope, "error", |m| {
                set(m, "message", &format!("{e:#}").into())
            });
        }
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    // The worker lives as long as the page keeps it; so does its handler.
    on_message.forget();
    reply(&scope, "ready", |_| {});
}
