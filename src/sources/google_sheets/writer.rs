//! Writing back to the tabs of one spreadsheet, without ever leaving one person's data on
//! another person's row.
//!
//! A flush costs one read and one write. The read (`values.batchGet`) fetches, for each tab
//! involved, the header row, the key column and the columns being written, and locates each
//! record by key *then*; the write (`values.batchUpdate`) follows at once: both are paid for
//! from the budget before the read, so nothing waits in between.
//!
//! People sort and insert rows at any moment, so a row can still move between the read and the
//! write. The next read checks the previous write: every value recado wrote must be on its
//! record's row, and a value found on another record's row (or on a row without key) where that
//! record did not have it before is taken back (the earlier value, which the previous read
//! saw, is restored). Those repairs go out in the same write. So a value can sit on the wrong
//! row for at most one flush interval, and no value is lost.
//!
//! A write is capped (cells and bytes), a value longer than a cell may hold is cut, and when
//! Google refuses a batch for its content the refused value is isolated (Google names it as
//! `data[i]`, or a batch too large is halved until it is found), reported once and dropped,
//! while the rest is written: one bad value never blocks the others. Any other refusal (a range
//! Google cannot parse because a tab was renamed since the read, a malformed request) drops
//! nothing: the flush fails, is reported, and the queue waits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use super::a1;
use super::client::{Paid, RangeText, SheetsClient, TabMeta, WriteFailure};
use super::config::GoogleSheetsConfig;
use super::reader::{locator_row, TabHint};
use crate::domain::{FieldWrite, PendingWrite, WriteTarget};
use crate::sources::{find_field, SourceError, WriteReport};

/// Most cells one `values.batchUpdate` carries; more waits for the next flush.
pub const MAX_CELLS_PER_WRITE: usize = 10_000;
/// Most bytes of values one write carries (Google recommends requests under 2 MB).
pub const MAX_BYTES_PER_WRITE: usize = 1_500_000;
/// Longest value recado writes into a cell (Google's limit is 50,000 characters).
pub const MAX_CELL_CHARS: usize = 10_000;
/// Most write requests one flush may spend isolating refused values.
const MAX_WRITES_PER_FLUSH: usize = 12;

/// One configured tab this writer writes to.
pub struct TabTarget {
    pub cfg: Arc<GoogleSheetsConfig>,
    pub hint: Arc<TabHint>,
}

/// What a write put where, kept until the next read has checked it.
#[derive(Debug, Clone, Default)]
struct LastWrite {
    /// Per tab title.
    tabs: HashMap<String, TabWrite>,
}

#[derive(Debug, Clone, Default)]
struct TabWrite {
    /// (target, header, value) as written.
    written: Vec<(WriteTarget, String, String)>,
    /// What the read before the write saw in the written columns, by header.
    before: HashMap<String, Before>,
    /// The batch index of each entry of `written` (none for a repair), while writing.
    origins: Vec<Option<usize>>,
}

/// The write side of one spreadsheet's tabs.
pub struct SheetWriter {
    client: SheetsClient,
    tabs: Vec<TabTarget>,
    check: Mutex<Option<LastWrite>>,
    grid: tokio::sync::Mutex<Option<Vec<TabMeta>>>,
}

/// The first row (1-based sheet row) of each key of a tab, found by the key's hash: no copy
/// of a million keys, only a number a key. A key whose hash an earlier key already took is
/// kept whole apart, so two keys never share a row.
#[derive(Debug)]
struct FirstRows {
    by_hash: FxHashMap<u64, u32>,
    clashed: HashMap<String, u32>,
    hash: fn(&str) -> u64,
}

impl Default for FirstRows {
    fn default() -> Self {
        Self { by_hash: FxHashMap::default(), clashed: HashMap::new(), hash: key_hash }
    }
}

impl FirstRows {
    fn of(keys: &RangeText) -> Self {
        Self::hashed_by(keys, key_hash)
    }

    fn hashed_by(keys: &RangeText, hash: fn(&str) -> u64) -> Self {
        let mut rows = Self { hash, ..Self::default() };
        rows.by_hash.reserve(keys.rows());
        for i in 1..keys.rows() {
            let k = keys.first(i);
            if k.is_empty() {
                continue;
            }
            let row = i as u32 + 1;
            match rows.by_hash.entry(hash(k)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(row);
                }
                std::collections::hash_map::Entry::Occupied(o) => {
                    if keys.first(*o.get() as usize - 1) != k {
                        rows.clashed.entry(k.to_string()).or_insert(row);
                    }
                }
            }
        }
        rows
    }

    /// The first row of `key` in `keys` (the column these rows were found in).
    fn get(&self, keys: &RangeText, key: &str) -> Option<u32> {
        if let Some(row) = self.clashed.get(key) {
            return Some(*row);
        }
        self.by_hash.get(&(self.hash)(key)).copied().filter(|row| keys.first(*row as usize - 1) == key)
    }
}

fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    h.finish()
}

/// What a read saw in one column, kept for the next flush's check: the read's key column and
/// first rows (shared with the read, not copied) and the column itself.
#[derive(Debug, Clone)]
struct Before {
    keys: Arc<RangeText>,
    first_rows: Arc<FirstRows>,
    column: Option<Arc<RangeText>>,
}

impl Before {
    /// What the read saw in this column on `key`'s first row ("" when nothing).
    fn value_of(&self, key: &str) -> &str {
        match (self.first_rows.get(&self.keys, key), &self.column) {
            (Some(row), Some(column)) => column.first(row as usize - 1),
            _ => "",
        }
    }
}

