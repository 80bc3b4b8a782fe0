use clap::Parser;

fn main() {
    let cli = trainer::cli::Cli::parse();
    // This thread joins the thread pool as one of its workers: the parallel parts of every
    // kernel it starts then run as jobs the other workers steal, where from outside the pool
    // each was handed over while this thread slept (two context switches per kernel).
    // Harmless when it fails (a pool already built): the default pool runs as before.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    match trainer::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}
