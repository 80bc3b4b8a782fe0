//! Checkpoints: one self-checking file per save, written atomically.
//!
//! Layout of `OUT/checkpoints/epoch-NNNN.ckpt`:
//! ```text
//! b"SELFSUP-CKPT\n" | u64 LE header length | header (JSON) | model | optimizer | method state
//! ```
//! The header holds the epoch, the position inside the next epoch (for a Ctrl-C save), the
//! RNG state, the full config (with the method) and the MD5 of the three records, so a truncated
//! or corrupted file is reported as such instead of loading garbage. The method state is what a
//! method keeps beside the trained model (BYOL's target network, MoCo's key encoder and queue).
//! `OUT/checkpoints/latest` names the newest file; `--resume` takes the newest that reads back
//! intact ([`resume_point`]), setting damaged ones aside as `*.ckpt.corrupt`. After each save,
//! `prune` removes the checkpoints the run no longer needs (`keep_last`, `keep_every`).

use crate::config::TrainConfig;
use crate::methods::MethodKind;
use crate::model::{ModelConfig, SslModel};
use crate::precision::GradScaler;
use anyhow::{bail, ensure, Context, Result};
use burn::module::Module;
use burn::prelude::Backend;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Record, Recorder};
use md5::{Digest, Md5};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"SELFSUP-CKPT\n";
/// 2: several methods (method state section, heads with BatchNorm, predictor). Version 1 files
/// (SimCLR only) are refused with a message.
const FORMAT_VERSION: u32 = 2;
pub const LATEST: &str = "latest";

/// Where training stands: enough to continue exactly where it stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Epochs fully completed.
    pub epochs_done: usize,
    /// Optimizer steps taken since the start of the run.
    pub global_step: usize,
    /// Steps of the next epoch already taken (non-zero only for a save on Ctrl-C).
    pub step_in_epoch: usize,
    /// Sum of the losses of those steps, so the epoch's mean loss stays exact after resume.
    pub loss_sum_in_epoch: f64,
    /// Sum of their collapse monitors (`z_std`), for the same reason.
    pub z_std_sum_in_epoch: f64,
    /// Seed of the epoch in progress (meaningful when `step_in_epoch > 0`).
    pub epoch_seed: u64,
    /// The run's RNG, which draws each new epoch's seed.
    pub rng: ChaCha8Rng,
    /// The f16 loss scale and its counters (disabled for f32 and bf16 runs).
    #[serde(default)]
    pub loss_scaler: GradScaler,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    state: TrainState,
    config: TrainConfig,
    model_bytes: u64,
    optimizer_bytes: u64,
    method_bytes: u64,
    md5: String,
    saved_at: String,
}

/// A checkpoint read back from disk, records still serialised.
pub struct Checkpoint {
    pub path: PathBuf,
    pub state: TrainState,
    pub config: TrainConfig,
    model: Vec<u8>,
    optimizer: Vec<u8>,
    pub method_state: Vec<u8>,
}

/// What makes a file unusable as a checkpoint whatever the trainer's version: truncated, bytes
/// flipped, not a checkpoint at all. `--resume` passes over such a file to an older one.
#[derive(Debug)]
struct Damaged(String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// Fails with [`Damaged`] unless `ok`.
fn ensure_intact(ok: bool, message: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Damaged(message.into()).into())
    }
}

fn recorder() -> BinBytesRecorder<FullPrecisionSettings> {
    BinBytesRecorder::default()
}

pub fn checkpoint_name(state: &TrainState) -> String {
    if state.step_in_epoch == 0 {
        format!("epoch-{:04}.ckpt", state.epochs_done)
    } else {
        format!(
            "epoch-{:04}-step-{:06}.ckpt",
            state.epochs_done + 1,
            state.step_in_epoch
        )
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash or a full disk
/// never leaves a half-written file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent_dir(path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "cannot write {}: {e} (disk full or no permission?)",
            path.display()
        );
    }
    Ok(())
}

