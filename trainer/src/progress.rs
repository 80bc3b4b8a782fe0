//! Progress bars (indicatif). They draw only on a terminal, so logs and CI stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over optimizer steps: loss, image pairs per second and ETA.
pub fn steps_bar(total: u64, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} steps | {msg} | {elapsed_precise} < {eta_precise}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}

/// A bar over images (embedding for kNN, evaluation, export).
pub fn items_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({per_sec}, {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// A bar over downloaded bytes; a spinner when the size is unknown.
pub fn bytes_bar(total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "download [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// The run's expected duration from its first steps, said once when it is long: on two CPU
/// cores the full-width 100-epoch recipe takes days, which a user should learn in seconds,
/// not from the ETA of the first epoch. The first step (allocation, autotuning) is not timed.
pub struct DurationEstimate {
    first: Option<(std::time::Instant, usize)>,
    done: bool,
}

/// Steps timed before the estimate is made.
const TIMED_STEPS: usize = 5;

impl DurationEstimate {
    pub fn new() -> Self {
        Self {
            first: None,
            done: false,
        }
    }

    /// Called after each step (`step` steps done of `total`): once enough are timed, the
    /// seconds the remaining steps will take; `None` before and after that one answer.
    pub fn after_step(&mut self, step: usize, total: usize) -> Option<f64> {
        if self.done {
            return None;
        }
        let Some((since, from)) = self.first else {
            self.first = Some((std::time::Instant::now(), step));
            return None;
        };
        if step - from < TIMED_STEPS {
            return None;
        }
        self.done = true;
        let per_step = since.elapsed().as_secs_f64() / (step - from) as f64;
        Some(per_step * total.saturating_sub(step) as f64)
    }
}

impl Default for DurationEstimate {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds as a person says them: "3.5 days", "7.2 h", "12 min".
pub fn human_duration(seconds: f64) -> String {
    if seconds >= 2.0 * 86400.0 {
        format!("{:.1} days", seconds / 86400.0)
    } else if seconds >= 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.0} min", (seconds / 60.0).ceil())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_comes_once_after_the_timed_steps() {
        let mut estimate = DurationEstimate::new();
        assert_eq!(estimate.after_step(1, 100), None); // untimed first step
        for step in 2..=5 {
            assert_eq!(estimate.after_step(step, 100), None);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        let seconds = estimate
            .after_step(6, 100)
            .expect("an estimate after 5 timed steps");
        // 5 steps took at least 5 ms: 94 steps remain.
        assert!(seconds >= 94.0 * 0.001, "{seconds}");
        assert_eq!(estimate.after_step(7, 100), None);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(3.5 * 86400.0), "3.5 days");
        assert_eq!(human_duration(7.25 * 3600.0), "7.2 h");
        assert_eq!(human_duration(11.2 * 60.0), "12 min");
    }
}