/// One tab as the flush's read found it.
struct TabLayout {
    title: String,
    header: Vec<String>,
    /// Key column by row index (0 = the header row).
    keys: Arc<RangeText>,
    /// Columns read, by header name, values by row index.
    columns: HashMap<String, Arc<RangeText>>,
    /// First row of each key.
    first_rows: Arc<FirstRows>,
    /// Every row of the keys this flush writes to every copy of ([`TabLayout::index_copies`]).
    rows_of: HashMap<String, Vec<u32>>,
    /// Headers this write creates, after the existing ones.
    added: Vec<String>,
}

impl TabLayout {
    fn new(
        title: String,
        header: Vec<String>,
        keys: Arc<RangeText>,
        columns: HashMap<String, Arc<RangeText>>,
        first_rows: Arc<FirstRows>,
    ) -> Self {
        Self { title, header, keys, columns, first_rows, rows_of: HashMap::new(), added: Vec::new() }
    }

    /// Finds every row of these keys in one pass over the key column.
    fn index_copies<'a>(&mut self, keys: impl IntoIterator<Item = &'a str>) {
        // An empty key is no record's: it must never lead to the rows without key.
        let wanted: HashSet<&str> =
            keys.into_iter().map(str::trim).filter(|k| !k.is_empty() && !self.rows_of.contains_key(*k)).collect();
        if wanted.is_empty() {
            return;
        }
        for k in &wanted {
            self.rows_of.insert(k.to_string(), Vec::new());
        }
        for i in 1..self.keys.rows() {
            let k = self.keys.first(i);
            if wanted.contains(k) {
                if let Some(rows) = self.rows_of.get_mut(k) {
                    rows.push(i as u32 + 1);
                }
            }
        }
    }

    fn first_row(&self, key: &str) -> Option<u32> {
        self.first_rows.get(&self.keys, key)
    }

    /// Every row of `key`.
    fn every_row(&self, key: &str) -> Vec<u32> {
        if key.is_empty() {
            return Vec::new();
        }
        match self.rows_of.get(key) {
            Some(rows) => rows.clone(),
            // Not indexed: one pass for this key alone.
            None => (1..self.keys.rows()).filter(|i| self.keys.first(*i) == key).map(|i| i as u32 + 1).collect(),
        }
    }

    /// The column of a header, creating it after the last one if it is missing. Returns the
    /// index and whether it is new.
    fn column_for(&mut self, name: &str) -> (usize, bool) {
        if let Some(i) = find_field(&self.header, name) {
            return (i, false);
        }
        if let Some(j) = self.added.iter().position(|h| h == name) {
            return (self.header.len() + j, false);
        }
        self.added.push(name.to_string());
        (self.header.len() + self.added.len() - 1, true)
    }

    fn cell(&self, column: &str, row: u32) -> &str {
        self.columns.get(column).map(|c| c.first(row as usize - 1)).unwrap_or("")
    }

    fn key_at(&self, row: u32) -> &str {
        self.keys.first(row as usize - 1)
    }

    fn rows(&self, target: &WriteTarget) -> Vec<u32> {
        match target {
            WriteTarget::Record(k) | WriteTarget::NewRecord(k) | WriteTarget::Taken { record: k, .. } => {
                self.first_row(k.0.trim()).into_iter().collect()
            }
            WriteTarget::EveryCopyOf(k) => self.every_row(k.0.trim()),
            WriteTarget::Unkeyed(loc) => locator_row(loc)
                .filter(|r| (*r as usize) <= self.keys.rows().max(1) && self.key_at(*r).is_empty())
                .into_iter()
                .collect(),
            // A sheet keeps no interaction log (the engine queues none for it).
            WriteTarget::Interaction { .. } => Vec::new(),
        }
    }
}

/// Records a conversation adds, by tab and key: (column, value, batch index) of each field.
type NewRows = BTreeMap<String, BTreeMap<String, Vec<(usize, String, usize)>>>;

/// A cell to write and where it came from.
struct Cell {
    range: String,
    value: String,
    /// Index into the batch, or `None` for a repair or a new header.
    origin: Option<usize>,
}

impl SheetWriter {
    pub fn new(client: SheetsClient, tabs: Vec<TabTarget>) -> Self {
        Self { client, tabs, check: Mutex::new(None), grid: tokio::sync::Mutex::new(None) }
    }

    pub fn label(&self) -> String {
        format!("spreadsheet {}", self.client.spreadsheet_id())
    }

    pub fn source_ids(&self) -> Vec<String> {
        self.tabs.iter().map(|t| t.cfg.settings.id.clone()).collect()
    }

    pub fn flush_interval(&self) -> Duration {
        self.tabs.iter().map(|t| t.cfg.settings.flush_interval).min().unwrap_or(Duration::from_secs(2))
    }

    pub fn needs_check(&self) -> bool {
        self.check.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    fn tab_of(&self, source_id: &str) -> Option<&TabTarget> {
        self.tabs.iter().find(|t| t.cfg.settings.id == source_id)
    }

    fn tab_by_title(&self, title: &str) -> Option<&TabTarget> {
        self.tabs.iter().find(|t| t.cfg.tab == title)
    }

    pub async fn write(&self, batch: &[PendingWrite]) -> Result<WriteReport, SourceError> {
        let previous = self.check.lock().unwrap_or_else(PoisonError::into_inner).take();
        let result = self.write_checked(batch, previous.as_ref()).await;
        if result.is_err() && previous.is_some() {
            // Nothing was attempted (a failed write leaves its own check, which carries the
            // previous one's repairs): the previous write still has to be checked.
            let mut slot = self.check.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = previous;
            }
        }
        result
    }

