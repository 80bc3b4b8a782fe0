//! What DINO and SwAV share: two global views then any local ones (multi-crop), a student that
//! scores every view against prototypes, a loss that predicts each global view's target from
//! every other view, and prototypes frozen for the first epochs.

use crate::backend::TrainBackend;
use crate::data::augment::ViewRecipe;
use crate::data::loader::Views;
use crate::model::{ModelConfig, SslModel};
use anyhow::{ensure, Result};
use burn::optim::GradientsParams;
use burn::prelude::*;

/// Rejects views that do not start with two global views of one size (`name`: the method's).
pub fn validate_global_views(name: &str, views: &[ViewRecipe]) -> Result<()> {
    ensure!(
        views.len() >= 2 && views[0].size == views[1].size,
        "{name} takes two global views of one size first, then any local views, but \
         [[augment.views]] gives views of sizes {:?}",
        views.iter().map(|v| v.size).collect::<Vec<_>>()
    );
    Ok(())
}

/// Rejects a network without a prototype layer of at least 2 prototypes (`title`: the method as
/// people write it, `name`: its `--method` name).
pub fn require_prototypes(title: &str, name: &str, model: &ModelConfig) -> Result<()> {
    ensure!(
        model.prototypes.is_some_and(|p| p.count >= 2),
        "{title} needs a prototype layer of at least 2 prototypes ([model.prototypes] count): \
         `--method {name}` sets the published one"
    );
    Ok(())
}

/// The student's projections `[V * n, d]` and prototype logits `[V * n, K]` of every view
/// (view-major), as the authors' `MultiCropWrapper`: each group of views of one size through
/// the encoder in one pass (its own BatchNorm statistics), the head over every view at once.
pub fn student_logits<B: TrainBackend>(
    model: &SslModel<B>,
    views: Views<B>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let features: Vec<_> = views
        .groups
        .into_iter()
        .map(|group| model.encoder.forward(group))
        .collect();
    let z = model.head.forward(Tensor::cat(features, 0));
    let prototypes = model
        .prototypes
        .as_ref()
        .expect("a prototype method's model has prototypes (checked with the config)");
    let logits = prototypes.forward(z.clone());
    (z, logits)
}

/// The mean over the `2 * (V - 1)` pairs of a global view `g` and another view `v` of the
/// cross-entropy `-sum_k targets_g log_probs_v`, each averaged over the images: `targets`
/// `[2N, K]` (the two global views), `log_probs` `[V * N, K]` (every view), view-major.
pub fn swapped_cross_entropy<B: Backend>(
    targets: Tensor<B, 2>,
    log_probs: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [rows, k] = log_probs.dims();
    let n = targets.dims()[0] / 2;
    let views = rows / n;
    let rows_of = |t: &Tensor<B, 2>, view: usize| t.clone().slice([view * n..(view + 1) * n, 0..k]);
    let mut terms = Vec::with_capacity(2 * (views - 1));
    for global in 0..2 {
        let target = rows_of(&targets, global);
        for view in (0..views).filter(|&v| v != global) {
            let cross_entropy = (target.clone() * rows_of(&log_probs, view))
                .sum_dim(1)
                .neg();
            terms.push(cross_entropy.mean());
        }
    }
    let count = terms.len() as f64;
    Tensor::cat(terms, 0).sum() / count
}

/// Drops the prototypes' gradients, so the optimizer leaves them as they are (the references'
/// `p.grad = None` in the first epochs).
pub fn freeze_prototypes<B: TrainBackend>(model: &SslModel<B>, grads: &mut GradientsParams) {
    if let Some(prototypes) = &model.prototypes {
        grads.remove::<B::InnerBackend, 2>(prototypes.weight_v.id);
        if let Some(g) = &prototypes.weight_g {
            grads.remove::<B::InnerBackend, 1>(g.id);
        }
    }
}
