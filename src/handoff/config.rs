//! The `handoff:` section: where the inbox is, which fields staff fill, what the person is
//! told. Checks that need the rest of the configuration (the inbox source exists and can take
//! new records, templates known to the providers, text lengths) are in `config::validate`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::domain::TemplateSpec;
use crate::flows::config::{local_text, Languages, RawText, TemplateReader};
use crate::flows::LocalText;
use crate::validation::Problems;

/// `handoff:`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHandoffSection {
    /// The source whose records are the inbox: one record per hand-off, under a key recado
    /// chooses (`H-…`), e.g. a `Bandeja` table next to the participants'. Its records are not people.
    pub inbox: String,
    /// A message that is one of these words (case- and accent-insensitive, alone or with a few
    /// courtesy words) opens a hand-off, e.g. `[AGENTE, PERSONA]`.
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
    /// The inbox's fields (column headers or API names).
    pub fields: RawInboxFields,
    /// Sent when a hand-off opens (a string, or one per language), e.g. "Te comunicamos con
    /// una persona del equipo. Te responderemos por aquí."
    #[serde(default)]
    pub opened_reply: Option<RawText>,
    /// Sent when staff close the hand-off, e.g. "Cerramos tu consulta. Escribe MENU para
    /// volver al menú."
    #[serde(default)]
    pub closed_reply: Option<RawText>,
    /// The approved template sent when staff reply after the person's 24-hour window closed:
    /// it invites them to write back (`{name, language, body}` as in a rule), and the staff
    /// reply goes out as soon as they do. Required: WhatsApp takes no free text outside the
    /// window.
    pub reopen_template: Value,
    /// Whether rule messages (reminders, campaigns) to a contact wait while their hand-off is
    /// open (default `true`); they go out once it closes, if still on time.
    #[serde(default)]
    pub pause_scheduled: Option<bool>,
    /// Values of the close field that close the hand-off, besides a ticked checkbox (default
    /// `[TRUE, SI, X]`; case- and accent-insensitive).
    #[serde(default)]
    pub close_values: Option<Vec<String>>,
    /// Most messages the transcript field keeps, newest last (default 30).
    #[serde(default)]
    pub transcript_messages: Option<u64>,
    /// The field of the contact's own record that holds their name, copied to the inbox.
    #[serde(default)]
    pub name_field: Option<String>,
    /// When staff answer. Outside these hours (and on holidays) a person who asks for someone,
    /// or writes while they wait, is told when someone will reply (once until the office
    /// opens again); the hand-off stays open.
    #[serde(default)]
    pub office_hours: Option<RawOfficeHours>,
    /// An open hand-off whose person has waited longer than this (e.g. `2h`) is flagged: its
    /// state field says so, the log warns once, and `/metrics` counts it, until staff answer.
    #[serde(default)]
    pub unanswered_after: Option<String>,
}

/// `handoff.office_hours:`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOfficeHours {
    /// Local hours staff answer, e.g. `09:00-18:00` (all day when absent).
    #[serde(default)]
    pub between: Option<String>,
    /// Days staff answer (`mon`…`sun` or `lun`…`dom`); every day when absent.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Dates nobody answers, e.g. `2026-12-25`.
    #[serde(default)]
    pub holidays: Option<Vec<String>>,
    /// IANA zone of those hours (default: `defaults.time_zone`, else the inbox's own).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// The answer outside them (a string, or one per language); `{{ opens_at }}` is when the
    /// office opens next, e.g. "Nuestro equipo atiende de lunes a viernes de 9 a 18 h. Te
    /// responderemos desde el {{ opens_at }}."
    pub reply: RawText,
}

