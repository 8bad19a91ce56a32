//! Conversations: flows defined in YAML, driven by what people write (pure core).
//!
//! A flow is a list of steps. `say` sends a text, `ask` sends a question and waits for the
//! answer, `save` writes a value to a field of the contact's record, `handoff` gives the
//! contact to a person, `end` ends; after a step the next one runs unless the step says
//! `goto` (or `end`). A choice's option can `goto` a step of its own, which is how menus branch.
//!
//! This module only decides. [`start`] and [`answer`] take the flow, the contact's
//! [`Conversation`] and what they wrote, and return a [`Turn`]: the conversation as it is now
//! (or `None` when it ended) and the [`Action`]s to carry out — messages to send, values to
//! save, a hand-off. The inbox does the IO (store, outbox, write-back) in one transaction.
//!
//! **A flow changed while someone is in it.** Each conversation keeps the version (a hash of
//! the step's content) of the question it waits on. An edit elsewhere in the flow (its last
//! text, its reminder, another question) changes nothing for them: their answer is read as
//! usual and the flow goes on in its new form. When the question itself changed, it is asked
//! again in its new wording (the answer is not read against a question the person never saw);
//! when the step is gone or no longer asks, the flow starts again from its first step. Answers
//! given so far are kept either way.

pub mod config;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::normalise_keyword;

/// WhatsApp's limits on interactive messages (the same on every provider: they are
/// WhatsApp's): reply buttons, list rows, their titles and the body.
pub const MAX_BUTTONS: usize = 3;
pub const MAX_LIST_ROWS: usize = 10;
pub const MAX_BUTTON_TITLE: usize = 20;
pub const MAX_ROW_TITLE: usize = 24;
pub const MAX_LIST_BUTTON: usize = 20;
pub const MAX_INTERACTIVE_BODY: usize = 1024;
pub const MAX_TEXT_BODY: usize = 4096;
/// Characters of a file's caption WhatsApp takes.
pub const MAX_MEDIA_CAPTION: usize = 1024;
/// Texts that follow one another go out as one message up to this many characters (the
/// shortest body a provider delivers); beyond it, as several.
pub const MAX_JOINED_TEXT: usize = 1600;
/// Steps one turn may run before it waits: a `goto` loop without an `ask` ends the
/// conversation instead of spinning.
const MAX_STEPS_PER_TURN: usize = 100;

/// A text in several languages. `get` falls back to the default language, then to any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalText {
    pub by_language: BTreeMap<String, String>,
}

impl LocalText {
    pub fn get<'a>(&'a self, language: &str, fallback: &str) -> &'a str {
        self.by_language
            .get(language)
            .or_else(|| self.by_language.get(fallback))
            .or_else(|| self.by_language.values().next())
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Every variant, for matching what people type.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.by_language.values().map(String::as_str)
    }
}

/// The configured flows.
#[derive(Debug, Clone, Default)]
pub struct FlowSet {
    pub flows: BTreeMap<String, Flow>,
    /// The language texts fall back to.
    pub default_language: String,
}

impl FlowSet {
    pub fn get(&self, id: &str) -> Option<&Flow> {
        self.flows.get(id)
    }
}

/// A `say` of a file.
#[derive(Debug, Clone)]
pub struct MediaStep {
    pub kind: crate::domain::MediaKind,
    pub url: String,
    pub caption: Option<LocalText>,
    /// The name a document is shown with.
    pub filename: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub id: String,
    /// A hash of the flow's content.
    pub version: String,
    pub steps: Vec<Step>,
    index: HashMap<String, usize>,
    /// A hash of each step's content: a conversation remembers the version of the question it
    /// waits on. (Without them, each step's version follows the flow's.)
    step_versions: HashMap<String, String>,
    /// A conversation nobody answered for this long is over; the next message starts afresh.
    pub expires_after: Duration,
    /// Sent once, inside the 24-hour window, to a contact who stopped answering for this long.
    pub reminder: Option<(Duration, LocalText)>,
    /// Where the conversation stands, written to a field of the contact's record.
    pub progress: Option<Progress>,
}

/// Values written to a field of the record as a conversation starts, completes or expires
/// (e.g. `en curso` / `completa` / `incompleta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub field: String,
    pub started: Option<String>,
    pub completed: Option<String>,
    pub expired: Option<String>,
}

impl Flow {
    pub fn new(id: String, version: String, steps: Vec<Step>, expires_after: Duration) -> Self {
        let index = steps.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        Self { id, version, steps, index, step_versions: HashMap::new(), expires_after, reminder: None, progress: None }
    }

    /// Sets the version (a hash of the content) of each step, by id.
    pub fn with_step_versions(mut self, versions: HashMap<String, String>) -> Self {
        self.step_versions = versions;
        self
    }

    /// The version of step `id`.
    pub fn step_version(&self, id: &str) -> String {
        self.step_versions.get(id).cloned().unwrap_or_else(|| format!("{}:{id}", self.version))
    }

    /// A conversation waiting for the answer to the flow's first question, whose text a
    /// rule's template showed (`on_reply`); `None` when the flow does not start with one.
    pub fn opening(&self, language: &str) -> Option<Conversation> {
        let first = self.steps.first().filter(|s| matches!(s.kind, StepKind::Ask(_)))?;
        Some(Conversation {
            flow: self.id.clone(),
            version: self.step_version(&first.id),
            step: first.id.clone(),
            attempts: 0,
            answers: BTreeMap::new(),
            language: language.to_string(),
            reminded: false,
        })
    }

