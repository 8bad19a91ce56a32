//! Hand-offs applied: opening one (from the inbox processor: a keyword, a flow's `handoff`
//! step), a message from the person while it is open, and what staff ask in the inbox (from
//! the inbox source's poller: a reply, a close). Each runs inside the caller's transaction,
//! so a hand-off moves only with its consequences: the outbox messages, the write-back
//! values for its inbox record, the contact's conversation row.
//!
//! recado writes the inbox record's own fields through [`WriteTarget::NewRecord`] under the
//! hand-off's key: the first write adds the record, every later one finds it by key, wherever
//! staff sorted it. The reply field is emptied through [`WriteTarget::Taken`], so a newer
//! reply typed meanwhile is not lost. Staff replies are messages of the inbox record (their
//! statuses land in the inbox source's `write_back` fields); the automatic answers (opened,
//! closed) belong to no record, like the bot's.

use std::collections::HashSet;

use tracing::{info, warn};

use super::EngineCtx;
use crate::domain::{
    mask_phone, FieldWrite, Intent, MessageContent, MessageState, PhoneNumber, RecordKey, WriteTarget,
};
use crate::handoff::{self, state, HandoffConfig, Speaker, StaffAction};
use crate::store::{self, Handoff, PendingReply, StoreError, Tx};

/// Rule id of a staff reply (a message of the inbox record).
pub const REPLY_RULE: &str = "handoff:reply";
/// Rule id of the template that invites the person to write again.
pub const INVITE_RULE: &str = "handoff:invite";
/// Rule id of the automatic answers (opened, closed).
pub const ANSWER_RULE: &str = "handoff:answer";
/// The prefix every hand-off message's rule id has.
pub const RULE_PREFIX: &str = "handoff:";

/// What applying a hand-off step produced besides the store's rows.
#[derive(Debug, Default)]
pub struct Applied {
    pub writes: Vec<FieldWrite>,
    /// Providers with new messages.
    pub providers: HashSet<String>,
}

/// Why a hand-off closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Staff ticked the close field: the person is told, and talks to the bot again.
    ByStaff,
    /// The person opted out: nothing more is sent to them.
    OptedOut,
}

/// A hand-off about to open.
pub struct Opening<'a> {
    pub phone: &'a str,
    pub provider_id: &'a str,
    /// The message that asked for it (its key derives from it, so handling it again opens
    /// nothing new).
    pub inbound_id: &'a str,
    pub record: Option<(String, RecordKey)>,
    pub topic: Option<String>,
    pub language: &'a str,
    /// What the person wrote that opened it, for the transcript.
    pub asked: String,
}

/// The inbox key of the hand-off a message opens.
pub fn handoff_key(inbound_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("handoff:{inbound_id}").as_bytes());
    let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("H-{hex}")
}

fn clock(ctx: &EngineCtx, source_id: &str, at_ms: i64) -> String {
    use chrono::TimeZone;
    match ctx.source_tz(source_id).timestamp_millis_opt(at_ms).single() {
        Some(t) => t.format("%d/%m %H:%M").to_string(),
        None => String::new(),
    }
}

fn append(
    ctx: &EngineCtx,
    cfg: &HandoffConfig,
    h: &mut Handoff,
    at: i64,
    speaker: Speaker,
    text: &str,
    by: Option<&str>,
) {
    let line = handoff::transcript_line(&clock(ctx, &cfg.inbox, at), speaker, text, by);
    h.transcript =
        handoff::append_line(&h.transcript, &line, cfg.transcript_messages, handoff::config::MAX_TRANSCRIPT_CHARS);
}

