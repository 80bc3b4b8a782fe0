//! The prefetching loader: a background thread builds batches of two augmented views, spreading
//! the images of a batch over all cores (rayon), while the training step runs on the current one.
//!
//! Each image's views depend only on (epoch seed, position in the epoch), never on thread timing,
//! so a run is reproducible and a resumed epoch can skip straight to its next batch.

use crate::data::augment::AugmentConfig;
use crate::data::ImageDataset;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Two views of `size` images of `side x side` pixels, planar f32, already normalised: `views[0..size]` are the first
/// views and `views[size..2*size]` the second views of the same images, in the same order.
pub struct PairBatch {
    pub size: usize,
    /// Side of the (square) views.
    pub side: usize,
    pub views: Vec<f32>,
}

/// Which images an epoch visits, in which order, and how many steps it makes.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    pub seed: u64,
    pub batch_size: usize,
    /// Steps in the epoch: full batches only (the last partial batch is dropped, as in SimCLR,
    /// since the loss's number of negatives depends on the batch size).
    pub steps: usize,
    order: Vec<usize>,
}

impl EpochPlan {
    pub fn new(dataset_len: usize, batch_size: usize, max_steps: usize, seed: u64) -> Self {
        let mut order: Vec<usize> = (0..dataset_len).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let full = dataset_len / batch_size;
        let steps = if max_steps == 0 {
            full
        } else {
            full.min(max_steps)
        };
        Self {
            seed,
            batch_size,
            steps,
            order,
        }
    }

    /// Dataset indices of batch `step`.
    pub fn batch_indices(&self, step: usize) -> &[usize] {
        &self.order[step * self.batch_size..(step + 1) * self.batch_size]
    }
}

/// The part of each batch a rank of a data-parallel run takes: rows
/// `rank * B / world .. (rank + 1) * B / world` of the global batch of B images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole batch (one device).
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };
}

/// Makes both views of batch `step` of `plan`.
pub fn make_batch(
    dataset: &ImageDataset,
    augment: &AugmentConfig,
    plan: &EpochPlan,
    step: usize,
) -> PairBatch {
    make_shard(dataset, augment, plan, step, Shard::WHOLE)
}

/// Makes both views of `shard`'s rows of batch `step`: the same views as those rows of
/// [`make_batch`], since each image's views depend on its position in the global batch.
pub fn make_shard(
    dataset: &ImageDataset,
    augment: &AugmentConfig,
    plan: &EpochPlan,
    step: usize,
    shard: Shard,
) -> PairBatch {
    let size = plan.batch_size / shard.world;
    let first_row = shard.rank * size;
    let indices = &plan.batch_indices(step)[first_row..first_row + size];
    let image_bytes = dataset.image_bytes();
    let mut views = vec![0.0f32; 2 * size * image_bytes];
    let (first, second) = views.split_at_mut(size * image_bytes);
    first
        .par_chunks_mut(image_bytes)
        .zip(second.par_chunks_mut(image_bytes))
        .enumerate()
        .for_each(|(i, (view1, view2))| {
            let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
            rng.set_stream((step * plan.batch_size + first_row + i) as u64);
            let image = dataset.image(indices[i]);
            augment.view(image, 0, &mut rng, view1);
            augment.view(image, 1, &mut rng, view2);
        });
    PairBatch {
        size,
        side: dataset.side,
        views,
    }
}

/// Batches `first_step..plan.steps` of an epoch, made ahead of time on a background thread.
pub struct PrefetchLoader {
    receiver: Option<Receiver<PairBatch>>,
    worker: Option<JoinHandle<()>>,
}

impl PrefetchLoader {
    pub fn spawn(
        dataset: Arc<ImageDataset>,
        augment: AugmentConfig,
        plan: EpochPlan,
        shard: Shard,
        first_step: usize,
        prefetch: usize,
    ) -> Self {
        let (sender, receiver) = sync_channel(prefetch);
        let worker = std::thread::spawn(move || {
            for step in first_step..plan.steps {
                let batch = make_shard(&dataset, &augment, &plan, step, shard);
                if sender.send(batch).is_err() {
                    return; // the trainer stopped early
                }
            }
        });
        Self {
            receiver: Some(receiver),
            worker: Some(worker),
        }
    }
}

impl Iterator for PrefetchLoader {
    type Item = PairBatch;

    fn next(&mut self) -> Option<PairBatch> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for PrefetchLoader {
    fn drop(&mut self) {
        self.receiver.take(); // unblocks the worker's send
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IMAGE_BYTES;

    fn dataset(n: usize) -> ImageDataset {
        let pixels: Vec<u8> = (0..n * IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
        ImageDataset::new(32, pixels, vec![0; n], vec!["x".into()])
    }

    #[test]
    fn plan_drops_the_partial_batch_and_caps_steps() {
        assert_eq!(EpochPlan::new(10, 4, 0, 1).steps, 2);
        assert_eq!(EpochPlan::new(100, 4, 3, 1).steps, 3);
        let plan = EpochPlan::new(10, 5, 0, 1);
        let mut seen: Vec<usize> = (0..2)
            .flat_map(|s| plan.batch_indices(s).to_vec())
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            (0..10).collect::<Vec<_>>(),
            "an epoch visits every image once"
        );
    }

    #[test]
    fn prefetched_batches_equal_direct_ones_and_resume_mid_epoch() {
        let data = Arc::new(dataset(12));
        let augment = AugmentConfig::default();
        let plan = EpochPlan::new(12, 4, 0, 9);
        let all: Vec<PairBatch> = PrefetchLoader::spawn(
            data.clone(),
            augment.clone(),
            plan.clone(),
            Shard::WHOLE,
            0,
            2,
        )
        .collect();
        assert_eq!(all.len(), 3);
        let direct = make_batch(&data, &augment, &plan, 2);
        assert_eq!(all[2].views, direct.views);
        let resumed: Vec<PairBatch> =
            PrefetchLoader::spawn(data, augment, plan, Shard::WHOLE, 2, 2).collect();
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].views, direct.views);
        assert_ne!(
            all[2].views[..IMAGE_BYTES],
            all[2].views[4 * IMAGE_BYTES..5 * IMAGE_BYTES]
        );
    }

    #[test]
    fn shards_of_a_batch_are_its_rows() {
        let data = dataset(12);
        let augment = AugmentConfig::default();
        let plan = EpochPlan::new(12, 6, 0, 4);
        let whole = make_batch(&data, &augment, &plan, 1);
        let half = 3 * IMAGE_BYTES;
        for rank in 0..2 {
            let shard = make_shard(&data, &augment, &plan, 1, Shard { rank, world: 2 });
            assert_eq!(shard.size, 3);
            let (first, second) = shard.views.split_at(half);
            let rows = rank * half..(rank + 1) * half;
            assert_eq!(
                first,
                &whole.views[rows.clone()],
                "first views of rank {rank}"
            );
            let second_rows = 2 * half + rows.start..2 * half + rows.end;
            assert_eq!(
                second, &whole.views[second_rows],
                "second views of rank {rank}"
            );
        }
    }

    #[test]
    fn dropping_the_loader_early_stops_the_worker() {
        let data = Arc::new(dataset(64));
        let mut loader = PrefetchLoader::spawn(
            data,
            AugmentConfig::default(),
            EpochPlan::new(64, 2, 0, 3),
            Shard::WHOLE,
            0,
            1,
        );
        assert!(loader.next().is_some());
        drop(loader); // must not hang
    }
}
