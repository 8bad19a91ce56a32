//! recado: watches systems of record (Google Sheets today), sends WhatsApp messages by rules,
//! and writes delivery receipts and replies back to the same record.
//!
//! Modules in reading order, lowest layer first (no module depends on one below it in this
//! list): the pure core (`domain`, `schedule`, `diff`, `expressions`), configuration checks
//! (`validation`), conversations and the hand-off to a person (`flows`, `handoff`, pure too), the vendor edges (`sources`, `providers`: one folder per vendor, behind one
//! contract each), the assembled configuration (`config`), `rules`, the state `store`, the Prometheus
//! `metrics`, the loops that connect them (`engine`), the HTTP server, the sandbox emulators, the wiring (`app`), and
//! the commands (`plan`, `preflight`, `report`, `demo`, `cli`). `ARCHITECTURE.md` has the map and the invariants.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diff;
pub mod domain;
pub mod engine;
pub mod expressions;
pub mod flows;
pub mod handoff;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod preflight;
pub mod providers;
pub mod report;
pub mod rules;
pub mod sandbox;
pub mod schedule;
pub mod sources;
pub mod store;
pub mod systemd;
pub mod validation;
