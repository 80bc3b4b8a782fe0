//! Helpers shared by the trainer's integration tests (each test file compiles its own copy and
//! uses a part of it).
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use trainer::backend::DeviceKind;
use trainer::config::TrainConfig;
use trainer::data::augment::ViewSpec;
use trainer::data::{ImageDataset, Splits, IMAGE_BYTES};
use trainer::jobs::train::{EpochMetrics, Outcome, TrainJob};
use trainer::methods::{MethodConfig, MethodKind};
use trainer::model::HeadConfig;

/// `n` random images in 3 classes.
pub fn images(n: usize, seed: u64) -> ImageDataset {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let pixels: Vec<u8> = (0..n * IMAGE_BYTES).map(|_| rng.random()).collect();
    let labels = (0..n).map(|i| (i % 3) as u8).collect();
    ImageDataset::new(32, pixels, labels, vec!["a".into(), "b".into(), "c".into()])
}

/// 48 random training images and 12 test images.
pub fn synthetic() -> Splits {
    Splits::labelled(images(48, 1), images(12, 2), "synthetic")
}

/// A training run on the CPU into `out` on `data`; `stop` raises the Ctrl-C flag from the start
/// (the run stops after its first step with a checkpoint).
pub fn train(
    config: TrainConfig,
    out: &Path,
    resume: bool,
    stop: bool,
    data: Splits,
) -> anyhow::Result<(Outcome, Vec<EpochMetrics>)> {
    let job = TrainJob {
        config,
        out: out.to_path_buf(),
        resume,
        stop: Arc::new(AtomicBool::new(stop)),
        data: Some(data),
        topology: Default::default(),
    };
    job.run_on(DeviceKind::Cpu)
}

pub fn assert_close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-5 * a.abs().max(1.0),
        "{what}: {a} vs {b}"
    );
}

/// The trainer binary with `args` (and an empty download cache of its own).
pub fn trainer(args: &[&str]) -> Output {
    e2e::trainer_command(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("the trainer binary runs")
}

/// A run's `metrics.csv`, read by column name from its header, so that a test asking for
/// `knn_top1` gets the kNN accuracy whatever the column order. Empty cells (the kNN monitor
/// off) read as NaN.
pub struct Metrics {
    pub header: Vec<String>,
    pub rows: Vec<Vec<f64>>,
}

impl Metrics {
    pub fn read(run: &Path) -> Self {
        let path = run.join("metrics.csv");
        let csv = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut lines = csv.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or_else(|| panic!("{} is empty", path.display()))
            .split(',')
            .map(str::to_string)
            .collect();
        let rows = lines
            .map(|line| {
                let row: Vec<f64> = line
                    .split(',')
                    .map(|v| match v {
                        "" => f64::NAN,
                        v => v
                            .parse()
                            .unwrap_or_else(|e| panic!("{v:?} in {line:?}: {e}")),
                    })
                    .collect();
                assert_eq!(row.len(), header.len(), "{line:?} against {header:?}");
                row
            })
            .collect();
        Self { header, rows }
    }

    /// Every row's value of the column `name` (a panic lists the columns there are).
    pub fn column(&self, name: &str) -> Vec<f64> {
        let i = self
            .header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("metrics.csv has no column {name:?}: {:?}", self.header));
        self.rows.iter().map(|row| row[i]).collect()
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kind`'s preset on a width-4 network with heads of width 16 (same layers and BatchNorm as
/// the preset), batch 8, 3 steps per epoch, a queue of 16.
pub fn small(kind: MethodKind, epochs: usize) -> TrainConfig {
    let mut config = TrainConfig::preset(kind, 8);
    config.epochs = epochs;
    config.steps_per_epoch = 3;
    config.model.width = 4;
    let shrink = |h: HeadConfig| HeadConfig {
        hidden: 16,
        out: 8,
        ..h
    };
    config.model.head = shrink(config.model.head);
    config.model.predictor = config.model.predictor.map(shrink);
    if let MethodConfig::Mocov2(moco) = &mut config.method {
        moco.queue_size = 16;
    }
    if let MethodConfig::Swav(swav) = &mut config.method {
        // The queue and the prototypes' freeze both change at the second epoch, so the resume
        // tests cross them.
        swav.queue_size = 16;
        swav.queue_start_epoch = 1;
        swav.freeze_prototypes_epochs = 1;
    }
    if let Some(prototypes) = &mut config.model.prototypes {
        prototypes.count = 32;
    }
    config.optim.warmup_epochs = config.optim.warmup_epochs.min(1.0);
    config.knn.bank_size = 48;
    config.knn.query_size = 12;
    config.knn.k = 5;
    config
}

/// [`small`] `kind` (DINO, SwAV) with multi-crop: two global views at the input size, then
/// three local views of 16 pixels from 5-40 % of the image (DINO's local crop scale).
pub fn multi_crop(kind: MethodKind, epochs: usize) -> TrainConfig {
    let mut config = small(kind, epochs);
    config.augment.views = vec![
        ViewSpec {
            count: 2,
            ..ViewSpec::default()
        },
        ViewSpec {
            count: 3,
            size: 16,
            crop_scale: Some([0.05, 0.4]),
            ..ViewSpec::default()
        },
    ];
    config
}

/// `command`'s output, or (as `Err`) what it had printed when it was killed after `limit`: a
/// hang fails its test instead of blocking the suite.
pub fn output_within(
    mut command: std::process::Command,
    limit: std::time::Duration,
) -> Result<Output, String> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    // Read both pipes on threads of their own, so a full pipe never stalls the child.
    let mut pipes = [
        child.stdout.take().map(as_reader),
        child.stderr.take().map(as_reader),
    ];
    let readers = pipes.each_mut().map(|pipe| {
        let mut pipe = pipe.take().unwrap();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let [stdout, stderr] = readers.map(|r| r.join().unwrap());
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!("{}{}", text(&stdout), text(&stderr))),
    }
}

fn as_reader(pipe: impl std::io::Read + Send + 'static) -> Box<dyn std::io::Read + Send> {
    Box::new(pipe)
}

/// `.npy` float32 values (format 1.0, little-endian).
pub fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.starts_with(b"\x93NUMPY\x01\x00"),
        "{}",
        path.display()
    );
    let start = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[start..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
