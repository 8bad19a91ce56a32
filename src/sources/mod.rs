//! Sources: the systems of record recado watches, behind one contract.
//!
//! A source is a folder here (`google_sheets/`, …) with the same inner shape: its config and
//! validation, its client, its wire types and error classification, and its emulator twin
//! under `sandbox/`. Its vendor's URLs, JSON and error codes never leave the folder. The engine
//! sees two closed enums:
//!
//! * [`Source`] — one per configured source: [`Source::probe`] for change cheaply,
//!   [`Source::read`] its records (full or incremental), its time zone, its quota state.
//! * [`SourceWriter`] — one per write group (the tabs of one spreadsheet share one): resolves
//!   each [`WriteTarget`](crate::domain::WriteTarget) to wherever the record is *at write time*
//!   and writes a batch of field updates, checks afterwards that nothing landed on the wrong
//!   record, and says what to repair.
//!
//! Adding a vendor is a folder, one variant in each enum (and in `config::SourceConfig`), and
//! the wiring in `app.rs`.

pub mod google_sheets;
pub mod jwt;
mod records;
pub mod salesforce;

use std::time::Duration;

use serde::Deserialize;

pub use records::{
    find_field, phone_of, read_records, ColumnSpec, FirstRows, KeyLedger, RecordIssue, RecordsRead, RecordsReader,
    Table, PHONE_ISSUE,
};

use crate::domain::{CellValue, FieldWrite, PendingWrite, RecordKey};
use crate::expressions::DateStyle;
use crate::schedule::DateOrder;
use crate::validation::Problems;

/// What every source has, whatever its vendor: how records are keyed, where the phone and the
/// consent are, what recado writes back, and how often it looks.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub id: String,
    /// The field that identifies a record (a sheet column header, a Salesforce field).
    pub key_field: String,
    pub phone_field: String,
    /// Region for numbers written without a country code.
    pub default_region: phonenumber::country::Id,
    pub consent: Option<ConsentConfig>,
    /// A field holding each person's IANA time zone.
    pub time_zone_field: Option<String>,
    /// How text dates are written and how date fields are shown in messages.
    pub dates: DateStyle,
    pub poll_interval: Duration,
    pub flush_interval: Duration,
    pub first_start: FirstStart,
    /// A row is a person's record, found by their number in conversations (not so for a log
    /// of reports). Unset: yes, unless conversations add records to it (`save: {to: …}`).
    pub person_records: Option<bool>,
    pub write_back: WriteBackFields,
    /// The longest any one call to the vendor may take.
    pub call_timeout: Duration,
    /// Every message and reply about a record is also logged as an entry of its own
    /// ([`WriteTarget::Interaction`](crate::domain::WriteTarget::Interaction)).
    pub logs_interactions: bool,
}

/// Whether records that exist at first start count as added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStart {
    Baseline,
    ProcessExisting,
}

/// The consent field and what its values mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentConfig {
    pub field: String,
    /// Lower-cased.
    pub granted_values: Vec<String>,
    pub opted_out_value: String,
    /// Written when the person accepts the privacy notice or opts back in.
    pub granted_value: String,
}

impl ConsentConfig {
    pub fn is_granted(&self, value: &str) -> bool {
        let v = value.trim().to_lowercase();
        self.granted_values.contains(&v)
    }
}

/// The fields recado writes. `None` means "do not write this".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBackFields {
    pub status: Option<String>,
    pub status_at: Option<String>,
    pub error: Option<String>,
    pub last_reply: Option<String>,
    pub last_reply_at: Option<String>,
    /// Status fields rules of this source write instead of the source's (`rules[*].write_back`):
    /// recado's own, like the ones above, so never read as data.
    pub rule_fields: Vec<String>,
}

impl WriteBackFields {
    /// Every configured write-back field, the rules' own included.
    pub fn fields(&self) -> Vec<&str> {
        [&self.status, &self.status_at, &self.error, &self.last_reply, &self.last_reply_at]
            .into_iter()
            .filter_map(|c| c.as_deref())
            .chain(self.rule_fields.iter().map(String::as_str))
            .collect()
    }
}

/// `consent:` in any source's configuration, as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConsent {
    /// The consent field (a sheet column header, a Salesforce field).
    #[serde(alias = "field")]
    pub column: String,
    /// Values meaning yes (case-insensitive). Default: sí, si, yes, x, true, 1.
    #[serde(default)]
    pub granted_values: Option<Vec<String>>,
    /// Written to the consent field when the person opts out (default `BAJA`).
    #[serde(default)]
    pub opted_out_value: Option<String>,
    /// Written when the person accepts the privacy notice in the chat or opts back in
    /// (default: the first of `granted_values` as written, else `Sí`).
    #[serde(default)]
    pub granted_value: Option<String>,
}

