//! The prefetching loader: a background thread builds batches of two augmented views, spreading
//! the images of a batch over all cores (rayon), while the training step runs on the current one.
//!
//! Each image's views depend only on (epoch seed, position in the epoch), never on thread timing,
//! so a run is reproducible and a resumed epoch can skip straight to its next batch.

use crate::data::augment::{side_of, AugmentConfig};
use crate::data::ImageDataset;
use burn::prelude::*;
use burn::tensor::TensorData;
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
    let first_stream = (step * plan.batch_size + first_row) as u64;
    pairs_of(
        |i| dataset.image(indices[i]),
        size,
        dataset.side,
        augment,
        plan.seed,
        first_stream,
    )
}

/// Two augmented views of each of `images` (planar RGB bytes, `3 x side x side`, all the same
/// side): the batch a two-view method trains on, for any Burn model. Image `i` draws its views
/// from random stream `i` of `seed`, so the result does not depend on the number of threads.
///
/// ```
/// use burn::backend::Flex;
/// use trainer::{augment_pairs, AugmentConfig};
///
/// let images = vec![vec![128u8; 3 * 32 * 32]; 4];
/// let images: Vec<&[u8]> = images.iter().map(|i| i.as_slice()).collect();
/// let batch = augment_pairs(&images, &AugmentConfig::default(), 7);
/// let views = batch.into_tensor::<Flex>(&Default::default());
/// assert_eq!(views.dims(), [8, 3, 32, 32]); // first views of the 4 images, then second views
/// ```
pub fn augment_pairs(images: &[&[u8]], augment: &AugmentConfig, seed: u64) -> PairBatch {
    let side = images.first().map_or(0, |image| side_of(image.len()));
    for (i, image) in images.iter().enumerate() {
        assert_eq!(
            image.len(),
            3 * side * side,
            "augment_pairs: image {i} is not {side}x{side} like image 0"
        );
    }
    pairs_of(|i| images[i], images.len(), side, augment, seed, 0)
}

/// Both views of `count` images of `side` pixels (`image_at(i)`, i < count), each image `i`
/// from random stream `first_stream + i` of `seed`.
fn pairs_of<'a>(
    image_at: impl Fn(usize) -> &'a [u8] + Sync,
    count: usize,
    side: usize,
    augment: &AugmentConfig,
    seed: u64,
    first_stream: u64,
) -> PairBatch {
    let image_bytes = 3 * side * side;
    let mut views = vec![0.0f32; 2 * count * image_bytes];
    let (first, second) = views.split_at_mut(count * image_bytes);
    first
        .par_chunks_mut(image_bytes.max(1))
        .zip(second.par_chunks_mut(image_bytes.max(1)))
        .enumerate()
        .for_each(|(i, (view1, view2))| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(first_stream + i as u64);
            let image = image_at(i);
            augment.view(image, 0, &mut rng, view1);
            augment.view(image, 1, &mut rng, view2);
        });
    PairBatch {
        size: count,
        side,
        views,
    }
}

impl PairBatch {
    /// The views as one input tensor, `[2 * size, 3, side, side]`.
    pub fn into_tensor<B: Backend>(self, device: &B::Device) -> Tensor<B, 4> {
        let shape = [2 * self.size, 3, self.side, self.side];
        Tensor::from_data(TensorData::new(self.views, shape), device)
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
