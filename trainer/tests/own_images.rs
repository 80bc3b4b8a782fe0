//! Your own images, as a user brings them: a flat folder of mixed-size photos without labels
//! (one of them corrupt), and STL-10 in its official binary layout at 96 px.

mod common;

use common::{text, trainer, Metrics};
use std::path::Path;

/// A width-4 network with small heads and a small kNN monitor, so a CPU run takes seconds.
fn small_config(dir: &Path) -> String {
    let path = dir.join("small.toml");
    std::fs::write(
        &path,
        "[model]\nwidth = 4\n\n[model.head]\nhidden = 16\nout = 8\n\n\
         [knn]\nbank_size = 16\nquery_size = 8\nk = 5\n",
    )
    .unwrap();
    path.display().to_string()
}

/// 12 photos of different sizes and formats, some in a sub-folder, and one corrupt file.
fn photo_folder(dir: &Path) {
    let sizes = [(200, 150), (64, 128), (40, 40), (33, 70)];
    for i in 0..12 {
        let (w, h) = sizes[i % sizes.len()];
        let image = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + i as u32 * 20) as u8, (y * 5) as u8, (x ^ y) as u8])
        });
        let name = if i % 2 == 0 {
            format!("p{i:02}.png")
        } else {
            format!("trip/p{i:02}.jpg")
        };
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image.save(&path).unwrap();
    }
    std::fs::write(dir.join("broken.jpg"), b"this is not a JPEG").unwrap();
}

