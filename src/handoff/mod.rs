//! Hand-off to a person, the pure part: what the `handoff:` section says, which inbox edits
//! are staff asking for something, and the transcript staff read.
//!
//! A hand-off is opened for a contact (by a flow's `handoff` step or a keyword), and is a
//! record of its own in the configured *inbox* source: one row of a tab such as "Bandeja",
//! under a key recado chooses (`H-…`). recado writes only its own fields of that record (when
//! it opened, who, the transcript, since when the person waits, the state) and reads the
//! fields staff fill, by key, at each poll: a text in the reply field is sent to the person
//! and the field emptied (only while it still holds that text), and the close field closes the
//! hand-off. While it is open the bot is silent for that contact, and, unless configured
//! otherwise, rule messages to them wait.
//!
//! The engine applies all of it (`engine::handoff`); nothing here reads a clock or a store.

pub mod config;

use crate::diff::Change;
use crate::domain::{CellValue, Record, RecordKey};

pub use config::{HandoffConfig, InboxFields};

/// The state written to the inbox's state field.
pub mod state {
    /// Waiting for staff.
    pub const OPEN: &str = "open";
    /// Staff replied outside the 24-hour window: the invitation went out, the reply waits for
    /// the person to write.
    pub const WAITING_FOR_PERSON: &str = "waiting for the person to write";
    /// Closed by staff.
    pub const CLOSED: &str = "closed";
    /// Open, and the person has waited longer than `unanswered_after` (followed by it).
    pub const UNANSWERED: &str = "unanswered for over";
}

/// Something staff asked for in the inbox, seen by one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaffAction {
    /// A text written in the reply field: send it to the person.
    Reply { key: RecordKey, text: String, by: Option<String> },
    /// The close field set: close the hand-off.
    Close { key: RecordKey },
}

impl StaffAction {
    /// The inbox record it is about.
    pub fn key(&self) -> &RecordKey {
        match self {
            StaffAction::Reply { key, .. } | StaffAction::Close { key } => key,
        }
    }
}

/// The staff actions a poll of the inbox found, from its changes (a baseline has none: what
/// was there before recado watched is not a request). A row staff add by hand is not a
/// hand-off and is ignored later, when no hand-off has its key.
pub fn staff_actions<'a>(
    cfg: &HandoffConfig,
    changes: &[Change],
    record_of: impl Fn(&RecordKey) -> Option<&'a Record>,
) -> Vec<StaffAction> {
    let mut out = Vec::new();
    for change in changes {
        let (key, touched): (&RecordKey, Option<&[crate::diff::FieldChange]>) = match change {
            Change::Added(k) => (k, None),
            Change::Changed { key, fields } => (key, Some(fields)),
            Change::Removed(_) => continue,
        };
        let Some(record) = record_of(key) else { continue };
        let changed = |field: &str| {
            touched.is_none_or(|fields| fields.iter().any(|f| f.field.trim().eq_ignore_ascii_case(field.trim())))
        };
        let reply = record.text(&cfg.fields.reply);
        if changed(&cfg.fields.reply) && !reply.trim().is_empty() {
            let by = cfg.fields.assigned.as_ref().map(|f| record.text(f)).filter(|s| !s.trim().is_empty());
            out.push(StaffAction::Reply { key: key.clone(), text: reply.trim().to_string(), by });
        }
        if changed(&cfg.fields.close) && record.get(&cfg.fields.close).is_some_and(|v| cfg.closes(v)) {
            out.push(StaffAction::Close { key: key.clone() });
        }
    }
    out
}

/// Who said a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The contact.
    Person,
    /// recado's automatic answers (opening, office hours, closing).
    Bot,
    /// A staff reply.
    Staff,
}

/// One transcript line: `23/11 10:32 ▸ text` for what the person wrote, `◂` for what went to
/// them (`— name` after a staff reply, when the inbox says who took it). Line breaks inside a message
/// become spaces, so one message is one line.
pub fn transcript_line(at: &str, speaker: Speaker, text: &str, by: Option<&str>) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match (speaker, by) {
        (Speaker::Person, _) => format!("{at} ▸ {flat}"),
        (Speaker::Bot, _) => format!("{at} ◂ {flat}"),
        (Speaker::Staff, Some(name)) => format!("{at} ◂ {flat} — {}", name.trim()),
        (Speaker::Staff, None) => format!("{at} ◂ {flat}"),
    }
}

