//! The prefetching loader: a background thread builds batches of augmented views (the list of
//! `augment.views`: two views by default, or multi-crop groups of several sizes), spreading the
//! images of a batch over all cores (rayon), while the training step runs on the current one.
//!
//! Each image's views depend only on (epoch seed, position in the epoch), never on thread timing,
//! so a run is reproducible and a resumed epoch can skip straight to its next batch.

use crate::data::augment::{side_of, AugmentConfig, ViewParams};
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

/// The views of `size` images, grouped by side: each group holds `count` views of every image
/// (`count * size` rows, view-major: row `v * size + i` is the group's view `v` of image `i`),
/// planar f32 `3 x side x side` each, normalised. Two views of one size (the default) are one
/// group laid out as [`PairBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct ViewBatch {
    pub size: usize,
    pub groups: Vec<ViewGroup>,
}

/// Views of one side in a [`ViewBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct ViewGroup {
    pub side: usize,
    /// Views per image.
    pub count: usize,
    pub views: Vec<f32>,
}

impl ViewBatch {
    /// Views in all, per image.
    pub fn views_per_image(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// The groups as tensors on `device`.
    pub fn into_views<B: Backend>(self, device: &B::Device) -> Views<B> {
        let size = self.size;
        Views {
            images: size,
            groups: self
                .groups
                .into_iter()
                .map(|g| {
                    let shape = [g.count * size, 3, g.side, g.side];
                    Tensor::from_data(TensorData::new(g.views, shape), device)
                })
                .collect(),
        }
    }
}

impl From<PairBatch> for ViewBatch {
    fn from(pair: PairBatch) -> Self {
        Self {
            size: pair.size,
            groups: vec![ViewGroup {
                side: pair.side,
                count: 2,
                views: pair.views,
            }],
        }
    }
}

/// A batch of views on the device, grouped by side as [`ViewBatch`]: `groups[g]` is
/// `[count_g * images, 3, S_g, S_g]`, view-major.
#[derive(Debug, Clone)]
pub struct Views<B: Backend> {
    pub images: usize,
    pub groups: Vec<Tensor<B, 4>>,
}

impl<B: Backend> Views<B> {
    /// The two views of one size of a two-view method, `[2N, 3, S, S]` (first views, then
    /// second views). Panics otherwise: the config's validation refuses other view lists for
    /// such methods.
    pub fn two_views(self) -> Tensor<B, 4> {
        let rows: Vec<usize> = self.groups.iter().map(|g| g.dims()[0]).collect();
        assert!(
            rows == [2 * self.images],
            "a two-view method got views of {} images in groups of {rows:?} rows",
            self.images
        );
        self.groups.into_iter().next().expect("one group")
    }
}

/// A `[2N, 3, S, S]` tensor as the two views of N images (the two-view layout).
impl<B: Backend> From<Tensor<B, 4>> for Views<B> {
    fn from(pair: Tensor<B, 4>) -> Self {
        let rows = pair.dims()[0];
        assert!(
            rows % 2 == 0,
            "two views of each image: an even number of rows, got {rows}"
        );
        Self {
            images: rows / 2,
            groups: vec![pair],
        }
    }
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

/// Makes every view of `shard`'s rows of batch `step` of `plan` (the images' views depend only
/// on their position in the global batch).
pub fn make_views(
    dataset: &ImageDataset,
    augment: &AugmentConfig,
    plan: &EpochPlan,
    step: usize,
    shard: Shard,
) -> ViewBatch {
    let size = plan.batch_size / shard.world;
    let first_row = shard.rank * size;
    let indices = &plan.batch_indices(step)[first_row..first_row + size];
    let first_stream = (step * plan.batch_size + first_row) as u64;
    views_of(
        |i| dataset.image(indices[i]),
        size,
        dataset.side,
        augment,
        plan.seed,
        first_stream,
    )
}

/// Makes both views of batch `step` of `plan` (two views of one size).
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
    make_views(dataset, augment, plan, step, shard).into_pair()
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
    views_of(|i| images[i], images.len(), side, augment, seed, 0).into_pair()
}

/// Every view of `count` images of `side` pixels (`image_at(i)`, i < count), each image `i`
/// drawing its views' random choices, in order, from random stream `first_stream + i` of
/// `seed`; consecutive views of one side form a group.
fn views_of<'a>(
    image_at: impl Fn(usize) -> &'a [u8] + Sync,
    count: usize,
    side: usize,
    augment: &AugmentConfig,
    seed: u64,
    first_stream: u64,
) -> ViewBatch {
    let recipes = augment.view_recipes();
    // The random choices first (cheap, one stream per image), then the pixels in parallel.
    let params: Vec<Vec<ViewParams>> = (0..count)
        .into_par_iter()
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(first_stream + i as u64);
            recipes
                .iter()
                .map(|recipe| augment.sample(side, recipe, &mut rng))
                .collect()
        })
        .collect();
    let mut groups = Vec::new();
    let mut first_view = 0;
    while first_view < recipes.len() {
        let view_side = recipes[first_view].side_for(side);
        let views_in_group = recipes[first_view..]
            .iter()
            .take_while(|r| r.side_for(side) == view_side)
            .count();
        let view_len = 3 * view_side * view_side;
        let mut views = vec![0.0f32; views_in_group * count * view_len];
        views
            .par_chunks_mut(view_len.max(1))
            .enumerate()
            .for_each(|(row, out)| {
                let (view, image) = (first_view + row / count, row % count);
                params[image][view].apply(image_at(image), augment, out);
            });
        groups.push(ViewGroup {
            side: view_side,
            count: views_in_group,
            views,
        });
        first_view += views_in_group;
    }
    ViewBatch {
        size: count,
        groups,
    }
}

