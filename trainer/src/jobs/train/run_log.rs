//! What a run tells the world, kept in one place: `config.toml`, `metrics.csv`, `metrics.svg`,
//! TensorBoard's event files and the console's end-of-epoch lines. Rank 0 writes them; the
//! other ranks hold a log that writes nothing.

use super::step::StepStats;
use crate::config::TrainConfig;
use crate::gpu_memory::GpuMemory;
use crate::metrics::{EpochMetrics, METRICS_HEADER};
use crate::plot;
use crate::precision::GradScaler;
use crate::records::write_atomically;
use crate::tensorboard::EventWriter;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The run's logs (rank 0's files; `None` on the other ranks).
pub(super) struct RunLog {
    files: Option<LogFiles>,
}

struct LogFiles {
    out: PathBuf,
    metrics: MetricsFile,
    events: EventWriter,
    /// When the last per-step row was written, and the images seen by then (its throughput).
    last_row: (Instant, usize),
    /// Views of each image (2, or more with multi-crop), for the throughput in views.
    views_per_image: usize,
}

/// One optimizer step as the log sees it.
pub(super) struct StepRow<'a> {
    pub global_step: usize,
    pub stats: &'a StepStats,
    pub lr: f64,
    /// Pairs of views trained on since the epoch started.
    pub pairs: usize,
    pub scaler: &'a GradScaler,
}

impl RunLog {
    /// Opens the logs of a run that has completed `epochs_done` epochs in `out`: saves
    /// `config.toml` and keeps the rows of `metrics.csv` up to `epochs_done`. Writes nothing
    /// unless `main`.
    pub fn open(out: &Path, config: &TrainConfig, epochs_done: usize, main: bool) -> Result<Self> {
        if !main {
            return Ok(Self { files: None });
        }
        write_atomically(&out.join("config.toml"), config.to_toml().as_bytes())?;
        let metrics = MetricsFile::open(&out.join("metrics.csv"), epochs_done)?;
        let events = EventWriter::create(&out.join("tb"))?;
        eprintln!(
            "TensorBoard: tensorboard --logdir {} (events in {})",
            out.display(),
            events.path().display()
        );
        Ok(Self {
            files: Some(LogFiles {
                out: out.to_path_buf(),
                metrics,
                events,
                last_row: (Instant::now(), 0),
                views_per_image: config.augment.view_recipes().len(),
            }),
        })
    }

    /// Restarts the per-step throughput at the start of an epoch.
    pub fn start_epoch(&mut self) {
        if let Some(files) = self.files.as_mut() {
            files.last_row = (Instant::now(), 0);
        }
    }

    /// Writes the per-step scalars every `log_every` steps (0: never).
    pub fn step(&mut self, log_every: usize, row: StepRow) -> Result<()> {
        let Some(files) = self.files.as_mut() else {
            return Ok(());
        };
        if log_every == 0 || row.global_step % log_every != 0 {
            return Ok(());
        }
        let (since, pairs_then) = files.last_row;
        let rate = (row.pairs - pairs_then) as f64 / since.elapsed().as_secs_f64();
        files.last_row = (Instant::now(), row.pairs);
        let mut values = vec![
            ("train/loss", row.stats.loss),
            ("train/lr", row.lr),
            ("train/z_std", row.stats.z_std),
            ("train/pairs_per_s", rate),
        ];
        if row.stats.grad_norm.is_finite() {
            values.push(("train/grad_norm", row.stats.grad_norm));
        }
        if row.scaler.enabled() {
            values.push(("train/loss_scale", row.scaler.scale));
        }
        files.events.scalars(row.global_step as u64, &values)?;
        files.events.flush()
    }