/// Makes a rename in `path`'s folder durable: without it a power cut can lose the new name
/// although the file's bytes were synced. Folders cannot be opened for syncing on Windows.
fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

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

/// A Burn record as bytes (what checkpoints store).
pub fn encode_record<B: Backend, R: Record<B>>(record: R) -> Result<Vec<u8>> {
    recorder()
        .record(record, ())
        .map_err(|e| anyhow::anyhow!("cannot serialise a record: {e:?}"))
}

/// Saves model, optimizer record, method state and training state into `dir`, then points
/// `latest` at it.
pub fn save<B: Backend, R: Record<B>>(
    dir: &Path,
    model: &SslModel<B>,
    optimizer: R,
    method_state: &[u8],
    state: &TrainState,
    config: &TrainConfig,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let model_bytes =
        encode_record::<B, _>(model.clone().into_record()).context("cannot serialise the model")?;
    let optimizer_bytes =
        encode_record::<B, _>(optimizer).context("cannot serialise the optimizer state")?;
    let bytes = file_bytes(state, config, &model_bytes, &optimizer_bytes, method_state)?;
    let name = checkpoint_name(state);
    let path = dir.join(&name);
    write_atomically(&path, &bytes)?;
    write_atomically(&dir.join(LATEST), format!("{name}\n").as_bytes())?;
    Ok(path)
}

/// A checkpoint file's bytes: magic, header length, header (with the records' MD5), records.
fn file_bytes(
    state: &TrainState,
    config: &TrainConfig,
    model: &[u8],
    optimizer: &[u8],
    method_state: &[u8],
) -> Result<Vec<u8>> {
    let header = Header {
        format: FORMAT_VERSION,
        state: state.clone(),
        config: config.clone(),
        model_bytes: model.len() as u64,
        optimizer_bytes: optimizer.len() as u64,
        method_bytes: method_state.len() as u64,
        md5: payload_md5(&[model, optimizer, method_state]),
        saved_at: chrono::Local::now().to_rfc3339(),
    };
    let header = serde_json::to_vec(&header)?;
    let mut bytes = Vec::with_capacity(
        MAGIC.len() + 8 + header.len() + model.len() + optimizer.len() + method_state.len(),
    );
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(model);
    bytes.extend_from_slice(optimizer);
    bytes.extend_from_slice(method_state);
    Ok(bytes)
}

