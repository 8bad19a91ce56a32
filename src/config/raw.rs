//! The shared sections of the configuration exactly as written in YAML (each vendor's section
//! is in its own folder). Unknown keys are errors; values are checked later by
//! [`super::validate`], which reports every problem at once.

use serde::Deserialize;
use serde_json::Value;

/// The sections of a configuration file, in the order `recado check` reports them.
pub const SECTIONS: &[&str] =
    &["state", "http", "providers", "sources", "rules", "flows", "handoff", "inbound", "defaults"];

/// `defaults:` (each can be overridden per rule).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// IANA time zone for rule times, e.g. `America/Santiago` (else the source's own).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Business-initiated messages only go out between these local times, e.g. `09:00-20:00`.
    #[serde(default)]
    pub send_between: Option<String>,
    /// Days messages may go out (`mon`…`sun` or `lun`…`dom`); all when absent.
    #[serde(default)]
    pub send_days: Option<Vec<String>>,
    /// Dates nothing is sent (`2026-12-25`); messages wait for the next allowed day.
    #[serde(default)]
    pub holidays: Option<Vec<String>>,
    /// How late a reminder or campaign missed while recado was stopped may still go out
    /// (default `3h`); older ones are skipped with the reason written back.
    #[serde(default)]
    pub lateness: Option<String>,
}

/// `state:`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// Path of the SQLite database file (created if missing).
    pub path: String,
    /// How long recado keeps what it no longer needs.
    #[serde(default)]
    pub retention: Option<RawRetention>,
    /// The largest file (photo, document, voice note) a person sends that recado downloads
    /// and keeps, in MB (default 16, at most 100: WhatsApp's own limits). Larger ones are
    /// refused, with the reason on their link.
    #[serde(default)]
    pub media_max_mb: Option<u64>,
}

/// `state.retention:`
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Raw webhook bodies once applied (default `90d`).
    #[serde(default)]
    pub raw_webhooks: Option<String>,
    /// The record of which statuses were already seen (default `90d`).
    #[serde(default)]
    pub status_events: Option<String>,
    /// Inbound messages (the conversation history; default `365d`).
    #[serde(default)]
    pub inbound_messages: Option<String>,
    /// Files people sent, kept next to the state file (default `90d`).
    #[serde(default)]
    pub media: Option<String>,
}

/// `http:`
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address to listen on, e.g. `0.0.0.0:8080`.
    #[serde(default)]
    pub listen: Option<String>,
    /// The URL the world uses to reach this server (behind a reverse proxy), e.g.
    /// `https://recado.example.org`. Webhook URLs are `<public_url>/webhooks/<provider id>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Largest webhook body accepted, in bytes (default 1 MiB).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// The password of the dashboard at `/dashboard` (HTTP Basic, any user name): inline,
    /// `dashboard_password_env` or `dashboard_password_file`. Without one the dashboard is off,
    /// since it shows people's data.
    #[serde(default)]
    pub dashboard_password: Option<Value>,
    #[serde(default)]
    pub dashboard_password_env: Option<Value>,
    #[serde(default)]
    pub dashboard_password_file: Option<Value>,
}

/// One entry of `rules:`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name; part of every message's idempotency key, so do not rename a live rule.
    pub id: String,
    /// The source whose records this rule watches.
    pub source: String,
    /// The trigger: `row_added`, `{changed: FIELD, to: VALUE}`,
    /// `{date: FIELD, offset: -2d | [-6w, -1w], at: "10:00"}` or `{cron: "0 10 1 */3 *"}`.
    pub when: Value,
    /// Optional filter expression over the row, e.g. `Curso == "Soldadura"`.
    #[serde(default, rename = "if")]
    pub filter: Option<String>,
    /// Provider id that sends this rule's messages.
    pub provider: String,
    /// Send an approved template.
    #[serde(default)]
    pub template: Option<RawTemplate>,
    /// Or send free text (only inside the 24-hour window) …
    #[serde(default)]
    pub text: Option<String>,
    /// … falling back to this template outside the window.
    #[serde(default)]
    pub fallback_template: Option<RawTemplate>,
    // The time settings below repeat `RawDefaults` field by field: serde cannot combine
    // `flatten` with `deny_unknown_fields`, and unknown keys must stay errors.
    /// Overrides `defaults.time_zone` for this rule.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Overrides `defaults.send_between` (and `send_days`, `holidays`) for this rule.
    #[serde(default)]
    pub send_between: Option<String>,
    #[serde(default)]
    pub send_days: Option<Vec<String>>,
    #[serde(default)]
    pub holidays: Option<Vec<String>>,
    /// Overrides `defaults.lateness` for this rule.
    #[serde(default)]
    pub lateness: Option<String>,
    /// A flow (`flows:`) that takes the replies to this rule's messages: its first step is
    /// the question the template asked (e.g. the reminder's buttons "Confirmo" / "Necesito
    /// cambiar la hora"), and the reply is read as its answer.
    #[serde(default)]
    pub on_reply: Option<String>,
    /// `handoff`: a reply to this rule's message that `on_reply`'s flow does not take (or any
    /// reply, without `on_reply`) opens a hand-off to a person (`handoff:`), its topic the
    /// rule's id. Default `bot`: such a reply talks to the bot.
    #[serde(default)]
    pub on_other_reply: Option<String>,
    /// This rule's own status fields on the record, instead of the source's `write_back`
    /// ones, so a later rule's status does not overwrite an earlier rule's on the same row:
    /// `{status: Estado recordatorio, status_at: Fecha recordatorio, error: Error recordatorio}`
    /// (each optional; one left out is not written for this rule).
    #[serde(default)]
    pub write_back: Option<RawRuleWriteBack>,
}