/// `handoff.fields:` the inbox's fields. recado writes only its own; staff fill `reply`,
/// `close` and `assigned`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInboxFields {
    /// recado's: when the hand-off opened, e.g. `Abierta`.
    pub opened_at: String,
    /// recado's: the contact's name (from `name_field`), e.g. `Nombre`.
    #[serde(default)]
    pub name: Option<String>,
    /// recado's: the contact's record (`source/key`), e.g. `Registro`.
    #[serde(default)]
    pub record: Option<String>,
    /// recado's: the contact's record key alone, for a lookup to it (e.g. `ContactId` on a
    /// Case, when the contacts' source is keyed by `Id`).
    #[serde(default)]
    pub record_id: Option<String>,
    /// recado's: the topic the flow gave, e.g. `Tema`.
    #[serde(default)]
    pub topic: Option<String>,
    /// recado's: the last messages, newest last, e.g. `Conversación`.
    pub transcript: String,
    /// recado's: since when the person waits for an answer (empty once staff answered), e.g.
    /// `Esperando desde`.
    #[serde(default)]
    pub waiting_since: Option<String>,
    /// recado's: the hand-off's state (`open`, `waiting for the person to write`, `closed`),
    /// e.g. `Estado`.
    pub state: String,
    /// Staff's: who takes it, e.g. `Asignada a` (shown next to their replies in the transcript).
    #[serde(default)]
    pub assigned: Option<String>,
    /// Staff's: a reply to send, e.g. `Respuesta`. recado sends it, adds it to the transcript
    /// and empties the field.
    pub reply: String,
    /// Staff's: ticked (or one of `close_values`) closes the hand-off, e.g. `Cerrar`.
    pub close: String,
}

/// A validated `handoff:` section.
#[derive(Debug, Clone)]
pub struct HandoffConfig {
    pub inbox: String,
    /// Normalised (upper case, no accents).
    pub keywords: Vec<String>,
    pub fields: InboxFields,
    pub opened_reply: Option<LocalText>,
    pub closed_reply: Option<LocalText>,
    pub reopen_template: Option<TemplateSpec>,
    pub pause_scheduled: bool,
    /// Normalised.
    pub close_values: Vec<String>,
    pub transcript_messages: usize,
    pub name_field: Option<String>,
    pub office_hours: Option<OfficeHours>,
    pub unanswered_after: Option<std::time::Duration>,
}

/// When staff answer, and what the person is told outside those hours.
#[derive(Debug, Clone)]
pub struct OfficeHours {
    pub window: crate::schedule::SendWindow,
    /// `None`: the programme's default zone, else the inbox's.
    pub time_zone: Option<chrono_tz::Tz>,
    pub reply: LocalText,
}

/// The inbox's fields.
#[derive(Debug, Clone)]
pub struct InboxFields {
    pub opened_at: String,
    pub name: Option<String>,
    pub record: Option<String>,
    pub record_id: Option<String>,
    pub topic: Option<String>,
    pub transcript: String,
    pub waiting_since: Option<String>,
    pub state: String,
    pub assigned: Option<String>,
    pub reply: String,
    pub close: String,
}

impl InboxFields {
    /// The fields recado writes (never read as staff requests).
    pub fn recado_owned(&self) -> Vec<&str> {
        let mut v = vec![self.opened_at.as_str(), self.transcript.as_str(), self.state.as_str()];
        v.extend(
            [&self.name, &self.record, &self.record_id, &self.topic, &self.waiting_since]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
        v
    }

    /// Every field, with its name in the configuration.
    pub fn all(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            ("opened_at", self.opened_at.as_str()),
            ("transcript", self.transcript.as_str()),
            ("state", self.state.as_str()),
            ("reply", self.reply.as_str()),
            ("close", self.close.as_str()),
        ];
        for (name, f) in [
            ("name", &self.name),
            ("record", &self.record),
            ("record_id", &self.record_id),
            ("topic", &self.topic),
            ("waiting_since", &self.waiting_since),
            ("assigned", &self.assigned),
        ] {
            if let Some(f) = f {
                v.push((name, f.as_str()));
            }
        }
        v
    }
}

/// Longest transcript recado writes into one field (well under what a source's text field holds).
pub const MAX_TRANSCRIPT_CHARS: usize = 8_000;

