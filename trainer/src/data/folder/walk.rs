//! Listing an image folder: image files by extension, class folders, symbolic links followed
//! once (a loop is an error, not a hang).

use super::*;

/// The extensions read, lower case: what the `image` crate is built to decode here
/// (`Cargo.toml` enables the same formats).
pub(super) const EXTENSIONS: [&str; 8] =
    ["png", "jpg", "jpeg", "tif", "tiff", "webp", "bmp", "gif"];

/// `.png, .jpg, ...`, for messages.
pub(super) fn extension_list() -> String {
    EXTENSIONS.map(|e| format!(".{e}")).join(", ")
}

/// `path`'s extension in lower case; empty when it has none.
pub(super) fn extension(path: &Path) -> String {
    path.extension()
        .map_or(String::new(), |e| e.to_string_lossy().to_ascii_lowercase())
}

pub(super) fn is_image_file(path: &Path) -> bool {
    EXTENSIONS.contains(&extension(path).as_str())
}

/// A walk through a folder tree that enters each real folder once and takes each real file
/// once, however many links lead there, and keeps count of what it leaves out.
#[derive(Debug, Default)]
pub(super) struct Walk {
    /// Canonical paths of the folders entered (or listed to be entered).
    dirs: HashSet<PathBuf>,
    /// Canonical paths of the image files taken.
    files: HashSet<PathBuf>,
    /// Files left out, by extension (lower case, empty for none).
    pub(super) other_extensions: BTreeMap<String, usize>,
    /// Folders reached a second time, as `(path, the real folder)`, not entered again.
    pub(super) revisited: Vec<(PathBuf, PathBuf)>,
    /// Image files reached a second time through a link, taken once.
    duplicates: usize,
}

impl Walk {
    /// A walk from `root`, which counts as entered (a link back to it is a loop).
    pub(super) fn new(root: &Path) -> Result<Self> {
        let real = root
            .canonicalize()
            .with_context(|| format!("{}: cannot resolve", root.display()))?;
        Ok(Self {
            dirs: HashSet::from([real]),
            ..Default::default()
        })
    }

    /// The names of `dir`'s folders not entered before and of its image files not taken before,
    /// each sorted; hidden entries are passed over.
    fn list(&mut self, dir: &Path) -> Result<(Vec<OsString>, Vec<OsString>)> {
        let mut names = std::fs::read_dir(dir)
            .and_then(|entries| {
                entries
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .with_context(|| format!("cannot list {}", dir.display()))?;
        names.retain(|name| !name.to_string_lossy().starts_with('.'));
        // Real entries before links, each by name: of two roads to one place the real one is
        // taken (the target is marked before any link to it is met), the same on every run.
        names.sort_by_key(|name| (dir.join(name).is_symlink(), name.clone()));
        let (mut dirs, mut images) = (Vec::new(), Vec::new());
        for name in names {
            let path = dir.join(&name);
            if path.is_dir() {
                let real = path
                    .canonicalize()
                    .with_context(|| format!("{}: cannot resolve", path.display()))?;
                if self.dirs.insert(real.clone()) {
                    dirs.push(name);
                } else {
                    eprintln!(
                        "warning: not reading {} again: it leads to {}, read already",
                        path.display(),
                        real.display()
                    );
                    self.revisited.push((path, real));
                }
            } else if is_image_file(&path) {
                // A dangling link stays in, to be reported as unreadable when decoded.
                let real = path.canonicalize().unwrap_or_else(|_| path.clone());
                if self.files.insert(real) {
                    images.push(name);
                } else {
                    self.duplicates += 1;
                }
            } else {
                *self.other_extensions.entry(extension(&path)).or_default() += 1;
            }
        }
        dirs.sort();
        images.sort();
        Ok((dirs, images))
    }

    /// One line saying what was left out; `None` when nothing was.
    pub(super) fn summary(&self) -> Option<String> {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let mut parts = Vec::new();
        let others: usize = self.other_extensions.values().sum();
        if others > 0 {
            let kinds: Vec<String> = self
                .other_extensions
                .keys()
                .map(|e| match e.as_str() {
                    "" => "no extension".to_string(),
                    e => format!(".{e}"),
                })
                .collect();
            parts.push(format!(
                "skipped {} with other extensions ({})",
                count(others, "file"),
                kinds.join(", ")
            ));
        }
        if !self.revisited.is_empty() {
            parts.push(format!(
                "{} reached again through a link, read once",
                count(self.revisited.len(), "folder")
            ));
        }
        if self.duplicates > 0 {
            parts.push(format!(
                "{} reached again through a link, read once",
                count(self.duplicates, "image file")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Every image file under `root`, as paths relative to it, sorted.
pub(super) fn image_files(walk: &mut Walk, root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let (dirs, images) = walk.list(&root.join(&relative))?;
        files.extend(images.iter().map(|name| relative.join(name)));
        // Reversed onto the stack: folders are entered in name order.
        pending.extend(dirs.iter().rev().map(|name| relative.join(name)));
    }
    files.sort();
    Ok(files)
}

/// `<class>/<image>` paths (sorted) with their class index, and the classes (sorted names).
pub(super) fn classes_from_paths(
    root: &Path,
    files: Vec<PathBuf>,
) -> Result<(Vec<(PathBuf, u8)>, Vec<String>)> {
    let class_of = |file: &Path| {
        let first = file.components().next().expect("a class folder");
        first.as_os_str().to_string_lossy().into_owned()
    };
    let mut classes: Vec<String> = files.iter().map(|f| class_of(f)).collect();
    classes.dedup();
    ensure!(
        classes.len() <= 256,
        "{}: expected 1 to 256 class folders (PATH/<class>/*.png|jpg), found {}",
        root.display(),
        classes.len()
    );
    let files = files
        .into_iter()
        .map(|file| {
            let label = classes
                .binary_search(&class_of(&file))
                .expect("a listed class");
            (file, label as u8)
        })
        .collect();
    Ok((files, classes))
}

/// `root/<class>/<image>` files with their class index, and the classes (sorted folder names).
pub(super) fn class_folder_files(
    walk: &mut Walk,
    root: &Path,
) -> Result<(Vec<(PathBuf, u8)>, Vec<String>)> {
    let (class_dirs, _) = walk.list(root)?;
    let classes: Vec<String> = class_dirs
        .iter()
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    ensure!(
        !classes.is_empty() && classes.len() <= 256,
        "{}: expected 1 to 256 class folders (PATH/<class>/*.png|jpg), found {}",
        root.display(),
        classes.len()
    );
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        let (_, in_class) = walk.list(&dir)?;
        ensure!(
            !in_class.is_empty(),
            "{}: no images ({}) in this class folder",
            dir.display(),
            extension_list()
        );
        files.extend(
            in_class
                .into_iter()
                .map(|name| (PathBuf::from(class).join(name), label as u8)),
        );
    }
    Ok((files, classes))
}
