//! Folders of your own images (PNG, JPEG, TIFF, WebP, BMP, GIF's first frame), at any size,
//! labelled or not.
//!
//! `folder:PATH` reads, in this order of precedence:
//! - `PATH/train/<class>/*` and `PATH/val/<class>/*` (or `PATH/test`): labelled splits;
//! - `PATH/<class>/*`, every image exactly one folder deep (torchvision's ImageFolder): labelled,
//!   every tenth image of each class held out for the kNN monitor;
//! - anything else (a flat folder, nested folders of any depth): unlabeled, every image used
//!   for pretraining; the kNN monitor and `eval` then need `--eval-data`.
//!
//! `images:PATH` always takes the last reading, for folders whose sub-folders are not classes.
//!
//! Links are followed, but each real folder is read once and each real file taken once: a link
//! to an ancestor folder would otherwise be walked round until the path grew too long. What is
//! left out (files of other kinds, folders and files reached again) is said in one line.
//!
//! Each image is decoded once, resized so that its shorter side is the image size, and
//! centre-cropped to a square (torchvision's `Resize(size)` + `CenterCrop(size)`), into a cache
//! file under the cache directory that is memory-mapped: later runs, `eval` and `export` on the
//! same files reuse it, and a dataset larger than RAM pages in as it is read.

mod cache;
mod walk;

use anyhow::{ensure, Context, Result};
use cache::*;
use md5::{Digest, Md5};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use walk::*;

use crate::data::pixels::{file_fingerprint, CacheWriter, Pixels};
use crate::data::{cache_dir, ImageDataset, LoadOptions, Splits};

/// Image size of folders when none is given: ImageNet's, as lightly and LightlyTrain default to.
pub const DEFAULT_SIDE: usize = 224;

/// Whether sub-folders name classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// Class folders when the layout has them (see the module docs).
    FromFolders,
    /// Every image unlabeled, whatever the folders.
    None,
}

/// Loads the folder `root` (see the module docs).
pub fn load(root: &Path, labels: Labels, options: &LoadOptions) -> Result<Splits> {
    ensure!(root.is_dir(), "{}: not a directory", root.display());
    let side = match options.image_size {
        0 => DEFAULT_SIDE,
        side => side,
    };
    let origin = format!("folder:{}", root.display());
    let mut walk = Walk::new(root)?;
    let splits = read_layout(root, labels, side, options, &mut walk, origin.clone());
    // Also when nothing could be loaded: "skipped 40 files with other extensions (.heic)" is
    // then the explanation.
    if let Some(left_out) = walk.summary() {
        eprintln!("{origin}: {left_out}");
    }
    splits
}

/// [`load`]'s layouts, read through `walk`.
fn read_layout(
    root: &Path,
    labels: Labels,
    side: usize,
    options: &LoadOptions,
    walk: &mut Walk,
    origin: String,
) -> Result<Splits> {
    let held_out = ["val", "test"].map(|name| root.join(name));
    if labels == Labels::FromFolders && root.join("train").is_dir() {
        if let Some(eval_dir) = held_out.iter().find(|d| d.is_dir()) {
            let (train_files, classes) = class_folder_files(walk, &root.join("train"))?;
            let (test_files, test_classes) = class_folder_files(walk, eval_dir)?;
            ensure!(
                test_classes == classes,
                "{}: class folders {test_classes:?} differ from the train split's {classes:?}",
                eval_dir.display()
            );
            let (train, mut skipped) = decode(
                &root.join("train"),
                &train_files,
                classes.clone(),
                side,
                options,
            )?;
            let (test, more) = decode(eval_dir, &test_files, classes, side, options)?;
            skipped.extend(more);
            return Ok(Splits {
                skipped,
                ..Splits::labelled(train, test, origin)
            });
        }
    }
    let files = image_files(walk, root)?;
    ensure!(
        !files.is_empty(),
        "{}: no images ({}) in this folder or below it",
        root.display(),
        extension_list()
    );
    let class_layout =
        labels == Labels::FromFolders && files.iter().all(|f| f.components().count() == 2);
    if class_layout {
        let (files, classes) = classes_from_paths(root, files)?;
        // Every tenth image of each class (in file order) is held out, decided before decoding
        // so that a corrupt file does not shift which images are held out.
        let mut seen = vec![0usize; classes.len()];
        let (mut train_files, mut test_files) = (Vec::new(), Vec::new());
        for (file, label) in files {
            let into = if seen[label as usize] % 10 == 9 {
                &mut test_files
            } else {
                &mut train_files
            };
            seen[label as usize] += 1;
            into.push((file, label));
        }
        let (train, mut skipped) = decode(root, &train_files, classes.clone(), side, options)?;
        let (test, more) = decode(root, &test_files, classes, side, options)?;
        skipped.extend(more);
        return Ok(Splits {
            skipped,
            ..Splits::labelled(train, test, origin)
        });
    }
    let files: Vec<(PathBuf, u8)> = files.into_iter().map(|f| (f, 0)).collect();
    let (images, skipped) = decode(root, &files, Vec::new(), side, options)?;
    let empty = ImageDataset {
        side,
        ..Default::default()
    };
    Ok(Splits {
        unlabeled: Some(images),
        skipped,
        ..Splits::labelled(empty.clone(), empty, origin)
    })
}

