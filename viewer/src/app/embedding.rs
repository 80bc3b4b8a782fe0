//! Embedding: the samples through the encoder batch by batch (or the shipped embeddings,
//! checked by re-embedding a few), the points growing on the map, progress and what the page
//! publishes for scripts and tests.

use super::*;

/// Appends embedded rows to the map's points.
pub(super) fn add_points(rows: &[f32]) {
    with_app(|a| {
        a.unit.extend(l2_normalized(rows, a.dim.max(1)));
        a.embeddings.extend_from_slice(rows);
    });
}

/// Records when the first point, and when every point, reached the map.
pub(super) fn mark_drawn(all: bool) {
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
pub(super) async fn embed_all(encoder: &mut Encoder, set: &SampleSet, job: u32) -> Result<bool> {
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
pub(super) async fn check_shipped(
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

pub(super) fn show_progress(done: usize, total: usize, per_second: f64) {
    let bar: HtmlElement = by_id("progress");
    let _ = bar.set_attribute("max", &total.to_string());
    let _ = bar.set_attribute("value", &done.to_string());
    dom::set_text(
        "progress-text",
        &format!("{done} / {total} images · {per_second:.1} images/s"),
    );
}

/// Exposes the embeddings and timings as `window.selfsupViewer`.
pub(super) fn publish() {
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