    async fn write_checked(
        &self,
        batch: &[PendingWrite],
        previous: Option<&LastWrite>,
    ) -> Result<WriteReport, SourceError> {
        let mut report = WriteReport::default();
        let chosen = choose(batch);
        // Tabs and columns involved: this batch's, and the previous write's (to check it).
        let mut wanted: HashMap<String, HashSet<String>> = HashMap::new();
        for &i in &chosen {
            let w = &batch[i].write;
            match self.tab_of(&w.source_id) {
                Some(t) => {
                    wanted.entry(t.cfg.tab.clone()).or_default().insert(w.field.clone());
                }
                None => report.dropped.push(i),
            }
        }
        if let Some(prev) = previous {
            for (title, tw) in &prev.tabs {
                let set = wanted.entry(title.clone()).or_default();
                set.extend(tw.written.iter().map(|(_, f, _)| f.clone()));
            }
        }
        if wanted.is_empty() {
            return Ok(report);
        }
        // The read and the write are paid for together, before the read.
        self.client.budget().acquire(2).await;
        let mut layouts = self.read_layouts(&wanted, &mut report).await?;
        // Every row of the keys written to every copy of: one pass over each key column.
        let every_copy = chosen
            .iter()
            .map(|&i| &batch[i].write)
            .filter_map(|w| Some((&self.tab_of(&w.source_id)?.cfg.tab, &w.target)))
            .chain(previous.into_iter().flat_map(|p| {
                p.tabs.iter().flat_map(|(title, tw)| tw.written.iter().map(move |(t, _, _)| (title, t)))
            }));
        let mut copies: HashMap<&String, Vec<&str>> = HashMap::new();
        for (title, target) in every_copy {
            if let WriteTarget::EveryCopyOf(k) = target {
                copies.entry(title).or_default().push(k.0.as_str());
            }
        }
        for (title, keys) in copies {
            if let Some(layout) = layouts.get_mut(title) {
                layout.index_copies(keys);
            }
        }

        // The previous write, checked against what is there now.
        let mut repairs: Vec<FieldWrite> = Vec::new();
        if let Some(prev) = previous {
            for (title, tw) in &prev.tabs {
                if let (Some(layout), Some(tab)) = (layouts.get(title), self.tab_by_title(title)) {
                    repairs.extend(check_previous(layout, tw, &tab.cfg.settings.id, batch, &chosen));
                }
            }
            if !repairs.is_empty() {
                warn!(target_writer = %self.label(), repairs = repairs.len(), "values found on the wrong row after a write (the sheet changed during it): putting them back");
            }
        }

        // Resolve every value to a cell now.
        let mut cells: Vec<Cell> = Vec::new();
        // Records to add, by tab and key: (column, value, batch index) of each field.
        let mut new_rows: NewRows = BTreeMap::new();
        let mut written: HashMap<String, TabWrite> = HashMap::new();
        // Taken fields that hold a newer text: nothing to write, nothing left to do.
        let mut moot: Vec<usize> = Vec::new();
        let items = chosen.iter().map(|&i| (Some(i), &batch[i].write)).chain(repairs.iter().map(|r| (None, r)));
        for (origin, w) in items {
            let Some(tab) = self.tab_of(&w.source_id) else { continue };
            let Some(layout) = layouts.get_mut(&tab.cfg.tab) else { continue };
            if find_field(&layout.header, &tab.cfg.settings.key_field).is_none() {
                // The key column is gone: nothing can be located. Left queued.
                warn!(source = %tab.cfg.settings.id, "the key column '{}' is not in the header row: write-back waits", tab.cfg.settings.key_field);
                continue;
            }
            let (col, new) = layout.column_for(&w.field);
            if new {
                cells.push(Cell { range: a1::cell(&layout.title, col, 1), value: w.field.clone(), origin: None });
            }
            let mut rows = layout.rows(&w.target);
            if let WriteTarget::Taken { text, .. } = &w.target {
                // Emptied only while it still holds what recado took: a newer text stays.
                rows.retain(|r| layout.cell(&w.field, *r).trim() == text.trim());
                if rows.is_empty() {
                    if let Some(i) = origin {
                        debug!(source = %w.source_id, target = %w.target, "the field holds a newer text: left for the next read");
                        moot.push(i);
                    }
                    continue;
                }
            }
            if let (WriteTarget::NewRecord(key), true, Some(i)) = (&w.target, rows.is_empty(), origin) {
                // Not in the sheet yet: appended after the cells are written.
                let row = new_rows.entry(layout.title.clone()).or_default().entry(key.0.clone()).or_default();
                row.push((col, cut(&w.value), i));
                continue;
            }
            if rows.is_empty() {
                if let Some(i) = origin {
                    debug!(source = %w.source_id, target = %w.target, "record no longer there: write-back dropped");
                    report.dropped.push(i);
                }
                continue;
            }
            let value = cut(&w.value);
            for r in rows {
                cells.push(Cell { range: a1::cell(&layout.title, col, r), value: value.clone(), origin });
            }
            // A record added by an earlier flush is checked like any other (rows appended in
            // this flush are not: they were never in a row that could move). A taken field is
            // not checked: putting back a text found emptied could send a reply staff deleted
            // on purpose (an unwanted message), which is worse than the rare reply a sort in
            // the instant between this read and write would erase.
            if matches!(w.target, WriteTarget::Taken { .. }) {
                continue;
            }
            let tw = written.entry(layout.title.clone()).or_default();
            tw.written.push((w.target.clone(), w.field.clone(), value));
            tw.origins.push(origin);
        }
        // Before-values of the columns written, for the next check.
        for (title, tw) in written.iter_mut() {
            if let Some(layout) = layouts.get(title) {
                for (_, field, _) in &tw.written {
                    if tw.before.contains_key(field) {
                        continue;
                    }
                    let before = Before {
                        keys: Arc::clone(&layout.keys),
                        first_rows: Arc::clone(&layout.first_rows),
                        column: layout.columns.get(field).cloned(),
                    };
                    tw.before.insert(field.clone(), before);
                }
            }
        }
        self.grow_grid(&layouts).await?;

        let outcome = match self.write_cells(cells, &layouts, &mut report).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // A write that failed may still have landed (a timeout says nothing about
                // Google's side), on rows that moved since the read: check all of it next
                // time. It includes this round's repairs, so the previous write's check is
                // carried along.
                if written.values().any(|t| !t.written.is_empty()) {
                    for tw in written.values_mut() {
                        tw.origins.clear();
                    }
                    *self.check.lock().unwrap_or_else(PoisonError::into_inner) = Some(LastWrite { tabs: written });
                }
                return Err(e);
            }
        };
        report.done = outcome.complete();
        report.done.extend(moot);
        report.done.sort_unstable();
        if outcome.finished && !new_rows.is_empty() {
            self.append_new_rows(&layouts, new_rows, &mut report).await;
        }
        let done: HashSet<usize> = report.done.iter().copied().collect();
        for tw in written.values_mut() {
            let origins = std::mem::take(&mut tw.origins);
            let mut kept = kept_for_check(&origins, outcome.finished, &done).into_iter();
            tw.written.retain(|_| kept.next().unwrap_or(true));
        }
        report.rejected = outcome.rejected;
        report.repairs = repairs;
        for (title, layout) in &layouts {
            if let Some(tab) = self.tab_by_title(title) {
                if !layout.added.is_empty() {
                    let mut header = layout.header.clone();
                    header.extend(layout.added.iter().cloned());
                    tab.hint.set(header);
                }
            }
        }
        if written.values().any(|t| !t.written.is_empty()) {
            *self.check.lock().unwrap_or_else(PoisonError::into_inner) = Some(LastWrite { tabs: written });
        }
        Ok(report)
    }

    /// One `values.batchGet`: header, key column and wanted columns of each tab, at the
    /// positions the last read of the tab saw; read again once if columns moved since.
    async fn read_layouts(
        &self,
        wanted: &HashMap<String, HashSet<String>>,
        report: &mut WriteReport,
    ) -> Result<HashMap<String, TabLayout>, SourceError> {
        let mut hints: HashMap<String, Vec<String>> =
            wanted.keys().filter_map(|t| self.tab_by_title(t).map(|tab| (t.clone(), tab.hint.header()))).collect();
        for attempt in 0..2 {
            let mut ranges: Vec<String> = Vec::new();
            // (tab, column name, range index)
            let mut asked: Vec<(String, String, usize)> = Vec::new();
            let mut header_at: HashMap<String, usize> = HashMap::new();
            for (title, fields) in wanted {
                let Some(tab) = self.tab_by_title(title) else { continue };
                let hint = hints.get(title).cloned().unwrap_or_default();
                header_at.insert(title.clone(), ranges.len());
                ranges.push(format!("{}!1:1", a1::quote_tab(title)));
                let names = std::iter::once(tab.cfg.settings.key_field.clone()).chain(fields.iter().cloned());
                for name in names {
                    if let Some(i) = find_field(&hint, &name) {
                        let letters = a1::column_letters(i);
                        asked.push((title.clone(), name, ranges.len()));
                        ranges.push(format!("{}!{letters}:{letters}", a1::quote_tab(title)));
                    }
                }
            }
            let paid = if attempt == 0 { Paid::Already } else { Paid::Now };
            let mut values = self.client.batch_get(&ranges, paid).await?;
            report.reads += 1;
            let mut layouts = HashMap::new();
            let mut moved = false;
            for (title, at) in &header_at {
                let header: Vec<String> =
                    values.get(*at).map(|range| range.row(0).map(str::to_string).collect()).unwrap_or_default();
                let hint = hints.get(title).cloned().unwrap_or_default();
                let mut columns: HashMap<String, Arc<RangeText>> = HashMap::new();
                for (t, name, idx) in asked.iter().filter(|(t, _, _)| t == title) {
                    let _ = t;
                    // The column asked for must still be where the hint said.
                    let (Some(now), Some(before)) = (find_field(&header, name), find_field(&hint, name)) else {
                        continue;
                    };
                    if now != before {
                        moved = true;
                    }
                    let col = values.get_mut(*idx).map(std::mem::take).unwrap_or_default();
                    columns.insert(name.clone(), Arc::new(col));
                }
                // A wanted column that exists now but was not asked for (the hint was stale).
                let tab = self.tab_by_title(title);
                let names: Vec<String> = tab
                    .map(|t| {
                        std::iter::once(t.cfg.settings.key_field.clone()).chain(wanted[title].iter().cloned()).collect()
                    })
                    .unwrap_or_default();
                if names.iter().any(|n| find_field(&header, n).is_some() && !columns.contains_key(n)) {
                    moved = true;
                }
                let key_field = tab.map(|t| t.cfg.settings.key_field.clone()).unwrap_or_default();
                let keys = columns.get(&key_field).cloned().unwrap_or_default();
                // A million keys take a moment to index: off the async runtime.
                let first_rows = tokio::task::spawn_blocking({
                    let keys = Arc::clone(&keys);
                    move || FirstRows::of(&keys)
                })
                .await
                .map_err(|e| SourceError::Transient(format!("indexing the key column failed ({e})")))?;
                hints.insert(title.clone(), header.clone());
                layouts
                    .insert(title.clone(), TabLayout::new(title.clone(), header, keys, columns, Arc::new(first_rows)));
            }
            if !moved {
                for (title, header) in &hints {
                    if let Some(tab) = self.tab_by_title(title) {
                        tab.hint.set(header.clone());
                    }
                }
                return Ok(layouts);
            }
            debug!(writer = %self.label(), "columns moved since the last read: reading again");
        }
        Err(SourceError::Transient("the sheet's columns keep moving; write-back waits".into()))
    }

    /// Appends columns to tabs whose grid is too narrow for the headers this write creates:
    /// Google refuses writes outside a tab's grid. The grid is known from the reader, else
    /// asked once.
    async fn grow_grid(&self, layouts: &HashMap<String, TabLayout>) -> Result<(), SourceError> {
        for (title, layout) in layouts.iter().filter(|(_, l)| !l.added.is_empty()) {
            let Some(tab) = self.tab_by_title(title) else { continue };
            let needed = (layout.header.len() + layout.added.len()) as u64;
            let Some(grid) = self.grid_of(tab, title).await? else { continue };
            if needed > grid.columns {
                let more = needed - grid.columns;
                self.client.append_columns(grid.sheet_id, more).await?;
                debug!(tab = %title, columns = more, "grid widened for new write-back columns");
                tab.hint.set_grid(TabMeta { columns: needed, ..grid });
            }
        }
        Ok(())
    }

    /// A tab's grid (its id and size): known from the reader, else asked once.
    async fn grid_of(&self, tab: &TabTarget, title: &str) -> Result<Option<TabMeta>, SourceError> {
        if let Some(g) = tab.hint.grid() {
            return Ok(Some(g));
        }
        let mut cached = self.grid.lock().await;
        if cached.is_none() {
            *cached = Some(self.client.metadata().await?.tabs);
        }
        Ok(cached.as_ref().and_then(|g| g.iter().find(|t| t.title == title)).cloned())
    }

    /// Adds the records a conversation created, one `appendCells` per tab, each row with
    /// its key in the key column (the next flush finds it by that key, so a repeat after a
    /// lost answer updates instead of adding it twice). A tab whose append fails keeps its
    /// values queued.
    async fn append_new_rows(&self, layouts: &HashMap<String, TabLayout>, new_rows: NewRows, report: &mut WriteReport) {
        for (title, rows) in new_rows {
            let (Some(layout), Some(tab)) = (layouts.get(&title), self.tab_by_title(&title)) else { continue };
            let Some(key_col) = find_field(&layout.header, &tab.cfg.settings.key_field) else { continue };
            let mut values: Vec<Vec<String>> = Vec::new();
            let mut origins: Vec<usize> = Vec::new();
            for (key, fields) in rows {
                let width = fields.iter().map(|(c, _, _)| c + 1).max().unwrap_or(0).max(key_col + 1);
                let mut row = vec![String::new(); width];
                row[key_col] = key;
                for (col, value, origin) in fields {
                    row[col] = value;
                    origins.push(origin);
                }
                values.push(row);
            }
            let grid = match self.grid_of(tab, &title).await {
                Ok(Some(g)) => g,
                Ok(None) => continue,
                Err(e) => {
                    report.failed.get_or_insert(e);
                    continue;
                }
            };
            report.writes += 1;
            match self.client.append_rows(grid.sheet_id, &values).await {
                Ok(()) => report.done.extend(origins),
                Err(e) => {
                    warn!(writer = %self.label(), tab = %title, rows = values.len(), "new records wait for the next flush: {e}");
                    report.failed.get_or_insert(e);
                }
            }
        }
    }

    /// Writes the cells, isolating values Google refuses. Returns, per batch index, whether
    /// all its cells were written, and the refused indexes with the reason. Stops early (the
    /// rest stays queued) when Google is unavailable after part of the work was written.
    async fn write_cells(
        &self,
        cells: Vec<Cell>,
        layouts: &HashMap<String, TabLayout>,
        report: &mut WriteReport,
    ) -> Result<Written, SourceError> {
        let mut out = Written::default();
        for c in &cells {
            if let Some(i) = c.origin {
                *out.expected.entry(i).or_default() += 1;
            }
        }
        let mut work: Vec<Vec<Cell>> = vec![cells];
        let mut paid = Paid::Already;
        let mut grew = false;
        while let Some(chunk) = work.pop() {
            if chunk.is_empty() {
                continue;
            }
            if report.writes >= MAX_WRITES_PER_FLUSH {
                warn!(writer = %self.label(), "write-back split into many requests; the rest waits for the next flush");
                return Ok(out);
            }
            let pairs: Vec<(String, String)> = chunk.iter().map(|c| (c.range.clone(), c.value.clone())).collect();
            let outcome = self.client.batch_update(&pairs, paid).await;
            paid = Paid::Now;
            report.writes += 1;
            match outcome {
                Ok(()) => {
                    for c in &chunk {
                        if let Some(i) = c.origin {
                            *out.cells.entry(i).or_default() += 1;
                        }
                    }
                }
                Err(WriteFailure::Later(e)) if out.cells.is_empty() => return Err(e),
                Err(WriteFailure::Later(e)) => {
                    warn!(writer = %self.label(), "part of a write-back waits for the next flush: {e}");
                    return Ok(out);
                }
                Err(WriteFailure::Refused(body)) if body.is_grid_limit() && !grew => {
                    grew = true;
                    *self.grid.lock().await = None;
                    for t in &self.tabs {
                        t.hint.forget_grid();
                    }
                    warn!(writer = %self.label(), "Google says a write is outside the grid ({}): growing it", body.message);
                    self.grow_grid(layouts).await?;
                    work.push(chunk);
                }
                Err(WriteFailure::Refused(body)) if !body.is_about_content() => {
                    // Not this batch's values (a tab renamed since the read, a request recado
                    // got wrong): nothing is dropped; the flush fails, the queue stays, and the
                    // next flush reads the tabs again.
                    *self.grid.lock().await = None;
                    for t in &self.tabs {
                        t.hint.forget_grid();
                    }
                    let e = SourceError::Permanent(format!("values.batchUpdate: {}", body.describe()));
                    if out.cells.is_empty() {
                        return Err(e);
                    }
                    warn!(writer = %self.label(), "part of a write-back waits for the next flush: {e}");
                    return Ok(out);
                }
                Err(WriteFailure::Refused(body)) => {
                    let reason: String = body.message.chars().take(200).collect();
                    match body.data_index().filter(|i| *i < chunk.len()) {
                        Some(i) => {
                            let mut chunk = chunk;
                            let bad = chunk.remove(i);
                            refuse(&mut out.rejected, &mut chunk, &mut work, bad, &reason);
                            work.push(chunk);
                        }
                        // Too large as a whole: halved until it fits or the one value is found.
                        None if chunk.len() > 1 => {
                            let mut first = chunk;
                            let second = first.split_off(first.len() / 2);
                            work.push(second);
                            work.push(first);
                        }
                        None => {
                            let mut chunk = chunk;
                            let bad = chunk.remove(0);
                            refuse(&mut out.rejected, &mut chunk, &mut work, bad, &reason);
                        }
                    }
                }
            }
        }
        out.finished = true;
        Ok(out)
    }
}

