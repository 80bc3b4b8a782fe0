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

/// Browser embeddings (`first8` of the script's JSON) against native ONNX Runtime's.
fn assert_matches_native(seen: &serde_json::Value, assets: &Path) {
    let (native, dim) = native_embeddings(assets, COMPARED);
    assert_eq!(seen["dim"], dim);
    let browser: Vec<f32> = seen["first8"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
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

    let screenshot = work.join("viewer.png");
    let out = Command::new("node")
        .arg(root().join("tests/browser/viewer_e2e.mjs"))
        .args(["--dist", dist.to_str().unwrap()])
        .args(["--query", query.to_str().unwrap()])
        .args(["--bad", "corrupt.onnx,wrong-shape.onnx,missing.onnx"])
        .args(["--screenshot", screenshot.to_str().unwrap()])
        .args(["--unlabeled", "photos/"])
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

    let png = std::fs::read(&screenshot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "screenshot of {} bytes", png.len());
    eprintln!("screenshot: {}", screenshot.display());
}