#[test]
fn an_unlabeled_folder_trains_resumes_exports_and_embeds() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    photo_folder(&photos);
    let config = small_config(dir.path());
    let out = dir.path().join("run");
    let data = format!("folder:{}", photos.display());
    let args = [
        "--data",
        &data,
        "--image-size",
        "24",
        "--batch-size",
        "4",
        "--steps-per-epoch",
        "2",
        "--config",
        &config,
    ];
    let run_args = [&args[..], &["--out", out.to_str().unwrap()]].concat();
    let first = trainer(&[&run_args[..], &["--epochs", "1"]].concat());
    let stderr = text(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("broken.jpg"), "{stderr}");
    assert!(
        stderr.contains("12 unlabeled images") && stderr.contains("1 unreadable files skipped"),
        "{stderr}"
    );
    assert!(stderr.contains("kNN monitor: off"), "{stderr}");
    let config_toml = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config_toml.contains("image_size = 24"), "{config_toml}");
    assert!(config_toml.contains("stem = \"cifar\""), "{config_toml}");
    assert!(config_toml.contains("mean = ["), "{config_toml}");

    let resumed = trainer(&["--resume", "--epochs", "2", "--out", out.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(text(&resumed.stdout).contains("epoch 2/2"));
    assert!(out.join("checkpoints/epoch-0002.ckpt").is_file());

    let onnx = dir.path().join("encoder.onnx");
    let export = trainer(&[
        "export",
        "--checkpoint",
        out.to_str().unwrap(),
        "--out",
        onnx.to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    // metadata_props say the size and the input's shape at it.
    let bytes = std::fs::read(&onnx).unwrap();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"image_size") && has(b"[N, 3, 24, 24]"));

    // For the viewer: evenly spaced photos of the folder, marked unlabeled, at 24 px.
    let assets = dir.path().join("viewer-assets");
    let viewer = trainer(&[
        "export",
        "--checkpoint",
        out.to_str().unwrap(),
        "--viewer",
        assets.to_str().unwrap(),
        "--samples",
        "5",
    ]);
    assert!(viewer.status.success(), "{}", text(&viewer.stderr));
    assert!(text(&viewer.stdout).contains("5 sample images (unlabeled)"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(assets.join("samples.json")).unwrap()).unwrap();
    assert_eq!(meta["labelled"], false);
    assert_eq!(meta["image_size"], 24);
    assert_eq!(meta["source_index"], serde_json::json!([0, 2, 4, 7, 9]));
    let pixels = std::fs::metadata(assets.join("samples.bin")).unwrap().len();
    assert_eq!(pixels, 5 * 3 * 24 * 24);

    let npy = dir.path().join("photos.npy");
    let embed = trainer(&[
        "embed",
        "--checkpoint",
        out.to_str().unwrap(),
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert!(embed.status.success(), "{}", text(&embed.stderr));
    let csv = std::fs::read_to_string(dir.path().join("photos.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 13, "{csv}");
    assert_eq!(rows[1], "0,p00.png,");
    assert!(csv.contains("trip/p11.jpg") && !csv.contains("broken"));
    let header_len = 128; // the writer pads the .npy header to 128 bytes for this shape
    assert_eq!(
        std::fs::metadata(&npy).unwrap().len(),
        header_len + 12 * 32 * 4
    );

    // With --strict-data the corrupt file is an error that names it.
    let strict = trainer(
        &[
            &args[..],
            &["--epochs", "1", "--strict-data", "--out"],
            &[dir.path().join("strict").to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(strict.status.code(), Some(1));
    let stderr = text(&strict.stderr);
    assert!(
        stderr.contains("broken.jpg") && stderr.contains("--strict-data"),
        "{stderr}"
    );
}

/// Writes `n` images in STL-10's layout (column-major planes of 96 x 96), label `i % 10 + 1`.
fn stl10_split(dir: &Path, split: &str, n: usize, labels: bool) {
    let s = 96;
    let mut bytes = Vec::with_capacity(n * 3 * s * s);
    for i in 0..n {
        for c in 0..3 {
            for x in 0..s {
                for y in 0..s {
                    let class = i % 10;
                    bytes.push(((class * 25 + c * 60 + (x + y) / 4 + i) % 256) as u8);
                }
            }
        }
    }
    std::fs::write(dir.join(format!("{split}_X.bin")), bytes).unwrap();
    if labels {
        let y: Vec<u8> = (0..n).map(|i| (i % 10 + 1) as u8).collect();
        std::fs::write(dir.join(format!("{split}_y.bin")), y).unwrap();
    }
}

#[test]
fn stl10_at_96_px_trains_with_the_imagenet_stem_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let stl = dir.path().join("stl10_binary");
    std::fs::create_dir(&stl).unwrap();
    stl10_split(&stl, "train", 20, true);
    stl10_split(&stl, "test", 10, true);
    stl10_split(&stl, "unlabeled", 16, false);
    let config = small_config(dir.path());
    let out = dir.path().join("run");
    let data = format!("stl10:{}", dir.path().display());
    let run = trainer(&[
        "--data",
        &data,
        "--image-size",
        "96",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--steps-per-epoch",
        "2",
        "--config",
        &config,
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("16 unlabeled images for pretraining")
            && stderr.contains("20 train, 10 test images, 10 classes")
            && stderr.contains("96x96 px")
            && stderr.contains("ImageNet stem"),
        "{stderr}"
    );
    let knn = Metrics::read(&out).column("knn_top1")[0];
    assert!((0.0..=1.0).contains(&knn), "kNN {knn}");

    let eval = trainer(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--probe-epochs",
        "2",
        "--k",
        "5",
    ]);
    assert!(eval.status.success(), "{}", text(&eval.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("checkpoints/eval.json")).unwrap()).unwrap();
    assert_eq!(report["test_images"], 10);
    assert_eq!(report["train_images"], 20);
}

/// `PATH/train/<class>` and `PATH/val/<class>` of 10 classes, each a colour of its own with a
/// little per-image texture: classes any encoder tells apart, sorted by name as a user's are.
fn class_sorted_folder(dir: &Path, train_per_class: usize, val_per_class: usize) {
    for class in 0..10u32 {
        // Ten well-separated colours: a hue wheel at two brightness levels.
        let hue = (class % 5) as f32 / 5.0 * 6.0;
        let level = if class < 5 { 230.0 } else { 110.0 };
        let channel = |offset: f32| {
            let x = ((hue + offset) % 6.0 - 3.0).abs() - 1.0;
            (x.clamp(0.0, 1.0) * level) as u32
        };
        let colour = [channel(0.0), channel(4.0), channel(2.0)];
        for (split, count) in [("train", train_per_class), ("val", val_per_class)] {
            let folder = dir.join(split).join(format!("class{class}"));
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..count as u32 {
                let image = image::RgbImage::from_fn(32, 32, |x, y| {
                    let texture = (x * 3 + y * 5 + i * 7) % 16;
                    image::Rgb(colour.map(|c| (c + texture) as u8))
                });
                image.save(folder.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

/// The kNN monitor and `eval --limit-train` on a class-sorted folder larger than the bank: a
/// bank of the first 24 images would hold two of the ten classes (top-1 at most 0.2 over all
/// queries); the seeded, stratified bank holds every class, and the colours make the classes
/// easy even for a network trained one step.
#[test]
fn the_knn_bank_of_a_class_sorted_folder_holds_every_class() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    class_sorted_folder(&images, 12, 4);
    let config = dir.path().join("knn.toml");
    std::fs::write(
        &config,
        "[model]\nwidth = 4\n\n[model.head]\nhidden = 16\nout = 8\n\n\
         [knn]\nbank_size = 24\nquery_size = 0\nk = 3\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let data = format!("folder:{}", images.display());
    let run = trainer(&[
        "--data",
        &data,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--steps-per-epoch",
        "1",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let knn = Metrics::read(&out).column("knn_top1")[0];
    assert!(
        knn >= 0.6,
        "kNN top-1 {knn} on 40 queries of 10 colour classes"
    );

    let eval = trainer(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--limit-train",
        "24",
        "--probe-epochs",
        "1",
        "--k",
        "3",
    ]);
    assert!(eval.status.success(), "{}", text(&eval.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("checkpoints/eval.json")).unwrap()).unwrap();
    assert_eq!(
        (
            report["train_images"].as_u64(),
            report["test_images"].as_u64()
        ),
        (Some(24), Some(40))
    );
    let top1 = report["knn_top1"].as_f64().unwrap();
    assert!(top1 >= 0.6, "eval kNN top-1 {top1}: {report}");
}
