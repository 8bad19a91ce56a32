//! The command line: `run`, `check`, `plan`, `report`, `contact`, `forget`, `sandbox`, `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::sandbox::{MetaSettings, Sandbox};

#[derive(Debug, Parser)]
#[command(
    name = "recado",
    version,
    // `recado --help` and `recado COMMAND --help`; no `help` command (it has no page of its own).
    disable_help_subcommand = true,
    about = "Google Sheets ⇄ WhatsApp: messages by rules, receipts and replies written back to the row"
)]
pub struct Cli {
    /// How logs are written to stderr: `text` (for people; colours only on a terminal) or
    /// `json` (one object per event, with its fields, for a log collector).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `recado schema --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaFormat {
    /// JSON Schema 2020-12.
    Json,
    /// The reference page, `docs/configuration.md`.
    Markdown,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (until SIGTERM or Ctrl-C).
    Run {
        /// Configuration files; later ones override earlier ones.
        #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
        config: Vec<PathBuf>,
    },
    /// Validate configuration and report every problem with its path; with --online, also
    /// reach every source and provider as the daemon will (access, every field the
    /// configuration names, credentials, and every template: exists, approved, language,
    /// parameters).
    Check {
        /// Configuration files (YAML); later ones override earlier ones.
        #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
        config: Vec<PathBuf>,
        /// Also ask the live services (reads only; nothing is written or sent).
        #[arg(long)]
        online: bool,
    },
    /// Show what would be sent now and in the next days, and why some records get nothing,
    /// without sending and without changing the state.
    Plan {
        /// Configuration files (YAML); later ones override earlier ones.
        #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
        config: Vec<PathBuf>,
        /// How many days ahead.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Only this rule.
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, value_enum, default_value_t = crate::plan::Format::Table)]
        format: crate::plan::Format,
    },
    /// Erase recado's copy of one person's personal data (messages, replies, answers,
    /// conversations, the contact); if they had opted out, keep only a keyed hash of their
    /// number so nothing is sent to it again. Records in the sources are not touched.
    Forget {
        /// Configuration files (YAML); later ones override earlier ones.
        #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
        config: Vec<PathBuf>,
        /// The person's phone number, in any common format.
        phone: String,
        /// The country of a number written without its country code.
        #[arg(long, default_value = "CL")]
        region: String,
    },
    /// Each rule's funnel (queued, sent, delivered, read, replied, failed, skipped), read from
    /// the state store; safe while the daemon runs.
    Report {
        /// Configuration files (YAML); later ones override earlier ones.
        #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
        config: Vec<PathBuf>,
        /// Only this rule (`flow:<id>` for a conversation's messages).
        #[arg(long)]
        rule: Option<String>,
        /// Messages created since: a duration back from now (`7d`, `12h`) or a date
        /// (`2026-11-01`, UTC). Default: all.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum, default_value_t = crate::report::Format::Table)]
        format: crate::report::Format,
    },
    /// One person's history: messages and their states, what they wrote, consent and opt-out.
    /// The number is masked unless --show-phone is given.
    Contact {
        /// Configuration files (YAML); later ones override earlier ones.
        #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
        config: Vec<PathBuf>,
        /// The person's phone number, in any common format.
        phone: String,
        /// The country of a number written without its country code.
        #[arg(long, default_value = "CL")]
        region: String,
        /// Print the number in full.
        #[arg(long)]
        show_phone: bool,
    },
    /// Serve the Google, Salesforce, Meta and Twilio emulators and print their base URLs. With
    /// --config, rehearse that configuration: write a copy of it pointed at the sandbox (in
    /// --out), seed its sheets, register its templates and point the webhooks at the daemon,
    /// so `recado run --config <out>/recado.yaml` works at once.
    Sandbox {
        #[arg(long, default_value = "127.0.0.1:8790")]
        listen: SocketAddr,
        /// The configuration to rehearse (files as `recado run` takes them).
        #[arg(long = "config", short = 'c', num_args = 1..)]
        config: Vec<PathBuf>,
        /// Rows for a sheet source, as `SOURCE=FILE.csv` (or `FILE.csv` when there is one
        /// sheet source); its first line is the header. Default: a few example rows under the
        /// headers the configuration names.
        #[arg(long, requires = "config")]
        seed: Vec<String>,
        /// Where the rehearsal copy, its state file and its Google key are written.
        #[arg(long, default_value = "recado-rehearsal", requires = "config")]
        out: PathBuf,
    },
    /// Print the configuration's JSON Schema (for editors: `# yaml-language-server: $schema=…`)
    /// or the configuration reference made from it.
    Schema {
        #[arg(long, value_enum, default_value = "json")]
        format: SchemaFormat,
    },
    /// Print the completion script for a shell (e.g. `recado completions bash >
    /// /usr/share/bash-completion/completions/recado`).
    Completions { shell: clap_complete::Shell },
    /// Print a man page (roff): `recado man > recado.1`, or one command's, `recado man run >
    /// recado-run.1`; then `man ./recado.1`.
    Man {
        /// The command whose page to print (default: recado's own).
        command: Option<String>,
    },
    /// The whole loop against the sandbox, no accounts needed.
    Demo {
        /// Exit 0 once every expected message reached a final state and write-back was
        /// flushed; non-zero if that does not happen within --timeout.
        #[arg(long)]
        until_settled: bool,
        /// Seconds to wait for the demo to settle.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// The WhatsApp provider the demo's rules send through.
        #[arg(long, value_enum, default_value = "meta")]
        provider: crate::demo::DemoProvider,
        /// The story: `empleo` (a registration sheet), `salud` (appointments in Salesforce) or
        /// `municipio` (the bot and a survey answered in the chat).
        #[arg(long, value_enum, default_value = "empleo")]
        scenario: crate::demo::DemoScenario,
    },
}

