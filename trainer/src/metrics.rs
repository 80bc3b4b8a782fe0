//! One row of a run's `metrics.csv` per epoch: what the run log writes and `metrics.svg` and the
//! tests read back.

pub const METRICS_HEADER: &str = "epoch,loss,z_std,knn_top1,pairs_per_s,seconds";

/// One line of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub loss: f64,
    /// Mean collapse monitor of the epoch's steps (`methods::projection_std`).
    pub z_std: f64,
    pub knn_top1: f64,
    pub pairs_per_s: f64,
    pub seconds: f64,
}

impl EpochMetrics {
    pub fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.5},{:.4},{:.2},{:.1}",
            self.epoch, self.loss, self.z_std, self.knn_top1, self.pairs_per_s, self.seconds
        )
    }

    /// The metrics of a row [`Self::csv_row`] wrote (`None` for anything else).
    pub fn from_csv_row(row: &str) -> Option<Self> {
        let fields: Vec<&str> = row.trim().split(',').collect();
        let [epoch, loss, z_std, knn_top1, pairs_per_s, seconds] = fields[..] else {
            return None;
        };
        Some(Self {
            epoch: epoch.parse().ok()?,
            loss: loss.parse().ok()?,
            z_std: z_std.parse().ok()?,
            knn_top1: knn_top1.parse().ok()?,
            pairs_per_s: pairs_per_s.parse().ok()?,
            seconds: seconds.parse().ok()?,
        })
    }
}