fn payload_md5(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    format!("{:x}", hasher.finalize())
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

impl Checkpoint {
    /// Writes this checkpoint back to its `path` (atomically), with a new checksum: for tools
    /// that edit a run's state or recipe, which `--resume` then continues from.
    pub fn write(&self) -> Result<()> {
        let bytes = file_bytes(
            &self.state,
            &self.config,
            &self.model,
            &self.optimizer,
            &self.method_state,
        )?;
        write_atomically(&self.path, &bytes)
    }

    /// Reads and verifies a checkpoint file (or the `latest` of a checkpoints directory).
    pub fn read(path: &Path) -> Result<Self> {
        let path = if path.is_dir() {
            latest_in(path)?
                .or_else(|| latest_in(&path.join("checkpoints")).ok().flatten())
                .with_context(|| {
                    format!("{}: no checkpoint found in this directory", path.display())
                })?
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
        Self::parse(&path, &bytes).with_context(|| format!("checkpoint {}", path.display()))
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        ensure_intact(
            bytes.starts_with(MAGIC),
            "not a checkpoint written by this trainer (wrong magic bytes)",
        )?;
        let rest = &bytes[MAGIC.len()..];
        ensure_intact(
            rest.len() >= 8,
            "truncated: the file ends inside its header",
        )?;
        let header_len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        let rest = &rest[8..];
        ensure_intact(
            rest.len() >= header_len,
            "truncated: the file ends inside its header",
        )?;
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let format = serde_json::from_slice::<Format>(&rest[..header_len])
            .map_err(|e| Damaged(format!("corrupt header: {e}")))?
            .format;
        ensure!(
            format == FORMAT_VERSION,
            "format version {format} is not supported by this trainer (expects {FORMAT_VERSION}){}",
            if format == 1 {
                ": version 1 checkpoints come from the SimCLR-only trainer before several methods \
                 were added; export or evaluate them with that version, or train again"
            } else {
                ""
            }
        );
        let header: Header = serde_json::from_slice(&rest[..header_len])
            .map_err(|e| Damaged(format!("corrupt header: {e}")))?;
        let payload = &rest[header_len..];
        let lengths = [
            header.model_bytes as usize,
            header.optimizer_bytes as usize,
            header.method_bytes as usize,
        ];
        let promised: usize = lengths.iter().sum();
        ensure_intact(
            payload.len() == promised,
            format!(
                "truncated or padded: {} bytes of weights where the header promises {promised}",
                payload.len()
            ),
        )?;
        let (model, rest) = payload.split_at(lengths[0]);
        let (optimizer, method_state) = rest.split_at(lengths[1]);
        ensure_intact(
            payload_md5(&[model, optimizer, method_state]) == header.md5,
            "corrupt: the weights do not match the checksum in the header",
        )?;
        Ok(Self {
            path: path.to_path_buf(),
            state: header.state,
            config: header.config,
            model: model.to_vec(),
            optimizer: optimizer.to_vec(),
            method_state: method_state.to_vec(),
        })
    }

    /// Fails unless the checkpoint's architecture is `expected`.
    pub fn ensure_architecture(&self, expected: &ModelConfig) -> Result<()> {
        ensure!(
            &self.config.model == expected,
            "{} holds a model with architecture {:?}, but {:?} was asked for",
            self.path.display(),
            self.config.model,
            expected
        );
        Ok(())
    }

    /// Fails unless the checkpoint was trained with the method `expected`.
    pub fn ensure_method(&self, expected: MethodKind) -> Result<()> {
        let saved = self.config.method.kind();
        ensure!(
            saved == expected,
            "{} was trained with {saved}, but this run uses {expected}: resume it with \
             --method {saved}, or start a new run (another --out) for {expected}",
            self.path.display()
        );
        Ok(())
    }

    /// The model (encoder, heads), rebuilt from the checkpoint's own architecture.
    pub fn model<B: Backend>(&self, device: &B::Device) -> Result<SslModel<B>> {
        let record = decode_record(&self.model, device).with_context(|| {
            format!(
                "{}: the model weights do not fit this trainer's network (written by another version?)",
                self.path.display()
            )
        })?;
        Ok(self.config.model.init::<B>(device).load_record(record))
    }

    pub fn optimizer_record<B: Backend, R: Record<B>>(&self, device: &B::Device) -> Result<R> {
        decode_record(&self.optimizer, device).with_context(|| {
            format!(
                "{}: the optimizer state does not load (saved by another optimizer?)",
                self.path.display()
            )
        })
    }
}

/// Decodes a record; one of another layout (an older version of this trainer) makes Burn panic,
/// which becomes an error here.
pub fn decode_record<B: Backend, R: Record<B>>(bytes: &[u8], device: &B::Device) -> Result<R> {
    crate::panics::catch_quietly(|| recorder().load(bytes.to_vec(), device))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use rand::SeedableRng;

    fn small_config() -> TrainConfig {
        let mut config = TrainConfig::default();
        config.model = ModelConfig::small(2, 4, 3);
        config
    }

    fn state() -> TrainState {
        TrainState {
            epochs_done: 3,
            global_step: 30,
            step_in_epoch: 0,
            loss_sum_in_epoch: 0.0,
            z_std_sum_in_epoch: 0.0,
            epoch_seed: 0,
            rng: ChaCha8Rng::seed_from_u64(1),
            loss_scaler: Default::default(),
        }
    }

    fn saved(dir: &Path) -> (PathBuf, SslModel<CpuBackend>) {
        let config = small_config();
        let model = config.model.init::<CpuBackend>(&Default::default());
        // Parameters are initialised lazily; read one so the saved copy and `model` agree.
        let _ = model.encoder.stem_conv.weight.val();
        let record = model.clone().into_record();
        let path = save(dir, &model, record, b"method", &state(), &config).unwrap();
        (path, model)
    }

    #[test]
    fn prune_keeps_the_newest_the_multiples_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| std::fs::write(dir.path().join(name), b"x").unwrap();
        for epoch in 1..=7 {
            touch(&format!("epoch-{epoch:04}.ckpt"));
        }
        touch("epoch-0003-step-000012.ckpt"); // a Ctrl-C save, since passed
        touch("notes.txt");
        std::fs::write(dir.path().join(LATEST), "epoch-0007.ckpt\n").unwrap();
        let removed = prune(dir.path(), 2, 3).unwrap();
        assert_eq!(
            removed,
            [
                "epoch-0001.ckpt",
                "epoch-0002.ckpt",
                "epoch-0003-step-000012.ckpt",
                "epoch-0004.ckpt",
                "epoch-0005.ckpt"
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "epoch-0003.ckpt",
                "epoch-0006.ckpt",
                "epoch-0007.ckpt",
                "latest",
                "notes.txt"
            ]
        );
        // keep_last 0 keeps every end-of-epoch file; latest survives even when it is mid-epoch.
        touch("epoch-0008-step-000005.ckpt");
        std::fs::write(dir.path().join(LATEST), "epoch-0008-step-000005.ckpt\n").unwrap();
        assert!(prune(dir.path(), 0, 0).unwrap().is_empty());
        assert_eq!(
            prune(dir.path(), 1, 0).unwrap(),
            ["epoch-0003.ckpt", "epoch-0006.ckpt"]
        );
        assert!(dir.path().join("epoch-0008-step-000005.ckpt").is_file());
    }

    #[test]
    fn round_trip_restores_weights_state_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let (path, model) = saved(dir.path());
        assert_eq!(path.file_name().unwrap(), "epoch-0003.ckpt");
        assert_eq!(latest_in(dir.path()).unwrap().unwrap(), path);
        let ckpt = Checkpoint::read(dir.path()).unwrap();
        assert_eq!(ckpt.state, state());
        assert_eq!(ckpt.method_state, b"method");
        let back = ckpt.model::<CpuBackend>(&Default::default()).unwrap();
        let weights = |m: &SslModel<CpuBackend>| onnx::values(m.encoder.stem_conv.weight.val());
        let (a, b) = (weights(&model), weights(&back));
        assert_eq!(a, b);
        assert!(!dir.path().join("epoch-0003.tmp").exists());
    }

    #[test]
    fn truncated_and_corrupt_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = saved(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = format!("{:#}", Checkpoint::read(&path).err().unwrap());
        assert!(
            err.contains("truncated") && err.contains("epoch-0003.ckpt"),
            "{err}"
        );
        let mut corrupt = bytes.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        std::fs::write(&path, &corrupt).unwrap();
        let err = format!("{:#}", Checkpoint::read(&path).err().unwrap());
        assert!(err.contains("corrupt"), "{err}");
        std::fs::write(&path, b"hello").unwrap();
        let err = format!("{:#}", Checkpoint::read(&path).err().unwrap());
        assert!(err.contains("not a checkpoint"), "{err}");
    }

    /// Checkpoints of epochs 1 to 3 in `dir`, `latest` naming epoch 3.
    fn three_epochs(dir: &Path) {
        let config = small_config();
        let model = config.model.init::<CpuBackend>(&Default::default());
        for epochs_done in 1..=3 {
            let state = TrainState {
                epochs_done,
                ..state()
            };
            let record = model.clone().into_record();
            save(dir, &model, record, b"method", &state, &config).unwrap();
        }
    }

    #[test]
    fn resume_passes_over_a_damaged_latest_and_keeps_it_aside() {
        let dir = tempfile::tempdir().unwrap();
        three_epochs(dir.path());
        let newest = dir.path().join("epoch-0003.ckpt");
        let mut bytes = std::fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // one flipped byte: fails the checksum
        std::fs::write(&newest, &bytes).unwrap();

        let ckpt = resume_point(dir.path(), true).unwrap().unwrap();
        assert_eq!(ckpt.path, dir.path().join("epoch-0002.ckpt"));
        assert_eq!(ckpt.state.epochs_done, 2);
        let kept = dir.path().join("epoch-0003.ckpt.corrupt");
        assert_eq!(std::fs::read(&kept).unwrap(), bytes, "kept as it was");
        assert!(!newest.exists());
        // `latest` names the good one now, and pruning leaves the damaged file alone.
        assert_eq!(latest_in(dir.path()).unwrap().unwrap(), ckpt.path);
        assert_eq!(prune(dir.path(), 1, 0).unwrap(), ["epoch-0001.ckpt"]);
        assert!(kept.is_file());

        // A truncated one next: set aside too, under a name of its own.
        let good = std::fs::read(&ckpt.path).unwrap();
        std::fs::write(&ckpt.path, &good[..good.len() / 2]).unwrap();
        std::fs::copy(&ckpt.path, dir.path().join("epoch-0003.ckpt")).unwrap();
        let err = format!("{:#}", resume_point(dir.path(), true).err().unwrap());
        for expected in [
            "no intact checkpoint",
            "epoch-0003.ckpt: truncated",
            "epoch-0002.ckpt: truncated",
            "kept as",
            "epoch-0003.ckpt.corrupt-2",
            "another --out",
        ] {
            assert!(err.contains(expected), "{expected:?} in {err}");
        }
        assert!(kept.is_file() && dir.path().join("epoch-0002.ckpt.corrupt").is_file());
    }

    #[test]
    fn a_reader_that_does_not_write_leaves_the_damaged_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        three_epochs(dir.path());
        let newest = dir.path().join("epoch-0003.ckpt");
        std::fs::write(&newest, b"SELFSUP-CKPT\n").unwrap();
        let ckpt = resume_point(dir.path(), false).unwrap().unwrap();
        assert_eq!(ckpt.state.epochs_done, 2);
        assert!(newest.is_file());
        assert!(resume_point(&dir.path().join("none"), true)
            .unwrap()
            .is_none());
    }

    #[test]
    fn weights_of_another_layout_are_an_error_not_a_panic() {
        let ckpt = Checkpoint {
            path: PathBuf::from("old.ckpt"),
            state: state(),
            config: small_config(),
            model: vec![7; 64],
            optimizer: vec![],
            method_state: vec![],
        };
        let err = format!(
            "{:#}",
            ckpt.model::<CpuBackend>(&Default::default()).err().unwrap()
        );
        assert!(
            err.contains("old.ckpt") && err.contains("do not fit"),
            "{err}"
        );
    }

    #[test]
    fn other_architecture_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = saved(dir.path());
        let ckpt = Checkpoint::read(&path).unwrap();
        let err = ckpt
            .ensure_architecture(&ModelConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("architecture"), "{err}");
        let err = ckpt
            .ensure_method(MethodKind::Byol)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("trained with simclr, but this run uses byol")
                && err.contains("epoch-0003"),
            "{err}"
        );
        ckpt.ensure_method(MethodKind::Simclr).unwrap();
    }

    #[test]
    fn a_version_1_checkpoint_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = saved(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let key = b"\"format\":2";
        let at = bytes.windows(key.len()).position(|w| w == key).unwrap();
        bytes[at + key.len() - 1] = b'1';
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", Checkpoint::read(&path).err().unwrap());
        assert!(
            err.contains("version 1") && err.contains("SimCLR-only"),
            "{err}"
        );
    }
}