/// The inbox record's own fields that move: transcript, waiting time, state.
fn progress_writes(ctx: &EngineCtx, cfg: &HandoffConfig, h: &Handoff) -> Vec<FieldWrite> {
    let state = if h.closed_at.is_some() {
        state::CLOSED.to_string()
    } else if !h.pending.is_empty() {
        state::WAITING_FOR_PERSON.to_string()
    } else if let (Some(_), Some(after)) = (h.flagged_at, cfg.unanswered_after) {
        format!("{} {}", state::UNANSWERED, crate::validation::human_duration(after))
    } else {
        state::OPEN.to_string()
    };
    let target = WriteTarget::NewRecord(RecordKey(h.key.clone()));
    let write = |field: &str, value: String| FieldWrite {
        source_id: cfg.inbox.clone(),
        target: target.clone(),
        field: field.to_string(),
        value,
    };
    let mut out = vec![write(&cfg.fields.transcript, h.transcript.clone()), write(&cfg.fields.state, state)];
    if let Some(f) = &cfg.fields.waiting_since {
        out.push(write(f, h.waiting_since.map(|t| ctx.format_time(&cfg.inbox, t)).unwrap_or_default()));
    }
    out
}

/// An automatic answer (opened, closed): a message of no record, sent inside the window only.
async fn queue_answer(
    tx: &mut Tx,
    h: &Handoff,
    what: &str,
    text: &str,
    now: i64,
    applied: &mut Applied,
) -> Result<(), StoreError> {
    let intent = super::recordless_intent(
        ANSWER_RULE,
        &h.provider_id,
        format!("{RULE_PREFIX}{}:{what}", h.key),
        &h.phone,
        MessageContent::Text { body: text.to_string() },
    );
    store::insert_intent(tx, &intent, now, now).await?;
    applied.providers.insert(h.provider_id.clone());
    Ok(())
}

/// The hand-off steps, with what they need: the engine's context and the `handoff:` section.
pub struct Handoffs<'a> {
    pub ctx: &'a EngineCtx,
    pub cfg: &'a HandoffConfig,
}

