//! Google Sheets as a source: one tab is one source; rows are records by a key column.
//!
//! * [`config`] — `type: google_sheets` in YAML and its validation.
//! * [`auth`] — the service account's JWT bearer grant (tokens cached, never logged).
//! * [`client`] — the Sheets and Drive calls, each paid from the [`budget`] and bounded by a
//!   timeout; [`errors`] classifies Google's answers (both its error shapes).
//! * [`reader`] — probe (Drive `version`: an unchanged sheet costs one request), time zone,
//!   and the tab read UNFORMATTED with dates as serials, converted off the runtime.
//! * [`writer`] — write-back for all tabs of one spreadsheet: one read and one write per flush,
//!   targets resolved by key at write time, checked afterwards and repaired.
//! * [`a1`] — A1 notation.
//!
//! Google's URLs, JSON, A1 ranges and error reasons appear nowhere outside this folder (and its
//! emulator twin in `sandbox/google`).

pub mod a1;
pub mod auth;
pub mod budget;
pub mod client;
pub mod config;
pub mod errors;
pub mod reader;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;

pub use budget::Budget;
pub use config::GoogleSheetsConfig;
pub use reader::{TabHint, TabReader};
pub use writer::{SheetWriter, TabTarget};

use auth::ServiceAccount;
use client::SheetsClient;

/// Drive requests a minute per service account (Drive's quota is separate from Sheets' and
/// hundreds of times larger; this only stops a runaway loop).
pub const DRIVE_REQUESTS_PER_MINUTE: u32 = 600;

/// The readers (one per tab, in the order given) and writers (one per spreadsheet) for a set of
/// Google Sheets sources. Tabs of one spreadsheet share a client; sources that use the same
/// service account share one Sheets request budget (Google's quota is per user), the smallest
/// any of them configures, and one Drive budget.
pub fn connect(
    configs: &[GoogleSheetsConfig],
    http: &reqwest::Client,
) -> Result<(Vec<TabReader>, Vec<SheetWriter>), String> {
    let mut budgets: HashMap<String, (Arc<Budget>, Arc<Budget>)> = HashMap::new();
    let mut per_account: HashMap<String, u32> = HashMap::new();
    for c in configs {
        let email = config::ServiceAccountKey::parse(c.service_account_key.expose())
            .map_err(|e| format!("source {}: {e}", c.settings.id))?
            .client_email;
        let rpm = per_account.entry(email).or_insert(c.requests_per_minute);
        *rpm = (*rpm).min(c.requests_per_minute);
    }
    let mut clients: HashMap<String, SheetsClient> = HashMap::new();
    let mut hints: Vec<Arc<TabHint>> = Vec::new();
    let mut readers = Vec::new();
    for c in configs {
        let timeout = configs
            .iter()
            .filter(|o| o.spreadsheet_id == c.spreadsheet_id)
            .map(|o| o.settings.call_timeout)
            .min()
            .unwrap_or(c.settings.call_timeout);
        let account = ServiceAccount::new(&c.service_account_key, http.clone(), timeout)
            .map_err(|e| format!("source {}: {e}", c.settings.id))?;
        let email = account.client_email().to_string();
        let budget = budgets
            .entry(email.clone())
            .or_insert_with(|| {
                let sheets = Arc::new(Budget::new(per_account.get(&email).copied().unwrap_or(50)));
                (sheets, Arc::new(Budget::new(DRIVE_REQUESTS_PER_MINUTE)))
            })
            .clone();
        let client = clients
            .entry(c.spreadsheet_id.clone())
            .or_insert_with(|| {
                let bases = (c.sheets_base_url.as_str(), c.drive_base_url.as_str());
                SheetsClient::new(http.clone(), account, bases, &c.spreadsheet_id, budget, timeout)
            })
            .clone();
        let hint = Arc::new(TabHint::default());
        hints.push(Arc::clone(&hint));
        readers.push(TabReader::new(Arc::new(c.clone()), client, hint));
    }
    let mut writers: Vec<SheetWriter> = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for c in configs {
        if done.contains(&c.spreadsheet_id.as_str()) {
            continue;
        }
        done.push(&c.spreadsheet_id);
        let tabs = configs
            .iter()
            .zip(&hints)
            .filter(|(o, _)| o.spreadsheet_id == c.spreadsheet_id)
            .map(|(o, h)| TabTarget { cfg: Arc::new(o.clone()), hint: Arc::clone(h) })
            .collect();
        if let Some(client) = clients.get(&c.spreadsheet_id) {
            writers.push(SheetWriter::new(client.clone(), tabs));
        }
    }
    Ok((readers, writers))
}