/// `write_back:` in any source's configuration: each entry is a field; leave one out to not
/// write it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWriteBack {
    /// queued / sent / delivered / read / failed / skipped.
    pub status: Option<String>,
    /// When the status last changed, in the source's time zone.
    pub status_at: Option<String>,
    /// Why a message was not sent, or what is wrong with the record.
    pub error: Option<String>,
    /// The person's latest reply.
    pub last_reply: Option<String>,
    /// When it arrived.
    pub last_reply_at: Option<String>,
}

/// The source-neutral settings as written, whatever a vendor calls its fields.
pub struct RawSettings {
    pub id: String,
    pub key_field: (String, String),
    pub phone_field: (String, String),
    pub default_region: Option<String>,
    pub consent: Option<RawConsent>,
    pub time_zone_field: Option<String>,
    pub date_order: Option<String>,
    pub date_format: Option<String>,
    pub poll_interval: Option<String>,
    pub flush_interval: Option<String>,
    pub first_start: Option<String>,
    pub person_records: Option<bool>,
    pub write_back: Option<RawWriteBack>,
    pub call_timeout: Option<String>,
}

impl SourceSettings {
    /// Validates the source-neutral settings of the source at `path`. `key_field` and
    /// `phone_field` carry the vendor's name for the setting (`key_column`) and its value.
    pub fn validate(p: &mut Problems, path: &str, raw: RawSettings) -> SourceSettings {
        let (key_name, key_field) = raw.key_field;
        let (phone_name, phone_field) = raw.phone_field;
        p.non_empty(&format!("{path}.{key_name}"), &key_field);
        p.non_empty(&format!("{path}.{phone_name}"), &phone_field);
        let default_region = p.region(&format!("{path}.default_region"), raw.default_region.as_deref());
        let poll_interval = p.duration(
            &format!("{path}.poll_interval"),
            raw.poll_interval.as_deref(),
            Duration::from_secs(30),
            Duration::from_millis(50),
            Duration::from_secs(24 * 3600),
        );
        let flush_interval = p.duration(
            &format!("{path}.flush_interval"),
            raw.flush_interval.as_deref(),
            Duration::from_secs(2),
            Duration::from_millis(10),
            Duration::from_secs(3600),
        );
        let call_timeout = p.duration(
            &format!("{path}.call_timeout"),
            raw.call_timeout.as_deref(),
            Duration::from_secs(30),
            Duration::from_millis(100),
            Duration::from_secs(600),
        );
        let first_start = match raw.first_start.as_deref() {
            None | Some("baseline") => FirstStart::Baseline,
            Some("process_existing") => FirstStart::ProcessExisting,
            Some(other) => {
                p.push(format!("{path}.first_start"), format!("expected baseline or process_existing, got '{other}'"));
                FirstStart::Baseline
            }
        };
        let consent = raw.consent.map(|c| {
            p.non_empty(&format!("{path}.consent.column"), &c.column);
            let granted_value = c
                .granted_value
                .clone()
                .or_else(|| c.granted_values.as_ref().and_then(|v| v.first().cloned()))
                .unwrap_or_else(|| "Sí".into());
            ConsentConfig {
                granted_value,
                field: c.column,
                granted_values: c
                    .granted_values
                    .unwrap_or_else(|| ["sí", "si", "yes", "x", "true", "1"].map(String::from).to_vec())
                    .into_iter()
                    .map(|v| v.trim().to_lowercase())
                    .collect(),
                opted_out_value: c.opted_out_value.unwrap_or_else(|| "BAJA".into()),
            }
        });
        let write_back = raw
            .write_back
            .map(|w| WriteBackFields {
                status: w.status,
                status_at: w.status_at,
                error: w.error,
                last_reply: w.last_reply,
                last_reply_at: w.last_reply_at,
                rule_fields: Vec::new(),
            })
            .unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for f in write_back.fields() {
            if f.trim().is_empty() {
                p.push(format!("{path}.write_back"), "field names must not be empty");
            } else if !seen.insert(f.trim().to_lowercase()) {
                p.push(format!("{path}.write_back"), format!("'{f}' is used twice"));
            }
            let clash = |other: &str| !other.is_empty() && other.trim().to_lowercase() == f.trim().to_lowercase();
            if clash(&key_field) || clash(&phone_field) {
                p.push(
                    format!("{path}.write_back"),
                    format!("'{f}' is the key or phone field; recado must not overwrite it"),
                );
            }
            if consent.as_ref().is_some_and(|c| clash(&c.field)) {
                p.push(
                    format!("{path}.write_back"),
                    format!("'{f}' is the consent field; a person's consent is not a status"),
                );
            }
        }
        let order = match raw.date_order.as_deref().map(str::parse::<DateOrder>) {
            None => DateOrder::Dmy,
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                p.push(format!("{path}.date_order"), e);
                DateOrder::Dmy
            }
        };
        if let Some(f) = &raw.date_format {
            let bad = chrono::format::StrftimeItems::new(f).any(|i| matches!(i, chrono::format::Item::Error));
            if bad || f.trim().is_empty() {
                p.push(format!("{path}.date_format"), format!("expected a date format such as %d/%m/%Y, got '{f}'"));
            }
        }
        SourceSettings {
            id: raw.id,
            key_field,
            phone_field,
            default_region,
            consent,
            time_zone_field: raw.time_zone_field,
            dates: DateStyle { order, format: raw.date_format },
            poll_interval,
            flush_interval,
            first_start,
            person_records: raw.person_records,
            write_back,
            call_timeout,
            logs_interactions: false,
        }
    }
}

