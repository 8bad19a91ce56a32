//! The `flows:` section as written in YAML, and its validation into a [`FlowSet`].
//!
//! ```yaml
//! flows:
//!   - id: menu
//!     expires_after: 2h            # a conversation left unanswered this long is over
//!     steps:
//!       - id: hola
//!         say: "¡Hola! Soy el asistente de la Municipalidad."
//!       - id: opcion
//!         ask:
//!           text: "¿En qué te podemos ayudar?"
//!           choices:
//!             - { id: horarios, title: "Horarios", goto: horarios }
//!             - { id: reporte, title: "Reportar un problema", goto: que }
//!           retry: "No entendí. Toca una de las opciones."
//!       - id: horarios
//!         say: { es: "Atendemos de 8:30 a 14:00.", en: "We are open 8:30–14:00." }
//!         end: true
//!       - id: que
//!         ask: { text: "¿Qué problema quieres reportar?", type: text, save: Problema }
//! ```
//!
//! Every text is either one string (the default language) or a map of language → text.
//! Validation reports every problem with its path (`flows[0].steps[1].ask.choices[3].title`):
//! WhatsApp's limits on buttons and lists, targets of `goto` that do not exist, texts missing
//! for a configured language, template syntax.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::validation::Problems;

/// A text: one string, or one per language.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RawText {
    One(String),
    ByLanguage(BTreeMap<String, String>),
}

/// One entry of `flows:`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    /// Unique name (rules and `inbound.entry_flow` refer to it).
    pub id: String,
    /// A conversation nobody answered for this long is over, and the next message starts
    /// afresh (default `24h`).
    #[serde(default)]
    pub expires_after: Option<String>,
    /// A contact who stopped answering for this long gets `reminder` once (only inside
    /// WhatsApp's 24-hour window; outside it nothing is sent).
    #[serde(default)]
    pub remind_after: Option<String>,
    #[serde(default)]
    pub reminder: Option<RawText>,
    /// Where the conversation stands, written to a field of the contact's record.
    #[serde(default)]
    pub progress: Option<RawProgress>,
    /// The steps, run from the first.
    pub steps: Vec<Value>,
}

/// `progress:` of a flow.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProgress {
    /// The field (column or API name) of the contact's record.
    pub field: String,
    /// Written when the conversation starts (e.g. `en curso`).
    #[serde(default)]
    pub started: Option<String>,
    /// Written when it reaches its end (e.g. `completa`).
    #[serde(default)]
    pub completed: Option<String>,
    /// Written when it expires unfinished (e.g. `incompleta`).
    #[serde(default)]
    pub expired: Option<String>,
}

/// One step: exactly one of `say`, `ask`, `save`, `handoff` (or none, with `goto` or `end`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Unique within the flow; `goto` targets it.
    pub id: String,
    /// Send a text (one string, or one per language), or an approved template:
    /// `say: {template: {name, language, languages, body, button_url_suffix}}`, written like a
    /// rule's. A template goes out even outside WhatsApp's 24-hour window, and can carry what
    /// a text cannot (a header image, a document, buttons approved with it). Or a file by its
    /// public address (a template over the answers and the record), inside the window only:
    /// `say: {document: URL, filename: requisitos.pdf, caption: …}`, `{image: URL, caption}`,
    /// `{video: URL, caption}` (caption at most 1,024 characters, one per language allowed).
    /// With a provider that uploads files, it may be an absolute path on this machine instead:
    /// uploaded once through the provider's media API and sent by its media id.
    #[serde(default)]
    pub say: Option<Value>,
    /// Ask a question and wait for the answer.
    #[serde(default)]
    pub ask: Option<RawAsk>,
    /// Write a value to a field of the contact's record.
    #[serde(default)]
    pub save: Option<RawSave>,
    /// Give the contact to a person (the bot stays silent until the hand-off closes).
    #[serde(default)]
    pub handoff: Option<RawHandoff>,
    /// Go to the step of the first condition that holds (else on as `goto`/`end` or the next
    /// step say): `[{if: "answers.satisfaccion <= 2", goto: mejorar}]`. Conditions are
    /// expressions like a rule's `if:` over the answers (a number question's answer is a
    /// number), the record's fields, `contact.phone` and `now`.
    #[serde(default)]
    pub branch: Option<Vec<RawBranch>>,
    /// The step to go to next (default: the one below). `end` ends the conversation.
    #[serde(default)]
    pub goto: Option<String>,
    /// End the conversation after this step.
    #[serde(default)]
    pub end: Option<bool>,
}

