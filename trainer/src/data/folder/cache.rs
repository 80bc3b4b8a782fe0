//! The decoded-image cache of a folder: images decoded and resized once into a memory-mapped
//! file, keyed by the files, their sizes and times and the side, reused while they stay the
//! same.

use super::*;

/// What a cache file holds besides the pixels: which files made it, with their labels, and
/// which could not be read.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CacheMeta {
    side: usize,
    names: Vec<String>,
    labels: Vec<u8>,
    /// `(file, why)` of each file left out.
    skipped: Vec<(String, String)>,
}

/// The cache key of `files` under `root` at `side`: their paths, sizes and modification times,
/// so that an added, removed or rewritten file makes a new cache.
pub(super) fn cache_key(root: &Path, files: &[(PathBuf, u8)], side: usize) -> String {
    let mut hasher = Md5::new();
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    hasher.update(format!("selfsup-images/1\n{}\n{side}\n", root.display()));
    for (file, label) in files {
        let fingerprint = file_fingerprint(&root.join(file));
        hasher.update(format!("{}\t{label}\t{fingerprint}\n", file.display()));
    }
    format!("{:x}", hasher.finalize())
}

/// Decodes `files` (relative to `root`, each with its label) at `side` through the cache.
/// Returns the images and the files left out; an unreadable file is an error when
/// `options.strict`, else a warning.
pub(super) fn decode(
    root: &Path,
    files: &[(PathBuf, u8)],
    classes: Vec<String>,
    side: usize,
    options: &LoadOptions,
) -> Result<(ImageDataset, Vec<String>)> {
    let key = cache_key(root, files, side);
    let dir = cache_dir().join("images");
    let (pixels_path, meta_path) = (
        dir.join(format!("{key}.pixels")),
        dir.join(format!("{key}.json")),
    );
    let bytes = 3 * side * side;
    let cached = std::fs::read(&meta_path)
        .ok()
        .and_then(|text| serde_json::from_slice::<CacheMeta>(&text).ok())
        .filter(|meta| {
            let expected = (meta.names.len() * bytes) as u64;
            meta.side == side && std::fs::metadata(&pixels_path).is_ok_and(|m| m.len() == expected)
        });
    let (meta, pixels) = match cached {
        Some(meta) => {
            let pixels = Pixels::map(&pixels_path)?;
            (meta, pixels)
        }
        None => fill_cache(root, files, side, options, &pixels_path, &meta_path)?,
    };
    for (file, why) in &meta.skipped {
        let path = root.join(file);
        ensure!(
            !options.strict,
            "{}: {why} (--strict-data: every file must be a readable image; remove it or drop \
             --strict-data to skip it)",
            path.display()
        );
        eprintln!("warning: skipped {}: {why}", path.display());
    }
    ensure!(
        !meta.names.is_empty(),
        "{}: none of its {} image files could be read",
        root.display(),
        files.len()
    );
    let labels = if classes.is_empty() {
        Vec::new()
    } else {
        meta.labels
    };
    let skipped = meta.skipped.into_iter().map(|(file, _)| file).collect();
    Ok((
        ImageDataset {
            side,
            pixels,
            labels,
            classes,
            names: meta.names,
        },
        skipped,
    ))
}

/// Decodes every file (all cores, in order) into a new cache file and its description.
pub(super) fn fill_cache(
    root: &Path,
    files: &[(PathBuf, u8)],
    side: usize,
    options: &LoadOptions,
    pixels_path: &Path,
    meta_path: &Path,
) -> Result<(CacheMeta, Pixels)> {
    let bar = crate::progress::items_bar(files.len() as u64, "decoding images");
    let mut writer = CacheWriter::create(pixels_path)?;
    let mut meta = CacheMeta {
        side,
        names: Vec::new(),
        labels: Vec::new(),
        skipped: Vec::new(),
    };
    for chunk in files.chunks(256) {
        let decoded: Vec<Result<Vec<u8>>> = chunk
            .par_iter()
            .map(|(file, _)| read_image(&root.join(file), side))
            .collect();
        for ((file, label), image) in chunk.iter().zip(decoded) {
            match image {
                Ok(image) => {
                    writer.write(&image)?;
                    meta.names.push(file.display().to_string());
                    meta.labels.push(*label);
                }
                Err(e) if options.strict => {
                    return Err(e.context("--strict-data: every file must be a readable image"))
                }
                Err(e) => {
                    // The first line of the cause, without the path the message starts with.
                    let why = format!("{:#}", e);
                    let why = why
                        .split_once(": ")
                        .map_or(why.as_str(), |(_, rest)| rest)
                        .to_string();
                    meta.skipped.push((file.display().to_string(), why));
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let pixels = writer.finish()?;
    crate::records::write_atomically(meta_path, &serde_json::to_vec(&meta)?)
        .with_context(|| format!("cannot write {}", meta_path.display()))?;
    Ok((meta, pixels))
}