    fn position(&self, step: &str) -> Option<usize> {
        self.index.get(step).copied()
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    /// Where to go after this step.
    pub next: Next,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The step below (the end of the flow after the last one).
    Following,
    Goto(String),
    End,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Say(LocalText),
    /// An approved template, its parameters templates over the answers and the record.
    SayTemplate(Box<crate::domain::TemplateSpec>),
    /// An image, a document or a video at a public address (a template over the answers and
    /// the record), with an optional caption.
    SayMedia(Box<MediaStep>),
    Ask(Box<Ask>),
    /// A value (a template over the answers and the record) saved to a field of the
    /// contact's record.
    Save {
        field: String,
        value: String,
    },
    /// A new record in a source, its fields templates like `Save`'s value.
    Create {
        source: String,
        fields: Vec<(String, String)>,
    },
    Handoff {
        topic: Option<String>,
    },
    /// Records the contact's answer to the privacy notice (the built-in consent flow).
    Consent {
        granted: bool,
    },
    /// Goes to the target of the first condition that holds (expressions over the answers,
    /// the record and the context), else on as the step says.
    Branch(Vec<(String, Next)>),
    /// Only moves on (`goto`) or ends (`end`).
    Pass,
}

#[derive(Debug, Clone)]
pub struct Ask {
    pub prompt: LocalText,
    pub answer: AnswerKind,
    /// Sent (before the question again) when an answer does not fit.
    pub retry: Option<LocalText>,
    /// Answers that do not fit before the flow gives up on this question.
    pub retries: u32,
    /// Where to go when it gives up.
    pub on_fail: Next,
    /// The field of the contact's record the answer is written to.
    pub save: Option<String>,
    /// The answer (a language code) is the language the contact is spoken to in from now on.
    pub sets_language: bool,
}

#[derive(Debug, Clone)]
pub enum AnswerKind {
    /// One of the options: reply buttons (≤ 3, unless `list_button`), or a list (≤ 10 rows)
    /// opened by a button labelled `list_button`.
    Choice {
        options: Vec<ChoiceOption>,
        list_button: Option<LocalText>,
    },
    Number {
        min: Option<f64>,
        max: Option<f64>,
        integer: bool,
    },
    /// Yes or no, as two buttons.
    YesNo {
        yes: ChoiceOption,
        no: ChoiceOption,
    },
    Text {
        max_chars: usize,
    },
    Date,
    Phone {
        default_region: phonenumber::country::Id,
    },
    Email,
}

#[derive(Debug, Clone)]
pub struct ChoiceOption {
    pub id: String,
    pub title: LocalText,
    /// What is saved as the answer (default: the title in the default language).
    pub value: String,
    pub goto: Option<Next>,
}

/// Where a contact is in a flow. Stored between messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub flow: String,
    pub version: String,
    /// The step waiting for an answer.
    pub step: String,
    /// Answers that did not fit, for this step.
    pub attempts: u32,
    /// Answers so far, by the id of the step that asked.
    pub answers: BTreeMap<String, String>,
    pub language: String,
    /// The flow's reminder went out (at most once per conversation).
    #[serde(default)]
    pub reminded: bool,
}

/// What the contact wrote: the text, and the id of the button or list row they tapped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Input {
    pub text: String,
    pub choice_id: Option<String>,
}

/// A message to send, provider-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Text(String),
    Template(crate::domain::TemplateMessage),
    Choice { body: String, options: Vec<(String, String)>, list_button: Option<String> },
    Media { kind: crate::domain::MediaKind, url: String, caption: Option<String>, filename: Option<String> },
}

/// Something the inbox carries out after a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Outgoing),
    Save {
        field: String,
        value: String,
    },
    /// Add a record to `source` with these field values (the `n`-th of the turn).
    Create {
        source: String,
        fields: Vec<(String, String)>,
    },
    Handoff {
        topic: Option<String>,
    },
    /// The contact accepted (or refused) the privacy notice.
    Consent {
        granted: bool,
    },
    /// The contact chose the language they are spoken to in.
    SetLanguage(String),
}

/// The outcome of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// `None`: the conversation ended (or was handed to a person).
    pub conversation: Option<Conversation>,
    pub actions: Vec<Action>,
    /// It ended because a question got no usable answer within its retries (not completed).
    pub gave_up: bool,
}

/// What texts are rendered with: the record's fields (nested by dotted names), and whatever
/// else the caller adds. `answers` is added by the turn.
#[derive(Debug, Clone, Default)]
pub struct TurnContext {
    pub record: serde_json::Map<String, serde_json::Value>,
}

/// A template written in the configuration, filled for a contact: in their language when it
/// is approved in it, its parameters rendered over the answers and the record, and fitted to
/// WhatsApp's limits.
pub fn template_message(
    spec: &crate::domain::TemplateSpec,
    language: &str,
    answers: &BTreeMap<String, String>,
    ctx: &TurnContext,
) -> crate::domain::TemplateMessage {
    let language =
        if spec.languages.iter().any(|l| l == language) { language.to_string() } else { spec.language.clone() };
    let mut body: Vec<String> = spec
        .body
        .iter()
        .map(|b| render(b, answers, ctx))
        .map(|v| if v.trim().is_empty() { "-".to_string() } else { v })
        .collect();
    let budget = crate::domain::TEMPLATE_TEXT_LIMIT.saturating_sub(spec.body_text_chars);
    crate::domain::normalise_parameters(&mut body, budget);
    let button_url_suffix = spec.button_url_suffix.as_ref().map(|s| {
        let s = render(s, answers, ctx);
        crate::domain::one_line(&s).unwrap_or(s)
    });
    let header = spec.header.as_ref().map(|h| crate::domain::HeaderMedia {
        kind: h.kind,
        // An answer that is not an address is sent as none: the provider refuses the message.
        link: crate::domain::media_link(&h.url, &render(&h.url, answers, ctx)).unwrap_or_default(),
        filename: h.filename.clone(),
    });
    crate::domain::TemplateMessage { name: spec.name.clone(), language, body, button_url_suffix, header }
}

/// Starts `flow` for a contact.
pub fn start(flow: &Flow, language: &str, default_language: &str, ctx: &TurnContext) -> Turn {
    let conv = Conversation {
        flow: flow.id.clone(),
        version: flow.version.clone(),
        step: String::new(),
        attempts: 0,
        answers: BTreeMap::new(),
        language: language.to_string(),
        reminded: false,
    };
    let mut run = Run::new(flow, conv, default_language, ctx);
    run.from(0);
    run.finish()
}