/// The transcript with `line` appended, newest last, keeping at most `max_lines` lines and
/// `max_chars` characters (the oldest lines go first; a single longer line is cut).
pub fn append_line(transcript: &str, line: &str, max_lines: usize, max_chars: usize) -> String {
    let mut lines: Vec<&str> = transcript.lines().filter(|l| !l.is_empty()).collect();
    lines.push(line);
    let mut start = lines.len().saturating_sub(max_lines.max(1));
    let mut total: usize = lines[start..].iter().map(|l| l.chars().count() + 1).sum();
    while total > max_chars && start + 1 < lines.len() {
        total -= lines[start].chars().count() + 1;
        start += 1;
    }
    let joined = lines[start..].join("\n");
    if joined.chars().count() > max_chars {
        joined.chars().take(max_chars).collect()
    } else {
        joined
    }
}

/// What an inbound message shows in the transcript: its text, or what kind of message it was.
pub fn inbound_text(text: &str, kind: &str) -> String {
    if text.trim().is_empty() {
        format!("[{kind}]")
    } else {
        text.to_string()
    }
}

impl HandoffConfig {
    /// Whether a close field's value closes the hand-off (a ticked checkbox, or one of
    /// `close_values`).
    pub fn closes(&self, value: &CellValue) -> bool {
        match value {
            CellValue::Bool(b) => *b,
            CellValue::Empty => false,
            other => {
                let text = crate::domain::normalise_keyword(&other.canonical());
                self.close_values.contains(&text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::FieldChange;

    fn cfg() -> HandoffConfig {
        HandoffConfig::for_tests()
    }

    fn record(key: &str, fields: &[(&str, CellValue)]) -> Record {
        Record { key: RecordKey(key.into()), fields: fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    fn changed(key: &str, field: &str) -> Change {
        Change::Changed {
            key: RecordKey(key.into()),
            fields: vec![FieldChange { field: field.into(), old: String::new(), new: String::new() }],
        }
    }

    #[test]
    fn a_reply_written_is_taken_with_who_wrote_it() {
        let r = record(
            "H-1",
            &[
                ("Respuesta", CellValue::Text(" Hola, la reviso hoy ".into())),
                ("Asignada a", CellValue::Text("Ana".into())),
            ],
        );
        let actions = staff_actions(&cfg(), &[changed("H-1", "respuesta")], |_| Some(&r));
        assert_eq!(
            actions,
            vec![StaffAction::Reply {
                key: RecordKey("H-1".into()),
                text: "Hola, la reviso hoy".into(),
                by: Some("Ana".into())
            }]
        );
    }

    #[test]
    fn an_emptied_reply_or_another_field_changing_asks_nothing() {
        let r = record("H-1", &[("Respuesta", CellValue::Empty), ("Asignada a", CellValue::Text("Ana".into()))]);
        assert!(staff_actions(&cfg(), &[changed("H-1", "Respuesta")], |_| Some(&r)).is_empty());
        let r = record("H-1", &[("Respuesta", CellValue::Text("hola".into()))]);
        assert!(staff_actions(&cfg(), &[changed("H-1", "Asignada a")], |_| Some(&r)).is_empty());
    }

    #[test]
    fn a_ticked_box_or_a_close_word_closes_and_an_unticked_one_does_not() {
        let c = cfg();
        assert!(c.closes(&CellValue::Bool(true)));
        assert!(!c.closes(&CellValue::Bool(false)));
        assert!(c.closes(&CellValue::Text("TRUE".into())));
        assert!(c.closes(&CellValue::Text(" sí ".into())));
        assert!(!c.closes(&CellValue::Text("no".into())));
        assert!(!c.closes(&CellValue::Empty));
        let r = record("H-2", &[("Cerrar", CellValue::Bool(true)), ("Respuesta", CellValue::Text("Chao".into()))]);
        let actions = staff_actions(&c, &[Change::Added(RecordKey("H-2".into()))], |_| Some(&r));
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert!(matches!(actions[0], StaffAction::Reply { .. }), "the reply goes before the closing");
        assert_eq!(actions[1], StaffAction::Close { key: RecordKey("H-2".into()) });
    }

    #[test]
    fn the_transcript_keeps_the_newest_lines_within_its_bounds() {
        let mut t = String::new();
        for i in 0..10 {
            t = append_line(&t, &format!("line {i}"), 4, 1_000);
        }
        assert_eq!(t, "line 6\nline 7\nline 8\nline 9");
        let t = append_line("aaaa\nbbbb", "cccc", 10, 10);
        assert_eq!(t, "bbbb\ncccc");
        let t = append_line("", &"x".repeat(50), 10, 20);
        assert_eq!(t.chars().count(), 20);
    }

    #[test]
    fn a_message_is_one_line_and_says_who_wrote_it() {
        assert_eq!(
            transcript_line("23/11 10:32", Speaker::Person, "hola\n\nnecesito  ayuda", None),
            "23/11 10:32 ▸ hola necesito ayuda"
        );
        assert_eq!(transcript_line("23/11 10:40", Speaker::Staff, "Voy", Some("Ana ")), "23/11 10:40 ◂ Voy — Ana");
        assert_eq!(inbound_text("", "image"), "[image]");
    }
}
