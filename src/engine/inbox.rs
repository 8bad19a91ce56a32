//! The inbox processor: applies stored webhook bodies, oldest first, one transaction each.
//!
//! Statuses move a message forward only (duplicates and late arrivals are ignored, de-duplicated
//! by provider message id and status). Replies are matched to a record by the message they
//! quote, else by the contact's latest conversation, and written back; an opt-out keyword marks
//! the contact, skips everything still queued for them, and is written to the consent column.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::{now_ms, EngineCtx, Shutdown};
use crate::config::SourceConfig;
use crate::domain::{mask_phone, InboundKind, MessageState, ProviderEvent};
use crate::providers::Provider;
use crate::store::{self, CellWrite, MessageUpdate, Tx, WriteTarget};

pub struct InboxProcessor {
    ctx: Arc<EngineCtx>,
    providers: HashMap<String, Provider>,
}

impl InboxProcessor {
    pub fn new(ctx: Arc<EngineCtx>, providers: HashMap<String, Provider>) -> Self {
        Self { ctx, providers }
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        info!("inbox processor started");
        loop {
            match self.process_pending().await {
                Ok(0) => {
                    tokio::select! {
                        _ = self.ctx.inbox_wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    error!("processing webhooks failed: {e:#}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
            }
        }
        // Whatever was acknowledged but not yet applied stays in the store for the next start.
        info!("inbox processor stopped");
    }

    /// Applies up to 200 stored deliveries. Returns how many.
    pub async fn process_pending(&self) -> anyhow::Result<usize> {
        let mut conn = self.ctx.store.conn().await?;
        let pending = store::pending_inbox(&mut conn, 200).await?;
        drop(conn);
        let n = pending.len();
        for (id, provider_id, body) in pending {
            let mut tx = self.ctx.store.begin().await?;
            let outcome = match self.providers.get(&provider_id).map(|p| p.parse_webhook(&body)) {
                None => format!("no provider '{provider_id}' configured any more"),
                Some(Err(e)) => {
                    warn!(provider = %provider_id, inbox = id, "ignoring a signed delivery that could not be read: {e}");
                    format!("unreadable: {e}")
                }
                Some(Ok(events)) => {
                    for ev in &events {
                        self.apply(&mut tx, &provider_id, ev).await?;
                    }
                    format!("applied {} event(s)", events.len())
                }
            };
            store::finish_inbox(&mut tx, id, &outcome, now_ms()).await?;
            tx.commit().await?;
        }
        if n > 0 {
            for s in &self.ctx.config.sources {
                self.ctx.wake_flusher(s.id());
            }
        }
        Ok(n)
    }

    async fn apply(&self, tx: &mut Tx, provider_id: &str, ev: &ProviderEvent) -> anyhow::Result<()> {
        match ev {
            ProviderEvent::Status { provider_message_id, status, timestamp, recipient_id, callback_data, error } => {
                let now = now_ms();
                if !store::record_status_event(tx, provider_message_id, status.as_str(), now).await? {
                    debug!(id = %provider_message_id, status = %status, "duplicate status ignored");
                    return Ok(());
                }
                let mut m = store::message_by_provider_id(tx, provider_message_id).await?;
                if m.is_none() {
                    // The send's answer may not be recorded yet (or was lost): our outbox id
                    // travels in biz_opaque_callback_data.
                    if let Some(id) = callback_data.as_deref().and_then(|c| c.parse::<i64>().ok()) {
                        m = store::message_by_id(tx, id)
                            .await?
                            .filter(|m| m.provider_id == provider_id && m.provider_message_id.is_none());
                    }
                }
                let Some(m) = m else {
                    debug!(id = %provider_message_id, "status for a message we do not know");
                    return Ok(());
                };
                let Some(next) = m.state.advance(*status) else {
                    debug!(message = m.id, from = %m.state, reported = %status, "status does not move the message forward");
                    return Ok(());
                };
                let at = if *timestamp > 0 { timestamp * 1000 } else { now };
                let reason = error.as_ref().map(|e| e.describe());
                let u = MessageUpdate {
                    state: Some(next),
                    provider_message_id: Some(provider_message_id.clone()),
                    wa_id: recipient_id.clone(),
                    error: reason.clone().map(Some),
                    state_at: Some(at),
                    ..Default::default()
                };
                store::update_message(tx, m.id, &u, now).await?;
                if recipient_id.is_some() {
                    store::upsert_contact(tx, m.phone.as_str(), recipient_id.as_deref(), now).await?;
                }
                if store::is_latest_for_record(tx, &m).await? {
                    let err_cell = match next {
                        MessageState::Failed => reason.as_deref(),
                        _ => None,
                    };
                    store::queue_writes(tx, &self.ctx.status_writes(&m, next, at, err_cell)).await?;
                }
                match next {
                    MessageState::Failed => {
                        warn!(message = m.id, record = %m.record_key, to = %m.phone, "message failed: {}", reason.unwrap_or_default())
                    }
                    _ => debug!(message = m.id, record = %m.record_key, state = %next, "status"),
                }
            }
            ProviderEvent::Inbound { provider_message_id, from, timestamp, context_message_id, kind, .. } => {
                let now = now_ms();
                let at = if *timestamp > 0 { timestamp * 1000 } else { now };
                let phone = match store::contact_by_wa_id(tx, from).await? {
                    Some(c) => c.phone,
                    None => format!("+{from}"),
                };
                store::upsert_contact(tx, &phone, Some(from), now).await?;
                store::set_last_inbound(tx, &phone, at, now).await?;
                // Which record: the quoted message's, else the latest conversation's.
                let mut origin = None;
                if let Some(ctx_id) = context_message_id {
                    origin = store::message_by_provider_id(tx, ctx_id).await?;
                }
                if origin.is_none() {
                    origin = store::latest_sent_to(tx, &phone).await?;
                }
                let text = kind.text();
                let kind_name = match kind {
                    InboundKind::Text { .. } => "text",
                    InboundKind::Button { .. } => "button",
                    InboundKind::Interactive { .. } => "interactive",
                    InboundKind::Other { .. } => "other",
                };
                let record = origin.as_ref().map(|m| (m.source_id.as_str(), m.record_key.0.as_str()));
                let fresh = store::insert_inbound(
                    tx,
                    provider_message_id,
                    provider_id,
                    from,
                    Some(&phone),
                    record,
                    origin.as_ref().map(|m| m.id),
                    kind_name,
                    &text,
                    at,
                )
                .await?;
                if !fresh {
                    debug!(id = %provider_message_id, "duplicate inbound message ignored");
                    return Ok(());
                }
                let mut writes: Vec<CellWrite> = Vec::new();
                if let Some(m) = &origin {
                    let cols = self.ctx.write_back_columns(&m.source_id);
                    let target = WriteTarget::Record(m.record_key.clone());
                    if let Some(c) = cols.last_reply {
                        writes.push(CellWrite {
                            source_id: m.source_id.clone(),
                            target: target.clone(),
                            column: c,
                            value: text.clone(),
                        });
                    }
                    if let Some(c) = cols.last_reply_at {
                        writes.push(CellWrite {
                            source_id: m.source_id.clone(),
                            target,
                            column: c,
                            value: self.ctx.format_time(&m.source_id, at),
                        });
                    }
                    info!(record = %m.record_key, from = %mask_phone(from), "reply received");
                } else {
                    info!(from = %mask_phone(from), "message from a contact with no conversation on record");
                }
                let keyword = crate::config::normalise_keyword(&text);
                if self.ctx.config.inbound.opt_out_keywords.contains(&keyword) {
                    store::set_opted_out(tx, &phone, &text, now).await?;
                    self.ctx.opt_out_epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    info!(from = %mask_phone(from), "contact opted out: nothing more will be sent to them");
                    for q in store::queued_for_phone(tx, &phone).await? {
                        let reason = "not sent: the contact opted out";
                        let u = MessageUpdate {
                            state: Some(MessageState::Skipped),
                            error: Some(Some(reason.into())),
                            state_at: Some(now),
                            ..Default::default()
                        };
                        store::update_message(tx, q.id, &u, now).await?;
                        writes.extend(self.ctx.status_writes(&q, MessageState::Skipped, now, Some(reason)));
                    }
                    if let Some(m) = &origin {
                        if let Some(SourceConfig::GoogleSheets(g)) =
                            self.ctx.config.sources.iter().find(|s| s.id() == m.source_id)
                        {
                            if let Some(c) = &g.consent {
                                writes.push(CellWrite {
                                    source_id: m.source_id.clone(),
                                    target: WriteTarget::Record(m.record_key.clone()),
                                    column: c.column.clone(),
                                    value: c.opted_out_value.clone(),
                                });
                            }
                        }
                    }
                }
                store::queue_writes(tx, &writes).await?;
            }
        }
        Ok(())
    }
}
