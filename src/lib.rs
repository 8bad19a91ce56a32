//! recado: watches Google Sheets, sends WhatsApp messages by rules, and writes delivery
//! receipts and replies back to the same row.
//!
//! Modules in reading order: the pure core first (`domain`, `diff`, `rules`, `config`), then
//! the state store, the vendor edges (`sources`, `providers`), the loops that connect them
//! (`engine`), the HTTP server, the sandbox emulators, and the wiring (`app`, `cli`, `demo`).
//! `ARCHITECTURE.md` has the map and the invariants.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diff;
pub mod domain;
pub mod engine;
pub mod http;
pub mod plan;
pub mod providers;
pub mod rules;
pub mod sandbox;
pub mod schedule;
pub mod sources;
pub mod store;
