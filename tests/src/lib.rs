//! Helpers shared by the end-to-end tests of every part: where the real CIFAR-10 images and
//! ONNX Runtime's shared library are on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `python3`, started so that no folder of the workspace can stand in for a package: from the
/// temporary directory, with `PYTHONSAFEPATH` (Python 3.11+) keeping the current directory off
/// `sys.path`. (From the repository root, `import onnx` finds the workspace's `onnx/` folder.)
pub fn python3() -> Command {
    let mut command = Command::new("python3");
    command
        .current_dir(std::env::temp_dir())
        .env("PYTHONSAFEPATH", "1");
    command
}

/// The trainer binary at `binary` (a test's `env!("CARGO_BIN_EXE_trainer")`), with an empty
/// download cache of its own, so no test ever reuses or fetches a user's CIFAR-10 download.
pub fn trainer_command(binary: &str) -> Command {
    let mut command = Command::new(binary);
    command.env(
        "SELFSUP_CACHE",
        std::env::temp_dir().join("selfsup-test-cache-empty"),
    );
    command
}

/// The shared CIFAR-10 images in the official binary layout: `$CIFAR10_BIN`, or converted once
/// into `target/cifar10` from `../shared/data/cifar10-jpeg.tar.gz` by `../shared/tools/cifar10-bin`
/// (needs Pillow).
pub fn cifar10_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("CIFAR10_BIN") {
        return PathBuf::from(dir);
    }
    let root = workspace_root();
    let out = root.join("target").join("cifar10");
    let status = python3()
        .arg(root.join("../shared/tools/cifar10-bin"))
        .arg(&out)
        .status()
        .expect("python3 runs ../shared/tools/cifar10-bin");
    assert!(
        status.success(),
        "could not prepare CIFAR-10 from ../shared (pip install pillow, or set CIFAR10_BIN)"
    );
    out.join("cifar-10-batches-bin")
}

/// ONNX Runtime's shared library: `$ORT_DYLIB_PATH`, or the one inside the `onnxruntime` Python
/// package (`pip install onnxruntime`).
pub fn onnxruntime_dylib() -> PathBuf {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(path);
    }
    let out = python3()
        .args([
            "-c",
            "import onnxruntime, os, glob; d = os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'); \
             print(sorted(glob.glob(os.path.join(d, 'libonnxruntime.so*')))[-1])",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "ONNX Runtime not found: pip install onnxruntime, or set ORT_DYLIB_PATH ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs the ONNX file at `path` in native ONNX Runtime on `n` square images (`[n, 3, S, S]`
/// floats, the side read from their count) fed to the input named `input`, and returns the shape and values of the output named
/// `output`. One environment serves the whole test process.
pub fn onnxruntime_run(
    path: &Path,
    input: &str,
    images: Vec<f32>,
    n: usize,
    output: &str,
) -> (Vec<i64>, Vec<f32>) {
    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        ort::init_from(onnxruntime_dylib())
            .expect("ONNX Runtime library loads")
            .with_telemetry(false)
            .build()
            .expect("ONNX Runtime environment")
    });
    let mut session = ort::session::Session::builder(env)
        .unwrap()
        .commit_from_file(path)
        .unwrap();
    let side = (images.len() / (3 * n.max(1))).isqrt();
    assert_eq!(images.len(), n * 3 * side * side, "{n} square RGB images");
    let tensor = ort::value::Tensor::from_array(([n, 3, side, side], images)).unwrap();
    let outputs = session.run(ort::inputs![input => tensor]).unwrap();
    let (shape, values) = outputs[output].try_extract_tensor::<f32>().unwrap();
    (shape.to_vec(), values.to_vec())
}

/// `|ours - reference| / |reference|` (L2 norms, in f64) of two equally long slices.
pub fn relative_l2(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let diff: f64 = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// Largest element-wise difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
