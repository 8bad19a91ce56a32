//! Reading one tab: the Drive version probe, the spreadsheet's time zone, and the whole tab read
//! UNFORMATTED with dates as serial numbers, turned into records off the async runtime.
//!
//! Which columns hold dates is learnt from the cells' number formats (`DATE`, `DATE_TIME`,
//! `TIME`): a date a person typed is a date cell, read as a serial number, and must be shown as
//! a date in messages while the scheduling maths keep the serial. Only a column holding numbers
//! can hold dates; the formats of the first rows are asked for, and for a numeric column with no
//! number in those rows (a column filled only further down), the format of its first number.
//! What was learnt is kept until the header changes, ten minutes pass, or a column with no
//! known kind starts holding numbers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::a1;
use super::client::RowsPart;
use super::client::{SheetsClient, TabMeta};
use super::config::GoogleSheetsConfig;
use crate::domain::CellValue;
use crate::sources::{Probe, QuotaState, ReadRecords, SourceError, SourceRead, SourceSettings, TablePart, TableParts};

/// How often date columns are looked for again although the header did not change.
const FORMATS_MAX_AGE: Duration = Duration::from_secs(600);
/// Rows sampled for number formats.
const FORMAT_SAMPLE_ROWS: u32 = 50;

/// What the reader last saw of a tab (its header, its grid), shared with the writer of its
/// spreadsheet so a flush asks for the right columns first time and knows when the grid must
/// grow.
#[derive(Debug, Default)]
pub struct TabHint {
    header: Mutex<Vec<String>>,
    grid: Mutex<Option<TabMeta>>,
}

