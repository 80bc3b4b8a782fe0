//! The side panel: class search and hidden classes, a selected point with its neighbours, and
//! a dropped image's nearest samples.

use super::*;

/// Shows only the classes whose name contains the search box's text (all when it is empty).
pub(super) fn search_classes(text: &str) {
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
pub(super) fn show_hidden_classes() {
    let hidden = with_app(|a| a.hidden.clone());
    for (c, off) in hidden.iter().enumerate() {
        if let Some(item) = dom::document().get_element_by_id(&format!("class-{c}")) {
            item.set_class_name(if *off { "off" } else { "" });
        }
    }
    redraw();
}

/// Side of the square images an RGBA buffer holds.
pub(super) fn rgba_side(rgba: &[u8]) -> u32 {
    ((rgba.len() / 4) as f64).sqrt().round() as u32
}

/// A thumbnail with a caption, for the neighbour lists (larger for larger images, so 96 px
/// photos are not shrunk to CIFAR's 48 px).
pub(super) fn figure(rgba: &[u8], caption: &str, class: &str) -> web_sys::Element {
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

pub(super) fn neighbour_figures(hits: &[(usize, f32)]) -> Vec<web_sys::Element> {
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
pub(super) fn select_point(i: usize) {
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
pub(super) async fn query_image(file: web_sys::File) -> Result<()> {
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