/// One condition of a `branch:` step.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBranch {
    /// An expression, e.g. `answers.satisfaccion <= 2` or `Curso == "Soldadura"`.
    #[serde(rename = "if")]
    pub condition: String,
    /// The step to go to when it holds.
    pub goto: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAsk {
    /// The question.
    pub text: RawText,
    /// `choice` (default when `choices` are given), `yes_no`, `number`, `text` (default
    /// otherwise), `date`, `phone`, `email`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The options of a `choice`: up to 3 are reply buttons, up to 10 a list.
    #[serde(default)]
    pub choices: Option<Vec<RawChoice>>,
    /// The label of the button that opens a list (required above 3 options; with 3 or fewer
    /// it shows them as a list instead of buttons).
    #[serde(default)]
    pub list_button: Option<RawText>,
    /// `yes_no`: the two buttons.
    #[serde(default)]
    pub yes: Option<RawChoice>,
    #[serde(default)]
    pub no: Option<RawChoice>,
    /// `number`: bounds, and whether decimals are refused.
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub integer: Option<bool>,
    /// `text`: the longest answer taken (default 1,000 characters).
    #[serde(default)]
    pub max_chars: Option<u64>,
    /// `phone`: the country of numbers typed without one (default `CL`).
    #[serde(default)]
    pub default_region: Option<String>,
    /// Sent before the question again when an answer does not fit.
    #[serde(default)]
    pub retry: Option<RawText>,
    /// Answers that do not fit before giving up (default 2).
    #[serde(default)]
    pub retries: Option<u64>,
    /// Where to go when it gives up: a step id or `end` (default).
    #[serde(default)]
    pub on_fail: Option<String>,
    /// The field of the contact's record the answer is written to.
    #[serde(default)]
    pub save: Option<String>,
    /// The answer is the language the contact is spoken to in from now on (and in later
    /// conversations): a `choice` whose options' values are language codes.
    #[serde(default)]
    pub sets_language: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawChoice {
    /// Sent back by the button or row; unique within the question (default: the title).
    #[serde(default)]
    pub id: Option<String>,
    /// What the person sees (≤ 20 characters on a button, ≤ 24 in a list).
    pub title: RawText,
    /// What is saved as the answer (default: the title in the default language).
    #[serde(default)]
    pub value: Option<String>,
    /// The step this option leads to (default: the step after the question).
    #[serde(default)]
    pub goto: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSave {
    /// The field (column or API name) of the contact's record.
    #[serde(default)]
    pub field: Option<String>,
    /// The value, e.g. `"{{ answers.que }}"` or `Confirmada`.
    #[serde(default)]
    pub value: Option<String>,
    /// Instead of a field of the contact's record: a new record (row) in this source, e.g. a
    /// report taken in the chat in the `incidencias` tab. It gets a key recado chooses, so a
    /// repeat never adds it twice.
    #[serde(default)]
    pub to: Option<String>,
    /// With `to`: the new record's fields (column or API name → value template, with
    /// `answers.x`, the contact's record fields, `contact.phone` and `now`).
    #[serde(default)]
    pub fields: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHandoff {
    /// A topic or queue for the people who take over.
    #[serde(default)]
    pub topic: Option<String>,
}

/// `inbound.consent`: the privacy notice an unknown contact, or one without consent, is asked
/// to accept before the bot answers anything else.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConsent {
    /// The notice: what is kept, why, and a link to the full policy (≤ 1,024 characters).
    pub notice: RawText,
    /// The button that accepts (≤ 20 characters), e.g. `Acepto`.
    pub accept: RawText,
    /// The button that refuses, e.g. `No acepto`.
    pub refuse: RawText,
    /// The notice's version, stored with each answer: a new version is asked again.
    pub version: String,
    /// Said after a refusal (the bot then stays silent until the person writes an opt-in
    /// keyword).
    #[serde(default)]
    pub refused: Option<RawText>,
}

/// The id of the built-in consent flow (ids starting with `__` are recado's).
pub const CONSENT_FLOW: &str = "__consent";

/// Validates `inbound.consent` into the built-in consent flow; returns it with the notice's
/// version.
pub fn consent_flow(p: &mut Problems, value: Value, languages: &Languages<'_>) -> Option<(Flow, String)> {
    let path = "inbound.consent";
    let flow_version = version_of(&value);
    let raw = p.parse::<RawConsent>(path, value)?;
    p.non_empty(&format!("{path}.version"), &raw.version);
    let ids: HashSet<String> = ["notice", "accepted", "refused", "refused_text"].map(String::from).into();
    let mut v = StepValidator { p, languages, step_ids: &ids, templates: None };
    let notice = v.text(&format!("{path}.notice"), raw.notice, MAX_INTERACTIVE_BODY);
    let accept = v.text(&format!("{path}.accept"), raw.accept, MAX_BUTTON_TITLE);
    let refuse = v.text(&format!("{path}.refuse"), raw.refuse, MAX_BUTTON_TITLE);
    v.distinct_titles(&[(format!("{path}.accept"), &accept), (format!("{path}.refuse"), &refuse)]);
    let refused = raw.refused.map(|t| v.text(&format!("{path}.refused"), t, MAX_TEXT_BODY));
    let option = |id: &str, title: LocalText, goto: &str| ChoiceOption {
        id: id.into(),
        value: id.into(),
        title,
        goto: Some(Next::Goto(goto.into())),
    };
    let mut steps = vec![
        Step {
            id: "notice".into(),
            kind: StepKind::Ask(Box::new(Ask {
                prompt: notice,
                answer: AnswerKind::Choice {
                    options: vec![option("accept", accept, "accepted"), option("refuse", refuse, "refused")],
                    list_button: None,
                },
                retry: None,
                retries: 2,
                on_fail: Next::End,
                save: None,
                sets_language: false,
            })),
            next: Next::End,
        },
        Step { id: "accepted".into(), kind: StepKind::Consent { granted: true }, next: Next::End },
        Step { id: "refused".into(), kind: StepKind::Consent { granted: false }, next: Next::Following },
    ];
    if let Some(t) = refused {
        steps.push(Step { id: "refused_text".into(), kind: StepKind::Say(t), next: Next::End });
    }
    let flow = Flow::new(CONSENT_FLOW.into(), flow_version, steps, Duration::from_secs(24 * 3600));
    Some((flow, raw.version))
}

/// A text outside flows (a confirmation), with its languages checked like a flow's.
pub fn local_text(p: &mut Problems, languages: &Languages<'_>, path: &str, raw: RawText) -> LocalText {
    let ids = HashSet::new();
    let mut v = StepValidator { p, languages, step_ids: &ids, templates: None };
    v.text(path, raw, MAX_TEXT_BODY)
}

pub struct Languages<'a> {
    pub default: &'a str,
    /// Every text must have each of these (besides the default).
    pub required: &'a [String],
}

/// Reads a template written in a flow (`say: {template: …}`). The configuration passes its
/// own reader, so a flow's template is written and checked exactly like a rule's.
pub type TemplateReader<'a> = &'a dyn Fn(&mut Problems, &str, Value) -> Option<crate::domain::TemplateSpec>;

/// Validates `flows:`.
pub fn validate(
    p: &mut Problems,
    value: Option<Value>,
    languages: &Languages<'_>,
    templates: TemplateReader<'_>,
) -> FlowSet {
    let mut flows = BTreeMap::new();
    let mut ids = HashSet::new();
    for (path, raw) in p.list("flows", value) {
        let version = version_of(&raw);
        let Some(f) = p.parse::<RawFlow>(&path, raw) else { continue };
        p.unique(&mut ids, &format!("{path}.id"), &f.id);
        if f.id.starts_with("__") {
            p.push(format!("{path}.id"), "ids starting with __ are recado's own");
        }
        let expires_after = p.duration(
            &format!("{path}.expires_after"),
            f.expires_after.as_deref(),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(60),
            Duration::from_secs(30 * 24 * 3600),
        );
        if f.steps.is_empty() {
            p.push(format!("{path}.steps"), "a flow needs at least one step");
        }
        let mut step_versions = HashMap::new();
        let raw_steps: Vec<(String, RawStep)> = f
            .steps
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let sp = format!("{path}.steps[{i}]");
                let version = version_of(&v);
                let step = p.parse::<RawStep>(&sp, v)?;
                step_versions.insert(step.id.clone(), version);
                Some((sp, step))
            })
            .collect();
        let mut step_ids = HashSet::new();
        for (sp, s) in &raw_steps {
            p.unique(&mut step_ids, &format!("{sp}.id"), &s.id);
        }
        let mut v = StepValidator { p, languages, step_ids: &step_ids, templates: Some(templates) };
        let steps: Vec<Step> = raw_steps.into_iter().filter_map(|(sp, s)| v.step(&sp, s)).collect();
        let reminder = match (f.remind_after, f.reminder) {
            (Some(after), Some(text)) => {
                let text = v.text(&format!("{path}.reminder"), text, MAX_TEXT_BODY);
                let after = v.p.duration(
                    &format!("{path}.remind_after"),
                    Some(&after),
                    Duration::from_secs(3600),
                    Duration::from_secs(60),
                    Duration::from_secs(23 * 3600),
                );
                if after >= expires_after {
                    v.p.push(format!("{path}.remind_after"), "must be shorter than expires_after");
                }
                Some((after, text))
            }
            (None, None) => None,
            (Some(_), None) => {
                v.p.push(format!("{path}.reminder"), "give the reminder's text with remind_after");
                None
            }
            (None, Some(_)) => {
                v.p.push(format!("{path}.remind_after"), "give when the reminder goes out (e.g. 4h)");
                None
            }
        };
        let progress = f.progress.map(|pr| {
            v.p.non_empty(&format!("{path}.progress.field"), &pr.field);
            Progress { field: pr.field, started: pr.started, completed: pr.completed, expired: pr.expired }
        });
        if let Some(cycle) = loop_without_question(&steps) {
            v.p.push(
                format!("{path}.steps"),
                format!("steps {} loop without asking anything: one message would run them again and again (sending each time); put an ask in the loop", cycle.join(" → ")),
            );
        }
        let mut flow = Flow::new(f.id, version, steps, expires_after).with_step_versions(step_versions);
        flow.reminder = reminder;
        flow.progress = progress;
        flows.insert(flow.id.clone(), flow);
    }
    FlowSet { flows, default_language: languages.default.to_string() }
}

