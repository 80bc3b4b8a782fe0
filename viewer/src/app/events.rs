//! Events: the page's handlers (buttons, drop, files, mouse, wheel, resize) and what they
//! start.

use super::*;

/// A dropped or picked file: an `.onnx` replaces the encoder, an image is queried.
pub(super) fn handle_files(files: Option<web_sys::FileList>) {
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

pub(super) fn listen<E: wasm_bindgen::convert::FromWasmAbi + 'static>(
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

pub(super) fn install_handlers() {
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

pub(super) fn rerun_projection() {
    let ready = with_app(|a| !a.unit.is_empty());
    if ready {
        project();
    }
}

pub(super) fn on_mouse_move(e: MouseEvent) {
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
