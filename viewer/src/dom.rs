//! Small browser helpers: elements by id, fetch with a time limit, timers, image canvases.

use anyhow::{anyhow, bail, Result};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{CanvasRenderingContext2d, Document, HtmlCanvasElement, HtmlElement, Window};

pub fn window() -> Window {
    web_sys::window().expect("the viewer runs in a page")
}

pub fn document() -> Document {
    window().document().expect("the page has a document")
}

/// The element with `id`, as `T`; the page's HTML defines every id the code uses.
pub fn by_id<T: JsCast>(id: &str) -> T {
    document()
        .get_element_by_id(id)
        .unwrap_or_else(|| panic!("index.html has no #{id}"))
        .dyn_into::<T>()
        .unwrap_or_else(|_| panic!("#{id} has an unexpected element type"))
}

pub fn body() -> HtmlElement {
    document().body().expect("the page has a body")
}

/// Sets `data-<key>` on the body: the state that tests and scripts read.
pub fn set_body_data(key: &str, value: &str) {
    let _ = body().dataset().set(key, value);
}

pub fn set_text(id: &str, text: &str) {
    by_id::<HtmlElement>(id).set_text_content(Some(text));
}

pub fn js_error(value: JsValue) -> anyhow::Error {
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return anyhow!("{}", String::from(e.message()));
    }
    anyhow!(
        "{}",
        value.as_string().unwrap_or_else(|| format!("{value:?}"))
    )
}

pub fn now_ms() -> f64 {
    window().performance().map(|p| p.now()).unwrap_or(0.0)
}

/// `relative` resolved against the page's address.
pub fn absolute_url(relative: &str) -> Result<String> {
    let url = web_sys::Url::new_with_base(
        relative,
        &document().base_uri().map_err(js_error)?.unwrap_or_default(),
    )
    .map_err(js_error)?;
    Ok(url.href())
}

/// Resolves after `ms` milliseconds (also lets the browser paint in between).
pub async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(promise).await;
}

/// Lets the browser handle input and paint before the caller goes on: a message to itself (a
/// new task, as React's scheduler does), not a timer, which background tabs throttle to 1 s.
pub async fn yield_to_browser() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let Ok(channel) = web_sys::MessageChannel::new() else {
            let _ = resolve.call0(&JsValue::NULL);
            return;
        };
        channel.port1().set_onmessage(Some(&resolve));
        let _ = channel.port2().post_message(&JsValue::NULL);
    });
    let _ = JsFuture::from(promise).await;
}

/// Runs `work` but gives up with `message` after `ms` milliseconds.
pub async fn with_timeout<T>(
    work: impl Future<Output = Result<T>> + 'static,
    ms: i32,
    message: &str,
) -> Result<T> {
    struct Race<T> {
        work: Pin<Box<dyn Future<Output = Result<T>>>>,
        timer: Pin<Box<dyn Future<Output = ()>>>,
    }
    impl<T> Future for Race<T> {
        type Output = Option<Result<T>>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if let Poll::Ready(done) = self.work.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        }
    }
    let race = Race {
        work: Box::pin(work),
        timer: Box::pin(sleep(ms)),
    };
    race.await.unwrap_or_else(|| Err(anyhow!("{message}")))
}

/// The bytes at `url`; an HTTP error status is an error naming the address.
pub async fn fetch_bytes(url: &str, timeout_ms: i32) -> Result<Vec<u8>> {
    match fetch_optional(url, timeout_ms).await? {
        Some(bytes) => Ok(bytes),
        None => bail!("{url}: not found (HTTP 404)"),
    }
}