/// Runs a command; returns the process exit code.
pub async fn execute(cli: Cli) -> i32 {
    match cli.command {
        Command::Check { config, online } => match load_checked(&config) {
            Ok(c) => {
                println!(
                    "configuration is valid: {} provider(s), {} source(s), {} rule(s)",
                    c.providers.len(),
                    c.sources.len(),
                    c.rules.len()
                );
                if !online {
                    return 0;
                }
                match crate::preflight::check_online(&c).await {
                    Ok(findings) if findings.is_empty() => {
                        println!("online: every source answered and has every field the configuration names; every provider took its credentials and has every template, approved, as the configuration sends it");
                        0
                    }
                    Ok(findings) => {
                        eprintln!("online check found {} problem(s):", findings.len());
                        for f in &findings {
                            eprintln!("  - {}: {}", f.subject, f.message);
                        }
                        1
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        1
                    }
                }
            }
            Err(errors) => {
                eprint!("{errors}");
                1
            }
        },
        Command::Run { config } => {
            // Refused as `recado check` refuses it: a rule that could never work is not run.
            let config = match load_checked(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprint!("{errors}");
                    return 1;
                }
            };
            match crate::app::run_until_signal(config).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        Command::Plan { config, days, rule, format } => {
            let Some(config) = load(&config) else {
                return 1;
            };
            if let Some(r) = &rule {
                if !config.rules.iter().any(|x| &x.id == r) {
                    eprintln!("error: no rule with id '{r}'");
                    return 1;
                }
            }
            match crate::plan::plan(&config, days, rule.as_deref(), chrono::Utc::now()).await {
                Ok(lines) => {
                    print!("{}", crate::plan::render(&lines, format));
                    0
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        Command::Forget { config, phone, region } => {
            let Some(config) = load(&config) else {
                return 1;
            };
            match forget(&config, &phone, &region).await {
                Ok(report) => {
                    print!("{report}");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        Command::Report { config, rule, since, format } => {
            let Some(config) = load(&config) else {
                return 1;
            };
            let since_ms = match since.as_deref().map(|s| crate::report::parse_since(s, chrono::Utc::now())) {
                None => 0,
                Some(Ok(ms)) => ms,
                Some(Err(e)) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            };
            match crate::report::funnels(&config, since_ms, rule.as_deref()).await {
                Ok(f) => {
                    print!("{}", crate::report::render(&f, format));
                    0
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        Command::Contact { config, phone, region, show_phone } => {
            let Some(config) = load(&config) else {
                return 1;
            };
            let number = match parse_phone(&phone, &region) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return 1;
                }
            };
            match crate::report::contact(&config, number.as_str()).await {
                Ok(h) => {
                    let now = chrono::Utc::now().timestamp_millis();
                    print!("{}", crate::report::render_contact(number.as_str(), &h, show_phone, now));
                    0
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        Command::Sandbox { listen, config, seed, out } => {
            let sandbox = match Sandbox::start(listen, MetaSettings::default()).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return 1;
                }
            };
            if !config.is_empty() {
                let seeds: Vec<(Option<String>, PathBuf)> = seed
                    .iter()
                    .map(|s| match s.split_once('=') {
                        Some((source, file)) => (Some(source.to_string()), PathBuf::from(file)),
                        None => (None, PathBuf::from(s)),
                    })
                    .collect();
                match crate::sandbox::rehearsal::prepare(&sandbox, &config, &out, &seeds) {
                    Ok(r) => {
                        println!("sandbox listening on {}; rehearsal ready:", sandbox.base_url());
                        for note in &r.notes {
                            println!("  {note}");
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        sandbox.stop().await;
                        return 1;
                    }
                }
                let _ = tokio::signal::ctrl_c().await;
                sandbox.stop().await;
                return 0;
            }
            let s = MetaSettings::default();
            println!("sandbox listening on {}", sandbox.base_url());
            println!("  admin API          {}/admin", sandbox.base_url());
            println!("  Google token URI   {}/google/token", sandbox.base_url());
            println!("  sheets_base_url    {}", sandbox.sheets_base_url());
            println!("  drive_base_url     {}", sandbox.drive_base_url());
            println!("  meta base_url      {}", sandbox.meta_base_url());
            println!(
                "  meta phone_number_id {}  access_token {}  app_secret {}",
                s.phone_number_id, s.access_token, s.app_secret
            );
            let t = crate::sandbox::TwilioSettings::default();
            println!("  twilio base_url    {}", sandbox.twilio_base_url());
            println!(
                "  twilio account_sid {}  auth_token {}  from {}  (templates: POST /admin/twilio/contents)",
                t.account_sid, t.auth_token, t.sender
            );
            let _ = tokio::signal::ctrl_c().await;
            sandbox.stop().await;
            0
        }
        Command::Schema { format } => {
            match format {
                SchemaFormat::Json => match serde_json::to_string_pretty(&crate::config::schema::schema()) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 1;
                    }
                },
                SchemaFormat::Markdown => print!("{}", crate::config::schema::markdown()),
            }
            0
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "recado", &mut std::io::stdout());
            0
        }
        Command::Man { command } => {
            let root = <Cli as clap::CommandFactory>::command();
            let page = match command {
                None => root,
                Some(name) => match root.find_subcommand(&name) {
                    // Named as its page is: recado-run(1).
                    // Titled as its page is, recado-run(1); its synopsis is `recado run`.
                    Some(sub) => sub.clone().display_name(format!("recado-{name}")).bin_name(format!("recado {name}")),
                    None => {
                        eprintln!("error: no command '{name}'");
                        return 1;
                    }
                },
            };
            let mut out = Vec::new();
            let man = clap_mangen::Man::new(page).source(format!("recado {}", env!("CARGO_PKG_VERSION")));
            if let Err(e) = man.render(&mut out) {
                eprintln!("error: {e}");
                return 1;
            }
            use std::io::Write;
            let _ = std::io::stdout().write_all(&out);
            0
        }
        Command::Demo { until_settled, timeout, provider, scenario } => {
            match crate::demo::run_scenario(scenario, provider, until_settled, Duration::from_secs(timeout)).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
    }
}

/// `recado forget`: erases what the state store holds about one number; returns the report.
pub async fn forget(config: &Config, phone: &str, region: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let number = parse_phone(phone, region)?;
    // A running daemon holds the snapshot and the phone index in memory: erasing its copy
    // under it would be undone, or half done. One at a time.
    let _lock = crate::store::StateLock::acquire(&config.state.path).map_err(|e| match e {
        crate::store::StoreError::Locked { .. } => anyhow::anyhow!(
            "{e}; recado forget needs the daemon stopped (systemctl stop recado; recado forget …; systemctl start recado)"
        ),
        other => anyhow::Error::new(other),
    })?;
    let store = crate::store::Store::open(&config.state.path)
        .await
        .with_context(|| format!("opening the state store {}", config.state.path.display()))?;
    let mut tx = store.begin().await?;
    let e = crate::store::forget_contact(&mut tx, number.as_str(), chrono::Utc::now().timestamp_millis()).await?;
    tx.commit().await?;
    store.close().await;
    let dir = config.state.media_dir();
    for id in &e.media_ids {
        // A file never fetched has no bytes.
        let _ = std::fs::remove_file(dir.join(id.to_string()));
    }
    let mut out = format!("erased what recado held about {}:\n", number.masked());
    out.push_str(&format!(
        "  {} message(s): number, content and errors erased (kept as bare rows so no rule sends them again)\n",
        e.messages
    ));
    out.push_str(&format!("  {} reply(ies) and answer(s)\n", e.replies));
    out.push_str(&format!("  {} conversation(s) in progress\n", e.conversations));
    out.push_str(&format!("  {} provider id(s) of the person\n", e.provider_ids));
    out.push_str(&format!("  {} raw webhook(s) that carried the number\n", e.raw_webhooks));
    out.push_str(&format!("  {} file(s) they sent\n", e.media_ids.len()));
    out.push_str(&format!(
        "  recado's copy of {} record(s) holding the number (read again when recado starts, not taken as news)\n",
        e.record_copies
    ));
    out.push_str(&format!(
        "  {} value(s) waiting to be written to those records, or to records their conversations were adding\n",
        e.queued_writes
    ));
    out.push_str(if e.contact {
        "  the contact (consent answer, language, 24-hour window)\n"
    } else {
        "  no contact was on record\n"
    });
    out.push_str(if e.opt_out_kept {
        "kept: their opt-out, as a keyed hash of the number (nothing will be sent to it)\n"
    } else {
        "kept: nothing\n"
    });
    out.push_str("not touched: their records in your sources (the sheet or Salesforce is yours to edit; a record that still holds the number is read again when recado starts)\n");
    Ok(out)
}

/// A number given on the command line, with `--region` for one written without its country code.
fn parse_phone(phone: &str, region: &str) -> anyhow::Result<crate::domain::PhoneNumber> {
    let region: phonenumber::country::Id =
        region.to_uppercase().parse().map_err(|_| anyhow::anyhow!("unknown country code '{region}' for --region"))?;
    crate::domain::PhoneNumber::parse(phone, region).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Loads the configuration, printing every problem when it is invalid.
fn load(paths: &[PathBuf]) -> Option<Config> {
    Config::load(paths).map_err(|errors| eprint!("{errors}")).ok()
}

/// The configuration, validated, and checked against what the compiled rules can tell.
fn load_checked(paths: &[PathBuf]) -> Result<Config, crate::config::ConfigErrors> {
    let config = Config::load(paths)?;
    let problems = crate::rules::config_problems(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(crate::config::ConfigErrors(problems))
    }
}