/// Takes the contact's answer to the step their conversation waits on.
pub fn answer(flow: &Flow, conv: Conversation, input: &Input, default_language: &str, ctx: &TurnContext) -> Turn {
    let outdated = conv.version != flow.step_version(&conv.step);
    let position = flow.position(&conv.step);
    let mut run = Run::new(flow, conv, default_language, ctx);
    let waiting = position.and_then(|p| match flow.steps.get(p) {
        Some(step @ Step { kind: StepKind::Ask(ask), .. }) => Some((p, step, ask)),
        _ => None,
    });
    let Some((pos, step, ask)) = waiting else {
        // The step is gone (or no longer asks): the flow starts again, answers kept.
        run.from(0);
        return run.finish();
    };
    if outdated {
        run.conv.attempts = 0;
        run.prompt(step, ask, None);
        return run.finish();
    }
    match read_answer(&ask.answer, input) {
        Some((value, goto)) => {
            run.conv.answers.insert(step.id.clone(), value.clone());
            run.conv.attempts = 0;
            if ask.sets_language {
                run.conv.language = value.clone();
                run.actions.push(Action::SetLanguage(value.clone()));
            }
            if let Some(field) = &ask.save {
                run.actions.push(Action::Save { field: field.clone(), value });
            }
            let next = goto.unwrap_or_else(|| step.next.clone());
            run.follow(pos, &next);
        }
        None => {
            run.conv.attempts += 1;
            if run.conv.attempts > ask.retries {
                run.conv.attempts = 0;
                let on_fail = ask.on_fail.clone();
                run.gave_up = on_fail == Next::End;
                match on_fail {
                    Next::Following => run.from(pos + 1),
                    other => run.follow(pos, &other),
                }
            } else {
                run.prompt(step, ask, ask.retry.as_ref());
            }
        }
    }
    run.finish()
}

/// Takes a reply to a message recado sent first (a rule's template) as the answer to the
/// flow's first question, whose text the template already showed: the flow goes on from
/// there (`on_reply`). `None` when the flow does not start with a question.
pub fn answer_opening(
    flow: &Flow,
    input: &Input,
    language: &str,
    default_language: &str,
    ctx: &TurnContext,
) -> Option<Turn> {
    let conv = flow.opening(language)?;
    Some(answer(flow, conv, input, default_language, ctx))
}

/// Whether `text` (a button's title, tapped) answers the flow's opening question: what
/// `recado check --online` asks of each quick-reply button of a template whose replies the
/// flow reads. A flow that does not open with a question takes nothing.
pub fn opening_accepts(flow: &Flow, text: &str) -> bool {
    match flow.steps.first().map(|s| &s.kind) {
        Some(StepKind::Ask(a)) => read_answer(&a.answer, &Input { text: text.to_string(), choice_id: None }).is_some(),
        _ => false,
    }
}

/// Whether a message is one of `keywords` (normalised: upper case, no accents), alone or with
/// only courtesy words around it ("baja por favor", "quiero darme de baja", "STOP"), never
/// inside a sentence that says something else ("no quiero que me den de baja", "cancelar la
/// hora") nor negated ("no baja").
pub fn is_keyword_message(text: &str, keywords: &[String]) -> bool {
    /// Words that may surround a keyword without changing what the message asks.
    const COURTESY: &[&str] = &[
        "POR", "FAVOR", "PORFA", "PORFAVOR", "PF", "GRACIAS", "MUCHAS", "YA", "OK", "QUIERO", "ME", "DE", "LA", "EL",
        "DAR", "DARME", "HACER", "PLEASE", "THANKS", "NOW", "AHORA", "HOLA", "BUENAS", "BUENOS", "DIAS", "TARDES",
    ];
    let normalised = normalise_keyword(text);
    let words: Vec<&str> = normalised.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    if words.iter().any(|w| matches!(*w, "NO" | "NOT" | "NUNCA" | "NAO" | "DONT" | "NI")) {
        return false;
    }
    keywords.iter().any(|k| {
        let kw: Vec<&str> = k.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
        if kw.is_empty() || kw.len() > words.len() {
            return false;
        }
        (0..=words.len() - kw.len()).any(|at| {
            words[at..at + kw.len()] == kw[..]
                && words[..at].iter().chain(&words[at + kw.len()..]).all(|w| COURTESY.contains(w))
        })
    })
}

/// Whether a conversation last touched at `updated_at` is over at `now` (milliseconds).
pub fn expired(flow: &Flow, updated_at: i64, now: i64) -> bool {
    now.saturating_sub(updated_at) > i64::try_from(flow.expires_after.as_millis()).unwrap_or(i64::MAX)
}

/// One turn in progress.
struct Run<'a> {
    flow: &'a Flow,
    conv: Conversation,
    default_language: &'a str,
    ctx: &'a TurnContext,
    actions: Vec<Action>,
    /// Texts waiting to go out with the next message (one message per turn where possible).
    pending: Vec<String>,
    ended: bool,
    waiting: bool,
    gave_up: bool,
}

impl<'a> Run<'a> {
    fn new(flow: &'a Flow, conv: Conversation, default_language: &'a str, ctx: &'a TurnContext) -> Self {
        Self {
            flow,
            conv,
            default_language,
            ctx,
            actions: Vec::new(),
            pending: Vec::new(),
            ended: false,
            waiting: false,
            gave_up: false,
        }
    }

    fn text(&self, t: &LocalText) -> String {
        render(t.get(&self.conv.language, self.default_language), &self.conv.answers, self.ctx)
    }

    /// A template step's message: in the contact's language when the template is approved in
    /// it. WhatsApp refuses an empty parameter, and a person must never see a template error,
    /// so one that renders empty is sent as "-"; parameters are made acceptable as a rule's.
    fn template(&self, spec: &crate::domain::TemplateSpec) -> crate::domain::TemplateMessage {
        template_message(spec, &self.conv.language, &self.conv.answers, self.ctx)
    }