/// Why a call to a source did not work, classified so the engine knows what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The vendor's quota: a delay, never an error shown to users.
    #[error("quota exceeded, pausing {:.1} s: {detail}", pause.as_secs_f64())]
    RateLimited { detail: String, pause: Duration },
    /// Network trouble or a server error: try again later.
    #[error("unavailable, will retry: {0}")]
    Transient(String),
    /// The vendor did not answer in time.
    #[error("no answer to {what} within {} s", after.as_secs())]
    Timeout { what: String, after: Duration },
    /// The request itself is wrong (no such tab, bad field): needs a person.
    #[error("refused: {0}")]
    Permanent(String),
    /// recado's account may not do this (not shared, no permission, session refused): needs a
    /// person to give it access.
    #[error("refused access: {0}")]
    Denied(String),
    /// Fields rules need are not there; the source is paused until they are.
    #[error("fields missing: {}", .0.join(", "))]
    MissingFields(Vec<String>),
}

/// What a cheap look at a source says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// A token that moves whenever the source changes (Drive's file version); `None` when the
    /// source cannot tell, so every poll reads.
    pub version: Option<String>,
}

/// What a read should know besides the source's own settings.
#[derive(Debug, Clone, Default)]
pub struct ReadSpec {
    /// Fields rules cannot work without.
    pub required: Vec<String>,
    /// Other fields the configuration names (see [`ColumnSpec::referenced`]).
    pub referenced: Vec<String>,
}

/// A read of a source.
#[derive(Debug)]
pub struct SourceRead {
    /// Its records: converted by the source, or a table arriving in parts.
    pub records: ReadRecords,
    /// Every record is here (a full read): a key absent from it was removed. An incremental
    /// read says `false`, and removals come in `deleted`.
    pub complete: bool,
    pub deleted: Vec<RecordKey>,
    /// Where the next read continues from (a watermark), committed with this read's results
    /// and handed back to [`Source::read`]; `None` for sources that always read everything.
    pub version: Option<String>,
}

/// The records of a read.
#[derive(Debug)]
pub enum ReadRecords {
    /// Converted by the source, whole (its duplicates already settled).
    Whole(RecordsRead),
    /// A table whose rows arrive in parts while the source is still answering: the caller
    /// turns each part into records and lets it go, so a large read is never held whole.
    Parts(TableParts),
}

/// A table arriving in parts (see [`ReadRecords::Parts`]).
#[derive(Debug)]
pub struct TableParts {
    pub header: Vec<String>,
    /// Where the i-th data row of the table is, for a record without key.
    pub locator: fn(usize) -> Option<String>,
    /// The rows; [`TablePart::End`] once the whole table has arrived, so a stream that stops
    /// without it was cut short and is never taken for a shorter table.
    pub parts: tokio::sync::mpsc::Receiver<Result<TablePart, SourceError>>,
}

/// One part of a [`TableParts`].
#[derive(Debug)]
pub enum TablePart {
    /// Data rows, the first of which is the table's data row `first` (0-based).
    Rows {
        first: usize,
        rows: Vec<Vec<CellValue>>,
    },
    End,
}

