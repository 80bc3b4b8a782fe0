//! The viewer end to end: `trunk build --release`, `trainer export --viewer` into the built
//! page, then headless Chromium (tests/browser/viewer_e2e.mjs) loads it from 127.0.0.1. The
//! browser's embeddings must equal native ONNX Runtime's, a clicked point and a dropped image
//! must get neighbours, and a corrupt model, a wrong-shape model and a missing runtime must show
//! an error on the page. An unlabeled folder of photos trained at 96 px (ImageNet stem) and
//! exported beside it must be embedded at 96 px, mapped and queried the same way.
//!
//! Needs what `.ci/run` installs: trunk, wasm-bindgen-cli, the wasm32 target, Chromium and the
//! viewer's npm packages.

use clap::Parser;
use e2e::{cifar10_bin, max_abs_diff, onnxruntime_run};
use std::path::{Path, PathBuf};
use std::process::Command;
use trainer::jobs::export::{INPUT, OUTPUT};

const SAMPLES: usize = 200;
const COMPARED: usize = 8;
/// Photos in the unlabeled folder (all of them go to the viewer).
const UNLABELED: usize = 30;
/// The demo page: the whole CIFAR-10 test set, with shipped embeddings.
const DEMO: usize = 10_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path_with_node_tools() -> String {
    let bin = root().join("viewer/node_modules/.bin");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn require_tools() {
    let trunk = Command::new("trunk").arg("--version").output();
    assert!(
        trunk.is_ok_and(|o| o.status.success()),
        "trunk is not installed: run .ci/run, or `cargo install trunk --version 0.21.14 --locked`"
    );
    assert!(
        root().join("viewer/node_modules/onnxruntime-web").is_dir(),
        "the viewer's npm packages are missing: run `npm ci` in viewer/ (or .ci/run)"
    );
}

/// Builds the page into `dist` with its own target directory, so it never waits on the lock
/// of the `cargo test` that runs this.
fn build_viewer(dist: &Path) {
    let out = Command::new("trunk")
        .args(["build", "--release", "--dist"])
        .arg(dist)
        .current_dir(root().join("viewer"))
        .env("CARGO_TARGET_DIR", root().join("target/viewer-wasm"))
        .env("PATH", path_with_node_tools())
        .output()
        .expect("trunk runs");
    assert!(
        out.status.success(),
        "trunk build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ONNX Runtime's (native) embeddings of the first `n` sample images the viewer got.
fn native_embeddings(assets: &Path, n: usize) -> (Vec<f32>, usize) {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(assets.join("samples.json")).unwrap()).unwrap();
    let side = meta["image_size"].as_u64().unwrap() as usize;
    let pixels = std::fs::read(assets.join("samples.bin")).unwrap();
    let images: Vec<f32> = pixels[..n * 3 * side * side]
        .iter()
        .map(|&b| b as f32 / 255.0)
        .collect();
    let model = assets.join("encoder.onnx");
    let (shape, values) = onnxruntime_run(&model, INPUT, images, n, OUTPUT);
    (values, shape[1] as usize)
}

/// The class of each sample image the viewer got.
fn sample_labels(assets: &Path) -> Vec<u64> {
    samples_json(assets)["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// How often a point's nearest other point (by `distance`) has its label.
fn nearest_label_agreement(labels: &[u64], distance: impl Fn(usize, usize) -> f64) -> f64 {
    let n = labels.len();
    let agree = (0..n)
        .filter(|&i| {
            let nearest = (0..n)
                .filter(|&j| j != i)
                .min_by(|&a, &b| distance(i, a).total_cmp(&distance(i, b)))
                .unwrap();
            labels[nearest] == labels[i]
        })
        .count();
    agree as f64 / n as f64
}

fn map_agreement(coords: &[f64], labels: &[u64]) -> f64 {
    nearest_label_agreement(labels, |i, j| {
        (coords[2 * i] - coords[2 * j]).powi(2) + (coords[2 * i + 1] - coords[2 * j + 1]).powi(2)
    })
}

/// The same in the embedding space, by cosine similarity (what the page's neighbours use).
fn embedding_agreement(rows: &[f32], dim: usize, labels: &[u64]) -> f64 {
    let unit = viewer::neighbors::l2_normalized(rows, dim);
    nearest_label_agreement(labels, |i, j| {
        let (a, b) = (&unit[i * dim..(i + 1) * dim], &unit[j * dim..(j + 1) * dim]);
        -a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>()
    })
}

/// A CIFAR-10 test image outside the sample, scaled to 64 x 64, as PNG.
fn query_png(path: &Path) {
    let splits = trainer::data::load(cifar10_bin().to_str().unwrap()).unwrap();
    let planar = splits.test.image(splits.test.len() - 1);
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        let p = (y * 32 + x) as usize;
        image::Rgb([planar[p], planar[1024 + p], planar[2048 + p]])
    });
    image::imageops::resize(&img, 64, 64, image::imageops::FilterType::Triangle)
        .save(path)
        .unwrap();
}

/// The embedding values the browser script printed (a JSON array of numbers).
fn first_rows(values: &serde_json::Value) -> Vec<f32> {
    let values = values
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {values}"));
    values.iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

/// Browser embeddings (`first8` of the script's JSON) against native ONNX Runtime's.
fn assert_matches_native(seen: &serde_json::Value, assets: &Path) {
    let (native, dim) = native_embeddings(assets, COMPARED);
    assert_eq!(seen["dim"], dim);
    let browser = first_rows(&seen["first8"]);
    assert_eq!(browser.len(), COMPARED * dim);
    let max_diff = max_abs_diff(&browser, &native);
    eprintln!(
        "{}: max |browser - native| over {COMPARED} images: {max_diff:e}",
        assets.display()
    );
    assert!(
        max_diff <= 1e-4,
        "browser and native embeddings differ by {max_diff}"
    );
}

/// What a user with their own photos does: train on an unlabeled folder at 96 px (a width-4
/// network, two steps) and export it for the viewer into `assets`.
fn export_unlabeled_photos(work: &Path, assets: &Path) {
    let photos = work.join("photos");
    for i in 0..UNLABELED {
        let (w, h) = [(160, 120), (100, 140), (96, 96)][i % 3];
        let image = image::RgbImage::from_fn(w, h, |x, y| {
            let t = i as u32 * 37;
            image::Rgb([
                (x * 3 + t) as u8,
                (y * 2 + t / 2) as u8,
                ((x ^ y) + t) as u8,
            ])
        });
        std::fs::create_dir_all(&photos).unwrap();
        image.save(photos.join(format!("photo{i:02}.png"))).unwrap();
    }
    let config = work.join("small.toml");
    std::fs::write(
        &config,
        "[model]\nwidth = 4\n\n[model.head]\nhidden = 16\nout = 8\n",
    )
    .unwrap();
    let run = work.join("photos-run");
    let data = format!("folder:{}", photos.display());
    let train = trainer::cli::Cli::parse_from([
        "trainer",
        "--data",
        &data,
        "--image-size",
        "96",
        "--batch-size",
        "4",
        "--steps-per-epoch",
        "2",
        "--epochs",
        "1",
        "--config",
        config.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(trainer::cli::run(train).unwrap(), 0);
    let export = trainer::cli::Cli::parse_from([
        "trainer",
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--viewer",
        assets.to_str().unwrap(),
    ]);
    assert_eq!(trainer::cli::run(export).unwrap(), 0);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(assets.join("samples.json")).unwrap()).unwrap();
    assert_eq!(meta["labelled"], false);
    assert_eq!(meta["image_size"], 96);
    assert_eq!(meta["count"], UNLABELED);
}

/// `trainer export` of the tiny checkpoint with `extra` arguments (CIFAR-10's test split).
fn export_tiny(extra: &[&str]) {
    let data = cifar10_bin();
    let mut args = vec!["trainer", "export", "--checkpoint", env!("TINY_CHECKPOINT")];
    args.extend(["--data", data.to_str().unwrap()]);
    args.extend(extra);
    assert_eq!(
        trainer::cli::run(trainer::cli::Cli::parse_from(args)).unwrap(),
        0
    );
}

fn samples_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("samples.json")).unwrap()).unwrap()
}

/// `python3 -m http.server` on a free port: a static host without the isolation headers.
struct PlainServer(std::process::Child, u16);

impl PlainServer {
    fn start(dir: &Path) -> PlainServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Owned by the guard at once: a failed start still kills it (Drop).
        let server = PlainServer(
            Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .arg("--directory")
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("python3 runs"),
            port,
        );
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("python3 -m http.server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.1)
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A valid ONNX model that is not an encoder: images -> GlobalAveragePool -> [N, 3, 1, 1].
fn write_wrong_shape_model(path: &Path) {
    let mut g = onnx::GraphBuilder::new();
    let pooled = g.global_average_pool("images");
    let dims = |d: [Result<i64, &'static str>; 4]| d;
    let model = g.finish(
        onnx::tensor_value("images", &dims([Err("N"), Ok(3), Ok(32), Ok(32)])),
        &pooled,
        onnx::tensor_value("pooled", &dims([Err("N"), Ok(3), Ok(1), Ok(1)])),
        &[],
    );
    onnx::write_model(&model, path).unwrap();
}

#[test]
fn browser_embeds_projects_and_answers_queries() {
    require_tools();
    let work = root().join("target/viewer-e2e");
    let _ = std::fs::remove_dir_all(&work);
    let dist = work.join("dist");
    build_viewer(&dist);
    assert!(dist.join("index.html").is_file() && dist.join("ort/ort.wasm.min.js").is_file());
    assert!(dist.join("tsne_worker_loader.js").is_file());

    // The demo site: the built page, the whole test set (10,000) and its f16 embeddings, served
    // by a plain static server (no isolation headers: one wasm thread).
    let site = work.join("demo-site");
    let page = dist.to_str().unwrap();
    export_tiny(&["--demo", site.to_str().unwrap(), "--page", page]);
    assert!(site.join("index.html").is_file() && site.join("ort/ort.wasm.min.js").is_file());
    let meta = samples_json(&site.join("assets"));
    assert_eq!(
        (meta["count"].as_u64(), meta["embeddings"]["dtype"].as_str()),
        (Some(DEMO as u64), Some("f16"))
    );
    let plain = PlainServer::start(&site);

    // What a user does: export a checkpoint for the viewer (here into the built page).
    let assets = dist.join("assets");
    let cli = trainer::cli::Cli::parse_from([
        "trainer",
        "export",
        "--checkpoint",
        env!("TINY_CHECKPOINT"),
        "--viewer",
        assets.to_str().unwrap(),
        "--data",
        cifar10_bin().to_str().unwrap(),
        "--samples",
        &SAMPLES.to_string(),
    ]);
    assert_eq!(trainer::cli::run(cli).unwrap(), 0);
    let model = std::fs::read(assets.join("encoder.onnx")).unwrap();
    std::fs::write(assets.join("corrupt.onnx"), &model[..model.len() / 2]).unwrap();
    write_wrong_shape_model(&assets.join("wrong-shape.onnx"));
    let query = work.join("query.png");
    query_png(&query);
    export_unlabeled_photos(&work, &dist.join("photos"));
    // An export whose shipped embeddings were tampered with (every sign flipped), which the
    // page must refuse.
    let wrong = dist.join("wrong");
    let viewer = wrong.to_str().unwrap();
    export_tiny(&["--viewer", viewer, "--samples", "64", "--embeddings", "f32"]);
    assert_eq!(samples_json(&wrong)["embeddings"]["dtype"], "f32");
    let mut raw = std::fs::read(wrong.join("embeddings.bin")).unwrap();
    raw.iter_mut().skip(3).step_by(4).for_each(|b| *b ^= 0x80);
    std::fs::write(wrong.join("embeddings.bin"), raw).unwrap();

    let screenshot = work.join("viewer.png");
    let out = Command::new("node")
        .arg(root().join("tests/browser/viewer_e2e.mjs"))
        .args(["--dist", dist.to_str().unwrap()])
        .args(["--query", query.to_str().unwrap()])
        .args(["--bad", "corrupt.onnx,wrong-shape.onnx,missing.onnx"])
        .args(["--screenshot", screenshot.to_str().unwrap()])
        .args(["--unlabeled", "photos/"])
        .args(["--demo", &plain.url(), "--wrong", "wrong/", "--webgpu", "1"])
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("browser script printed no JSON ({e}):\n{stdout}"));
    let mut shown = seen.clone();
    shown["first8"] = serde_json::json!("...");
    shown["unlabeled"]["first8"] = serde_json::json!("...");
    shown["demo"]["first8"] = serde_json::json!("...");
    shown["webgpu"]["first8"] = serde_json::json!("...");
    shown["tsne_coords"] = serde_json::json!("...");
    shown["umap"]["coords"] = serde_json::json!("...");
    eprintln!("browser: {shown}");
    assert!(seen.get("failure").is_none(), "{}", seen["failure"]);

    // The map is ready with every sample on it.
    assert_eq!(seen["status"], "ready", "page message: {}", seen["message"]);
    assert_eq!(seen["points"], SAMPLES);
    // t-SNE ran in the worker and the map was redrawn as it converged (every 10 of 1000 epochs).
    assert!(
        seen["tsne_frames"].as_u64().unwrap() >= 90,
        "{}",
        seen["tsne_frames"]
    );
    assert!(seen["timings"]["tsne_s"].as_f64().unwrap() > 0.0);

    // Browser (ONNX Runtime Web, wasm) == native ONNX Runtime on the same images.
    assert_matches_native(&seen, &assets);

    // UMAP in the worker: animated (every 10 of 500 epochs), every point placed; t-SNE and
    // UMAP both keep the embeddings' own neighbours' labels (1-NN label agreement on the map
    // against in the embedding space, printed: the tiny untrained encoder has little to keep).
    let umap = &seen["umap"];
    assert_eq!(umap["status"], "ready", "{}", umap["message"]);
    assert!(umap["frames"].as_u64().unwrap() >= 45, "{umap}");
    assert!(umap["seconds"].as_f64().unwrap() > 0.0);
    let labels = sample_labels(&assets);
    let (embedded, dim) = native_embeddings(&assets, SAMPLES);
    for name in ["tsne_coords", "umap"] {
        let coords = if name == "umap" {
            &umap["coords"]
        } else {
            &seen[name]
        };
        let coords: Vec<f64> = coords
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {coords}"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(coords.len(), 2 * SAMPLES);
        assert!(coords.iter().all(|c| c.is_finite()));
        eprintln!(
            "{name}: 1-NN label agreement on the map {:.3}, in the embedding space {:.3}",
            map_agreement(&coords, &labels),
            embedding_agreement(&embedded, dim, &labels)
        );
    }

    // Clicking a point and dropping an image both list the nearest samples.
    assert_eq!(seen["clicked_neighbours"], viewer::NEIGHBOURS);
    assert_eq!(seen["query_neighbours"], viewer::NEIGHBOURS);
    assert_eq!(seen["query_status"], "ready");

    // A corrupt model, a model of the wrong shape and a runtime that cannot load are errors on
    // the page that say what is wrong (the script waits at most 45 s for each: no hang).
    let bad = |name: &str| {
        let seen = &seen["bad_models"][name];
        seen["message"].as_str().unwrap_or("").to_string()
    };
    let message = bad("corrupt.onnx");
    assert!(
        message.contains("corrupt.onnx") && message.contains("not a model ONNX Runtime can load"),
        "{message}"
    );
    let message = bad("wrong-shape.onnx");
    assert!(
        message.contains("wrong-shape.onnx") && message.contains("output 'pooled' is [N, 3, 1, 1]"),
        "{message}"
    );
    // No model exported yet: the page says how to make one.
    let message = bad("missing.onnx");
    assert!(
        message.contains("no encoder at assets/missing.onnx") && message.contains("--viewer"),
        "{message}"
    );
    let missing = &seen["runtime_missing"];
    let message = missing["message"].as_str().unwrap_or("");
    assert!(message.contains("ONNX Runtime Web is missing"), "{message}");

    // The unlabeled photos at 96 px: every one on the map, one legend line, the same embeddings
    // as native ONNX Runtime, and a dropped image answered with captions by index.
    let photos = &seen["unlabeled"];
    assert_eq!(
        photos["status"], "ready",
        "page message: {}",
        photos["message"]
    );
    assert_eq!(photos["points"], UNLABELED);
    assert_eq!(photos["legend"], format!("{UNLABELED} unlabeled images"));
    assert!(
        photos["model_name"].as_str().unwrap().contains("96"),
        "{}",
        photos["model_name"]
    );
    assert_matches_native(photos, &dist.join("photos"));
    assert_eq!(
        photos["query_status"], "ready",
        "{}",
        photos["query_message"]
    );
    assert_eq!(photos["query_neighbours"], viewer::NEIGHBOURS);
    let captions = photos["query_captions"].as_array().unwrap();
    assert!(
        captions
            .iter()
            .all(|c| c.as_str().unwrap().contains("image ")),
        "{captions:?}"
    );

    // The demo page: all 10,000 points from the shipped f16 embeddings, which equal native ONNX
    // Runtime's (f16 rounding aside), and 32 random ones re-embedded in the browser agree.
    let demo = &seen["demo"];
    assert_eq!(demo["sample_check"], "passed", "{}", demo["message"]);
    assert_eq!(
        (demo["isolated"].as_bool(), demo["threads"].as_u64()),
        (Some(false), Some(1))
    );
    let backend = demo["backend"].as_str().unwrap_or("");
    assert!(
        backend.contains("1 thread (this page is not cross-origin isolated"),
        "{backend}"
    );
    assert_eq!(demo["points"], DEMO);
    assert_eq!(demo["visible"], DEMO);
    let check = &demo["check"];
    assert_eq!(check["indices"].as_array().unwrap().len(), 32);
    assert!(
        check["max_diff"].as_f64().unwrap() <= check["tolerance"].as_f64().unwrap(),
        "{check}"
    );
    let (native, dim) = native_embeddings(&site.join("assets"), COMPARED);
    let shipped = first_rows(&demo["first8"]);
    assert_eq!(shipped.len(), COMPARED * dim);
    let largest = native.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&shipped, &native);
    assert!(
        diff <= 1e-3 * largest,
        "shipped f16 embeddings differ from ONNX Runtime's by {diff} (largest value {largest})"
    );
    // Hovering a point shows its image; the search and the legend filter the classes.
    assert!(
        demo["hover_caption"]
            .as_str()
            .unwrap_or("")
            .starts_with('#'),
        "{}",
        demo["hover_caption"]
    );
    assert_eq!(demo["visible_cat"], DEMO / 10);
    assert_eq!(demo["visible_without_class0"], DEMO - DEMO / 10);
    eprintln!(
        "demo page: every point drawn {:.0} ms after navigation, hover answered in {} ms",
        demo["all_points_ms"].as_f64().unwrap(),
        demo["hover_ms"]
    );

    // Embedded in the browser instead: the first points are drawn before the last batch, and
    // every one by the end.
    let live = &seen["live"];
    assert_eq!(live["points"], DEMO, "{}", live["message"]);
    let first = live["points_at_first_draw"].as_u64().unwrap();
    assert!(
        first > 0 && first < DEMO as u64,
        "first draw with {first} points"
    );
    assert!(live["all_points_ms"].as_f64().unwrap() > live["first_points_ms"].as_f64().unwrap());
    // t-SNE laid out the points embedded so far while the rest were still coming.
    assert!(
        live["map_frames_while_embedding"].as_u64().unwrap() >= 1,
        "no t-SNE layout drawn while embedding: {live}"
    );
    // The page kept painting while it embedded (it yields to the browser between batches).
    let frames = &live["frames"];
    assert!(frames["during"].as_u64().unwrap() >= 10, "{frames}");
    eprintln!(
        "in-browser embedding of {DEMO}: first points at {:.0} ms, all at {:.0} ms ({}); {} \
         frames painted meanwhile, longest gap {:.0} ms",
        live["first_points_ms"].as_f64().unwrap(),
        live["all_points_ms"].as_f64().unwrap(),
        live["progress"],
        frames["during"],
        frames["longest_gap_ms"].as_f64().unwrap()
    );

    // Embeddings of another model: refused on the page, naming the file and the fix.
    let wrong = &seen["wrong"];
    assert_eq!(wrong["sample_check"], "failed");
    let message = wrong["message"].as_str().unwrap_or("");
    assert!(
        message.contains("embeddings.bin) do not belong to this model")
            && message.contains("--embeddings f32"),
        "{message}"
    );

    // WebGPU (SwiftShader here): ONNX Runtime Web's WebGPU provider really started and its
    // embeddings equal native ONNX Runtime's (so wasm's) within 1e-4; left to choose on a
    // software adapter, the page keeps wasm.
    let webgpu = &seen["webgpu"];
    assert_eq!(webgpu["status"], "ready", "{}", webgpu["message"]);
    assert_eq!(webgpu["backend"], "webgpu", "{}", webgpu["backend_text"]);
    assert_eq!(webgpu["device_started"], true);
    assert_eq!(webgpu["points"], SAMPLES);
    assert_matches_native(webgpu, &assets);
    assert_eq!(webgpu["auto_backend"], "wasm");
    eprintln!(
        "WebGPU: {} ({:.1} ms per image)",
        webgpu["backend_text"],
        webgpu["ms_per_image"].as_f64().unwrap_or(0.0)
    );

    // WebGL2 draws the map; with "images on the map" every point becomes its thumbnail: many
    // more distinct colours than the ten class colours of the dots.
    assert_eq!(seen["renderer"], "webgl");
    let colours = |path: String| {
        let img = image::open(&path).unwrap().to_rgb8();
        img.pixels()
            .map(|p| p.0)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let shot = screenshot.display();
    let (dots, images) = (
        colours(format!("{shot}.dots.png")),
        colours(format!("{shot}.images.png")),
    );
    eprintln!("map colours: {dots} as dots, {images} as images");
    assert!(
        images > 5 * dots,
        "{dots} colours as dots, {images} as images"
    );

    let png = std::fs::read(&screenshot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "screenshot of {} bytes", png.len());
    eprintln!("screenshot: {}", screenshot.display());
}