    /// Whether a `branch` condition holds. The answers to number questions are numbers in it
    /// (`answers.satisfaccion <= 2`); a condition that cannot be evaluated does not hold (a
    /// person never sees an expression error).
    fn holds(&self, condition: &str) -> bool {
        let numbers: BTreeMap<String, serde_json::Value> = self
            .conv
            .answers
            .iter()
            .map(|(step, value)| {
                let number = self
                    .flow
                    .position(step)
                    .and_then(|p| self.flow.steps.get(p))
                    .filter(|s| matches!(&s.kind, StepKind::Ask(a) if matches!(a.answer, AnswerKind::Number { .. })))
                    .and_then(|_| value.parse::<f64>().ok())
                    .filter(|f| f.is_finite());
                let v = match number {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9e15 => serde_json::Value::from(f as i64),
                    Some(f) => serde_json::Value::from(f),
                    None => serde_json::Value::String(value.clone()),
                };
                (step.clone(), v)
            })
            .collect();
        let mut context = self.ctx.record.clone();
        context.insert("answers".into(), serde_json::to_value(numbers).unwrap_or_default());
        let env = crate::expressions::environment();
        env.compile_expression(condition)
            .and_then(|e| e.eval(serde_json::Value::Object(context)))
            .is_ok_and(|v| v.is_true())
    }

    /// Runs steps from `pos` until one waits for an answer or the flow ends.
    fn from(&mut self, mut pos: usize) {
        for _ in 0..MAX_STEPS_PER_TURN {
            let Some(step) = self.flow.steps.get(pos) else {
                self.ended = true;
                return;
            };
            // Where a branch step's condition that holds leads (else: the step's own next).
            let mut branched: Option<&Next> = None;
            match &step.kind {
                StepKind::Say(t) => {
                    let t = self.text(t);
                    self.pending.push(t);
                }
                StepKind::SayTemplate(spec) => {
                    // The texts before it go first, in their own message.
                    self.flush();
                    let message = self.template(spec);
                    self.actions.push(Action::Send(Outgoing::Template(message)));
                }
                StepKind::SayMedia(media) => {
                    // The texts before it go first, in their own message.
                    self.flush();
                    let caption = media.caption.as_ref().map(|c| self.text(c)).filter(|c| !c.trim().is_empty());
                    self.actions.push(Action::Send(Outgoing::Media {
                        kind: media.kind,
                        url: crate::domain::media_link(&media.url, &render(&media.url, &self.conv.answers, self.ctx))
                            .unwrap_or_default(),
                        caption,
                        filename: media.filename.clone(),
                    }));
                }
                StepKind::Ask(ask) => {
                    self.prompt(step, ask, None);
                    return;
                }
                StepKind::Save { field, value } => {
                    let value = render(value, &self.conv.answers, self.ctx);
                    self.actions.push(Action::Save { field: field.clone(), value });
                }
                StepKind::Create { source, fields } => {
                    let fields =
                        fields.iter().map(|(f, v)| (f.clone(), render(v, &self.conv.answers, self.ctx))).collect();
                    self.actions.push(Action::Create { source: source.clone(), fields });
                }
                StepKind::Handoff { topic } => {
                    self.flush();
                    self.actions.push(Action::Handoff { topic: topic.clone() });
                    self.ended = true;
                    return;
                }
                StepKind::Consent { granted } => self.actions.push(Action::Consent { granted: *granted }),
                StepKind::Pass => {}
                StepKind::Branch(branches) => {
                    branched = branches.iter().find(|(c, _)| self.holds(c)).map(|(_, n)| n);
                }
            }
            match branched.unwrap_or(&step.next) {
                Next::Following => pos += 1,
                Next::End => {
                    self.ended = true;
                    return;
                }
                Next::Goto(id) => match self.flow.position(id) {
                    Some(p) => pos = p,
                    None => {
                        self.ended = true;
                        return;
                    }
                },
            }
        }
        // A loop of steps that never asks anything.
        self.ended = true;
    }

    /// Goes on after the step at `pos` as `next` says.
    fn follow(&mut self, pos: usize, next: &Next) {
        match next {
            Next::Following => self.from(pos + 1),
            Next::End => self.ended = true,
            Next::Goto(id) => match self.flow.position(id) {
                Some(p) => self.from(p),
                None => self.ended = true,
            },
        }
    }

    /// Sends the question of `step` (after `before`, a retry text) and waits for its answer.
    fn prompt(&mut self, step: &Step, ask: &Ask, before: Option<&LocalText>) {
        if let Some(t) = before {
            let t = self.text(t);
            self.pending.push(t);
        }
        let question = self.text(&ask.prompt);
        let lang = self.conv.language.clone();
        let options = |opts: &[&ChoiceOption]| -> Vec<(String, String)> {
            opts.iter().map(|o| (o.id.clone(), o.title.get(&lang, self.default_language).to_string())).collect()
        };
        // A question with options has at most 1,024 characters (WhatsApp's limit): answers
        // rendered into it must not push it over.
        let question = match &ask.answer {
            AnswerKind::Choice { .. } | AnswerKind::YesNo { .. } => cut(&question, MAX_INTERACTIVE_BODY),
            _ => question,
        };
        let message = match &ask.answer {
            AnswerKind::Choice { options: opts, list_button } => {
                let refs: Vec<&ChoiceOption> = opts.iter().collect();
                Some((options(&refs), list_button.as_ref().map(|b| self.text(b))))
            }
            AnswerKind::YesNo { yes, no } => Some((options(&[yes, no]), None)),
            _ => None,
        };
        match message {
            Some((options, list_button)) => {
                // The texts before the question share its message when they fit.
                let mut body = self.pending.join("\n\n");
                if body.is_empty() {
                    body = question;
                } else if body.chars().count() + 2 + question.chars().count() <= MAX_INTERACTIVE_BODY {
                    body = format!("{body}\n\n{question}");
                } else {
                    self.flush();
                    body = question;
                }
                self.pending.clear();
                self.actions.push(Action::Send(Outgoing::Choice { body, options, list_button }));
            }
            None => {
                self.pending.push(question);
                self.flush();
            }
        }
        self.conv.step = step.id.clone();
        self.conv.version = self.flow.step_version(&step.id);
        self.waiting = true;
    }