impl ViewBatch {
    /// The batch as two views of one size; panics for any other view list.
    pub fn into_pair(self) -> PairBatch {
        let [group] = <[ViewGroup; 1]>::try_from(self.groups)
            .unwrap_or_else(|g| panic!("two views of one size expected, got {} groups", g.len()));
        assert_eq!(group.count, 2, "two views of one size expected");
        PairBatch {
            size: self.size,
            side: group.side,
            views: group.views,
        }
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
    receiver: Option<Receiver<ViewBatch>>,
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
                let batch = make_views(&dataset, &augment, &plan, step, shard);
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
    type Item = ViewBatch;

    fn next(&mut self) -> Option<ViewBatch> {
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
        .map(ViewBatch::into_pair)
        .collect();
        assert_eq!(all.len(), 3);
        let direct = make_batch(&data, &augment, &plan, 2);
        assert_eq!(all[2].views, direct.views);
        let resumed: Vec<PairBatch> =
            PrefetchLoader::spawn(data, augment, plan, Shard::WHOLE, 2, 2)
                .map(ViewBatch::into_pair)
                .collect();
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

    /// A view list of two plain views is the two-view default, draw for draw; multi-crop adds
    /// a group per size, and its local views are drawn after the global ones, so the global
    /// views stay those of the two-view batch.
    #[test]
    fn view_lists_group_views_by_size_and_keep_the_two_view_draws() {
        use crate::data::augment::ViewSpec;
        let data = dataset(8);
        let plan = EpochPlan::new(8, 4, 0, 5);
        let two = make_batch(&data, &AugmentConfig::default(), &plan, 1);
        let spec = |count, size, scale| ViewSpec {
            count,
            size,
            crop_scale: scale,
            blur_prob: None,
            solarize_prob: None,
        };
        let listed = AugmentConfig {
            views: vec![spec(2, 0, None)],
            ..Default::default()
        };
        assert_eq!(make_batch(&data, &listed, &plan, 1).views, two.views);
        let multi_crop = AugmentConfig {
            views: vec![spec(2, 0, None), spec(3, 16, Some([0.05, 0.4]))],
            ..Default::default()
        };
        let batch = make_views(&data, &multi_crop, &plan, 1, Shard::WHOLE);
        assert_eq!(batch.views_per_image(), 5);
        let shapes: Vec<_> = batch
            .groups
            .iter()
            .map(|g| (g.side, g.count, g.views.len()))
            .collect();
        assert_eq!(
            shapes,
            [(32, 2, 2 * 4 * IMAGE_BYTES), (16, 3, 3 * 4 * 3 * 16 * 16)]
        );
        assert_eq!(batch.groups[0].views, two.views);
        let views = batch.into_views::<crate::backend::CpuBackend>(&Default::default());
        assert_eq!(views.groups[1].dims(), [12, 3, 16, 16]);
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