/// A cycle of steps none of which waits for an answer (by step id, the first repeated at the
/// end), if the flow has one.
fn loop_without_question(steps: &[Step]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let target = |i: usize, next: &Next| match next {
        Next::Following => (i + 1 < steps.len()).then_some(i + 1),
        Next::Goto(id) => index.get(id.as_str()).copied(),
        Next::End => None,
    };
    let successors = |i: usize| -> Vec<usize> {
        let step = &steps[i];
        match &step.kind {
            StepKind::Ask(_) | StepKind::Handoff { .. } => Vec::new(),
            StepKind::Branch(branches) => {
                branches.iter().map(|(_, n)| n).chain([&step.next]).filter_map(|n| target(i, n)).collect()
            }
            _ => target(i, &step.next).into_iter().collect(),
        }
    };
    // Depth-first, with the path kept: 0 unseen, 1 on the path, 2 done.
    let mut state = vec![0u8; steps.len()];
    for start in 0..steps.len() {
        if state[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, Vec<usize>)> = vec![(start, successors(start))];
        state[start] = 1;
        while let Some((node, next)) = path.last_mut() {
            let node = *node;
            match next.pop() {
                Some(n) if state[n] == 1 => {
                    let from = path.iter().position(|(p, _)| *p == n).unwrap_or(0);
                    let mut cycle: Vec<String> = path[from..].iter().map(|(p, _)| steps[*p].id.clone()).collect();
                    cycle.push(steps[n].id.clone());
                    return Some(cycle);
                }
                Some(n) if state[n] == 0 => {
                    state[n] = 1;
                    path.push((n, successors(n)));
                }
                Some(_) => {}
                None => {
                    state[node] = 2;
                    path.pop();
                }
            }
        }
    }
    None
}