/// Validates `handoff:` (its own shape; cross-checks are the caller's).
pub fn validate(
    p: &mut Problems,
    value: Option<Value>,
    languages: &Languages<'_>,
    templates: TemplateReader<'_>,
) -> Option<HandoffConfig> {
    let raw: RawHandoffSection = p.parse("handoff", value?)?;
    p.non_empty("handoff.inbox", &raw.inbox);
    let f = raw.fields;
    let fields = InboxFields {
        opened_at: f.opened_at,
        name: f.name,
        record: f.record,
        record_id: f.record_id,
        topic: f.topic,
        transcript: f.transcript,
        waiting_since: f.waiting_since,
        state: f.state,
        assigned: f.assigned,
        reply: f.reply,
        close: f.close,
    };
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (name, field) in fields.all() {
        let path = format!("handoff.fields.{name}");
        if field.trim().is_empty() {
            p.push(path, "must not be empty");
        } else if let Some(other) = seen.insert(field.trim().to_lowercase(), name) {
            p.push(path, format!("'{field}' is also handoff.fields.{other}: each field holds one thing"));
        }
    }
    let keywords: Vec<String> =
        raw.keywords.unwrap_or_default().iter().map(|k| crate::domain::normalise_keyword(k)).collect();
    for (i, k) in keywords.iter().enumerate() {
        if k.is_empty() {
            p.push(format!("handoff.keywords[{i}]"), "must not be empty");
        }
    }
    let opened_reply = raw.opened_reply.map(|t| local_text(p, languages, "handoff.opened_reply", t));
    let closed_reply = raw.closed_reply.map(|t| local_text(p, languages, "handoff.closed_reply", t));
    let reopen_template = templates(p, "handoff.reopen_template", raw.reopen_template);
    let transcript_messages = p.count("handoff.transcript_messages", raw.transcript_messages, 30, 1..=500) as usize;
    let close_values: Vec<String> = raw
        .close_values
        .unwrap_or_else(|| ["TRUE", "SI", "X"].map(String::from).to_vec())
        .iter()
        .map(|v| crate::domain::normalise_keyword(v))
        .collect();
    let office_hours = raw.office_hours.and_then(|o| {
        let path = "handoff.office_hours";
        let time_zone = o.time_zone.as_deref().and_then(|t| p.time_zone(&format!("{path}.time_zone"), t));
        let reply = local_text(p, languages, &format!("{path}.reply"), o.reply);
        match crate::schedule::SendWindow::parse(
            o.between.as_deref(),
            o.days.as_deref().unwrap_or(&[]),
            o.holidays.as_deref().unwrap_or(&[]),
        ) {
            Ok(window) => Some(OfficeHours { window, time_zone, reply }),
            Err(list) => {
                for (k, m) in list {
                    p.push(format!("{path}.{}", k.replace("send_", "")), m);
                }
                None
            }
        }
    });
    let unanswered_after = raw.unanswered_after.as_deref().map(|d| {
        p.duration(
            "handoff.unanswered_after",
            Some(d),
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(60),
            crate::validation::LONGEST_DURATION,
        )
    });
    Some(HandoffConfig {
        inbox: raw.inbox,
        keywords,
        fields,
        opened_reply,
        closed_reply,
        reopen_template,
        pause_scheduled: raw.pause_scheduled.unwrap_or(true),
        close_values,
        transcript_messages,
        name_field: raw.name_field,
        office_hours,
        unanswered_after,
    })
}

impl HandoffConfig {
    /// A configuration for unit tests, with the column names of the examples.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        HandoffConfig {
            inbox: "bandeja".into(),
            keywords: vec!["AGENTE".into()],
            fields: InboxFields {
                opened_at: "Abierta".into(),
                name: Some("Nombre".into()),
                record: Some("Registro".into()),
                record_id: None,
                topic: Some("Tema".into()),
                transcript: "Conversación".into(),
                waiting_since: Some("Esperando desde".into()),
                state: "Estado".into(),
                assigned: Some("Asignada a".into()),
                reply: "Respuesta".into(),
                close: "Cerrar".into(),
            },
            opened_reply: None,
            closed_reply: None,
            reopen_template: None,
            pause_scheduled: true,
            close_values: vec!["TRUE".into(), "SI".into(), "X".into()],
            transcript_messages: 30,
            name_field: None,
            office_hours: None,
            unanswered_after: None,
        }
    }
}
