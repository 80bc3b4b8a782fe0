//! A run's checkpoints folder: which checkpoint `--resume` continues from (the newest intact
//! one, damaged ones set aside), which `latest` names, and which are pruned after a save.

use super::{Checkpoint, Damaged, LATEST};
use crate::records::write_atomically;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// Removes, from the checkpoints folder `dir`, the files a run no longer needs: Ctrl-C
/// (mid-epoch) checkpoints and all but the newest `keep_last` end-of-epoch ones (0: keep them
/// all), except epochs that are multiples of `keep_every` and the file `latest` names, which
/// stay. Returns the names removed.
pub fn prune(dir: &Path, keep_last: usize, keep_every: usize) -> Result<Vec<String>> {
    let latest = latest_in(dir)?.and_then(|p| p.file_name().map(|n| n.to_os_string()));
    let mut epochs = Vec::new();
    let mut mid_epoch = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(stem) = checkpoint_stem(&name) else {
            continue;
        };
        match stem.parse::<usize>() {
            Ok(epoch) => epochs.push((epoch, name)),
            Err(_) if stem.contains("-step-") => mid_epoch.push(name),
            Err(_) => {}
        }
    }
    epochs.sort();
    let keep_from = match keep_last {
        0 => 0,
        n => epochs.len().saturating_sub(n),
    };
    let mut doomed: Vec<String> = epochs
        .iter()
        .enumerate()
        .filter(|&(i, &(epoch, _))| i < keep_from && !(keep_every > 0 && epoch % keep_every == 0))
        .map(|(_, (_, name))| name.clone())
        .chain(mid_epoch)
        .filter(|name| latest.as_deref() != Some(std::ffi::OsStr::new(name)))
        .collect();
    doomed.sort();
    for name in &doomed {
        let path = dir.join(name);
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the old checkpoint {}", path.display()))?;
    }
    Ok(doomed)
}

/// The checkpoint `latest` names in `dir`, if any.
pub fn latest_in(dir: &Path) -> Result<Option<PathBuf>> {
    let pointer = dir.join(LATEST);
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer)
        .with_context(|| format!("cannot read {}", pointer.display()))?;
    let path = dir.join(name.trim());
    ensure!(
        path.is_file(),
        "{} names {}, which does not exist",
        pointer.display(),
        path.display()
    );
    Ok(Some(path))
}

/// What a damaged checkpoint's name gains: the file is kept for a look, and is no longer a
/// `.ckpt`, so neither `--resume`, `latest` nor [`prune`] takes it again.
pub const CORRUPT_SUFFIX: &str = ".corrupt";

/// The checkpoint `--resume` continues from: the newest in `dir` that reads back intact, the
/// one `latest` names first, then the others, newest first. A damaged one (truncated, bytes
/// flipped) is passed over with a warning; where `quarantine` (the rank that writes the run's
/// files), it is renamed `NAME.ckpt.corrupt`, never deleted, and `latest` then names the one
/// chosen. `None`: no checkpoint at all. Fails listing each file and its problem when none is
/// intact, and at once on a problem an older file would share (another format version).
pub fn resume_point(dir: &Path, quarantine: bool) -> Result<Option<Checkpoint>> {
    let mut candidates = Vec::new();
    let mut problems = Vec::new();
    match latest_in(dir) {
        Ok(Some(path)) => candidates.push(path),
        Ok(None) => {}
        Err(e) => problems.push(format!("{e:#}")),
    }
    for path in checkpoints_newest_first(dir)? {
        if !candidates.contains(&path) {
            candidates.push(path);
        }
    }
    if candidates.is_empty() && problems.is_empty() {
        return Ok(None);
    }
    for path in candidates {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // Another rank of this run renamed it a moment ago, as damaged.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !quarantine => continue,
            Err(e) => bail!("cannot read checkpoint {}: {e}", path.display()),
        };
        match Checkpoint::parse(&path, &bytes) {
            Ok(ckpt) => {
                if quarantine && !problems.is_empty() {
                    let name = path.file_name().unwrap().to_string_lossy();
                    write_atomically(&dir.join(LATEST), format!("{name}\n").as_bytes())?;
                }
                return Ok(Some(ckpt));
            }
            Err(e) if e.downcast_ref::<Damaged>().is_some() => {
                let mut problem = format!("{}: {e:#}", path.display());
                if quarantine {
                    let kept = set_aside(&path)?;
                    problem += &format!(" (kept as {})", kept.display());
                    eprintln!("warning: checkpoint {problem}; trying the next older one");
                }
                problems.push(problem);
            }
            Err(e) => return Err(e.context(format!("checkpoint {}", path.display()))),
        }
    }
    bail!(
        "no intact checkpoint in {} to resume from:\n  {}\nstart a new run with another --out",
        dir.display(),
        problems.join("\n  ")
    )
}

/// `0004` or `0004-step-000005` of a checkpoint's file name; `None` for any other file.
fn checkpoint_stem(name: &str) -> Option<&str> {
    name.strip_prefix("epoch-")
        .and_then(|n| n.strip_suffix(".ckpt"))
}

/// The `epoch-*.ckpt` files of `dir`, newest first (an epoch's Ctrl-C saves before its end).
fn checkpoints_newest_first(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("cannot list {}: {e}", dir.display()),
    };
    let mut found = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(stem) = checkpoint_stem(&name) else {
            continue;
        };
        // epoch-0004-step-000005 (inside epoch 4) comes before epoch-0004 (its end).
        let order = match stem.split_once("-step-") {
            Some((epoch, step)) => (epoch.parse::<usize>(), step.parse::<usize>()),
            None => (stem.parse::<usize>(), Ok(usize::MAX)),
        };
        if let (Ok(epoch), Ok(step)) = order {
            found.push(((epoch, step), dir.join(name)));
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Renames a damaged checkpoint `NAME.ckpt.corrupt` (`.corrupt-2`... if taken): kept, never
/// overwriting an earlier one.
fn set_aside(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut kept = path.with_file_name(format!("{name}{CORRUPT_SUFFIX}"));
    let mut n = 2;
    while kept.exists() {
        kept = path.with_file_name(format!("{name}{CORRUPT_SUFFIX}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &kept).with_context(|| {
        format!(
            "cannot rename the damaged checkpoint {} to {} (no write permission?)",
            path.display(),
            kept.display()
        )
    })?;
    Ok(kept)
}