    /// Sends the texts waiting: as one message, or as several when together they would pass
    /// [`MAX_JOINED_TEXT`]. A text longer than that by itself (answers rendered into it) is
    /// split at line breaks or spaces, so every provider delivers it.
    fn flush(&mut self) {
        let mut message = String::new();
        let pieces: Vec<String> = std::mem::take(&mut self.pending)
            .iter()
            .flat_map(|t| split_text(t, MAX_JOINED_TEXT))
            // A text that rendered empty is not a message (WhatsApp refuses an empty body).
            .filter(|p| !p.trim().is_empty())
            .collect();
        for text in pieces {
            let joined = message.chars().count() + 2 + text.chars().count();
            if !message.is_empty() && joined > MAX_JOINED_TEXT {
                self.actions.push(Action::Send(Outgoing::Text(std::mem::take(&mut message))));
            }
            if !message.is_empty() {
                message.push_str("\n\n");
            }
            message.push_str(&text);
        }
        if !message.is_empty() {
            self.actions.push(Action::Send(Outgoing::Text(message)));
        }
    }

    fn finish(mut self) -> Turn {
        self.flush();
        let conversation = if self.ended || !self.waiting { None } else { Some(self.conv) };
        Turn { conversation, actions: self.actions, gave_up: self.gave_up }
    }
}

