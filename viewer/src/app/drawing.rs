//! Drawing: the canvases, the WebGL point renderer and its image atlas, the overlay
//! (selection, neighbours), hit-testing and the legend.

use super::*;

/// The WebGL canvas the points are drawn on (or nothing, without WebGL2).
pub(super) fn canvas() -> HtmlCanvasElement {
    by_id("map")
}

/// The 2-D canvas above it: marks, highlights, dropped images (and the points without WebGL2);
/// it receives the mouse.
pub(super) fn overlay() -> HtmlCanvasElement {
    by_id("overlay")
}

/// Matches both canvases' pixel size to their size on screen.
pub(super) fn resize_canvas() {
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
pub(super) fn start_renderer() {
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
pub(super) fn upload_atlas(set: &SampleSet) {
    let result = with_app(|a| match a.gl.as_mut() {
        Some(gl) => gl.set_atlas(&atlas::build(set, atlas::cell_size(set.len(), ATLAS_SIDE))),
        None => Ok(()),
    });
    if let Err(e) = result {
        web_sys::console::warn_1(&format!("no images on the map: {e:#}").into());
    }
}

pub(super) fn redraw() {
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
pub(super) fn pick(a: &App, x: f64, y: f64) -> Option<usize> {
    let set = a.samples.as_ref()?;
    a.view.pick_where(&a.coords, x, y, 6.0, |i| {
        let class = set.labels.get(i).copied().unwrap_or(0) as usize;
        !a.hidden.get(class).copied().unwrap_or(false)
    })
}

/// The legend: one line per class with its count; clicking a line shows or hides the class.
pub(super) fn draw_legend(set: &SampleSet) {
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
