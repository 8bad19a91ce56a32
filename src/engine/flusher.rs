//! The write-back flusher: one loop per spreadsheet.
//!
//! Cells queued in the store (coalesced per cell: the latest value wins) are written in batches.
//! Each flush costs one read — the header row and the key column of every tab involved, in one
//! `values.batchGet` — to resolve keys to the rows they are on *now*, and one
//! `values.batchUpdate`. Row numbers from earlier reads are never trusted: people sort and
//! insert rows. Missing write-back headers are added to the header row in the same write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{debug, error, info, warn};

use super::{EngineCtx, Shutdown};
use crate::config::GoogleSheetsConfig;
use crate::domain::CellValue;
use crate::sources::google_sheets::{a1, GoogleError, GoogleSheets};
use crate::store::{self, PendingWrite, WriteTarget};

/// What a flush did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub cells: usize,
    pub dropped: usize,
    pub reads: usize,
    pub writes: usize,
}

pub struct Flusher {
    /// The tabs (sources) of one spreadsheet.
    sources: Vec<GoogleSheetsConfig>,
    client: GoogleSheets,
    ctx: Arc<EngineCtx>,
    interval: Duration,
}

impl Flusher {
    pub fn new(sources: Vec<GoogleSheetsConfig>, client: GoogleSheets, ctx: Arc<EngineCtx>) -> Self {
        let interval = sources.iter().map(|s| s.flush_interval).min().unwrap_or(Duration::from_secs(2));
        Self { sources, client, ctx, interval }
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        info!(spreadsheet = %self.client.spreadsheet_id(), "write-back flusher started");
        let wakes: Vec<_> = self.sources.iter().filter_map(|s| self.ctx.flush_wake.get(&s.id).cloned()).collect();
        loop {
            let woken = async {
                match wakes.first() {
                    Some(w) => w.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = woken => {
                    // Let more updates arrive so one write carries them all.
                    tokio::time::sleep(self.interval.min(Duration::from_millis(200))).await;
                }
                _ = shutdown.wait() => break,
            }
            self.flush_logged().await;
        }
        // A last flush so nothing acknowledged waits for the next start.
        self.flush_logged().await;
        info!(spreadsheet = %self.client.spreadsheet_id(), "write-back flusher stopped");
    }

    async fn flush_logged(&self) {
        match self.flush_once().await {
            Ok(r) if r.cells > 0 || r.dropped > 0 => {
                debug!(spreadsheet = %self.client.spreadsheet_id(), ?r, "write-back flushed")
            }
            Ok(_) => {}
            Err(FlushError::Google(GoogleError::RateLimited(e))) => warn!("write-back delayed: {e}"),
            Err(e) => error!(spreadsheet = %self.client.spreadsheet_id(), "write-back failed, will retry: {e}"),
        }
    }

    /// Flushes everything queued for this spreadsheet.
    pub async fn flush_once(&self) -> Result<FlushReport, FlushError> {
        let mut pending: Vec<(usize, Vec<PendingWrite>)> = Vec::new();
        {
            let mut conn = self.ctx.store.conn().await.map_err(anyhow::Error::from)?;
            for (i, s) in self.sources.iter().enumerate() {
                let p = store::pending_writes(&mut conn, &s.id).await.map_err(anyhow::Error::from)?;
                if !p.is_empty() {
                    pending.push((i, p));
                }
            }
        }
        if pending.is_empty() {
            return Ok(FlushReport::default());
        }
        let mut report = FlushReport::default();

        // One read: header row + key column of each tab involved.
        let guesses: Vec<usize> = pending
            .iter()
            .map(|(i, _)| {
                self.ctx.key_columns.read().ok().and_then(|m| m.get(&self.sources[*i].id).copied()).unwrap_or(0)
            })
            .collect();
        let mut layouts = self.read_layouts(&pending, &guesses).await?;
        report.reads += 1;
        // Columns were moved since the poller looked: read again with the right key column.
        let corrected: Vec<usize> = layouts
            .iter()
            .zip(&pending)
            .map(|(l, (i, _))| l.header_index(&self.sources[*i].key_column).unwrap_or(0))
            .collect();
        if corrected != guesses
            && layouts.iter().zip(&pending).any(|(l, (i, _))| l.header_index(&self.sources[*i].key_column).is_some())
        {
            layouts = self.read_layouts(&pending, &corrected).await?;
            report.reads += 1;
        }

        let mut cells: Vec<(String, String)> = Vec::new();
        let mut done: Vec<PendingWrite> = Vec::new();
        for ((i, writes), layout) in pending.iter().zip(layouts.iter_mut()) {
            let src = &self.sources[*i];
            if layout.header_index(&src.key_column).is_none() {
                warn!(source = %src.id, "the key column '{}' is not in the header row: write-back waits", src.key_column);
                continue;
            }
            for w in writes {
                let col = layout.column_for(&w.write.column);
                if let Some((idx, name)) = col.new_header {
                    cells.push((a1::cell(&src.tab, idx, 1), name));
                }
                let rows: Vec<u32> = match &w.write.target {
                    WriteTarget::Record(k) => layout.rows_of(&k.0).into_iter().take(1).collect(),
                    WriteTarget::AllRowsWithKey(k) => layout.rows_of(&k.0),
                    WriteTarget::BlankKeyRow(n) => layout.is_blank(*n).then_some(*n).into_iter().collect(),
                };
                if rows.is_empty() {
                    debug!(source = %src.id, target = ?w.write.target, "row no longer there: write-back dropped");
                    report.dropped += 1;
                }
                for r in rows {
                    cells.push((a1::cell(&src.tab, col.index, r), w.write.value.clone()));
                    report.cells += 1;
                }
                done.push(w.clone());
            }
        }
        if !cells.is_empty() {
            self.client.batch_update(cells).await?;
            report.writes += 1;
        }
        let mut tx = self.ctx.store.begin().await.map_err(anyhow::Error::from)?;
        store::delete_writes(&mut tx, &done).await.map_err(anyhow::Error::from)?;
        tx.commit().await.map_err(anyhow::Error::from)?;
        Ok(report)
    }

    async fn read_layouts(
        &self,
        pending: &[(usize, Vec<PendingWrite>)],
        key_cols: &[usize],
    ) -> Result<Vec<Layout>, FlushError> {
        let mut ranges = Vec::new();
        for ((i, _), k) in pending.iter().zip(key_cols) {
            let tab = a1::quote_tab(&self.sources[*i].tab);
            let letters = a1::column_letters(*k);
            ranges.push(format!("{tab}!1:1"));
            ranges.push(format!("{tab}!{letters}:{letters}"));
        }
        let values = self.client.batch_get(&ranges).await?;
        let mut out = Vec::new();
        for pair in values.chunks(2) {
            let header: Vec<String> =
                pair.first().and_then(|rows| rows.first()).map(|r| r.iter().map(text).collect()).unwrap_or_default();
            let keys: Vec<String> = pair
                .get(1)
                .map(|rows| rows.iter().map(|r| r.first().map(text).unwrap_or_default()).collect())
                .unwrap_or_default();
            out.push(Layout::new(header, keys));
        }
        Ok(out)
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.as_f64().map(|f| CellValue::Number(f).canonical()).unwrap_or_default(),
        Value::Bool(b) => CellValue::Bool(*b).canonical(),
        _ => String::new(),
    }
}

/// Where things are in a tab right now.
struct Layout {
    header: Vec<String>,
    /// Key column values; index 0 is row 1 (the header).
    keys: Vec<String>,
    by_key: HashMap<String, Vec<u32>>,
    added_headers: Vec<String>,
}

struct ColumnRef {
    index: usize,
    /// A header to create in this write.
    new_header: Option<(usize, String)>,
}

impl Layout {
    fn new(header: Vec<String>, keys: Vec<String>) -> Self {
        let mut by_key: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, k) in keys.iter().enumerate().skip(1) {
            if !k.is_empty() {
                by_key.entry(k.clone()).or_default().push(i as u32 + 1);
            }
        }
        Self { header, keys, by_key, added_headers: Vec::new() }
    }

    fn header_index(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        self.header
            .iter()
            .position(|h| h.trim() == name)
            .or_else(|| self.header.iter().position(|h| h.trim().to_lowercase() == name.to_lowercase()))
    }

    fn column_for(&mut self, name: &str) -> ColumnRef {
        if let Some(i) = self.header_index(name) {
            return ColumnRef { index: i, new_header: None };
        }
        if let Some(j) = self.added_headers.iter().position(|h| h == name) {
            return ColumnRef { index: self.header.len() + j, new_header: None };
        }
        // Trailing empty header cells are trimmed by Google, so the first free column is here.
        self.added_headers.push(name.to_string());
        let index = self.header.len() + self.added_headers.len() - 1;
        ColumnRef { index, new_header: Some((index, name.to_string())) }
    }

    fn rows_of(&self, key: &str) -> Vec<u32> {
        self.by_key.get(key.trim()).cloned().unwrap_or_default()
    }

    fn is_blank(&self, row: u32) -> bool {
        row >= 2 && self.keys.get(row as usize - 1).is_none_or(|k| k.is_empty())
    }
}

/// Why a flush did not complete (nothing is lost: the queue stays).
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Google(#[from] GoogleError),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}
