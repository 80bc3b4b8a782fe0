//! The datasets `--data` names, as one table: each format's prefix, loader and line of help
//! (`cifar10:`, `stl10:`, `folder:`, `images:`; a bare path is CIFAR-10's).

use super::{download_cifar10, load_cifar10_archive, load_cifar10_dir};
use super::{folder, stl10, LoadOptions, Splits};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Loads the dataset `--data` names at its own resolution (see [`load_with`]).
pub fn load(source: &str) -> Result<Splits> {
    load_with(source, &LoadOptions::default())
}

/// A dataset format `--data` can name: `PREFIX:PATH`, its loader and its line of help.
pub struct DatasetFormat {
    pub prefix: &'static str,
    /// What `PREFIX:PATH` reads (the help text of `--data` and the error for an unknown one).
    pub help: &'static str,
    pub load: fn(&str, &LoadOptions) -> Result<Splits>,
}

/// Every dataset format, by `--data` prefix. A bare path (no prefix) is CIFAR-10's.
pub const DATASETS: [DatasetFormat; 4] = [
    DatasetFormat {
        prefix: "cifar10",
        help: "cifar10:PATH, or PATH alone: a cifar-10-batches-bin directory or \
               cifar-10-binary.tar.gz; nothing at all: the official archive, downloaded once \
               into ~/.cache/selfsup (or $SELFSUP_CACHE), MD5-checked",
        load: load_cifar10_source,
    },
    DatasetFormat {
        prefix: "stl10",
        help: "stl10:DIR: the official stl10_binary (`stl10:` alone downloads it)",
        load: stl10::load_source,
    },
    DatasetFormat {
        prefix: "folder",
        help: "folder:PATH: your images, any size: labelled when PATH/<class>/*.jpg or \
               PATH/train + PATH/val, else unlabeled",
        load: |path, options| folder::load(Path::new(path), folder::Labels::FromFolders, options),
    },
    DatasetFormat {
        prefix: "images",
        help: "images:PATH: a folder of images, never labelled",
        load: |path, options| folder::load(Path::new(path), folder::Labels::None, options),
    },
];

/// The help text of `--data`: one line per format of [`DATASETS`].
pub fn data_help() -> String {
    let formats: Vec<&str> = DATASETS.iter().map(|d| d.help).collect();
    format!("Dataset, one of:\n- {}", formats.join("\n- "))
}

/// Loads the dataset that `--data` names (see [`DATASETS`]).
pub fn load_with(source: &str, options: &LoadOptions) -> Result<Splits> {
    if let Some((prefix, rest)) = source.split_once(':') {
        if let Some(format) = DATASETS.iter().find(|d| d.prefix == prefix) {
            return (format.load)(rest, options);
        }
        // A path with a colon in it (or a drive letter) is still a path; a word and a colon
        // before something that does not exist is a dataset name mistyped.
        let looks_named = prefix.len() > 1 && prefix.chars().all(|c| c.is_ascii_alphanumeric());
        if looks_named && !Path::new(source).exists() {
            bail!(
                "--data {source}: unknown dataset \"{prefix}\"; one of: {}",
                DATASETS.map(|d| format!("{}:", d.prefix)).join(", ")
            );
        }
    }
    load_cifar10_source(source, options)
}

/// CIFAR-10 from a directory, the archive, or (`source` empty) the official download.
fn load_cifar10_source(source: &str, options: &LoadOptions) -> Result<Splits> {
    let path = if source.is_empty() {
        download_cifar10(&cache_dir())?
    } else {
        PathBuf::from(source)
    };
    let splits = if path.is_file() {
        load_cifar10_archive(&path)?
    } else if path.is_dir() {
        load_cifar10_dir(&path)?
    } else {
        bail!(
            "--data {}: no such file or directory (expected a cifar-10-batches-bin directory, \
             cifar-10-binary.tar.gz, or one of {})",
            path.display(),
            DATASETS.map(|d| format!("{}:", d.prefix)).join(", ")
        )
    };
    Ok(match options.image_size {
        0 => splits,
        side => splits.resized(side),
    })
}

/// `$SELFSUP_CACHE`, else `$XDG_CACHE_HOME/selfsup`, else `~/.cache/selfsup`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SELFSUP_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("selfsup")
}

#[cfg(test)]
mod datasets_table_tests {
    use super::*;

    #[test]
    fn the_table_writes_the_help_and_names_an_unknown_dataset() {
        let help = data_help();
        for format in &DATASETS {
            assert!(help.contains(&format!("{}:", format.prefix)), "{help}");
        }
        let err = load_with("stl:/nowhere", &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown dataset \"stl\"")
                && err.contains("stl10:")
                && err.contains("folder:"),
            "{err}"
        );
        // A path that merely has a colon in it is still a path (and this one does not exist).
        let err = load_with("/no/such:dir", &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file or directory"), "{err}");
    }
}
