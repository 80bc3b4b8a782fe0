use clap::Parser;

fn main() {
    let cli = trainer::cli::Cli::parse();
    match trainer::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}
