//! The `recado` binary: parses the command line, sets up logging, runs the command, and maps
//! the outcome to an exit code.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Dependencies whose debug and trace output can carry request headers, tokens or bodies: never
/// more than `info`, whatever `RECADO_LOG` asks for.
const CAPPED: &[&str] = &["hyper", "hyper_util", "h2", "reqwest", "rustls", "tower", "tower_http", "axum", "sqlx"];

fn main() {
    let cli = recado::cli::Cli::parse();
    // The demo narrates on stdout; its logs are quieter unless asked for.
    let default = match cli.command {
        recado::cli::Command::Demo { .. } => "error",
        _ => "info",
    };
    // Colours only for a person at a terminal; journald and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(log_filter(default)).with_ansi(ansi).with_writer(std::io::stderr).init();
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

/// `RECADO_LOG` (or `default`), with the capped dependencies held at `info`.
fn log_filter(default: &str) -> EnvFilter {
    let asked =
        std::env::var("RECADO_LOG").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string());
    let mut directives: Vec<String> =
        asked.split(',').map(str::trim).filter(|d| !d.is_empty()).map(String::from).collect();
    // A later directive for the same target wins: the caps come last.
    directives.retain(|d| {
        !CAPPED.iter().any(|c| d.split('=').next().is_some_and(|t| t == *c || t.starts_with(&format!("{c}::"))))
    });
    directives.extend(CAPPED.iter().map(|c| format!("{c}=info")));
    EnvFilter::try_new(directives.join(",")).unwrap_or_else(|e| {
        eprintln!("warning: RECADO_LOG is not a valid filter ({e}); using '{default}'");
        EnvFilter::new(default)
    })
}
