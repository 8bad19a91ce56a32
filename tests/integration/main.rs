//! The integration tests: the real daemon against the sandbox emulators over loopback HTTP,
//! with a real SQLite file. One binary; modules by theme.

mod harness;

mod boundaries;
mod cli;

mod config_files;
mod conversations;
mod delivery;
mod economy;
mod handoff;
mod health;
mod rows;
mod salesforce;
mod time;
mod webhooks;
