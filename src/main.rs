//! The `recado` binary: parses the command line, sets up logging, runs the command, and maps
//! the outcome to an exit code.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = recado::cli::Cli::parse();
    // The demo narrates on stdout; its logs are quieter unless asked for.
    let default = match cli.command {
        recado::cli::Command::Demo { .. } => "error",
        _ => "info",
    };
    let filter = EnvFilter::try_from_env("RECADO_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(recado::cli::execute(cli));
    std::process::exit(code);
}
