//! Salesforce as a source: one object (`Cita__c`, `Contact`, …) is one source; records are
//! keyed by `Id` (or another field).
//!
//! * [`config`] — `type: salesforce` in YAML and its validation.
//! * [`client`] — one org's REST client: sign-in (JWT bearer or client credentials), a session
//!   renewed once on `INVALID_SESSION_ID`, timeouts, queries followed to `done`, API usage from
//!   `Sforce-Limit-Info`; [`errors`] classifies Salesforce's error arrays and SaveResults.
//! * [`reader`] — full read at start, then incremental reads on `SystemModstamp` with a
//!   watermark, an overlap and de-duplication; deletions from `getDeleted`; values converted
//!   (date-times to the source's time zone) off the runtime; polls spaced out above the
//!   configured share of the API allocation.
//! * [`writer`] — write-back through sObject Collections, record by record outcomes.
//!
//! Salesforce's URLs, JSON, SOQL and error codes appear nowhere outside this folder (and its
//! emulator twin in `sandbox/salesforce`).

pub mod client;
pub mod config;
pub mod errors;
pub mod reader;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;

pub use client::OrgClient;
pub use config::SalesforceConfig;
pub use reader::{ObjectHint, RecordReader};
pub use writer::RecordWriter;

/// The readers and writers (one each per configured object, in the order given). Sources of
/// one org and user share one client: one session, one view of the org's API usage.
pub fn connect(
    configs: &[SalesforceConfig],
    http: &reqwest::Client,
) -> Result<(Vec<RecordReader>, Vec<RecordWriter>), String> {
    let mut clients: HashMap<String, OrgClient> = HashMap::new();
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for c in configs {
        let key = c.org_key();
        let client = match clients.get(&key) {
            Some(existing) => existing.clone(),
            None => {
                let timeout = configs
                    .iter()
                    .filter(|o| o.org_key() == key)
                    .map(|o| o.settings.call_timeout)
                    .min()
                    .unwrap_or(c.settings.call_timeout);
                let client =
                    OrgClient::new(c, http.clone(), timeout).map_err(|e| format!("source {}: {e}", c.settings.id))?;
                clients.insert(key, client.clone());
                client
            }
        };
        let cfg = Arc::new(c.clone());
        let hint = Arc::new(ObjectHint::default());
        readers.push(RecordReader::new(Arc::clone(&cfg), client.clone(), Arc::clone(&hint)));
        writers.push(RecordWriter::new(cfg, client, hint));
    }
    Ok((readers, writers))
}
