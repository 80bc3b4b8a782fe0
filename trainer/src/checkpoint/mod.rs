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
//! `prune` removes the checkpoints the run no longer needs (`keep_last`, `keep_every`); which
//! checkpoint a run continues from and which it keeps is `runs.rs`.

use crate::config::TrainConfig;
use crate::methods::MethodKind;
use crate::model::{LegacySslModelRecord, ModelConfig, SslModel, SslModelRecordV3};
use crate::precision::GradScaler;
use crate::records::{decode_record, encode_record, write_atomically};

mod runs;
use anyhow::{ensure, Context, Result};
use burn::module::Module;
use burn::prelude::Backend;
use burn::record::Record;
use md5::{Digest, Md5};
use rand_chacha::ChaCha8Rng;
pub use runs::{latest_in, prune, resume_point, CORRUPT_SUFFIX};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"SELFSUP-CKPT\n";
/// 2: several methods (method state section, heads with BatchNorm, predictor). Version 1 files
/// (SimCLR only) are refused with a message.
/// 3: the encoder is a named backbone (its record is the backbone's variant around the
/// network's). Version 2 files still load: their encoder is the ResNet-18 it always was.
/// 4: the model may end in a prototype layer (DINO). Version 3 files still load: they have none.
const FORMAT_VERSION: u32 = 4;
/// The oldest format this trainer reads.
const OLDEST_READABLE: u32 = 2;
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
    /// The file's format version ([`FORMAT_VERSION`], or an older one this trainer reads).
    pub format: u32,
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
            (OLDEST_READABLE..=FORMAT_VERSION).contains(&format),
            "format version {format} is not supported by this trainer (reads {OLDEST_READABLE} to \
             {FORMAT_VERSION}){}",
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
            format,
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
        let record = match self.format {
            2 => decode_record::<B, LegacySslModelRecord<B>>(&self.model, device)
                .map(LegacySslModelRecord::upgrade),
            3 => decode_record::<B, SslModelRecordV3<B>>(&self.model, device)
                .map(SslModelRecordV3::upgrade),
            _ => decode_record(&self.model, device),
        };
        let record = record.with_context(|| {
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
        let _ = crate::named_params::named_tensors(&model);
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
        let weights = |m: &SslModel<CpuBackend>| {
            crate::named_params::named_tensors(m)
                .into_iter()
                .map(|t| (t.name, t.values))
                .collect::<Vec<_>>()
        };
        let (a, b) = (weights(&model), weights(&back));
        assert!(a.iter().any(|(name, _)| name == "encoder.stem_conv.weight"));
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
            format: FORMAT_VERSION,
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
        let key = format!("\"format\":{FORMAT_VERSION}");
        let key = key.as_bytes();
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