/// A short hash of the flow as written: it changes when anything in the flow changes.
fn version_of(raw: &Value) -> String {
    let text = serde_json::to_string(raw).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    hex::encode(&digest.as_ref()[..8])
}

struct StepValidator<'p, 'l> {
    p: &'p mut Problems,
    languages: &'l Languages<'l>,
    step_ids: &'l HashSet<String>,
    /// How templates are read, where steps may send one (not in the consent notice).
    templates: Option<TemplateReader<'l>>,
}

impl StepValidator<'_, '_> {
    /// `save: {field, value}` (a field of the contact's record) or `save: {to, fields}` (a new
    /// record in a source).
    fn save(&mut self, path: &str, save: RawSave) -> StepKind {
        match (save.field, save.value, save.to, save.fields) {
            (Some(field), Some(value), None, None) => {
                self.p.non_empty(&format!("{path}.field"), &field);
                self.template(&format!("{path}.value"), &value);
                StepKind::Save { field, value }
            }
            (None, None, Some(source), Some(fields)) => {
                self.p.non_empty(&format!("{path}.to"), &source);
                if fields.is_empty() {
                    self.p.push(format!("{path}.fields"), "expected at least one field of the new record");
                }
                for (name, value) in &fields {
                    self.p.non_empty(&format!("{path}.fields"), name);
                    self.template(&format!("{path}.fields.{name}"), value);
                }
                StepKind::Create { source, fields: fields.into_iter().collect() }
            }
            _ => {
                self.p.push(
                    path,
                    "expected either field and value (a field of the contact's record) or to and fields (a new record in a source)",
                );
                StepKind::Pass
            }
        }
    }

