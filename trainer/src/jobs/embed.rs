//! `trainer embed`: a checkpoint's encoder embeddings of dataset images, as a float32 `.npy` file
//! with a CSV of the images (names, labels) beside it.

use crate::backend::DeviceKind;
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct EmbedOptions {
    /// Checkpoint file, or a run directory / checkpoints directory (its latest checkpoint).
    #[cfg_attr(feature = "cli", arg(long))]
    pub checkpoint: PathBuf,
    /// Dataset, as `train --data` (default: the run's own); a folder of images works too.
    #[cfg_attr(feature = "cli", arg(long))]
    pub data: Option<String>,
    /// Which split to embed (data without labels: all its images).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = Split::Test))]
    pub split: Split,
    /// Embed only the first N images of the split (0 = all).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub limit: usize,
    /// Output file: float32 [N, 512] in NumPy .npy format, in dataset order; OUT with .csv
    /// in place of .npy lists each row's image (file name for image folders) and label.
    #[cfg_attr(feature = "cli", arg(long, default_value = "embeddings.npy"))]
    pub out: PathBuf,
    /// An unreadable image file is an error instead of a skipped file with a warning.
    #[cfg_attr(feature = "cli", arg(long))]
    pub strict_data: bool,
    /// Device: auto (CUDA, else a real GPU through wgpu, else the CPU), cpu, cuda, wgpu,
    /// ndarray, candle.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = DeviceKind::Auto))]
    pub device: DeviceKind,
    /// Images per forward pass.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 256))]
    pub batch_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Split {
    Train,
    Test,
}

/// `trainer embed` on the chosen backend.
pub struct EmbedJob {
    pub options: EmbedOptions,
}

impl crate::backend::BackendTask for EmbedJob {
    type Output = ();

    fn run<B: crate::backend::TrainBackend>(self, device: B::Device, _name: &str) -> Result<()> {
        use burn::module::AutodiffModule;
        let args = self.options;
        let ckpt = crate::checkpoint::Checkpoint::read(&args.checkpoint)?;
        let mut config = ckpt.config.clone();
        config.strict_data |= args.strict_data;
        let splits = config.load_data_for(args.data.as_deref())?;
        let (split, dataset) = match args.split {
            _ if !splits.has_labels() => ("all", splits.pretraining()),
            Split::Train => ("train", &splits.train),
            Split::Test => ("test", &splits.test),
        };
        if split == "all" {
            eprintln!(
                "{}: no labelled splits; embedding all its images",
                splits.origin
            );
        }
        let dataset = dataset.head(args.limit);
        let encoder = ckpt.model::<B>(&device)?.encoder.valid();
        let features = crate::eval::features::encode_dataset(
            &encoder,
            &dataset,
            &ckpt.config.augment,
            args.batch_size.max(1),
            &device,
            "embedding",
        );
        let [rows, cols] = features.dims();
        let values = onnx::values(features);
        crate::jobs::export::write_npy(&args.out, &values, rows, cols)?;
        let csv = args.out.with_extension("csv");
        crate::jobs::export::write_rows_csv(&csv, &dataset, split)?;
        println!(
            "wrote {} (float32 {rows} x {cols}) and {} (each row's image)",
            args.out.display(),
            csv.display()
        );
        Ok(())
    }
}