impl Handoffs<'_> {
    /// A staff reply (or the invitation to write), the `n`-th of the hand-off: a message of
    /// the inbox record, so its statuses land there.
    async fn queue_reply(
        &self,
        tx: &mut Tx,
        h: &Handoff,
        (rule, n): (&str, i64),
        content: MessageContent,
        now: i64,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        let key = RecordKey(h.key.clone());
        let intent = Intent {
            rule_id: rule.into(),
            source_id: self.cfg.inbox.clone(),
            record_key: key.clone(),
            provider_id: h.provider_id.clone(),
            idempotency_key: format!("{rule}:{}:{n}", h.key),
            phone: PhoneNumber::from_e164_unchecked(&h.phone),
            content,
            fallback: None,
            adjustments: Vec::new(),
        };
        if store::insert_intent(tx, &intent, now, now).await?.is_some() {
            applied.writes.extend(self.ctx.queued_writes(&self.cfg.inbox, rule, &key, now, now));
        }
        applied.providers.insert(h.provider_id.clone());
        Ok(())
    }

    /// The office's zone: its own, else the programme's, else the inbox's.
    fn office_zone(&self, hours: &crate::handoff::config::OfficeHours) -> chrono_tz::Tz {
        hours.time_zone.or(self.ctx.config.defaults.time_zone).unwrap_or_else(|| self.ctx.source_tz(&self.cfg.inbox))
    }

    /// Outside office hours, tells the person when someone will answer: once until the office
    /// has been open again. Returns whether it did.
    async fn tell_if_closed(
        &self,
        tx: &mut Tx,
        h: &mut Handoff,
        now: i64,
        applied: &mut Applied,
    ) -> Result<bool, StoreError> {
        use chrono::TimeZone;
        let Some(hours) = &self.cfg.office_hours else { return Ok(false) };
        let zone = self.office_zone(hours);
        let Some(at) = chrono::Utc.timestamp_millis_opt(now).single() else { return Ok(false) };
        if hours.window.allows(at.with_timezone(&zone).naive_local()) {
            return Ok(false);
        }
        // Told already, and the office has not opened since.
        if let Some(told) = h.after_hours_at.and_then(|t| chrono::Utc.timestamp_millis_opt(t).single()) {
            if hours.window.next_allowed(told, zone) > at {
                return Ok(false);
            }
        }
        let opens = hours.window.next_allowed(at, zone).with_timezone(&zone);
        let mut context = crate::flows::TurnContext::default();
        context.record.insert("opens_at".into(), serde_json::Value::String(opens.format("%d/%m %H:%M").to_string()));
        let text = crate::flows::render(
            hours.reply.get(&h.language, &self.ctx.config.inbound.default_language),
            &Default::default(),
            &context,
        );
        queue_answer(tx, h, &format!("after_hours:{now}"), &text, now, applied).await?;
        append(self.ctx, self.cfg, h, now, Speaker::Bot, &text, None);
        h.after_hours_at = Some(now);
        info!(handoff = %h.key, "outside office hours: the person is told when someone will answer");
        Ok(true)
    }

    /// Flags the open hand-offs whose person has waited longer than `unanswered_after`: the
    /// state field says so and the log warns, once, until staff answer. Returns how many.
    pub async fn flag_overdue(&self, now: i64) -> Result<usize, StoreError> {
        let Some(after) = self.cfg.unanswered_after else { return Ok(0) };
        let limit = now - after.as_millis() as i64;
        let due = {
            let mut conn = self.ctx.store.conn().await?;
            store::handoffs_to_flag(&mut conn, limit).await?
        };
        let mut flagged = 0;
        for candidate in due {
            let mut tx = self.ctx.store.begin().await?;
            // Answered or closed meanwhile: nothing to flag.
            let Some(mut h) = store::handoff(&mut tx, &candidate.key).await?.filter(|h| {
                h.closed_at.is_none() && h.flagged_at.is_none() && h.waiting_since.is_some_and(|w| w <= limit)
            }) else {
                continue;
            };
            h.flagged_at = Some(now);
            store::update_handoff(&mut tx, &h).await?;
            store::queue_writes(&mut tx, &progress_writes(self.ctx, self.cfg, &h)).await?;
            tx.commit().await?;
            warn!(handoff = %h.key, waiting = %crate::validation::human_duration(after), "a hand-off has waited too long for an answer");
            flagged += 1;
        }
        if flagged > 0 {
            self.ctx.wake_flusher(&self.cfg.inbox);
        }
        Ok(flagged)
    }

    /// Opens a hand-off, unless the contact has one open. Returns whether it opened.
    pub async fn open(&self, tx: &mut Tx, o: Opening<'_>, now: i64, applied: &mut Applied) -> Result<bool, StoreError> {
        if store::open_handoff_of(tx, o.phone).await?.is_some() {
            return Ok(false);
        }
        let mut h = Handoff {
            key: handoff_key(o.inbound_id),
            phone: o.phone.to_string(),
            provider_id: o.provider_id.to_string(),
            record: o.record.clone(),
            topic: o.topic.clone().unwrap_or_default(),
            language: o.language.to_string(),
            opened_at: now,
            closed_at: None,
            transcript: String::new(),
            replies: 0,
            pending: Vec::new(),
            waiting_since: Some(now),
            after_hours_at: None,
            flagged_at: None,
        };
        if !o.asked.trim().is_empty() {
            append(self.ctx, self.cfg, &mut h, now, Speaker::Person, &o.asked, None);
        }
        let opened_reply =
            self.cfg.opened_reply.as_ref().map(|t| t.get(o.language, &self.ctx.config.inbound.default_language));
        if let Some(text) = opened_reply {
            append(self.ctx, self.cfg, &mut h, now, Speaker::Bot, text, None);
        }
        if !store::insert_handoff(tx, &h).await? {
            return Ok(false);
        }
        // The bot stays silent for them while it is open (no expiry: staff close it).
        let silent = store::StoredConversation {
            phone: h.phone.clone(),
            conversation: crate::flows::Conversation {
                flow: super::inbox::HANDOFF_FLOW.into(),
                version: String::new(),
                step: h.topic.clone(),
                attempts: 0,
                answers: Default::default(),
                language: h.language.clone(),
                reminded: false,
            },
            provider_id: h.provider_id.clone(),
            record: h.record.clone(),
            started_at: now,
            updated_at: now,
            remind_at: None,
            expires_at: None,
        };
        store::save_conversation(tx, &silent).await?;
        if let Some(text) = opened_reply {
            queue_answer(tx, &h, "opened", text, now, applied).await?;
        }
        if self.tell_if_closed(tx, &mut h, now, applied).await? {
            store::update_handoff(tx, &h).await?;
        }
        // The inbox record: everything recado knows now, in one new record.
        let target = WriteTarget::NewRecord(RecordKey(h.key.clone()));
        let inbox = self.ctx.source(&self.cfg.inbox);
        let mut fields: Vec<(String, String)> =
            vec![(self.cfg.fields.opened_at.clone(), self.ctx.format_time(&self.cfg.inbox, now))];
        if let Some(settings) = inbox {
            fields.push((settings.phone_field.clone(), h.phone.clone()));
        }
        if let (Some(f), Some((source, key))) = (&self.cfg.fields.record, &h.record) {
            fields.push((f.clone(), format!("{source}/{}", key.0)));
        }
        // Only a record the inbox's system can point to: any other key would make it refuse
        // the whole inbox record.
        if let (Some(f), Some((source, key))) = (&self.cfg.fields.record_id, &h.record) {
            if self.ctx.config.sources.iter().any(|s| s.id() == source && s.keys_are_record_ids()) {
                fields.push((f.clone(), key.0.clone()));
            }
        }
        if let (Some(f), Some(name_field), Some((source, key))) =
            (&self.cfg.fields.name, &self.cfg.name_field, &h.record)
        {
            let name = store::snapshot_row_of(tx, source, &key.0)
                .await?
                .and_then(|row| row.fields.get(name_field).cloned())
                .unwrap_or_default();
            fields.push((f.clone(), name));
        }
        if let Some(f) = &self.cfg.fields.topic {
            fields.push((f.clone(), h.topic.clone()));
        }
        applied.writes.extend(fields.into_iter().map(|(field, value)| FieldWrite {
            source_id: self.cfg.inbox.clone(),
            target: target.clone(),
            field,
            value,
        }));
        applied.writes.extend(progress_writes(self.ctx, self.cfg, &h));
        info!(from = %mask_phone(&h.phone), handoff = %h.key, topic = %h.topic, "hand-off opened");
        Ok(true)
    }

    /// A message from a person whose hand-off is open: into the transcript, and staff replies that
    /// waited for them to write go out now.
    pub async fn person_wrote(
        &self,
        tx: &mut Tx,
        mut h: Handoff,
        text: &str,
        at: i64,
        now: i64,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        append(self.ctx, self.cfg, &mut h, at, Speaker::Person, text, None);
        let pending = std::mem::take(&mut h.pending);
        for p in &pending {
            self.queue_reply(tx, &h, (REPLY_RULE, p.n), MessageContent::Text { body: p.text.clone() }, now, applied)
                .await?;
            if !p.shown {
                append(self.ctx, self.cfg, &mut h, now, Speaker::Staff, &p.text, p.by.as_deref());
            }
        }
        if pending.is_empty() {
            h.waiting_since.get_or_insert(at);
            self.tell_if_closed(tx, &mut h, now, applied).await?;
        } else {
            info!(handoff = %h.key, replies = pending.len(), "the person wrote again: the staff replies that waited go out");
            h.waiting_since = None;
        }
        store::update_handoff(tx, &h).await?;
        applied.writes.extend(progress_writes(self.ctx, self.cfg, &h));
        Ok(())
    }

    /// WhatsApp takes no free text outside the window: the template invites the person to
    /// write, and replies wait until they do (one invitation for any number of replies).
    async fn invite_once(
        &self,
        tx: &mut Tx,
        h: &Handoff,
        n: i64,
        now: i64,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        let (true, Some(t)) = (h.pending.is_empty(), &self.cfg.reopen_template) else { return Ok(()) };
        let context = super::turn_context(self.ctx, tx, &h.phone, h.record.as_ref(), now).await?;
        let content =
            MessageContent::Template(crate::flows::template_message(t, &h.language, &Default::default(), &context));
        self.queue_reply(tx, h, (INVITE_RULE, n), content, now, applied).await
    }

    /// The person opted out (by a keyword, or as the provider reported): their open hand-off,
    /// if any, ends.
    pub async fn opted_out(&self, tx: &mut Tx, phone: &str, now: i64, applied: &mut Applied) -> Result<(), StoreError> {
        if let Some(mut h) = store::open_handoff_of(tx, phone).await? {
            self.close(tx, &mut h, now, Closing::OptedOut, applied).await?;
        }
        Ok(())
    }

    /// A staff reply queued inside the window that met it closed on its way out (a backlog, a
    /// paused provider, WhatsApp's clock ahead of ours). Under a new number (the refused one
    /// keeps its own): sent again at once when the person has written since it was queued;
    /// otherwise it waits like one written outside the window, in its place among the waiting
    /// replies, and the person is invited to write. Returns why the refused message ends, or
    /// None when its hand-off is no longer open.
    pub async fn reply_missed_window(
        &self,
        tx: &mut Tx,
        refused: &crate::store::OutboxMessage,
        text: &str,
        now: i64,
        applied: &mut Applied,
    ) -> Result<Option<&'static str>, StoreError> {
        let Some(mut h) = store::handoff(tx, &refused.record_key.0).await?.filter(|h| h.closed_at.is_none()) else {
            return Ok(None);
        };
        let order = refused.idempotency_key.rsplit(':').next().and_then(|n| n.parse::<i64>().ok());
        h.replies += 1;
        let n = h.replies;
        let last_inbound = store::contact(tx, &h.phone).await?.and_then(|c| c.last_inbound_at);
        let wrote_since = last_inbound.is_some_and(|at| at > refused.created_at);
        let reason = if wrote_since && super::dispatcher::inside_service_window(last_inbound, now) {
            self.queue_reply(tx, &h, (REPLY_RULE, n), MessageContent::Text { body: text.to_string() }, now, applied)
                .await?;
            info!(handoff = %h.key, n, "a staff reply met the 24-hour window closed, but the person has written since: sent again");
            "not sent: the 24-hour window had closed; the person has written since, so it goes out again"
        } else {
            self.invite_once(tx, &h, n, now, applied).await?;
            let place = order.unwrap_or(n);
            let at = h.pending.iter().position(|p| p.order.unwrap_or(p.n) > place).unwrap_or(h.pending.len());
            h.pending.insert(at, PendingReply { text: text.to_string(), n, by: None, shown: true, order });
            h.flagged_at = None;
            info!(handoff = %h.key, n, "a staff reply met the 24-hour window closed: the person is invited to write, the reply waits");
            "not sent yet: the 24-hour window closed before it went out; the person is invited to write, and it goes out when they do"
        };
        store::update_handoff(tx, &h).await?;
        applied.writes.extend(progress_writes(self.ctx, self.cfg, &h));
        Ok(Some(reason))
    }

    /// What staff asked in the inbox record `key`.
    pub async fn staff_asked(
        &self,
        tx: &mut Tx,
        action: &StaffAction,
        now: i64,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        let key = action.key();
        let Some(mut h) = store::handoff(tx, &key.0).await? else {
            warn!(record = %key, "a reply or close in an inbox record that is no hand-off recado opened: ignored");
            return Ok(());
        };
        match action {
            StaffAction::Reply { text, by, .. } => {
                // Taken: emptied (only while it still holds this text).
                applied.writes.push(FieldWrite {
                    source_id: self.cfg.inbox.clone(),
                    target: WriteTarget::Taken { record: key.clone(), text: text.clone() },
                    field: self.cfg.fields.reply.clone(),
                    value: String::new(),
                });
                if h.closed_at.is_some() {
                    let reason = "not sent: the hand-off is closed";
                    info!(handoff = %h.key, "{reason}");
                    applied.writes.extend(self.ctx.record_status_writes(
                        &self.cfg.inbox,
                        REPLY_RULE,
                        key,
                        MessageState::Skipped,
                        now,
                        Some(reason),
                    ));
                    return Ok(());
                }
                h.replies += 1;
                let n = h.replies;
                let last_inbound = store::contact(tx, &h.phone).await?.and_then(|c| c.last_inbound_at);
                if super::dispatcher::inside_service_window(last_inbound, now) {
                    self.queue_reply(
                        tx,
                        &h,
                        (REPLY_RULE, n),
                        MessageContent::Text { body: text.clone() },
                        now,
                        applied,
                    )
                    .await?;
                    append(self.ctx, self.cfg, &mut h, now, Speaker::Staff, text, by.as_deref());
                    h.waiting_since = None;
                    h.flagged_at = None;
                    info!(handoff = %h.key, n, "staff reply queued");
                } else {
                    self.invite_once(tx, &h, n, now, applied).await?;
                    h.pending.push(PendingReply { text: text.clone(), n, by: by.clone(), shown: false, order: None });
                    h.flagged_at = None;
                    info!(handoff = %h.key, n, "staff reply outside the 24-hour window: the person is invited to write, the reply waits");
                }
                store::update_handoff(tx, &h).await?;
                applied.writes.extend(progress_writes(self.ctx, self.cfg, &h));
            }
            StaffAction::Close { .. } => {
                if h.closed_at.is_some() {
                    return Ok(());
                }
                self.close(tx, &mut h, now, Closing::ByStaff, applied).await?;
            }
        }
        Ok(())
    }

    /// Closes an open hand-off: the person is told (inside the window) and goes back to the bot.
    pub async fn close(
        &self,
        tx: &mut Tx,
        h: &mut Handoff,
        now: i64,
        why: Closing,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        h.closed_at = Some(now);
        h.flagged_at = None;
        h.waiting_since = None;
        if !h.pending.is_empty() {
            // The row says so: these replies never reached the person.
            let reason = "not sent: the hand-off closed before the person wrote back";
            warn!(handoff = %h.key, replies = h.pending.len(), "{reason}");
            let key = RecordKey(h.key.clone());
            applied.writes.extend(self.ctx.record_status_writes(
                &self.cfg.inbox,
                REPLY_RULE,
                &key,
                MessageState::Skipped,
                now,
                Some(reason),
            ));
            h.pending.clear();
        }
        if why == Closing::ByStaff {
            if let Some(t) = &self.cfg.closed_reply {
                let text = t.get(&h.language, &self.ctx.config.inbound.default_language).to_string();
                queue_answer(tx, h, "closed", &text, now, applied).await?;
                append(self.ctx, self.cfg, h, now, Speaker::Bot, &text, None);
            }
        }
        if store::conversation(tx, &h.phone).await?.is_some_and(|c| c.conversation.flow == super::inbox::HANDOFF_FLOW) {
            store::end_conversation(tx, &h.phone).await?;
        }
        store::update_handoff(tx, h).await?;
        applied.writes.extend(progress_writes(self.ctx, self.cfg, h));
        match why {
            Closing::ByStaff => info!(handoff = %h.key, "hand-off closed by staff"),
            Closing::OptedOut => info!(handoff = %h.key, "hand-off ended: the person opted out"),
        }
        Ok(())
    }
}