    fn step(&mut self, path: &str, s: RawStep) -> Option<Step> {
        let given = [s.say.is_some(), s.ask.is_some(), s.save.is_some(), s.handoff.is_some(), s.branch.is_some()];
        let count = given.iter().filter(|g| **g).count();
        if count > 1 {
            self.p.push(path, "a step does one thing: give only one of say, ask, save, handoff, branch");
        }
        let ends = s.end == Some(true);
        if count == 0 && s.goto.is_none() && !ends {
            self.p.push(path, "a step needs one of say, ask, save, handoff, branch, goto or end");
        }
        if ends && s.goto.is_some() {
            self.p.push(format!("{path}.end"), "give goto or end, not both");
        }
        if s.handoff.is_some() && (s.goto.is_some() || ends) {
            self.p.push(format!("{path}.handoff"), "a hand-off ends the conversation: leave goto and end out");
        }
        let next = if ends {
            Next::End
        } else {
            match &s.goto {
                Some(g) => self.target(&format!("{path}.goto"), g),
                None => Next::Following,
            }
        };
        let kind = if let Some(v) = s.say {
            self.say(&format!("{path}.say"), v)
        } else if let Some(a) = s.ask {
            StepKind::Ask(Box::new(self.ask(&format!("{path}.ask"), a)))
        } else if let Some(save) = s.save {
            self.save(&format!("{path}.save"), save)
        } else if let Some(h) = s.handoff {
            StepKind::Handoff { topic: h.topic }
        } else if let Some(branches) = s.branch {
            if branches.is_empty() {
                self.p.push(format!("{path}.branch"), "give at least one {if: CONDITION, goto: STEP}");
            }
            let branches = branches
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    if let Err(e) = crate::expressions::check_expression(&b.condition) {
                        self.p.push(format!("{path}.branch[{i}].if"), e);
                    }
                    let next = self.target(&format!("{path}.branch[{i}].goto"), &b.goto);
                    (b.condition, next)
                })
                .collect();
            StepKind::Branch(branches)
        } else {
            StepKind::Pass
        };
        Some(Step { id: s.id, kind, next })
    }

    /// `say:` a text, `{template: …}`, or a file: `{image|document|video: URL, caption, filename}`.
    fn say(&mut self, path: &str, v: Value) -> StepKind {
        let media = ["image", "document", "video"];
        match v {
            Value::Object(mut m) if media.iter().any(|k| m.contains_key(*k)) => {
                let given: Vec<&str> = media.iter().copied().filter(|k| m.contains_key(*k)).collect();
                if given.len() > 1 {
                    self.p.push(path, format!("one file a step: give only one of {}", given.join(", ")));
                }
                let name = given[0];
                let kind = match name {
                    "image" => crate::domain::MediaKind::Image,
                    "video" => crate::domain::MediaKind::Video,
                    _ => crate::domain::MediaKind::Document,
                };
                let url = m.remove(name).and_then(|u| u.as_str().map(str::to_string)).unwrap_or_default();
                let at = format!("{path}.{name}");
                self.p.media_source(&at, kind, &url);
                self.template(&at, &url);
                let caption = m.remove("caption").and_then(|c| self.p.parse::<RawText>(&format!("{path}.caption"), c));
                let caption = caption.map(|c| self.text(&format!("{path}.caption"), c, MAX_MEDIA_CAPTION));
                let filename = m.remove("filename").and_then(|f| f.as_str().map(str::to_string));
                if filename.is_some() && kind != crate::domain::MediaKind::Document {
                    self.p.push(format!("{path}.filename"), "only a document has a file name");
                }
                for other in m.keys().filter(|k| !media.contains(&k.as_str())) {
                    self.p.push(
                        format!("{path}.{other}"),
                        "unknown field: a file takes image, document or video, caption and (a document) filename",
                    );
                }
                StepKind::SayMedia(Box::new(crate::flows::MediaStep { kind, url, caption, filename }))
            }
            Value::Object(mut m) if m.contains_key("template") => {
                let template = m.remove("template").unwrap_or_default();
                for other in m.keys() {
                    self.p.push(
                        format!("{path}.{other}"),
                        "unknown field: say takes a text, {template: …} or a file ({image|document|video: URL})",
                    );
                }
                match self.templates.and_then(|read| read(self.p, &format!("{path}.template"), template)) {
                    Some(spec) => StepKind::SayTemplate(Box::new(spec)),
                    None => StepKind::Pass,
                }
            }
            v => match self.p.parse::<RawText>(path, v) {
                Some(t) => StepKind::Say(self.text(path, t, MAX_TEXT_BODY)),
                None => StepKind::Pass,
            },
        }
    }

    fn target(&mut self, path: &str, id: &str) -> Next {
        if id == "end" {
            return Next::End;
        }
        if !self.step_ids.contains(id) {
            let mut known: Vec<&String> = self.step_ids.iter().collect();
            known.sort();
            let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
            self.p.push(path, format!("no step '{id}' in this flow; expected one of {} or end", known.join(", ")));
        }
        Next::Goto(id.to_string())
    }

    fn template(&mut self, path: &str, text: &str) {
        if let Err(e) = crate::expressions::check_template(text) {
            self.p.push(path, e);
        }
    }

    /// A text with its languages, each at most `max` characters.
    fn text(&mut self, path: &str, raw: RawText, max: usize) -> LocalText {
        let by_language = match raw {
            RawText::One(s) => [(self.languages.default.to_string(), s)].into(),
            RawText::ByLanguage(m) => m,
        };
        if !by_language.contains_key(self.languages.default) {
            self.p.push(path, format!("missing the text in the default language '{}'", self.languages.default));
        }
        for lang in self.languages.required {
            if !by_language.contains_key(lang) {
                self.p.push(path, format!("missing the text in '{lang}'"));
            }
        }
        for (lang, t) in &by_language {
            let lp = format!("{path}.{lang}");
            if t.trim().is_empty() {
                self.p.push(&lp, "must not be empty");
            } else if t.chars().count() > max {
                self.p.push(&lp, format!("at most {max} characters (WhatsApp's limit), found {}", t.chars().count()));
            }
            self.template(&lp, t);
        }
        LocalText { by_language }
    }

    fn ask(&mut self, path: &str, a: RawAsk) -> Ask {
        let kind = a.kind.clone().unwrap_or_else(|| if a.choices.is_some() { "choice" } else { "text" }.into());
        let is_choice = matches!(kind.as_str(), "choice" | "yes_no");
        let prompt =
            self.text(&format!("{path}.text"), a.text, if is_choice { MAX_INTERACTIVE_BODY } else { MAX_TEXT_BODY });
        let only = |p: &mut Problems, given: bool, name: &str| {
            if given {
                p.push(format!("{path}.{name}"), format!("not used by an ask of type {kind}"));
            }
        };
        only(self.p, a.choices.is_some() && kind != "choice", "choices");
        only(self.p, a.list_button.is_some() && kind != "choice", "list_button");
        only(self.p, (a.yes.is_some() || a.no.is_some()) && kind != "yes_no", "yes");
        only(self.p, (a.min.is_some() || a.max.is_some() || a.integer.is_some()) && kind != "number", "min");
        only(self.p, a.max_chars.is_some() && kind != "text", "max_chars");
        only(self.p, a.default_region.is_some() && kind != "phone", "default_region");
        let answer = match kind.as_str() {
            "choice" => {
                let raw = a.choices.unwrap_or_default();
                let list = a.list_button.is_some() || raw.len() > MAX_BUTTONS;
                let title_max = if list { MAX_ROW_TITLE } else { MAX_BUTTON_TITLE };
                if raw.is_empty() {
                    self.p.push(format!("{path}.choices"), "give at least one choice");
                } else if raw.len() > MAX_LIST_ROWS {
                    self.p.push(
                        format!("{path}.choices"),
                        format!("at most {MAX_LIST_ROWS} choices (WhatsApp's list limit), found {}", raw.len()),
                    );
                } else if raw.len() > MAX_BUTTONS && a.list_button.is_none() {
                    self.p.push(
                        format!("{path}.list_button"),
                        format!("more than {MAX_BUTTONS} choices are shown as a list: give the label of the button that opens it"),
                    );
                }
                let mut ids = HashSet::new();
                let options: Vec<ChoiceOption> = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| self.choice(&format!("{path}.choices[{i}]"), c, title_max, &mut ids))
                    .collect();
                let list_button = a.list_button.map(|b| self.text(&format!("{path}.list_button"), b, MAX_LIST_BUTTON));
                let titles: Vec<(String, &LocalText)> =
                    options.iter().enumerate().map(|(i, o)| (format!("{path}.choices[{i}].title"), &o.title)).collect();
                self.distinct_titles(&titles);
                AnswerKind::Choice { options, list_button }
            }
            "yes_no" => {
                let mut ids = HashSet::new();
                let mut side = |v: &mut Self, name: &str, c: Option<RawChoice>| match c {
                    Some(c) => v.choice(&format!("{path}.{name}"), c, MAX_BUTTON_TITLE, &mut ids),
                    None => {
                        v.p.push(
                            format!("{path}.{name}"),
                            "a yes/no question needs the titles of both buttons (yes and no)",
                        );
                        ChoiceOption { id: name.into(), title: LocalText::default(), value: name.into(), goto: None }
                    }
                };
                let yes = side(self, "yes", a.yes);
                let no = side(self, "no", a.no);
                self.distinct_titles(&[
                    (format!("{path}.yes.title"), &yes.title),
                    (format!("{path}.no.title"), &no.title),
                ]);
                AnswerKind::YesNo { yes, no }
            }
            "number" => {
                if let (Some(lo), Some(hi)) = (a.min, a.max) {
                    if lo > hi {
                        self.p.push(format!("{path}.min"), "must not be greater than max");
                    }
                }
                AnswerKind::Number { min: a.min, max: a.max, integer: a.integer.unwrap_or(false) }
            }
            "text" => AnswerKind::Text {
                max_chars: self.p.count(&format!("{path}.max_chars"), a.max_chars, 1000, 1..=4096) as usize,
            },
            "date" => AnswerKind::Date,
            "phone" => AnswerKind::Phone {
                default_region: self.p.region(&format!("{path}.default_region"), a.default_region.as_deref()),
            },
            "email" => AnswerKind::Email,
            other => {
                self.p.push(
                    format!("{path}.type"),
                    format!("unknown type '{other}'; expected choice, yes_no, number, text, date, phone or email"),
                );
                AnswerKind::Text { max_chars: 1000 }
            }
        };
        let retry = a.retry.map(|t| self.text(&format!("{path}.retry"), t, MAX_TEXT_BODY));
        let retries = self.p.count(&format!("{path}.retries"), a.retries, 2, 0..=10) as u32;
        let on_fail = match &a.on_fail {
            None => Next::End,
            Some(t) => self.target(&format!("{path}.on_fail"), t),
        };
        if let Some(f) = &a.save {
            self.p.non_empty(&format!("{path}.save"), f);
        }
        let sets_language = a.sets_language.unwrap_or(false);
        if sets_language {
            match &answer {
                AnswerKind::Choice { options, .. } => {
                    let known: Vec<&str> = std::iter::once(self.languages.default)
                        .chain(self.languages.required.iter().map(String::as_str))
                        .collect();
                    for (i, o) in options.iter().enumerate() {
                        if !known.contains(&o.value.as_str()) {
                            self.p.push(
                                format!("{path}.choices[{i}].value"),
                                format!("a language choice's value is a language code: one of {}", known.join(", ")),
                            );
                        }
                    }
                }
                _ => self.p.push(format!("{path}.sets_language"), "only a choice can set the language"),
            }
        }
        Ask { prompt, answer, retry, retries, on_fail, save: a.save, sets_language }
    }

    /// WhatsApp refuses a message whose buttons or rows share a title, and a typed title could
    /// not tell them apart: each title must differ from the others in every language (case
    /// and accents aside).
    fn distinct_titles(&mut self, titles: &[(String, &LocalText)]) {
        // Every language someone may be shown: a title missing in one falls back to the
        // default language's, and must differ from the others there too.
        let mut languages: Vec<&str> = vec![self.languages.default];
        languages.extend(self.languages.required.iter().map(String::as_str));
        languages.extend(titles.iter().flat_map(|(_, t)| t.by_language.keys().map(String::as_str)));
        languages.sort_unstable();
        languages.dedup();
        for language in languages {
            let mut seen: HashMap<String, &str> = HashMap::new();
            for (path, title) in titles {
                let text = title.get(language, self.languages.default);
                let key = crate::domain::normalise_keyword(text);
                if key.is_empty() {
                    continue;
                }
                match seen.get(&key) {
                    Some(first) => self.p.push(
                        format!("{path}.{language}"),
                        format!("'{text}' is also the title at {first} (in '{language}'): WhatsApp refuses options with the same title"),
                    ),
                    None => {
                        seen.insert(key, path);
                    }
                }
            }
        }
    }

    fn choice(&mut self, path: &str, c: RawChoice, title_max: usize, ids: &mut HashSet<String>) -> ChoiceOption {
        if title_max == MAX_BUTTON_TITLE {
            let long = match &c.title {
                RawText::One(t) => t.chars().count() > MAX_BUTTON_TITLE && t.chars().count() <= MAX_ROW_TITLE,
                RawText::ByLanguage(m) => {
                    m.values().any(|t| t.chars().count() > MAX_BUTTON_TITLE && t.chars().count() <= MAX_ROW_TITLE)
                }
            };
            if long {
                self.p.push(
                    format!("{path}.title"),
                    format!("a button title has at most {MAX_BUTTON_TITLE} characters (WhatsApp's limit); shorten it, or give list_button to show the choices as a list (rows take {MAX_ROW_TITLE})"),
                );
                let title = self.text(&format!("{path}.title"), c.title, MAX_ROW_TITLE);
                return self.finish_choice(path, c.id, c.value, c.goto, title, ids);
            }
        }
        let title = self.text(&format!("{path}.title"), c.title, title_max);
        self.finish_choice(path, c.id, c.value, c.goto, title, ids)
    }

    fn finish_choice(
        &mut self,
        path: &str,
        id: Option<String>,
        value: Option<String>,
        goto: Option<String>,
        title: LocalText,
        ids: &mut HashSet<String>,
    ) -> ChoiceOption {
        let default_title = title.get(self.languages.default, self.languages.default).to_string();
        let id = id.unwrap_or_else(|| default_title.clone());
        if id.chars().count() > 200 {
            self.p.push(format!("{path}.id"), "at most 200 characters");
        }
        if !ids.insert(id.clone()) {
            self.p.push(format!("{path}.id"), format!("duplicate choice id '{id}'"));
        }
        let goto = goto.as_deref().map(|g| self.target(&format!("{path}.goto"), g));
        ChoiceOption { id, value: value.unwrap_or(default_title), title, goto }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value, required: &[String]) -> (FlowSet, Vec<String>) {
        let mut p = Problems::new();
        let set = validate(&mut p, Some(v), &Languages { default: "es", required }, &|_, _, _| None);
        let errors = p.into_errors().0.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        (set, errors)
    }

    #[test]
    fn a_menu_is_read() {
        let (set, errors) = check(
            json!([{"id": "menu", "steps": [
                {"id": "hola", "say": "Hola"},
                {"id": "opcion", "ask": {"text": "¿Qué necesitas?", "choices": [
                    {"id": "horarios", "title": "Horarios", "goto": "horarios"},
                    {"title": "Otro", "goto": "end"}]}},
                {"id": "horarios", "say": {"es": "De 8:30 a 14:00", "en": "8:30 to 14:00"}, "end": true}
            ]}]),
            &[],
        );
        assert!(errors.is_empty(), "{errors:?}");
        let f = set.get("menu").unwrap();
        assert_eq!(f.steps.len(), 3);
        assert_eq!(f.expires_after, Duration::from_secs(24 * 3600));
        let StepKind::Ask(a) = &f.steps[1].kind else { panic!() };
        let AnswerKind::Choice { options, .. } = &a.answer else { panic!() };
        assert_eq!(options[1].id, "Otro", "the title is the id when none is given");
        assert_eq!(options[1].goto, Some(Next::End));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let (_, errors) = check(
            json!([
                {"id": "menu", "steps": [
                    {"id": "a", "ask": {"text": "Elige", "choices": [
                        {"title": "Un título demasiado largo para un botón", "goto": "nada"},
                        {"title": "B"}, {"title": "C"}, {"title": "D"}]}},
                    {"id": "b", "say": {"en": "Hello"}},
                    {"id": "b", "ask": {"text": "¿Edad?", "type": "edad"}},
                    {"id": "c", "say": "x", "ask": {"text": "y"}},
                    {"id": "d"},
                    {"id": "e", "branch": [{"if": "answers.a <=", "goto": "b"}, {"if": "true", "goto": "zeta"}]}
                ]},
                {"id": "menu", "steps": []}
            ]),
            &["en".to_string()],
        );
        let has = |p: &str, m: &str| errors.iter().any(|e| e.starts_with(p) && e.contains(m));
        assert!(has("flows[0].steps[0].ask.list_button", "shown as a list"), "{errors:?}");
        assert!(has("flows[0].steps[0].ask.choices[0].goto", "no step 'nada'"), "{errors:?}");
        assert!(has("flows[0].steps[0].ask.text", "missing the text in 'en'"), "{errors:?}");
        assert!(has("flows[0].steps[1].say", "default language 'es'"), "{errors:?}");
        assert!(has("flows[0].steps[2].id", "duplicate id 'b'"), "{errors:?}");
        assert!(has("flows[0].steps[2].ask.type", "unknown type 'edad'"), "{errors:?}");
        assert!(has("flows[0].steps[3]", "only one of say, ask"), "{errors:?}");
        assert!(has("flows[0].steps[4]", "needs one of say"), "{errors:?}");
        assert!(has("flows[0].steps[5].branch[0].if", ""), "{errors:?}");
        assert!(has("flows[0].steps[5].branch[1].goto", "no step 'zeta'"), "{errors:?}");
        assert!(has("flows[1].id", "duplicate id 'menu'"), "{errors:?}");
        assert!(has("flows[1].steps", "at least one step"), "{errors:?}");
    }

    #[test]
    fn a_file_needs_a_public_address_and_only_a_document_has_a_name() {
        let long = "x".repeat(1025);
        let (set, errors) = check(
            json!([{"id": "f", "steps": [
                {"id": "a", "say": {"image": "mapa.png", "filename": "mapa.png"}},
                {"id": "b", "say": {"document": "https://muni.example/r.pdf", "caption": long, "titulo": "x"}},
                {"id": "c", "say": {"video": "https://muni.example/v.mp4", "image": "https://muni.example/i.png"}},
                {"id": "d", "say": {"document": "https://muni.example/{{ answers.x }}.pdf", "filename": "r.pdf", "caption": "Requisitos"}}
            ]}]),
            &[],
        );
        let has = |path: &str, what: &str| errors.iter().any(|e| e.contains(path) && e.contains(what));
        assert!(has("steps[0].say.image", "public address"), "{errors:?}");
        assert!(has("steps[0].say.filename", "only a document"), "{errors:?}");
        assert!(has("steps[1].say.caption", "1024"), "{errors:?}");
        assert!(has("steps[1].say.titulo", "unknown field"), "{errors:?}");
        assert!(has("steps[2].say", "one file a step"), "{errors:?}");
        assert_eq!(errors.len(), 5, "the last step is valid: {errors:?}");
        let flow = set.get("f").expect("the flow");
        assert!(
            matches!(&flow.steps[3].kind, crate::flows::StepKind::SayMedia(m) if m.filename.as_deref() == Some("r.pdf"))
        );
    }

    #[test]
    fn button_titles_are_held_to_whatsapps_limits() {
        let choices = json!([{"title": "Veintiún caracteres xx"}, {"title": "B"}]);
        let (_, errors) =
            check(json!([{"id": "f", "steps": [{"id": "a", "ask": {"text": "Elige", "choices": choices}}]}]), &[]);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("choices[0].title") && e.contains("at most 20") && e.contains("list_button")),
            "{errors:?}"
        );
        let long = json!([{"title": "Un título demasiado largo hasta para una lista"}]);
        let (_, errors) =
            check(json!([{"id": "f", "steps": [{"id": "a", "ask": {"text": "Elige", "choices": long}}]}]), &[]);
        assert!(errors.iter().any(|e| e.contains("choices[0].title.es") && e.contains("at most 20")), "{errors:?}");
        // The first title fits a list row (24).
        let (_, errors) = check(
            json!([{"id": "f", "steps": [{"id": "a", "ask": {"text": "Elige", "list_button": "Ver opciones", "choices": choices}}]}]),
            &[],
        );
        assert!(errors.is_empty(), "{errors:?}");
        // Two options with the same title (case and accents aside), in any language.
        let same = json!([
            {"id": "a", "title": {"es": "Horarios", "en": "Hours"}},
            {"id": "b", "title": {"es": "horários", "en": "Opening"}}
        ]);
        let yes_no = json!({"text": "¿Sí?", "type": "yes_no", "yes": {"title": "Sí"}, "no": {"title": "SI"}});
        let (_, errors) = check(
            json!([{"id": "f", "steps": [
                {"id": "a", "ask": {"text": {"es": "Elige", "en": "Pick"}, "choices": same}},
                {"id": "b", "ask": yes_no}
            ]}]),
            &[],
        );
        assert!(errors.iter().any(|e| e.starts_with("flows[0].steps[0].ask.choices[1].title.es: 'horários' is also the title at flows[0].steps[0].ask.choices[0].title")), "{errors:?}");
        assert!(!errors.iter().any(|e| e.contains(".title.en")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("flows[0].steps[1].ask.no.title.es")), "{errors:?}");
        // The same title reached through the fallback to the default language.
        let fallback = json!([{"id": "x", "title": {"es": "Uno", "en": "One"}}, {"id": "y", "title": {"es": "Dos", "en": "Uno"}}, {"id": "z", "title": {"es": "One"}}]);
        let (_, errors) =
            check(json!([{"id": "f", "steps": [{"id": "a", "ask": {"text": "Elige", "choices": fallback}}]}]), &[]);
        assert!(errors.iter().any(|e| e.starts_with("flows[0].steps[0].ask.choices[2].title.en: 'One' is also the title at flows[0].steps[0].ask.choices[0].title")), "{errors:?}");
        let mut p = Problems::new();
        let consent = json!({"notice": "Aviso", "accept": "Acepto", "refuse": "Acepto", "version": "1"});
        consent_flow(&mut p, consent, &Languages { default: "es", required: &[] });
        let errors: Vec<String> = p.into_errors().0.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        assert!(errors.iter().any(|e| e.starts_with("inbound.consent.refuse.es")), "{errors:?}");
    }

    #[test]
    fn a_loop_without_a_question_is_refused_and_one_through_a_question_is_not() {
        let (_, errors) = check(
            json!([{"id": "f", "steps": [
                {"id": "a", "say": "Hola"},
                {"id": "b", "branch": [{"if": "true", "goto": "a"}], "goto": "c"},
                {"id": "c", "say": "Chao", "end": true}
            ]}]),
            &[],
        );
        assert!(
            errors.iter().any(|e| e.starts_with("flows[0].steps: steps a → b → a loop without asking anything")),
            "{errors:?}"
        );
        let (_, errors) = check(
            json!([{"id": "f", "steps": [
                {"id": "a", "say": "Hola"},
                {"id": "b", "ask": {"text": "¿Otra vez?", "type": "yes_no", "yes": {"title": "Sí", "goto": "a"}, "no": {"title": "No"}}},
                {"id": "c", "say": "Chao"}
            ]}]),
            &[],
        );
        assert!(errors.is_empty(), "a loop through a question waits for the person: {errors:?}");
    }

    #[test]
    fn the_version_follows_the_content() {
        let v1 = json!({"id": "a", "steps": [{"id": "x", "say": "hola"}]});
        let v2 = json!({"id": "a", "steps": [{"id": "x", "say": "chao"}]});
        assert_eq!(version_of(&v1), version_of(&v1.clone()));
        assert_ne!(version_of(&v1), version_of(&v2));
    }
}