/// `rules[*].write_back`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRuleWriteBack {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub status_at: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A template and how to fill its parameters.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    /// The approved template's name.
    pub name: String,
    /// Language code, e.g. `es` or `es_MX`.
    pub language: String,
    /// Other languages the template is approved in (same name, same parameters), e.g.
    /// `[en, qu]`: a contact who chose one of them in a conversation gets that one.
    #[serde(default)]
    pub languages: Vec<String>,
    /// Body parameters in order, each an expression such as `{{ Nombre }}`.
    #[serde(default)]
    pub body: Vec<String>,
    /// Suffix for the template's dynamic URL button, e.g. `{{ ID | urlencode }}`.
    #[serde(default)]
    pub button_url_suffix: Option<String>,
    /// The file of a template whose header is an image, a document or a video (as approved):
    /// `{document: "https://muni.example/requisitos.pdf", filename: "Requisitos.pdf"}`; the
    /// address may be an expression over the record (`{{ Certificado }}`). On Meta it may be an
    /// absolute path on this machine instead (`/etc/recado/requisitos.pdf`): uploaded once
    /// through the media API and sent by its media id.
    #[serde(default)]
    pub header: Option<RawTemplateHeader>,
    /// Characters of the approved template's body text without its parameters (WhatsApp
    /// refuses a template whose text and parameters together pass 1,024 characters, so the
    /// parameters are cut to fit what is left). Default 200.
    #[serde(default)]
    pub body_text_chars: Option<u64>,
}

/// A template's media header: exactly one of `image`, `document`, `video`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTemplateHeader {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub document: Option<String>,
    #[serde(default)]
    pub video: Option<String>,
    /// A document's name as the person sees it, e.g. `Requisitos.pdf`.
    #[serde(default)]
    pub filename: Option<String>,
}

/// `inbound:`
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    /// A reply that is exactly one of these words (case- and accent-insensitive) opts the
    /// person out. Default: BAJA, STOP, UNSUBSCRIBE (not SALIR or CANCELAR: people type those
    /// to leave a menu or on a button to cancel an appointment; see ADR 0008).
    #[serde(default)]
    pub opt_out_keywords: Option<Vec<String>>,
    /// The flow (`flows:`) that a message nothing else handles starts: the menu.
    #[serde(default)]
    pub entry_flow: Option<String>,
    /// The language flow texts fall back to, and that a plain string is in (default `es`).
    #[serde(default)]
    pub default_language: Option<String>,
    /// Languages every flow text must have (`recado check` reports the missing ones).
    #[serde(default)]
    pub languages: Option<Vec<String>>,
    /// The field of a contact's record that holds their language (`es`, `en`, …), used when
    /// they have not chosen one in a conversation.
    #[serde(default)]
    pub language_field: Option<String>,
    /// A message that is one of these (alone or in a short message) opts a person back in
    /// after an opt-out. Default: ALTA, START.
    #[serde(default)]
    pub opt_in_keywords: Option<Vec<String>>,
    /// Sent to confirm an opt-out, e.g. "Listo, no te escribiremos más. Escribe ALTA para
    /// volver." (the only message an opted-out person gets). Required when flows or a privacy
    /// notice are configured.
    /// A string, or one per language (`{ es: …, en: … }`): the contact's language is used.
    #[serde(default)]
    pub opt_out_reply: Option<crate::flows::config::RawText>,
    /// Sent to confirm an opt-in (a string, or one per language).
    #[serde(default)]
    pub opt_in_reply: Option<crate::flows::config::RawText>,
    /// The privacy notice asked before the bot answers anything else (see the README).
    #[serde(default)]
    pub consent: Option<Value>,
}