/// What [`SheetWriter::write_cells`] managed.
#[derive(Debug, Default)]
struct Written {
    /// Cells each batch index has.
    expected: HashMap<usize, usize>,
    /// Cells of each batch index written.
    cells: HashMap<usize, usize>,
    rejected: Vec<(usize, String)>,
    /// Every chunk was tried (no early stop).
    finished: bool,
}

impl Written {
    /// Batch indexes whose every cell was written.
    fn complete(&self) -> Vec<usize> {
        let mut v: Vec<usize> =
            self.expected.iter().filter(|(i, n)| self.cells.get(i) == Some(n)).map(|(i, _)| *i).collect();
        v.sort_unstable();
        v
    }
}

/// Which written values the next flush checks. After a write that went through to the end,
/// the values that went out (a value refused for its content never landed anywhere). After
/// one that stopped part-way (a timeout, a 503, the request cap), every value attempted,
/// repairs included: any of them may have landed on rows that moved, and a repair that did
/// not go out must be tried again, so none may be forgotten.
fn kept_for_check(origins: &[Option<usize>], finished: bool, done: &HashSet<usize>) -> Vec<bool> {
    origins.iter().map(|o| !finished || o.is_none_or(|i| done.contains(&i))).collect()
}

/// Marks a refused cell's value as rejected, and takes the value's other cells (an
/// every-copy target) out of the work too.
fn refuse(rejected: &mut Vec<(usize, String)>, chunk: &mut Vec<Cell>, work: &mut [Vec<Cell>], bad: Cell, reason: &str) {
    match bad.origin {
        Some(i) => {
            if !rejected.iter().any(|(j, _)| *j == i) {
                rejected.push((i, reason.to_string()));
            }
            chunk.retain(|c| c.origin != Some(i));
            for w in work.iter_mut() {
                w.retain(|c| c.origin != Some(i));
            }
        }
        None => warn!("a repair or header write was refused by Google: {reason}"),
    }
}