/// Like [`fetch_bytes`], but a missing file (404) is `None`.
pub async fn fetch_optional(url: &str, timeout_ms: i32) -> Result<Option<Vec<u8>>> {
    let url = url.to_string();
    let shown = url.clone();
    let work = async move {
        let response: web_sys::Response = JsFuture::from(window().fetch_with_str(&url))
            .await
            .map_err(|e| anyhow!("cannot fetch {url}: {}", js_error(e)))?
            .unchecked_into();
        if response.status() == 404 {
            return Ok(None);
        }
        if !response.ok() {
            bail!(
                "{url}: HTTP {} {}",
                response.status(),
                response.status_text()
            );
        }
        let buffer = JsFuture::from(response.array_buffer().map_err(js_error)?)
            .await
            .map_err(|e| anyhow!("{url}: download failed: {}", js_error(e)))?;
        Ok(Some(js_sys::Uint8Array::new(&buffer).to_vec()))
    };
    with_timeout(
        work,
        timeout_ms,
        &format!("{shown}: no answer within {} s", timeout_ms / 1000),
    )
    .await
}

pub fn context_2d(canvas: &HtmlCanvasElement) -> CanvasRenderingContext2d {
    canvas
        .get_context("2d")
        .ok()
        .flatten()
        .expect("the browser has a 2-D canvas")
        .unchecked_into()
}

/// A `side` x `side` canvas showing `rgba`, drawn `css_px` wide with crisp pixels.
pub fn image_canvas(rgba: &[u8], side: u32, css_px: u32) -> HtmlCanvasElement {
    let canvas: HtmlCanvasElement = document()
        .create_element("canvas")
        .expect("canvas")
        .unchecked_into();
    canvas.set_width(side);
    canvas.set_height(side);
    canvas.set_class_name("thumb");
    let _ = canvas.style().set_property("width", &format!("{css_px}px"));
    let _ = canvas
        .style()
        .set_property("height", &format!("{css_px}px"));
    if let Ok(data) = web_sys::ImageData::new_with_u8_clamped_array_and_sh(
        wasm_bindgen::Clamped(rgba),
        side,
        side,
    ) {
        let _ = context_2d(&canvas).put_image_data(&data, 0.0, 0.0);
    }
    canvas
}

/// Decodes an image file with the browser and brings it to `side` x `side` RGBA as training
/// did: the centred square of its shorter side, scaled (aspect kept, no stretching).
pub async fn decode_image(file: &web_sys::File, side: u32) -> Result<Vec<u8>> {
    let url = web_sys::Url::create_object_url_with_blob(file).map_err(js_error)?;
    let img = web_sys::HtmlImageElement::new().map_err(js_error)?;
    let loaded = js_sys::Promise::new(&mut |resolve, reject| {
        img.set_onload(Some(&resolve));
        img.set_onerror(Some(&reject));
    });
    img.set_src(&url);
    let result = JsFuture::from(loaded).await;
    let _ = web_sys::Url::revoke_object_url(&url);
    if result.is_err() {
        bail!("{}: not an image this browser can decode", file.name());
    }
    let canvas: HtmlCanvasElement = document()
        .create_element("canvas")
        .map_err(js_error)?
        .unchecked_into();
    canvas.set_width(side);
    canvas.set_height(side);
    let ctx = context_2d(&canvas);
    ctx.set_image_smoothing_enabled(true);
    // web-sys has no binding for imageSmoothingQuality; without "high" Chromium's bilinear
    // downscale aliases large photos.
    let _ = js_sys::Reflect::set(&ctx, &"imageSmoothingQuality".into(), &"high".into());
    let (w, h) = (img.natural_width() as f64, img.natural_height() as f64);
    let crop = w.min(h);
    let s = side as f64;
    ctx.draw_image_with_html_image_element_and_sw_and_sh_and_dx_and_dy_and_dw_and_dh(
        &img,
        (w - crop) / 2.0,
        (h - crop) / 2.0,
        crop,
        crop,
        0.0,
        0.0,
        s,
        s,
    )
    .map_err(js_error)?;
    let data = ctx.get_image_data(0.0, 0.0, s, s).map_err(js_error)?;
    Ok(data.data().0)
}

/// The bytes of a picked or dropped file.
pub async fn file_bytes(file: &web_sys::File) -> Result<Vec<u8>> {
    let buffer = JsFuture::from(file.array_buffer())
        .await
        .map_err(|e| anyhow!("cannot read {}: {}", file.name(), js_error(e)))?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}