impl TabHint {
    pub fn header(&self) -> Vec<String> {
        self.header.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set(&self, header: Vec<String>) {
        *self.header.lock().unwrap_or_else(PoisonError::into_inner) = header;
    }

    pub fn grid(&self) -> Option<TabMeta> {
        self.grid.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_grid(&self, grid: TabMeta) {
        *self.grid.lock().unwrap_or_else(PoisonError::into_inner) = Some(grid);
    }

    pub fn forget_grid(&self) {
        *self.grid.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

struct Formats {
    header: Vec<String>,
    /// Per column: whether it holds dates; `None` while it has held no number to tell.
    kinds: Vec<Option<bool>>,
    at: Instant,
}

/// Number formats that mean a cell is a date, a date-time or a time of day.
fn is_date_format(kind: Option<&str>) -> bool {
    matches!(kind, Some("DATE" | "DATE_TIME" | "TIME"))
}

/// For each column, the first of `rows` (by position) holding a number.
fn first_numbers(rows: &[Vec<CellValue>], columns: usize) -> Vec<Option<usize>> {
    let mut first = vec![None; columns];
    let mut missing = columns;
    for (i, row) in rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate().take(columns) {
            if matches!(v, CellValue::Number(_)) && first[c].is_none() {
                first[c] = Some(i);
                missing -= 1;
            }
        }
        if missing == 0 {
            break;
        }
    }
    first
}

/// Data rows per part of a read: a part is turned into records, committed and let go before the
/// parts after it are (see [`TableParts`]).
const ROWS_PER_PART: usize = 2_000;

/// The read side of one configured tab.
pub struct TabReader {
    cfg: Arc<GoogleSheetsConfig>,
    client: SheetsClient,
    hint: Arc<TabHint>,
    dates: DateLookup,
}

impl TabReader {
    pub fn new(cfg: Arc<GoogleSheetsConfig>, client: SheetsClient, hint: Arc<TabHint>) -> Self {
        let dates = DateLookup { cfg: Arc::clone(&cfg), client: client.clone(), formats: Arc::default() };
        Self { cfg, client, hint, dates }
    }

    pub fn settings(&self) -> &SourceSettings {
        &self.cfg.settings
    }

    pub async fn probe(&self) -> Result<Probe, SourceError> {
        Ok(Probe { version: Some(self.client.drive_version().await?) })
    }

    /// The spreadsheet's time zone; also checks that the tab exists.
    pub async fn time_zone(&self) -> Result<String, SourceError> {
        let meta = self.client.metadata().await?;
        if let Some(t) = meta.tabs.iter().find(|t| t.title == self.cfg.tab) {
            self.hint.set_grid(t.clone());
        } else {
            let titles: Vec<&str> = meta.tabs.iter().map(|t| t.title.as_str()).collect();
            return Err(SourceError::Permanent(format!(
                "the spreadsheet has no tab '{}' (its tabs: {})",
                self.cfg.tab,
                titles.join(", ")
            )));
        }
        Ok(meta.time_zone)
    }

    pub fn quota(&self) -> QuotaState {
        self.client.budget().state()
    }

    /// The tab's header row as people see it (for `recado check --online`).
    pub async fn header(&self) -> Result<Vec<String>, SourceError> {
        let values = self.client.values(&format!("{}!1:1", a1::quote_tab(&self.cfg.tab))).await?;
        Ok(values.first().map(|r| r.iter().map(CellValue::canonical).collect()).unwrap_or_default())
    }

    /// Whether recado may write to the spreadsheet (it is shared as Editor, not Viewer).
    pub async fn can_write(&self) -> Result<bool, SourceError> {
        self.client.drive_can_edit().await
    }

    /// Who recado is at Google, for a refusal's message (the account to share with).
    pub fn access_hint(&self) -> String {
        format!("recado reads it as the service account {}", self.client.account().client_email())
    }

    /// The whole tab, its rows handed on in parts as Google's answer arrives: the header comes
    /// with the first part, and the date columns are known from it (a column whose first number
    /// comes later is looked up when it does).
    pub async fn read(&self) -> Result<SourceRead, SourceError> {
        let mut arriving = self.client.values_in_parts(&a1::quote_tab(&self.cfg.tab), ROWS_PER_PART).await?;
        let stopped = || SourceError::Transient("values.get: the answer stopped before its end".into());
        let (mut rows, ended) = match arriving.recv().await {
            Some(Ok(RowsPart::Rows(rows))) => (rows, false),
            Some(Ok(RowsPart::End)) => (Vec::new(), true),
            Some(Err(e)) => return Err(e),
            None => return Err(stopped()),
        };
        let header: Vec<String> =
            if rows.is_empty() { Vec::new() } else { rows.remove(0).iter().map(CellValue::canonical).collect() };
        self.hint.set(header.clone());
        let mut kinds = self.dates.kinds(&header, &rows).await?;
        let dates = self.dates.clone();
        let (parts, out) = tokio::sync::mpsc::channel(2);
        let table_header = header.clone();
        tokio::spawn(async move {
            let mut next = Some(rows);
            let mut first = 0;
            let forwarded = async {
                loop {
                    let rows = match next.take() {
                        Some(rows) => rows,
                        None if ended => return Ok(()),
                        None => match arriving.recv().await {
                            Some(Ok(RowsPart::Rows(rows))) => rows,
                            Some(Ok(RowsPart::End)) => return Ok(()),
                            Some(Err(e)) => return Err(e),
                            None => return Err(stopped()),
                        },
                    };
                    if first > 0 {
                        dates.learn(&header, &mut kinds, &rows, first).await?;
                    }
                    let n = rows.len();
                    let dates: Vec<bool> = kinds.iter().map(|k| k.unwrap_or(false)).collect();
                    // Every cell of the part is looked at: off the runtime.
                    let rows = tokio::task::spawn_blocking(move || {
                        rows.into_iter()
                            .map(|r| {
                                r.into_iter()
                                    .enumerate()
                                    .map(|(i, v)| cell_value(v, dates.get(i).copied().unwrap_or(false)))
                                    .collect()
                            })
                            .collect()
                    })
                    .await
                    .map_err(|e| SourceError::Transient(format!("converting the tab failed: {e}")))?;
                    if parts.send(Ok(TablePart::Rows { first, rows })).await.is_err() {
                        // Nobody reads on (the poll ended): the transfer stops with this.
                        return Ok(());
                    }
                    first += n;
                }
            };
            // The last word: the end (only once the answer was whole), or why not.
            let last = forwarded.await.map(|()| TablePart::End);
            let _ = parts.send(last).await;
        });
        Ok(SourceRead {
            records: ReadRecords::Parts(TableParts { header: table_header, locator: row_locator, parts: out }),
            // A tab is always read whole.
            complete: true,
            deleted: Vec::new(),
            version: None,
        })
    }
}

/// Learns which columns of a tab hold dates, from the number formats of its cells, and keeps
/// what it learnt for the reads after.
#[derive(Clone)]
struct DateLookup {
    cfg: Arc<GoogleSheetsConfig>,
    client: SheetsClient,
    formats: Arc<Mutex<Option<Formats>>>,
}

impl DateLookup {
    /// Per column of `header`: whether it holds dates (`None` while no number told), from the
    /// first data rows of a read.
    async fn kinds(&self, header: &[String], rows: &[Vec<CellValue>]) -> Result<Vec<Option<bool>>, SourceError> {
        let first = first_numbers(rows, header.len());
        let known = |f: &Formats| f.header == header && f.at.elapsed() < FORMATS_MAX_AGE;
        {
            let cached = self.formats.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(f) = cached.as_ref().filter(|f| known(f)) {
                // Still good unless a column of unknown kind now holds a number.
                if first.iter().zip(&f.kinds).all(|(n, k)| n.is_none() || k.is_some()) {
                    return Ok(f.kinds.clone());
                }
            }
        }
        let tab = a1::quote_tab(&self.cfg.tab);
        let sample_end = 1 + FORMAT_SAMPLE_ROWS as usize;
        let mut ranges = vec![format!("{tab}!2:{sample_end}")];
        // Numeric columns whose first number lies below the sample: that one cell (data row i
        // is sheet row i + 2).
        let mut singles: Vec<usize> = Vec::new();
        for (c, n) in first.iter().enumerate() {
            if let Some(i) = n.filter(|i| *i + 2 > sample_end) {
                singles.push(c);
                ranges.push(a1::cell(&self.cfg.tab, c, i as u32 + 2));
            }
        }
        let blocks = self.client.formats_of(&ranges).await?;
        let mut kinds: Vec<Option<bool>> = first.iter().map(|n| n.map(|_| false)).collect();
        if let Some(sample) = blocks.first() {
            for row in sample {
                for (c, kind) in row.iter().enumerate() {
                    if is_date_format(kind.as_deref()) {
                        if let Some(k) = kinds.get_mut(c) {
                            *k = Some(true);
                        }
                    }
                }
            }
        }
        for (c, block) in singles.iter().zip(blocks.iter().skip(1)) {
            let kind = block.first().and_then(|r| r.first()).and_then(|k| k.as_deref());
            if let Some(k) = kinds.get_mut(*c) {
                *k = Some(is_date_format(kind));
            }
        }
        *self.formats.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Formats { header: header.to_vec(), kinds: kinds.clone(), at: Instant::now() });
        Ok(kinds)
    }

    /// A later part of the read (its first row is data row `first`): the format of the first
    /// number of each column not known yet, in one request, and only if there is one.
    async fn learn(
        &self,
        header: &[String],
        kinds: &mut [Option<bool>],
        rows: &[Vec<CellValue>],
        first: usize,
    ) -> Result<(), SourceError> {
        let numbers = first_numbers(rows, header.len());
        let new: Vec<(usize, usize)> = numbers
            .iter()
            .enumerate()
            .filter(|(c, n)| n.is_some() && kinds.get(*c).is_some_and(Option::is_none))
            .filter_map(|(c, n)| n.map(|i| (c, first + i)))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let ranges: Vec<String> = new.iter().map(|&(c, i)| a1::cell(&self.cfg.tab, c, i as u32 + 2)).collect();
        let blocks = self.client.formats_of(&ranges).await?;
        for (&(c, _), block) in new.iter().zip(blocks.iter()) {
            let kind = block.first().and_then(|r| r.first()).and_then(|k| k.as_deref());
            if let Some(k) = kinds.get_mut(c) {
                *k = Some(is_date_format(kind));
            }
        }
        let mut cached = self.formats.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = cached.as_mut().filter(|f| f.header == header) {
            f.kinds = kinds.to_vec();
        }
        Ok(())
    }
}

/// The i-th data row is sheet row i + 2.
fn row_locator(i: usize) -> Option<String> {
    Some(format!("row:{}", i + 2))
}

/// The sheet row a locator names.
pub fn locator_row(locator: &str) -> Option<u32> {
    locator.strip_prefix("row:")?.parse().ok().filter(|n| *n >= 2)
}

fn cell_value(v: CellValue, date_column: bool) -> CellValue {
    match v {
        // Below 1 in a date column: a time of day (`TIME` cells).
        CellValue::Number(f) if date_column && f >= 0.0 => CellValue::Date(f),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_cells_become_dates_and_numbers_stay_numbers() {
        let n = CellValue::Number(46352.4375);
        assert_eq!(cell_value(n.clone(), true), CellValue::Date(46352.4375));
        assert_eq!(cell_value(n, false), CellValue::Number(46352.4375));
        assert_eq!(cell_value(CellValue::Text("23/11/2026".into()), true), CellValue::Text("23/11/2026".into()));
        assert_eq!(cell_value(CellValue::Number(-1.0), true), CellValue::Number(-1.0));
        assert_eq!(locator_row("row:7"), Some(7));
        assert_eq!(locator_row("row:1"), None, "the header row is never a record");
        assert_eq!(locator_row("7"), None);
    }
}
