//! The work at the end of an epoch, between the last step and the next epoch: the ranks'
//! agreement, the collapse warning, the kNN monitor and the checkpoint.

use super::start::Trainee;
use super::TrainJob;
use crate::backend::TrainBackend;
use crate::checkpoint;
use crate::config::TrainConfig;
use crate::data::ImageDataset;
use crate::distributed::{self, sync::parameter_spread};
use crate::eval::features::encode_dataset;
use crate::eval::knn::KnnClassifier;
use crate::methods::is_collapsed;
use crate::model::SslModel;
use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use std::path::PathBuf;

/// In a data-parallel run, an error unless every rank still holds the same parameters.
pub(super) fn ensure_ranks_agree<B: TrainBackend>(model: &SslModel<B>, epoch: usize) -> Result<()> {
    let Some(peer) = distributed::current() else {
        return Ok(());
    };
    let spread = parameter_spread(model);
    ensure!(
        spread <= 1e-5,
        "after epoch {epoch} the parameters differ between ranks by up to {spread} (rank {} of \
         {}): the ranks no longer train one model. Resume from the last checkpoint",
        peer.rank,
        peer.world
    );
    Ok(())
}

/// Warns when the epoch's mean collapse monitor `z_std` of projections of size `d` means the
/// projections are collapsing.
pub(super) fn warn_if_collapsed(z_std: f64, d: usize, epoch: usize) {
    if is_collapsed(z_std, d) {
        eprintln!(
            "warning: the projections are collapsing at epoch {epoch} (z_std {z_std:.5}, about \
             {:.4} when spread): the encoder maps images to nearly the same point. Early in a \
             run this can recover (watch z_std in metrics.csv); if it stays, check the method's \
             settings against its preset (BYOL needs its predictor) or lower the learning rate",
            1.0 / (d as f64).sqrt()
        );
    }
}

impl TrainJob {
    pub(super) fn checkpoints_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// Saves a checkpoint of `trainee` (rank 0; the other ranks hold the same state) and prunes
    /// the ones the run no longer keeps. Returns its path.
    pub(super) fn save<B: TrainBackend, O: Optimizer<SslModel<B>, B>>(
        &self,
        trainee: &Trainee<B, O>,
    ) -> Result<PathBuf> {
        let Trainee {
            model,
            optimizer,
            method,
            state,
        } = trainee;
        if !distributed::is_main() {
            return Ok(self
                .checkpoints_dir()
                .join(checkpoint::checkpoint_name(state)));
        }
        let path = checkpoint::save(
            &self.checkpoints_dir(),
            model,
            optimizer.to_record(),
            &method.save_state()?,
            state,
            &self.config,
        )?;
        checkpoint::prune(
            &self.checkpoints_dir(),
            self.config.keep_last,
            self.config.keep_every,
        )?;
        Ok(path)
    }
}

/// The seed of the kNN monitor's subsets: one for every run and epoch, so that the monitor of
/// two runs (of any `--seed`) classifies the same images against the same bank.
pub const KNN_SUBSET_SEED: u64 = 0;

/// The kNN monitor's images: `bank_size` training and `query_size` test images, each drawn once
/// per run with [`KNN_SUBSET_SEED`], stratified by class ([`ImageDataset::sample`]).
pub struct KnnSubsets {
    pub bank: ImageDataset,
    pub queries: ImageDataset,
}

impl KnnSubsets {
    pub fn new(train: &ImageDataset, test: &ImageDataset, config: &TrainConfig) -> Self {
        Self {
            bank: train.sample(config.knn.bank_size, KNN_SUBSET_SEED),
            queries: test.sample(config.knn.query_size, KNN_SUBSET_SEED),
        }
    }
}

/// kNN top-1 of the current encoder (BatchNorm in inference mode) on the monitor's subsets.
pub fn knn_monitor<B: TrainBackend>(
    model: &SslModel<B>,
    subsets: &KnnSubsets,
    config: &TrainConfig,
    device: &B::Device,
) -> f64 {
    let encoder = model.encoder.valid();
    let KnnSubsets { bank, queries } = subsets;
    if bank.is_empty() || queries.is_empty() {
        return f64::NAN;
    }
    let batch = config.batch_size.max(64);
    let bank_features = encode_dataset(&encoder, &bank, &config.augment, batch, device, "kNN bank");
    let query_features = encode_dataset(
        &encoder,
        &queries,
        &config.augment,
        batch,
        device,
        "kNN queries",
    );
    KnnClassifier {
        k: config.knn.k,
        temperature: config.knn.temperature,
    }
    .accuracy(
        bank_features,
        &bank.labels,
        query_features,
        &queries.labels,
        bank.classes.len(),
    )
}
