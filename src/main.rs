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
    let logs = tracing_subscriber::fmt().with_env_filter(log_filter(default)).with_writer(std::io::stderr);
    match cli.log_format {
        recado::cli::LogFormat::Text => logs.with_ansi(ansi).init(),
        recado::cli::LogFormat::Json => logs.json().with_current_span(false).init(),
    }
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

/// `RECADO_LOG` (or `default`), with the capped dependencies held at `info` at most: a cap
/// lowers what was asked for, never raises it (`RECADO_LOG=warn` keeps hyper at `warn`).
fn log_filter(default: &str) -> EnvFilter {
    let asked =
        std::env::var("RECADO_LOG").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string());
    EnvFilter::try_new(capped_directives(&asked)).unwrap_or_else(|e| {
        eprintln!("warning: RECADO_LOG is not a valid filter ({e}); using '{default}'");
        EnvFilter::new(default)
    })
}

/// The directives of `asked` with every capped dependency held at `info` or below.
fn capped_directives(asked: &str) -> String {
    let mut directives: Vec<String> =
        asked.split(',').map(str::trim).filter(|d| !d.is_empty()).map(String::from).collect();
    // The level that applies to targets nothing names (the bare `debug` of `debug,recado=trace`).
    let global = directives.iter().rev().find(|d| !d.contains('=')).and_then(|d| verbosity(d)).unwrap_or(0);
    for cap in CAPPED {
        let names = |d: &String| d.split('=').next().is_some_and(|t| t == *cap || t.starts_with(&format!("{cap}::")));
        let theirs: Vec<usize> = directives
            .iter()
            .filter(|d| names(d))
            .map(|d| d.split_once('=').and_then(|(_, l)| verbosity(l)).unwrap_or(global))
            .collect();
        let loudest = theirs.iter().copied().max().unwrap_or(global);
        if loudest > INFO {
            // A later directive for the same target wins: the cap comes last.
            directives.retain(|d| !names(d));
            directives.push(format!("{cap}=info"));
        }
    }
    directives.join(",")
}

const INFO: usize = 3;

/// How much a level lets through: off 0 … trace 5 (`None` for what is not a level).
fn verbosity(level: &str) -> Option<usize> {
    match level.trim().to_ascii_lowercase().as_str() {
        "off" => Some(0),
        "error" => Some(1),
        "warn" => Some(2),
        "info" => Some(INFO),
        "debug" => Some(4),
        "trace" => Some(5),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::capped_directives;

    #[test]
    fn caps_lower_what_is_asked_and_never_raise_it() {
        assert_eq!(capped_directives("warn"), "warn");
        assert_eq!(capped_directives("info,sqlx=warn"), "info,sqlx=warn");
        let debug = capped_directives("debug");
        assert!(debug.starts_with("debug,") && debug.contains("hyper=info") && debug.contains("sqlx=info"), "{debug}");
        let loud = capped_directives("info,hyper=trace,hyper::proto=debug");
        assert!(!loud.contains("trace") && !loud.contains("hyper::proto") && loud.contains("hyper=info"), "{loud}");
        assert!(!capped_directives("error,recado=debug").contains("hyper"));
    }
}