/// The image folder layout at its default size (kept for callers of the 32 px era).
pub fn load_image_folder(root: &Path) -> Result<Splits> {
    load(root, Labels::FromFolders, &LoadOptions::default())
}

/// Decodes an image file, resizes its shorter side to `side` and centre-crops it to a square,
/// as torchvision's `Resize(side)` + `CenterCrop(side)`; returns planar RGB bytes.
pub fn read_image(path: &Path, side: usize) -> Result<Vec<u8>> {
    let image = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?
        .decode()
        .with_context(|| format!("{}: cannot decode image", path.display()))?
        .to_rgb8();
    Ok(square_planar(&image, side))
}

/// `image` resized (shorter side to `side`, the other as `int(side * long / short)`) and
/// centre-cropped to `side x side`, as planar RGB bytes.
pub fn square_planar(image: &image::RgbImage, side: usize) -> Vec<u8> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let short = w.min(h).max(1);
    let (new_w, new_h) = if w <= h {
        (side, side * h / short)
    } else {
        (side * w / short, side)
    };
    let resized;
    let image = if (new_w, new_h) == (w, h) {
        image
    } else {
        resized = image::imageops::resize(
            image,
            new_w as u32,
            new_h as u32,
            image::imageops::FilterType::Triangle,
        );
        &resized
    };
    let top = ((new_h - side) as f64 / 2.0).round_ties_even() as usize;
    let left = ((new_w - side) as f64 / 2.0).round_ties_even() as usize;
    let plane = side * side;
    let mut planar = vec![0u8; 3 * plane];
    for y in 0..side {
        for x in 0..side {
            let pixel = image.get_pixel((left + x) as u32, (top + y) as u32);
            for c in 0..3 {
                planar[c * plane + y * side + x] = pixel[c];
            }
        }
    }
    planar
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tests use the user's cache directory: each folder is a new temporary one, so its
    // cache key is new too.

    fn save(path: &Path, w: u32, h: u32, color: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb(color))
            .save(path)
            .unwrap();
    }

    #[test]
    fn shorter_side_then_centre_crop_as_torchvision() {
        // 6 wide, 3 high: columns 0-1 red, 2-3 green, 4-5 blue. At side 3 the shorter side keeps
        // its size, and the crop starts at round((6 - 3) / 2) = round(1.5) = 2 (Python rounds
        // half to even): columns 2, 3, 4 are green, green, blue.
        let mut image = image::RgbImage::new(6, 3);
        for (x, _, p) in image.enumerate_pixels_mut() {
            *p = image::Rgb(match x {
                0 | 1 => [255, 0, 0],
                2 | 3 => [0, 255, 0],
                _ => [0, 0, 255],
            });
        }
        let planar = square_planar(&image, 3);
        let (red, green, blue) = (&planar[..9], &planar[9..18], &planar[18..]);
        assert_eq!(&red[..3], &[0, 0, 0]);
        assert_eq!(&green[..3], &[255, 255, 0]);
        assert_eq!(&blue[..3], &[0, 0, 255]);
        // A 200 x 150 image at 96: 128 x 96, cropped to the square.
        let wide = image::RgbImage::from_pixel(200, 150, image::Rgb([9, 8, 7]));
        let planar = square_planar(&wide, 96);
        assert_eq!(planar.len(), 3 * 96 * 96);
        assert!(planar[..96 * 96].iter().all(|&v| v == 9));
    }

    #[test]
    fn a_flat_folder_of_mixed_sizes_is_unlabeled_and_a_corrupt_file_is_skipped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        save(&dir.path().join("a.png"), 200, 150, [255, 0, 0]);
        save(&dir.path().join("b.jpg"), 64, 128, [0, 255, 0]);
        save(&dir.path().join("deeper/c.png"), 40, 40, [0, 0, 255]);
        std::fs::write(dir.path().join("broken.jpg"), b"not a jpeg at all").unwrap();
        let options = LoadOptions {
            image_size: 16,
            strict: false,
        };
        let splits = load(dir.path(), Labels::FromFolders, &options).unwrap();
        let images = splits.unlabeled.as_ref().unwrap();
        assert_eq!((images.len(), images.side), (3, 16));
        assert!(!splits.has_labels() && !images.is_labelled());
        assert_eq!(images.names, vec!["a.png", "b.jpg", "deeper/c.png"]);
        assert_eq!(splits.skipped, vec!["broken.jpg"]);
        assert!(images.pixels.is_mapped());
        let blue = images.image(2);
        assert_eq!((blue[0], blue[256], blue[512]), (0, 0, 255));
        // The second load reads the cache, with the same images and the same warning.
        let again = load(dir.path(), Labels::FromFolders, &options).unwrap();
        assert_eq!(again.unlabeled.as_ref().unwrap(), images);
        assert_eq!(again.skipped, vec!["broken.jpg"]);
        let strict = LoadOptions {
            strict: true,
            ..options
        };
        let err = load(dir.path(), Labels::FromFolders, &strict).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("broken.jpg") && msg.contains("--strict-data"),
            "{msg}"
        );
    }

    #[test]
    fn class_folders_are_labels_and_images_prefix_ignores_them() {
        let dir = tempfile::tempdir().unwrap();
        for (class, color) in [("cats", [255u8, 0, 0]), ("dogs", [0, 0, 255])] {
            for i in 0..10 {
                save(
                    &dir.path().join(class).join(format!("{i}.png")),
                    40,
                    20,
                    color,
                );
            }
        }
        let options = LoadOptions {
            image_size: 8,
            strict: false,
        };
        let splits = load(dir.path(), Labels::FromFolders, &options).unwrap();
        assert_eq!(splits.train.classes, vec!["cats", "dogs"]);
        assert_eq!((splits.train.len(), splits.test.len()), (18, 2));
        assert_eq!(splits.test.labels, vec![0, 1]);
        let dog = splits.test.image(1);
        assert_eq!((dog[0], dog[64], dog[128]), (0, 0, 255));
        let unlabeled = load(dir.path(), Labels::None, &options).unwrap();
        assert_eq!(unlabeled.unlabeled.unwrap().len(), 20);
        assert!(!unlabeled.train.is_labelled());
    }

    #[test]
    fn train_and_val_folders_are_the_splits() {
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", "val"] {
            for class in ["x", "y"] {
                save(
                    &dir.path().join(split).join(class).join("0.png"),
                    5,
                    5,
                    [1, 2, 3],
                );
            }
        }
        let options = LoadOptions {
            image_size: 4,
            strict: false,
        };
        let splits = load(dir.path(), Labels::FromFolders, &options).unwrap();
        assert!(splits.has_labels());
        assert_eq!((splits.train.len(), splits.test.len()), (2, 2));
    }

    fn unlabeled_names(dir: &Path) -> Vec<String> {
        let options = LoadOptions {
            image_size: 4,
            strict: false,
        };
        let splits = load(dir, Labels::FromFolders, &options).unwrap();
        splits.unlabeled.unwrap().names
    }

    #[test]
    fn each_real_folder_and_file_is_read_once_however_many_links_lead_there() {
        // Two images, and three links back to them: a loop to the root (once measured as 82
        // images), a second name for `sub`, a second name for `a.png`.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        save(&root.join("a.png"), 4, 4, [255, 0, 0]);
        save(&root.join("sub/b.png"), 4, 4, [0, 255, 0]);
        std::os::unix::fs::symlink("..", root.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("again")).unwrap();
        std::os::unix::fs::symlink("../a.png", root.join("sub/same.png")).unwrap();
        assert_eq!(unlabeled_names(root), vec!["a.png", "sub/b.png"]);
        let mut walk = Walk::new(root).unwrap();
        assert_eq!(image_files(&mut walk, root).unwrap().len(), 2);
        let links: Vec<PathBuf> = walk
            .revisited
            .iter()
            .map(|(link, _)| link.clone())
            .collect();
        assert_eq!(links, vec![root.join("again"), root.join("sub/loop")]);
        assert_eq!(
            walk.summary().unwrap(),
            "2 folders reached again through a link, read once; \
             1 image file reached again through a link, read once"
        );
    }

    #[test]
    fn tiff_webp_bmp_and_the_first_frame_of_a_gif_are_read_whatever_the_case_of_the_extension() {
        use image::{codecs, ImageFormat};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let solid = |color: [u8; 3]| image::RgbImage::from_pixel(6, 4, image::Rgb(color));
        let kinds = [
            ("a.png", ImageFormat::Png, [10, 20, 30]),
            ("b.tif", ImageFormat::Tiff, [40, 50, 60]),
            ("c.TIFF", ImageFormat::Tiff, [70, 80, 90]),
            ("d.bmp", ImageFormat::Bmp, [100, 110, 120]),
        ];
        for (name, format, color) in kinds {
            solid(color)
                .save_with_format(root.join(name), format)
                .unwrap();
        }
        let webp = std::fs::File::create(root.join("e.webp")).unwrap();
        solid([130, 140, 150])
            .write_with_encoder(codecs::webp::WebPEncoder::new_lossless(webp))
            .unwrap();
        // Two frames: the first is the one read.
        let gif = std::fs::File::create(root.join("f.Gif")).unwrap();
        let frame = |color: [u8; 3]| {
            let [r, g, b] = color;
            image::Frame::new(image::RgbaImage::from_pixel(
                6,
                4,
                image::Rgba([r, g, b, 255]),
            ))
        };
        codecs::gif::GifEncoder::new(gif)
            .encode_frames([frame([160, 170, 180]), frame([1, 2, 3])])
            .unwrap();
        let options = LoadOptions {
            image_size: 4,
            strict: true,
        };
        let splits = load(root, Labels::FromFolders, &options).unwrap();
        let images = splits.unlabeled.unwrap();
        assert_eq!(
            images.names,
            vec!["a.png", "b.tif", "c.TIFF", "d.bmp", "e.webp", "f.Gif"]
        );
        for (i, expected) in (10u8..=180).step_by(30).enumerate() {
            let pixels = images.image(i);
            assert_eq!(
                (pixels[0], pixels[16], pixels[32]),
                (expected, expected + 10, expected + 20),
                "{}",
                images.names[i]
            );
        }
    }

    #[test]
    fn files_of_other_kinds_are_counted_by_extension_in_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        save(&root.join("a.png"), 4, 4, [1, 2, 3]);
        for name in [
            "notes.txt",
            "more/notes.TXT",
            "meta.json",
            "README",
            ".DS_Store",
        ] {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"not an image").unwrap();
        }
        let mut walk = Walk::new(root).unwrap();
        assert_eq!(
            image_files(&mut walk, root).unwrap(),
            vec![PathBuf::from("a.png")]
        );
        // Hidden files are passed over without a count.
        let counts: Vec<(&str, usize)> = walk
            .other_extensions
            .iter()
            .map(|(e, n)| (e.as_str(), *n))
            .collect();
        assert_eq!(counts, vec![("", 1), ("json", 1), ("txt", 2)]);
        assert_eq!(
            walk.summary().unwrap(),
            "skipped 4 files with other extensions (no extension, .json, .txt)"
        );
        // A folder of nothing but other kinds: the error says which images are read.
        std::fs::remove_file(root.join("a.png")).unwrap();
        let err = load(root, Labels::FromFolders, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains(".webp, .bmp, .gif"), "{err}");
    }

    #[test]
    fn empty_and_unreadable_folders_are_errors_that_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), Labels::FromFolders, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("no images (.png"), "{err}");
        std::fs::write(dir.path().join("bad.png"), b"not a png").unwrap();
        let err = load(dir.path(), Labels::FromFolders, &LoadOptions::default()).unwrap_err();
        assert!(
            format!("{err:#}").contains("none of its 1 image files could be read"),
            "{err:#}"
        );
    }
}