/// Which queued writes this flush carries: oldest first, within the caps. The rest waits.
fn choose(batch: &[PendingWrite]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for (i, p) in batch.iter().enumerate() {
        let size = p.write.value.len().min(MAX_CELL_CHARS * 4) + p.write.field.len() + 32;
        if out.len() >= MAX_CELLS_PER_WRITE || (bytes + size > MAX_BYTES_PER_WRITE && !out.is_empty()) {
            break;
        }
        bytes += size;
        out.push(i);
    }
    out
}

/// A value cut to what a cell may hold, saying so.
fn cut(value: &str) -> String {
    if value.chars().count() <= MAX_CELL_CHARS {
        return value.to_string();
    }
    let mut s: String = value.chars().take(MAX_CELL_CHARS - 1).collect();
    s.push('…');
    s
}

/// The check of the previous write against the tab as it is now: values missing from their
/// record's row, and values that landed on another record's row (or a row without key).
fn check_previous(
    layout: &TabLayout,
    tw: &TabWrite,
    source_id: &str,
    batch: &[PendingWrite],
    chosen: &[usize],
) -> Vec<FieldWrite> {
    // Newer values queued now win over repairs.
    let newer: HashSet<(WriteTarget, String)> = chosen
        .iter()
        .map(|&i| &batch[i].write)
        .filter(|w| w.source_id == source_id)
        .map(|w| (w.target.clone(), w.field.to_lowercase()))
        .collect();
    let mut out: Vec<FieldWrite> = Vec::new();
    let mut seen: HashSet<(WriteTarget, String)> = HashSet::new();
    let mut push = |out: &mut Vec<FieldWrite>, target: WriteTarget, field: &str, value: String| {
        let id = (target.clone(), field.to_lowercase());
        if newer.contains(&id) || !seen.insert(id) {
            return;
        }
        out.push(FieldWrite { source_id: source_id.to_string(), target, field: field.to_string(), value });
    };
    // 1. Every value written must be on its record's rows. (A row without key is known only
    //    by its place, which a sort changes: it cannot be followed, only kept off others.)
    //    Per written (field, value): the keys whose rows may hold it, and whether rows without
    //    key may.
    let mut intended: HashMap<(String, String), (HashSet<String>, bool)> = HashMap::new();
    for (target, field, value) in &tw.written {
        let entry = intended.entry((field.clone(), value.clone())).or_default();
        let rows: Vec<u32> = match target {
            WriteTarget::Record(k) | WriteTarget::NewRecord(k) => {
                entry.0.insert(k.0.clone());
                layout.first_row(k.0.trim()).into_iter().collect()
            }
            WriteTarget::EveryCopyOf(k) => {
                entry.0.insert(k.0.clone());
                layout.every_row(k.0.trim())
            }
            WriteTarget::Unkeyed(_) => {
                entry.1 = true;
                Vec::new()
            }
            WriteTarget::Interaction { .. } | WriteTarget::Taken { .. } => Vec::new(),
        };
        if rows.iter().any(|r| layout.cell(field, *r) != value) {
            push(&mut out, target.clone(), field, value.clone());
        }
    }
    // 2. A written value on another record's row, where that record did not have it before.
    for ((field, value), (keys, unkeyed_may)) in &intended {
        let Some(column) = layout.columns.get(field) else { continue };
        // Google leaves out a column's trailing empty cells: an empty value written onto one
        // of the last rows is only seen by walking every row the key column has.
        for i in 1..column.rows().max(layout.keys.rows()) {
            let cell = column.first(i);
            if cell != value {
                continue;
            }
            let row = i as u32 + 1;
            let key = layout.key_at(row);
            if key.is_empty() {
                if !unkeyed_may {
                    push(&mut out, WriteTarget::Unkeyed(format!("row:{row}")), field, String::new());
                }
            } else if !keys.contains(key) && layout.first_row(key) == Some(row) {
                let before = tw.before.get(field).map(|b| b.value_of(key)).unwrap_or_default().to_string();
                if before != *value {
                    push(&mut out, WriteTarget::Record(crate::domain::RecordKey(key.to_string())), field, before);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RecordKey;

    /// A tab of keys and statuses, the status column cut after `status_rows` rows (Google
    /// leaves out trailing empty cells).
    fn layout_cut(rows: &[(&str, &str)], status_rows: usize) -> TabLayout {
        let keys = Arc::new(RangeText::from_rows(std::iter::once("ID").chain(rows.iter().map(|r| r.0)).map(|k| [k])));
        let status = RangeText::from_rows(
            std::iter::once("Estado").chain(rows.iter().map(|r| r.1)).take(status_rows).map(|k| [k]),
        );
        let columns =
            [("ID".to_string(), Arc::clone(&keys)), ("Estado".to_string(), Arc::new(status))].into_iter().collect();
        let first_rows = Arc::new(FirstRows::of(&keys));
        TabLayout::new("T".into(), vec!["ID".into(), "Estado".into()], keys, columns, first_rows)
    }

    fn layout(rows: &[(&str, &str)]) -> TabLayout {
        layout_cut(rows, rows.len() + 1)
    }

    /// What a read saw in the status column, by key.
    fn before(rows: &[(&str, &str)]) -> HashMap<String, Before> {
        let l = layout(rows);
        let b = Before { keys: l.keys, first_rows: l.first_rows, column: l.columns.get("Estado").cloned() };
        [("Estado".to_string(), b)].into_iter().collect()
    }

    fn rec(k: &str) -> WriteTarget {
        WriteTarget::Record(RecordKey(k.into()))
    }

    #[test]
    fn a_value_written_to_a_row_that_moved_is_put_back() {
        // We wrote "read" for 2 thinking it was on row 3; a sort had put 3 there. Now 2 lacks
        // its value and 3 has it, which 3 did not have before.
        let tw = TabWrite {
            written: vec![(rec("2"), "Estado".into(), "read".into())],
            before: before(&[("3", "sent")]),
            origins: Vec::new(),
        };
        let now = layout(&[("1", ""), ("3", "read"), ("2", "delivered")]);
        let repairs = check_previous(&now, &tw, "s", &[], &[]);
        let got: Vec<(String, String)> = repairs.iter().map(|r| (r.target.to_string(), r.value.clone())).collect();
        assert_eq!(got, vec![("record 2".into(), "read".into()), ("record 3".into(), "sent".into())]);
    }

    #[test]
    fn a_value_on_an_inserted_row_without_key_is_cleared() {
        let tw = TabWrite {
            written: vec![(rec("2"), "Estado".into(), "read".into())],
            before: HashMap::new(),
            origins: Vec::new(),
        };
        let now = layout(&[("", "read"), ("2", "read")]);
        let repairs = check_previous(&now, &tw, "s", &[], &[]);
        assert_eq!(repairs.len(), 1);
        assert_eq!(repairs[0].target, WriteTarget::Unkeyed("row:2".into()));
        assert_eq!(repairs[0].value, "");
    }

    #[test]
    fn nothing_to_repair_when_every_value_is_home() {
        let tw = TabWrite {
            written: vec![(rec("2"), "Estado".into(), "read".into())],
            before: before(&[("1", "read")]),
            origins: Vec::new(),
        };
        // 1 had "read" before: it is its own value, not ours.
        let now = layout(&[("2", "read"), ("1", "read")]);
        assert!(check_previous(&now, &tw, "s", &[], &[]).is_empty());
    }

    #[test]
    fn an_empty_value_on_the_last_row_is_found_although_google_leaves_it_out() {
        // We cleared 2's status; a sort had put 3 on that row, the last one, so the read of the
        // column stops before it.
        let tw = TabWrite {
            written: vec![(rec("2"), "Estado".into(), String::new())],
            before: before(&[("3", "read")]),
            origins: Vec::new(),
        };
        let now = layout_cut(&[("2", ""), ("1", "sent"), ("3", "")], 3);
        let repairs = check_previous(&now, &tw, "s", &[], &[]);
        let got: Vec<(String, String)> = repairs.iter().map(|r| (r.target.to_string(), r.value.clone())).collect();
        assert_eq!(got, vec![("record 3".into(), "read".into())]);
    }

    #[test]
    fn error_messages_for_every_copy_of_a_key_and_for_rows_without_key_are_checked_too() {
        let dup = "duplicate ID '7' in rows 2, 3";
        let nokey = "a record in row 4 has no ID";
        let tw = TabWrite {
            written: vec![
                (WriteTarget::EveryCopyOf(RecordKey("7".into())), "Estado".into(), dup.into()),
                (WriteTarget::Unkeyed("row:4".into()), "Estado".into(), nokey.into()),
            ],
            before: before(&[("1", "read")]),
            origins: Vec::new(),
        };
        // A sort moved 1 between the copies of 7 and the row without key to the end: one copy
        // of 7 lacks the message, 1 has it, and the row without key keeps its own.
        let now = layout(&[("7", dup), ("1", dup), ("7", ""), ("", nokey), ("9", nokey)]);
        let repairs = check_previous(&now, &tw, "s", &[], &[]);
        let mut got: Vec<(String, String)> = repairs.iter().map(|r| (r.target.to_string(), r.value.clone())).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("every record keyed 7".into(), dup.into()),
                ("record 1".into(), "read".into()),
                ("record 9".into(), String::new()),
            ]
        );
    }

    #[test]
    fn a_write_that_stopped_part_way_keeps_everything_for_the_check() {
        let origins = [Some(0), Some(1), None];
        let done: HashSet<usize> = [0].into_iter().collect();
        assert_eq!(kept_for_check(&origins, true, &done), vec![true, false, true], "1 was refused for its content");
        assert_eq!(kept_for_check(&origins, false, &done), vec![true, true, true], "1 and the repair may have landed");
    }

    /// Keys are found by their hash; two keys with the same hash keep their own rows.
    #[test]
    fn first_rows_are_found_by_hash_and_never_shared() {
        let keys = RangeText::from_rows([["ID"], ["a"], ["b"], [""], ["a"], ["c"]]);
        let rows = FirstRows::of(&keys);
        assert_eq!(rows.get(&keys, "a"), Some(2));
        assert_eq!(rows.get(&keys, "b"), Some(3));
        assert_eq!(rows.get(&keys, "c"), Some(6));
        assert_eq!(rows.get(&keys, "z"), None);
        assert_eq!(rows.get(&keys, ""), None);
        // Every key on one hash: each keeps its own first row, a missing key is still missing.
        let clashing = FirstRows::hashed_by(&keys, |_| 0);
        assert_eq!(clashing.get(&keys, "a"), Some(2));
        assert_eq!(clashing.get(&keys, "b"), Some(3));
        assert_eq!(clashing.get(&keys, "c"), Some(6));
        assert_eq!(clashing.get(&keys, "z"), None);
        assert_eq!(clashing.clashed.len(), 2);
    }

    #[test]
    fn every_copy_of_a_key_is_found_in_one_pass() {
        let mut l = layout(&[("7", ""), ("1", ""), ("7", ""), ("", "")]);
        l.index_copies(["7", " 1 "]);
        assert_eq!(l.every_row("7"), vec![2, 4]);
        assert_eq!(l.every_row("1"), vec![3]);
        // Not indexed: found all the same.
        assert_eq!(l.every_row("9"), Vec::<u32>::new());
        // No key is no record's: the rows without key are never every copy of it.
        l.index_copies(["", "  "]);
        assert_eq!(l.every_row(""), Vec::<u32>::new());
        assert_eq!(layout(&[("", ""), ("", "")]).every_row(""), Vec::<u32>::new());
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(MAX_CELL_CHARS + 10);
        let c = cut(&long);
        assert_eq!(c.chars().count(), MAX_CELL_CHARS);
        assert!(c.ends_with('…'));
    }
}