/// `text` in pieces of at most `max` characters, split at the last line break, else the last
/// space, within each piece (a word longer than `max` is cut).
fn split_text(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest: &str = text;
    while rest.chars().count() > max {
        let end = rest.char_indices().nth(max).map(|(i, _)| i).unwrap_or(rest.len());
        let head = &rest[..end];
        let at = head.rfind('\n').or_else(|| head.rfind(' ')).filter(|i| *i > 0).unwrap_or(end);
        out.push(rest[..at].trim_end().to_string());
        rest = rest[at..].trim_start();
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// Renders a flow text: `{{ answers.que }}`, `{{ Nombre }}` (a field of the record). Unknown
/// names render empty: a person must never see a template error.
pub fn render(text: &str, answers: &BTreeMap<String, String>, ctx: &TurnContext) -> String {
    if !text.contains("{{") && !text.contains("{%") {
        return text.to_string();
    }
    let mut env = crate::expressions::environment();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    let mut context = ctx.record.clone();
    context.insert("answers".into(), serde_json::to_value(answers).unwrap_or_default());
    env.render_str(text, serde_json::Value::Object(context)).unwrap_or_else(|_| text.to_string())
}

/// Reads an answer: its value and, for a choice with its own `goto`, where to go.
fn read_answer(kind: &AnswerKind, input: &Input) -> Option<(String, Option<Next>)> {
    let text = input.text.trim();
    match kind {
        AnswerKind::Choice { options, .. } => {
            pick(options.iter().collect::<Vec<_>>().as_slice(), input).map(|o| (o.value.clone(), o.goto.clone()))
        }
        AnswerKind::YesNo { yes, no } => {
            if let Some(o) = pick(&[yes, no], input) {
                return Some((o.value.clone(), o.goto.clone()));
            }
            let word = normalise_keyword(text.trim_end_matches(['.', '!']));
            match word.as_str() {
                "SI" | "S" | "YES" | "Y" | "SIM" | "OUI" | "CLARO" | "OK" => {
                    Some((yes.value.clone(), yes.goto.clone()))
                }
                "NO" | "N" | "NAO" | "NON" => Some((no.value.clone(), no.goto.clone())),
                _ => None,
            }
        }
        AnswerKind::Number { min, max, integer } => {
            let n: f64 = text.replace(',', ".").parse().ok().filter(|n: &f64| n.is_finite())?;
            if *integer && n.fract() != 0.0 {
                return None;
            }
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return None;
            }
            Some((crate::domain::record::format_number(n), None))
        }
        AnswerKind::Text { max_chars } => {
            (!text.is_empty() && text.chars().count() <= *max_chars).then(|| (text.to_string(), None))
        }
        AnswerKind::Date => {
            let d = crate::schedule::parse_date(text, crate::schedule::DateOrder::Dmy).ok()?;
            Some((d.date.format("%Y-%m-%d").to_string(), None))
        }
        AnswerKind::Phone { default_region } => {
            let p = crate::domain::PhoneNumber::parse(text, *default_region).ok()?;
            Some((p.as_str().to_string(), None))
        }
        AnswerKind::Email => valid_email(text).then(|| (text.to_string(), None)),
    }
}

/// The option a person chose: the button or row they tapped, its title typed out (case and
/// accents aside), or its number in a numbered list. A title wins over a position, so with
/// options "10", "20" and "1" typing "1" picks "1", not the first option.
fn pick<'o>(options: &[&'o ChoiceOption], input: &Input) -> Option<&'o ChoiceOption> {
    if let Some(id) = &input.choice_id {
        if let Some(o) = options.iter().find(|o| &o.id == id) {
            return Some(o);
        }
    }
    let typed = normalise_keyword(input.text.trim());
    if typed.is_empty() {
        return None;
    }
    let titled = options
        .iter()
        .find(|o| o.title.all().any(|t| normalise_keyword(t) == typed) || normalise_keyword(&o.id) == typed);
    if let Some(o) = titled {
        return Some(o);
    }
    let number = input.text.trim().trim_end_matches(['.', ')']);
    number.parse::<usize>().ok().and_then(|n| n.checked_sub(1)).and_then(|i| options.get(i)).copied()
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && s.len() <= 254
        && !s.chars().any(char::is_whitespace)
        && !domain.contains('@')
        && domain.split('.').count() >= 2
        && domain.split('.').all(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::answer as answer_fn;
    use super::*;

    fn text(s: &str) -> LocalText {
        LocalText { by_language: [("es".to_string(), s.to_string())].into() }
    }

    fn opt(id: &str, title: &str, goto: Option<&str>) -> ChoiceOption {
        ChoiceOption {
            id: id.into(),
            title: text(title),
            value: title.into(),
            goto: goto.map(|g| Next::Goto(g.into())),
        }
    }

    fn step(id: &str, kind: StepKind, next: Next) -> Step {
        Step { id: id.into(), kind, next }
    }

    fn ask(prompt: &str, answer: AnswerKind) -> Ask {
        Ask {
            prompt: text(prompt),
            answer,
            retry: Some(text("No entendí.")),
            retries: 1,
            on_fail: Next::End,
            save: None,
            sets_language: false,
        }
    }

    fn menu() -> Flow {
        Flow::new(
            "menu".into(),
            "v1".into(),
            vec![
                step("hola", StepKind::Say(text("¡Hola!")), Next::Following),
                step(
                    "opcion",
                    StepKind::Ask(Box::new(ask(
                        "¿Qué necesitas?",
                        AnswerKind::Choice {
                            options: vec![
                                opt("horarios", "Horarios", Some("horarios")),
                                opt("reporte", "Reportar", Some("que")),
                            ],
                            list_button: None,
                        },
                    ))),
                    Next::End,
                ),
                step("horarios", StepKind::Say(text("De 8:30 a 14:00.")), Next::End),
                step(
                    "que",
                    StepKind::Ask(Box::new(Ask {
                        save: Some("Problema".into()),
                        ..ask("¿Qué pasó?", AnswerKind::Text { max_chars: 500 })
                    })),
                    Next::Following,
                ),
                step("gracias", StepKind::Say(text("Gracias: {{ answers.que }}")), Next::End),
            ],
            Duration::from_secs(3600),
        )
    }

    fn ctx() -> TurnContext {
        TurnContext::default()
    }

    fn says(i: &str) -> Input {
        Input { text: i.into(), choice_id: None }
    }

    #[test]
    fn a_menu_greets_and_asks_in_one_message_then_branches() {
        let f = menu();
        let t = start(&f, "es", "es", &ctx());
        assert_eq!(
            t.actions,
            vec![Action::Send(Outgoing::Choice {
                body: "¡Hola!\n\n¿Qué necesitas?".into(),
                options: vec![("horarios".into(), "Horarios".into()), ("reporte".into(), "Reportar".into())],
                list_button: None
            })]
        );
        let conv = t.conversation.unwrap();
        assert_eq!(conv.step, "opcion");
        // Tapped, numbered and typed answers all pick the option.
        for input in
            [Input { text: "Horarios".into(), choice_id: Some("horarios".into()) }, says("1"), says(" horarios ")]
        {
            let t = answer(&f, conv.clone(), &input, "es", &ctx());
            assert_eq!(t.actions, vec![Action::Send(Outgoing::Text("De 8:30 a 14:00.".into()))]);
            assert!(t.conversation.is_none(), "the branch ends the conversation");
        }
    }

    #[test]
    fn a_typed_title_wins_over_a_position() {
        let options = [opt("diez", "10", None), opt("veinte", "20", None), opt("uno", "1", None)];
        let refs: Vec<&ChoiceOption> = options.iter().collect();
        let picked = |s: &str| pick(&refs, &says(s)).map(|o| o.id.clone());
        assert_eq!(picked("1").as_deref(), Some("uno"), "the title \"1\", not the first option");
        assert_eq!(picked("20").as_deref(), Some("veinte"));
        assert_eq!(picked("2").as_deref(), Some("veinte"), "no title \"2\": the second option");
        assert_eq!(picked("2.").as_deref(), Some("veinte"));
        assert_eq!(picked("4"), None);
    }

    #[test]
    fn a_free_text_answer_is_saved_and_rendered() {
        let f = menu();
        let conv = start(&f, "es", "es", &ctx()).conversation.unwrap();
        let conv = answer(&f, conv, &says("2"), "es", &ctx()).conversation.unwrap();
        assert_eq!(conv.step, "que");
        let t = answer(&f, conv, &says("Un bache"), "es", &ctx());
        assert_eq!(
            t.actions,
            vec![
                Action::Save { field: "Problema".into(), value: "Un bache".into() },
                Action::Send(Outgoing::Text("Gracias: Un bache".into()))
            ]
        );
        assert!(t.conversation.is_none());
    }

    #[test]
    fn an_answer_that_does_not_fit_is_asked_again_then_given_up() {
        let f = menu();
        let conv = start(&f, "es", "es", &ctx()).conversation.unwrap();
        let t = answer(&f, conv, &says("7"), "es", &ctx());
        let Action::Send(Outgoing::Choice { body, .. }) = &t.actions[0] else { panic!("{t:?}") };
        assert_eq!(body, "No entendí.\n\n¿Qué necesitas?");
        let conv = t.conversation.unwrap();
        assert_eq!(conv.attempts, 1);
        let t = answer(&f, conv, &says("qué?"), "es", &ctx());
        assert!(t.conversation.is_none(), "retries: 1, so the second miss gives up (on_fail: end)");
        assert!(t.actions.is_empty());
        assert!(t.gave_up, "not a completed conversation");
    }

    #[test]
    fn each_answer_type_reads_what_people_type() {
        let read = |k: AnswerKind, s: &str| read_answer(&k, &says(s)).map(|(v, _)| v);
        let num = || AnswerKind::Number { min: Some(1.0), max: Some(7.0), integer: true };
        assert_eq!(read(num(), "5"), Some("5".into()));
        assert_eq!(read(num(), "9"), None);
        assert_eq!(read(num(), "2,5"), None);
        assert_eq!(read(AnswerKind::Number { min: None, max: None, integer: false }, "2,5"), Some("2.5".into()));
        let yn = || AnswerKind::YesNo { yes: opt("si", "Sí", None), no: opt("no", "No", None) };
        assert_eq!(read(yn(), "si"), Some("Sí".into()));
        assert_eq!(read(yn(), "NO."), Some("No".into()));
        assert_eq!(read(yn(), "tal vez"), None);
        assert_eq!(read(AnswerKind::Date, "24/12/2026"), Some("2026-12-24".into()));
        assert_eq!(read(AnswerKind::Date, "mañana"), None);
        assert_eq!(read(AnswerKind::Email, "ana@example.org"), Some("ana@example.org".into()));
        assert_eq!(read(AnswerKind::Email, "ana at example"), None);
        assert_eq!(read(AnswerKind::Email, "ana@example"), None);
        let phone = || AnswerKind::Phone { default_region: phonenumber::country::Id::CL };
        assert_eq!(read(phone(), "9 8765 4321"), Some("+56987654321".into()));
        assert_eq!(read(phone(), "123"), None);
        assert_eq!(read(AnswerKind::Text { max_chars: 5 }, "hola"), Some("hola".into()));
        assert_eq!(read(AnswerKind::Text { max_chars: 5 }, "hola mundo"), None);
        assert_eq!(read(AnswerKind::Text { max_chars: 5 }, "  "), None);
    }

    #[test]
    fn a_changed_flow_asks_the_step_again_or_starts_over() {
        let f = menu();
        let conv = start(&f, "es", "es", &ctx()).conversation.unwrap();
        let mut changed = menu();
        changed.version = "v2".into();
        let t = answer(&changed, conv.clone(), &says("1"), "es", &ctx());
        assert_eq!(t.conversation.as_ref().unwrap().step, "opcion", "the same step, asked again");
        assert_eq!(t.conversation.as_ref().unwrap().version, "v2:opcion");
        assert!(matches!(&t.actions[0], Action::Send(Outgoing::Choice { body, .. }) if body == "¿Qué necesitas?"));
        let mut gone = conv;
        gone.step = "paso_borrado".into();
        let t = answer(&f, gone, &says("1"), "es", &ctx());
        assert_eq!(t.conversation.unwrap().step, "opcion", "from the start");
    }

    #[test]
    fn a_branch_goes_where_the_first_condition_that_holds_says() {
        let nota = Ask {
            save: None,
            ..ask("Del 1 al 5?", AnswerKind::Number { min: Some(1.0), max: Some(5.0), integer: true })
        };
        let f = Flow::new(
            "f".into(),
            "v".into(),
            vec![
                step("nota", StepKind::Ask(Box::new(nota)), Next::Following),
                step(
                    "segun",
                    StepKind::Branch(vec![
                        ("answers.nota <= 2".into(), Next::Goto("mejorar".into())),
                        ("Curso == 'Soldadura' and answers.nota == 5".into(), Next::Goto("soldadura".into())),
                        ("answers.nota >".into(), Next::End),
                    ]),
                    Next::Goto("gracias".into()),
                ),
                step("mejorar", StepKind::Say(text("¿Qué mejorarías?")), Next::End),
                step("soldadura", StepKind::Say(text("¡Bravo, soldador!")), Next::End),
                step("gracias", StepKind::Say(text("¡Gracias!")), Next::End),
            ],
            Duration::from_secs(60),
        );
        let mut record = serde_json::Map::new();
        record.insert("Curso".into(), serde_json::json!("Soldadura"));
        let ctx = TurnContext { record };
        let said = |answer: &str| {
            let conv = start(&f, "es", "es", &ctx).conversation.unwrap();
            let t = answer_fn(&f, conv, &says(answer), "es", &ctx);
            match &t.actions[..] {
                [Action::Send(Outgoing::Text(s))] => s.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(said("2"), "¿Qué mejorarías?", "a number, compared as a number");
        assert_eq!(said("5"), "¡Bravo, soldador!", "with the record's fields");
        assert_eq!(said("4"), "¡Gracias!", "none holds (nor the broken one): the step's goto");
    }

    #[test]
    fn a_text_longer_than_a_provider_delivers_is_split_at_spaces() {
        let word = "palabra ";
        let long = word.repeat(300); // 2,400 characters
        let pieces = split_text(long.trim_end(), MAX_JOINED_TEXT);
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert!(pieces
            .iter()
            .all(|p| p.chars().count() <= MAX_JOINED_TEXT && p.starts_with("palabra") && p.ends_with("palabra")));
        assert_eq!(pieces.join(" "), long.trim_end(), "nothing lost");
        let unbroken = "x".repeat(1700);
        assert_eq!(split_text(&unbroken, MAX_JOINED_TEXT).concat(), unbroken);
        assert_eq!(split_text("", 10), vec![String::new()]);
        assert_eq!(cut("ñandú", 4), "ñan…");
    }

    #[test]
    fn texts_in_a_row_share_a_message_only_up_to_the_joined_limit() {
        let long = "a".repeat(1000);
        let f = Flow::new(
            "f".into(),
            "v".into(),
            vec![
                step("uno", StepKind::Say(text(&long)), Next::Following),
                step("dos", StepKind::Say(text(&long)), Next::Following),
                step("tres", StepKind::Say(text("corto")), Next::End),
            ],
            Duration::from_secs(60),
        );
        let t = start(&f, "es", "es", &ctx());
        assert_eq!(
            t.actions,
            vec![Action::Send(Outgoing::Text(long.clone())), Action::Send(Outgoing::Text(format!("{long}\n\ncorto"))),]
        );
    }

    #[test]
    fn an_edit_elsewhere_in_the_flow_does_not_discard_the_answer() {
        let versions = |last: &str| -> HashMap<String, String> {
            [("opcion", "a"), ("que", "b"), ("gracias", last)].map(|(k, v)| (k.to_string(), v.to_string())).into()
        };
        let f = menu().with_step_versions(versions("c"));
        let conv = start(&f, "es", "es", &ctx()).conversation.unwrap();
        assert_eq!(conv.version, "a");
        let mut edited = menu().with_step_versions(versions("c2"));
        edited.version = "v2".into();
        let t = answer(&edited, conv, &says("Horarios"), "es", &ctx());
        assert_eq!(
            t.actions,
            vec![Action::Send(Outgoing::Text("De 8:30 a 14:00.".into()))],
            "answered, not asked again"
        );
    }

    #[test]
    fn opt_out_words_count_alone_or_in_short_messages_only() {
        let k = vec!["BAJA".to_string(), "STOP".to_string(), "DARME DE BAJA".to_string(), "CANCELAR".to_string()];
        for yes in
            ["BAJA", "baja", "Bája por favor", "STOP!", "quiero darme de baja", "baja gracias", "hola, baja porfa"]
        {
            assert!(is_keyword_message(yes, &k), "{yes}");
        }
        for no in [
            "no quiero que me den de baja",
            "no baja",
            "baja la música",
            "cancelar la hora",
            "la baja de presión fue ayer, gracias doctora",
            "stopped",
            "hola",
            "",
        ] {
            assert!(!is_keyword_message(no, &k), "{no}");
        }
    }

    #[test]
    fn a_reply_to_a_template_answers_the_flows_first_question() {
        let f = Flow::new(
            "confirmar".into(),
            "v".into(),
            vec![
                step(
                    "respuesta",
                    StepKind::Ask(Box::new(Ask {
                        save: Some("Estado".into()),
                        ..ask(
                            "¿Confirmas?",
                            AnswerKind::Choice {
                                options: vec![
                                    ChoiceOption {
                                        value: "Confirmada".into(),
                                        ..opt("si", "Confirmo", Some("gracias"))
                                    },
                                    opt("cambio", "Necesito cambiar la hora", Some("cambio")),
                                ],
                                list_button: None,
                            },
                        )
                    })),
                    Next::End,
                ),
                step("gracias", StepKind::Say(text("¡Gracias!")), Next::End),
                step("cambio", StepKind::Say(text("Te llamaremos.")), Next::End),
            ],
            Duration::from_secs(60),
        );
        let tap = Input { text: "Confirmo".into(), choice_id: Some("Confirmo".into()) };
        let t = answer_opening(&f, &tap, "es", "es", &ctx()).unwrap();
        assert_eq!(
            t.actions,
            vec![
                Action::Save { field: "Estado".into(), value: "Confirmada".into() },
                Action::Send(Outgoing::Text("¡Gracias!".into()))
            ]
        );
        assert!(t.conversation.is_none());
    }

    #[test]
    fn a_language_chosen_in_the_chat_is_spoken_from_then_on() {
        let both = |es: &str, en: &str| LocalText {
            by_language: [("es".to_string(), es.to_string()), ("en".to_string(), en.to_string())].into(),
        };
        let f = Flow::new(
            "idioma".into(),
            "v".into(),
            vec![
                step(
                    "idioma",
                    StepKind::Ask(Box::new(Ask {
                        sets_language: true,
                        ..ask(
                            "¿Idioma? / Language?",
                            AnswerKind::Choice {
                                options: vec![
                                    ChoiceOption { value: "es".into(), ..opt("es", "Español", None) },
                                    ChoiceOption { value: "en".into(), ..opt("en", "English", None) },
                                ],
                                list_button: None,
                            },
                        )
                    })),
                    Next::Following,
                ),
                step("hola", StepKind::Say(both("Hola", "Hello")), Next::End),
            ],
            Duration::from_secs(60),
        );
        let conv = start(&f, "es", "es", &ctx()).conversation.unwrap();
        let t = answer(&f, conv, &says("English"), "es", &ctx());
        assert_eq!(t.actions, vec![Action::SetLanguage("en".into()), Action::Send(Outgoing::Text("Hello".into()))]);
    }

    #[test]
    fn a_goto_loop_without_a_question_ends() {
        let f = Flow::new(
            "loop".into(),
            "v".into(),
            vec![step("a", StepKind::Pass, Next::Goto("b".into())), step("b", StepKind::Pass, Next::Goto("a".into()))],
            Duration::from_secs(60),
        );
        let t = start(&f, "es", "es", &ctx());
        assert!(t.conversation.is_none());
    }

    #[test]
    fn texts_fall_back_to_the_default_language_and_render_record_fields() {
        let t = LocalText { by_language: [("es".into(), "Hola".into()), ("en".into(), "Hello".into())].into() };
        assert_eq!(t.get("en", "es"), "Hello");
        assert_eq!(t.get("qu", "es"), "Hola");
        let mut record = serde_json::Map::new();
        record.insert("Nombre".into(), serde_json::json!("Ana"));
        let ctx = TurnContext { record };
        assert_eq!(render("Hola {{ Nombre }} {{ Falta }}", &BTreeMap::new(), &ctx), "Hola Ana ");
    }

    #[test]
    fn a_template_step_never_sends_an_empty_or_multi_line_parameter() {
        let spec = crate::domain::TemplateSpec {
            name: "requisitos".into(),
            language: "es".into(),
            languages: vec!["en".into()],
            body: vec!["{{ Falta }}".into(), "{{ answers.que }}".into()],
            button_url_suffix: None,
            body_text_chars: crate::domain::DEFAULT_BODY_TEXT_CHARS,
            header: None,
        };
        let f = Flow::new(
            "f".into(),
            "v".into(),
            vec![
                step(
                    "que",
                    StepKind::Ask(Box::new(ask("¿Qué?", AnswerKind::Text { max_chars: 500 }))),
                    Next::Following,
                ),
                step("hola", StepKind::Say(text("Gracias.")), Next::Following),
                step("req", StepKind::SayTemplate(Box::new(spec)), Next::End),
            ],
            Duration::from_secs(60),
        );
        let conv = start(&f, "qu", "es", &ctx()).conversation.unwrap();
        let t = answer(&f, conv, &says("un bache\nen la esquina"), "es", &ctx());
        let message = crate::domain::TemplateMessage {
            name: "requisitos".into(),
            language: "es".into(),
            body: vec!["-".into(), "un bache en la esquina".into()],
            button_url_suffix: None,
            header: None,
        };
        assert_eq!(
            t.actions,
            vec![Action::Send(Outgoing::Text("Gracias.".into())), Action::Send(Outgoing::Template(message))],
            "not approved in qu: the template's own language; the text goes before it"
        );
        assert!(t.conversation.is_none());
    }
}
