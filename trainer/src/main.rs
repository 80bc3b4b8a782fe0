use clap::Parser;

/// mimalloc, with freed memory kept: a training step allocates and frees the same large buffers
/// (activations, im2col and Winograd tiles, gradients) every step. glibc's malloc hands blocks
/// over 32 MB back to the OS on free, and mimalloc by default after a second, so each step faulted
/// its buffers back in as fresh zeroed pages: ~200 MB a step at batch 32, 15 % of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (the sys crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the OS: the process keeps its peak, as PyTorch's caching
/// allocators do. `MIMALLOC_PURGE_DELAY=<ms>` in the environment still decides when set.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; called before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// The thread pool's size as rayon would choose it: `RAYON_NUM_THREADS`, else the cores this
/// process may run on (its affinity mask: `taskset`, mpirun's binding, a container's CPU set).
fn pool_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// With two threads or more, this thread joins the pool as one of its workers: the parallel
/// parts of every kernel it starts then run as jobs the other workers steal, where from outside
/// the pool each was handed over while this thread slept (two context switches per kernel).
/// With one thread it stays outside: the pool's only worker must be free to run the jobs of the
/// data loader's and the collective's threads while this thread waits on them (it would wait
/// forever as that worker: one core under `taskset`, Slurm or mpirun's default binding).
/// Harmless when it fails (a pool already built): the default pool runs as before.
fn build_thread_pool() {
    let threads = pool_threads();
    let builder = rayon::ThreadPoolBuilder::new().num_threads(threads);
    let builder = if threads > 1 {
        builder.use_current_thread()
    } else {
        builder
    };
    let _ = builder.build_global();
}

fn main() {
    keep_freed_memory();
    let cli = trainer::cli::Cli::parse();
    build_thread_pool();
    use trainer::distributed::mpi;
    match trainer::cli::run(cli) {
        Ok(code) => {
            // Every rank of an MPI job gets here after the same last exchange.
            mpi::finish();
            std::process::exit(code)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            if mpi::is_running() {
                // The other ranks may be waiting in an exchange: end the whole job now.
                mpi::abort(1);
            }
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the option number against a mimalloc upgrade that renumbers its options: 15 must
    /// still be the purge delay, whose default in mimalloc 3 is 1000 ms.
    #[test]
    fn option_15_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one integer option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            delay, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not the purge delay"
        );
    }
}