    /// Records a finished epoch of a run of `epochs`, saved as `checkpoint`: its row of
    /// metrics.csv, the redrawn metrics.svg, TensorBoard's scalars (GPU memory included) and
    /// the console's line.
    pub fn epoch(
        &mut self,
        metrics: &EpochMetrics,
        epochs: usize,
        checkpoint: &Path,
        gpu_memory: Option<GpuMemory>,
    ) -> Result<()> {
        let Some(files) = self.files.as_mut() else {
            return Ok(());
        };
        files.metrics.append(metrics)?;
        plot::write_metrics_svg(&files.out.join("metrics.svg"), &files.metrics.rows)?;
        if let Some(memory) = gpu_memory {
            eprintln!("epoch {}: {}", metrics.epoch, memory.describe());
        }
        let mut values = vec![
            ("epoch/loss", metrics.loss),
            ("epoch/z_std", metrics.z_std),
            ("epoch/pairs_per_s", metrics.pairs_per_s),
        ];
        if metrics.knn_top1.is_finite() {
            values.push(("epoch/knn_top1", metrics.knn_top1));
        }
        if let Some(memory) = gpu_memory {
            let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
            values.push(("gpu/memory_reserved_mib", mib(memory.reserved)));
            values.push(("gpu/memory_in_use_mib", mib(memory.in_use)));
        }
        files.events.scalars(metrics.epoch as u64, &values)?;
        files.events.flush()?;
        println!(
            "epoch {}/{epochs}: loss {:.4} | z_std {:.4} | kNN top-1 {:.2} % | {} | {:.0} s | saved {}",
            metrics.epoch,
            metrics.loss,
            metrics.z_std,
            100.0 * metrics.knn_top1,
            throughput(metrics.pairs_per_s, files.views_per_image),
            metrics.seconds,
            checkpoint.display()
        );
        Ok(())
    }
}

/// `metrics.csv`, kept consistent with the checkpoints: rows past the resumed epoch (written
/// by a run that died before its next checkpoint) are dropped.
struct MetricsFile {
    path: PathBuf,
    /// Every row of the file, the resumed run's earlier epochs first (for `metrics.svg`).
    rows: Vec<EpochMetrics>,
}

impl MetricsFile {
    fn open(path: &Path, epochs_done: usize) -> Result<Self> {
        let mut rows = vec![METRICS_HEADER.to_string()];
        if epochs_done > 0 {
            if let Ok(text) = std::fs::read_to_string(path) {
                rows.extend(
                    text.lines()
                        .skip(1)
                        .filter(|line| {
                            line.split(',')
                                .next()
                                .and_then(|e| e.parse::<usize>().ok())
                                .is_some_and(|e| e <= epochs_done)
                        })
                        .map(String::from),
                );
            }
        }
        write_atomically(path, (rows.join("\n") + "\n").as_bytes())?;
        Ok(Self {
            path: path.to_path_buf(),
            rows: rows[1..]
                .iter()
                .filter_map(|row| EpochMetrics::from_csv_row(row))
                .collect(),
        })
    }

    fn append(&mut self, metrics: &EpochMetrics) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        writeln!(file, "{}", metrics.csv_row())
            .with_context(|| format!("cannot write {} (disk full?)", self.path.display()))?;
        self.rows.push(metrics.clone());
        Ok(())
    }
}

/// Images per second as the progress bar and the epoch line show it: pairs/s for two views of
/// each image, images/s and views/s otherwise (multi-crop).
pub(super) fn throughput(images_per_s: f64, views_per_image: usize) -> String {
    match views_per_image {
        2 => format!("{images_per_s:.1} pairs/s"),
        views => format!(
            "{images_per_s:.1} images/s ({:.0} views/s)",
            images_per_s * views as f64
        ),
    }
}

#[cfg(test)]
mod throughput_tests {
    use super::throughput;

    #[test]
    fn multi_crop_throughput_counts_views() {
        assert_eq!(throughput(100.0, 2), "100.0 pairs/s");
        assert_eq!(throughput(100.0, 8), "100.0 images/s (800 views/s)");
    }
}