impl TableParts {
    /// The reader that turns this table's rows into records, or the fields it lacks.
    pub fn reader(&self, settings: &SourceSettings, spec: &ReadSpec) -> Result<RecordsReader, SourceError> {
        records_reader(settings, spec, &self.header, self.locator).map_err(SourceError::MissingFields)
    }

    /// The next rows, with the row of the first; `None` once the table is whole.
    pub async fn next(&mut self) -> Result<Option<(usize, Vec<Vec<CellValue>>)>, SourceError> {
        match self.parts.recv().await {
            Some(Ok(TablePart::Rows { first, rows })) => Ok(Some((first, rows))),
            Some(Ok(TablePart::End)) => Ok(None),
            Some(Err(e)) => Err(e),
            None => Err(SourceError::Transient("the read stopped before the table's end".into())),
        }
    }
}

/// The reader of a source's table under `header` (its settings and what the configuration
/// names), or every field the configuration needs that the header lacks.
pub fn records_reader(
    settings: &SourceSettings,
    spec: &ReadSpec,
    header: &[String],
    locator: fn(usize) -> Option<String>,
) -> Result<RecordsReader, Vec<String>> {
    let write_back = settings.write_back.fields();
    let required: Vec<&str> = spec.required.iter().map(String::as_str).collect();
    let referenced: Vec<&str> = spec.referenced.iter().map(String::as_str).collect();
    let column_spec = ColumnSpec {
        key: &settings.key_field,
        phone: &settings.phone_field,
        write_back: &write_back,
        required: &required,
        referenced: &referenced,
        locator,
    };
    RecordsReader::new(header, &column_spec)
}

impl SourceRead {
    /// The whole read as records, for a look at a source that keeps nothing (`recado check`);
    /// the poller takes a table a part at a time instead.
    pub async fn into_whole(self, settings: &SourceSettings, spec: &ReadSpec) -> Result<RecordsRead, SourceError> {
        let mut table = match self.records {
            ReadRecords::Whole(read) => return Ok(read),
            ReadRecords::Parts(table) => table,
        };
        let mut reader = table.reader(settings, spec)?;
        let mut seen = FirstRows::default();
        let mut whole = RecordsRead::default();
        while let Some((first, rows)) = table.next().await? {
            let part = reader.push(rows, first, &mut seen);
            whole.records.extend(part.records);
            whole.rows.extend(part.rows);
            whole.issues.extend(part.issues);
        }
        whole.issues.extend(reader.finish());
        Ok(whole)
    }
}

/// What a write did, by index into the batch it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Written.
    pub done: Vec<usize>,
    /// The record is no longer there: nothing to write to.
    pub dropped: Vec<usize>,
    /// The vendor refuses this one value even alone: reported once and dropped.
    pub rejected: Vec<(usize, String)>,
    /// Values the check after an earlier write found on the wrong record or missing: queue
    /// them again (they are recado's own, taken from what it wrote).
    pub repairs: Vec<FieldWrite>,
    /// Vendor requests spent.
    pub reads: usize,
    pub writes: usize,
    /// A part of the batch failed as a whole (the interaction log's object cannot be
    /// described, say): its values stay queued, and the flusher treats this as a failed flush,
    /// while everything above still counts.
    pub failed: Option<SourceError>,
}

/// How much of its vendor quota a source is using.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaState {
    /// Paused after the vendor said "too many requests".
    pub paused_for: Option<Duration>,
    /// Consecutive rate-limit answers.
    pub strikes: u32,
    /// The budget configured.
    pub per_minute: u32,
    /// Requests counted against the vendor's quota in its current `window`, when known.
    pub used: Option<u64>,
    /// What the vendor (or the configuration) allows in that window, when known.
    pub allowed: Option<u64>,
    /// The quota's window: `minute` (recado's own per-minute budget) or `day` (an org's daily
    /// API allocation).
    pub window: &'static str,
}

/// A configured source, read side (closed set: one variant per vendor).
pub enum Source {
    GoogleSheets(google_sheets::TabReader),
    Salesforce(salesforce::RecordReader),
}

impl Source {
    pub fn settings(&self) -> &SourceSettings {
        match self {
            Source::GoogleSheets(s) => s.settings(),
            Source::Salesforce(s) => s.settings(),
        }
    }

    pub fn id(&self) -> &str {
        &self.settings().id
    }

    /// A cheap look: has anything changed since the version last read?
    pub async fn probe(&self) -> Result<Probe, SourceError> {
        match self {
            Source::GoogleSheets(s) => s.probe().await,
            Source::Salesforce(s) => s.probe().await,
        }
    }

    /// The time zone dates in the source are written in (IANA name).
    pub async fn time_zone(&self) -> Result<String, SourceError> {
        match self {
            Source::GoogleSheets(s) => s.time_zone().await,
            Source::Salesforce(s) => s.time_zone().await,
        }
    }

    /// Reads the records. `since` is the version of the last read whose results were
    /// committed ([`SourceRead::version`]); `None` asks for a full read. CPU-heavy conversion
    /// runs off the async runtime.
    pub async fn read(&self, spec: &ReadSpec, since: Option<&str>) -> Result<SourceRead, SourceError> {
        match self {
            Source::GoogleSheets(s) => s.read().await,
            Source::Salesforce(s) => s.read(spec, since).await,
        }
    }

    /// The names of the fields the source holds now, where one cheap call tells (a sheet's
    /// header row); `None` where only a read tells (Salesforce's relationship paths).
    pub async fn field_names(&self) -> Result<Option<Vec<String>>, SourceError> {
        match self {
            Source::GoogleSheets(s) => s.header().await.map(Some),
            Source::Salesforce(_) => Ok(None),
        }
    }

    /// Whether recado may write back, when the vendor says so without a write (`None`: only a
    /// write would tell).
    pub async fn can_write(&self) -> Result<Option<bool>, SourceError> {
        match self {
            Source::GoogleSheets(s) => s.can_write().await.map(Some),
            Source::Salesforce(_) => Ok(None),
        }
    }

    /// Who recado reads and writes as, for messages that tell a person what to share with
    /// whom (a service account's e-mail, an integration user).
    /// Who recado is at the vendor, added to a refusal so a person knows whom to give access.
    pub fn access_hint(&self) -> String {
        match self {
            Source::GoogleSheets(s) => s.access_hint(),
            Source::Salesforce(s) => s.access_hint(),
        }
    }

    pub fn quota(&self) -> QuotaState {
        match self {
            Source::GoogleSheets(s) => s.quota(),
            Source::Salesforce(s) => s.quota(),
        }
    }
}

/// A configured write group, write side (closed set: one variant per vendor).
#[allow(clippy::large_enum_variant)] // one per write group, made once: size does not matter
pub enum SourceWriter {
    GoogleSheets(google_sheets::SheetWriter),
    Salesforce(salesforce::RecordWriter),
}

impl SourceWriter {
    /// For logs: which vendor object this writer writes to.
    pub fn label(&self) -> String {
        match self {
            SourceWriter::GoogleSheets(w) => w.label(),
            SourceWriter::Salesforce(w) => w.label(),
        }
    }

    /// What only the vendor can tell about the write-back fields before anything is written
    /// (`status_fields`: the fields that take a status). A sheet's missing column is added by
    /// recado, so only fields recado cannot create are checked.
    pub async fn write_back_problems(&self, status_fields: &[String]) -> Result<Vec<String>, SourceError> {
        match self {
            SourceWriter::GoogleSheets(_) => Ok(Vec::new()),
            SourceWriter::Salesforce(w) => w.write_back_problems(status_fields).await,
        }
    }

    /// The sources whose write-back this writer carries.
    pub fn source_ids(&self) -> Vec<String> {
        match self {
            SourceWriter::GoogleSheets(w) => w.source_ids(),
            SourceWriter::Salesforce(w) => w.source_ids(),
        }
    }

    /// How long queued writes may wait to be batched.
    pub fn flush_interval(&self) -> Duration {
        match self {
            SourceWriter::GoogleSheets(w) => w.flush_interval(),
            SourceWriter::Salesforce(w) => w.flush_interval(),
        }
    }

    /// Writes a batch; an empty batch only runs the check of the previous write, if one is due.
    pub async fn write(&self, batch: &[PendingWrite]) -> Result<WriteReport, SourceError> {
        match self {
            SourceWriter::GoogleSheets(w) => w.write(batch).await,
            SourceWriter::Salesforce(w) => w.write(batch).await,
        }
    }

    /// A previous write still has to be checked (even when nothing new is queued).
    pub fn needs_check(&self) -> bool {
        match self {
            SourceWriter::GoogleSheets(w) => w.needs_check(),
            SourceWriter::Salesforce(w) => w.needs_check(),
        }
    }
}
