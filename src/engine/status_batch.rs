//! The store as the statuses of a run of deliveries see it: read once for the run, changed in
//! memory, written once at its end.
//!
//! Applying one status asked SQLite five things, each a hand-off to its thread and back:
//! which message it is, whether this status was heard before, recording it, moving the
//! message, and which rule owns the record's status fields and whether the record has an open
//! problem. At thousands of statuses a second those hand-offs, not SQLite, were the cost (the
//! issue "Scale for real"). A [`StatusBatch`] reads the messages, the statuses already heard,
//! the later rules of their records and the records' open problems for a whole run of
//! status-only deliveries at once, inside the inbox's transaction, then answers from memory.
//! The statuses heard and the messages moved are written with one statement each when the run
//! ends ([`StatusBatch::flush`]), before the transaction commits.
//!
//! Why memory stays true: the inbox's transaction holds the store's write lock, so nothing
//! else writes meanwhile, and within the run only the status path changes what is held here,
//! through this batch. Anything else that writes messages or statuses (a failure queued again,
//! an opt-out heard from the provider) first flushes, then [`StatusBatch::forget`]s, and the
//! rest of the run asks the store directly, one query at a time, as before.

use std::collections::{HashMap, HashSet};

use crate::domain::{MessageState, ProviderEvent};
use crate::store::{self, MessageUpdate, OutboxMessage, StoreError};

/// What a run of statuses reads, and what it changed and has not written yet.
#[derive(Default)]
pub(super) struct StatusBatch {
    /// False: nothing is held, every question goes to the store ([`StatusBatch::direct`]).
    held: bool,
    /// The run's messages by provider id; a provider id of the run that is absent here has no
    /// message.
    messages: HashMap<String, OutboxMessage>,
    /// (provider id, status) already heard, those of this run included.
    heard: HashSet<(String, String)>,
    /// Later rules of each held message's record, by message id.
    newer_rules: HashMap<i64, Vec<String>>,
    /// Whether each record (source, key) of a held message has a problem still open.
    open_issues: HashMap<(String, String), bool>,
    /// Statuses heard in this run and not written yet.
    new_events: Vec<(String, String)>,
    /// Provider ids of held messages moved in this run and not written yet.
    moved: HashSet<String>,
}

impl StatusBatch {
    /// Nothing held: each question is one query, each change one statement.
    pub fn direct() -> Self {
        Self::default()
    }

    /// Reads what the statuses among `events` will ask, in a handful of queries.
    pub async fn read(tx: &mut store::Tx, events: &[&ProviderEvent]) -> Result<Self, StoreError> {
        let mut ids: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                ProviderEvent::Status { provider_message_id, .. } => Some(provider_message_id.as_str()),
                ProviderEvent::Inbound { .. } => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let messages = store::messages_by_provider_ids(tx, &ids).await?;
        let heard = store::status_events_of(tx, &ids).await?;
        let held: Vec<&OutboxMessage> = messages.values().collect();
        let newer_rules = store::newer_rules_for_records(tx, &held).await?;
        let records: Vec<(&str, &str)> = held.iter().map(|m| (m.source_id.as_str(), m.record_key.0.as_str())).collect();
        let open = store::records_with_open_issues(tx, &records).await?;
        let open_issues = records
            .iter()
            .map(|&(s, k)| ((s.to_string(), k.to_string()), open.contains(&(s.to_string(), k.to_string()))))
            .collect();
        Ok(Self {
            held: true,
            messages,
            heard,
            newer_rules,
            open_issues,
            new_events: Vec::new(),
            moved: HashSet::new(),
        })
    }

    /// The message a provider id belongs to.
    pub async fn message(
        &self,
        tx: &mut store::Tx,
        provider_message_id: &str,
    ) -> Result<Option<OutboxMessage>, StoreError> {
        if self.held {
            return Ok(self.messages.get(provider_message_id).cloned());
        }
        store::message_by_provider_id(tx, provider_message_id).await
    }

    /// Whether `status` of this provider message was heard before.
    pub async fn heard(&self, tx: &mut store::Tx, provider_message_id: &str, status: &str) -> Result<bool, StoreError> {
        if self.held {
            return Ok(self.heard.contains(&(provider_message_id.to_string(), status.to_string())));
        }
        store::status_event_seen(tx, provider_message_id, status).await
    }

    /// Records that `status` of this provider message was heard. False when it was already.
    pub async fn hear(
        &mut self,
        tx: &mut store::Tx,
        provider_message_id: &str,
        status: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        if !self.held {
            return store::record_status_event(tx, provider_message_id, status, now).await;
        }
        let event = (provider_message_id.to_string(), status.to_string());
        if !self.heard.insert(event.clone()) {
            return Ok(false);
        }
        self.new_events.push(event);
        Ok(true)
    }

    /// Moves `m` to `state` as a status of `provider_message_id` reported it.
    #[allow(clippy::too_many_arguments)]
    pub async fn move_message(
        &mut self,
        tx: &mut store::Tx,
        m: &OutboxMessage,
        state: MessageState,
        provider_message_id: &str,
        recipient_id: Option<&String>,
        error: Option<String>,
        now: i64,
    ) -> Result<(), StoreError> {
        if !self.held {
            let u = MessageUpdate {
                state: Some(state),
                provider_message_id: Some(provider_message_id.to_string()),
                recipient_id: recipient_id.cloned(),
                error: error.map(Some),
                state_at: Some(now),
                ..Default::default()
            };
            return store::update_message(tx, m.id, &u, now).await;
        }
        // A message found by its outbox id (its send's answer was lost) was not read with the
        // run: it is held from now on, under the id it gets here.
        let held = self.messages.entry(provider_message_id.to_string()).or_insert_with(|| m.clone());
        held.state = state;
        held.provider_message_id = Some(provider_message_id.to_string());
        if let Some(r) = recipient_id {
            held.recipient_id = Some(r.clone());
        }
        if let Some(e) = error {
            held.error = Some(e);
        }
        held.state_at = now;
        held.updated_at = now;
        self.moved.insert(provider_message_id.to_string());
        Ok(())
    }

    /// Rules of later messages of `m`'s record.
    pub async fn newer_rules(&mut self, tx: &mut store::Tx, m: &OutboxMessage) -> Result<Vec<String>, StoreError> {
        if let Some(rules) = self.newer_rules.get(&m.id).filter(|_| self.held) {
            return Ok(rules.clone());
        }
        let rules = store::newer_rules_for_record(tx, m).await?;
        if self.held {
            self.newer_rules.insert(m.id, rules.clone());
        }
        Ok(rules)
    }

    /// Whether `m`'s record has a problem still open.
    pub async fn has_open_issue(&mut self, tx: &mut store::Tx, m: &OutboxMessage) -> Result<bool, StoreError> {
        let record = (m.source_id.clone(), m.record_key.0.clone());
        if let Some(open) = self.open_issues.get(&record).filter(|_| self.held) {
            return Ok(*open);
        }
        let open = store::has_open_issue(tx, &record.0, &record.1).await?;
        if self.held {
            self.open_issues.insert(record, open);
        }
        Ok(open)
    }

    /// Writes what the run changed so far: the statuses heard, then the messages moved.
    pub async fn flush(&mut self, tx: &mut store::Tx, now: i64) -> Result<(), StoreError> {
        if !self.new_events.is_empty() {
            let events: Vec<(&str, &str)> = self.new_events.iter().map(|(id, s)| (id.as_str(), s.as_str())).collect();
            store::record_status_events(tx, &events, now).await?;
            self.new_events.clear();
        }
        if !self.moved.is_empty() {
            let moved: Vec<&OutboxMessage> = self.moved.iter().filter_map(|id| self.messages.get(id)).collect();
            store::save_status_moves(tx, &moved, now).await?;
            self.moved.clear();
        }
        Ok(())
    }

    /// Something else is about to write messages or statuses: what this run changed is
    /// written, and from here on every question goes to the store.
    pub async fn forget(&mut self, tx: &mut store::Tx, now: i64) -> Result<(), StoreError> {
        self.flush(tx, now).await?;
        *self = Self::direct();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Intent, MessageContent, PhoneNumber, RecordKey};
    use crate::store::{AcceptedSend, Store};

    fn status(id: &str, status: MessageState) -> ProviderEvent {
        ProviderEvent::Status {
            provider_message_id: id.to_string(),
            status,
            timestamp: 0,
            recipient_ids: Vec::new(),
            callback_data: None,
            error: None,
        }
    }

    /// What the store holds of two messages after `moves`: (state, provider id, recipient,
    /// error, state_at) of each, and every status heard.
    type Seen = (Vec<(String, Option<String>, Option<String>, Option<String>, i64)>, Vec<(String, String)>);

    async fn apply_with(held: bool) -> Seen {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("b.db")).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let mut ids = Vec::new();
        for (record, pid) in [("a", "p-a"), ("b", "p-b")] {
            let intent = Intent {
                rule_id: "r1".into(),
                source_id: "s".into(),
                record_key: RecordKey(record.into()),
                provider_id: "p".into(),
                idempotency_key: format!("r1:{record}:1"),
                phone: PhoneNumber::from_e164_unchecked("+5491100000001"),
                content: MessageContent::Text { body: "hola".into() },
                fallback: None,
                adjustments: Vec::new(),
            };
            let id = store::insert_intent(&mut tx, &intent, 0, 1).await.unwrap().unwrap();
            let sent = AcceptedSend { id, provider_message_id: pid.into(), recipient_id: None };
            store::record_accepted_sends(&mut tx, &[sent], 2).await.unwrap();
            ids.push(id);
        }
        store::record_status_event(&mut tx, "p-b", "sent", 2).await.unwrap();
        let events = [
            status("p-a", MessageState::Delivered),
            status("p-b", MessageState::Failed),
            status("p-x", MessageState::Read),
        ];
        let events: Vec<&ProviderEvent> = events.iter().collect();
        let mut batch = if held { StatusBatch::read(&mut tx, &events).await.unwrap() } else { StatusBatch::direct() };

        // Unknown ids have no message; statuses are heard once.
        assert!(batch.message(&mut tx, "p-x").await.unwrap().is_none());
        assert!(batch.heard(&mut tx, "p-b", "sent").await.unwrap());
        assert!(!batch.hear(&mut tx, "p-b", "sent", 5).await.unwrap());
        let a = batch.message(&mut tx, "p-a").await.unwrap().unwrap();
        for (at, state) in [(5, MessageState::Delivered), (6, MessageState::Read)] {
            assert!(batch.hear(&mut tx, "p-a", state.as_str(), at).await.unwrap());
            let r = "wa-1".to_string();
            batch.move_message(&mut tx, &a, state, "p-a", Some(&r), None, at).await.unwrap();
        }
        assert!(!batch.hear(&mut tx, "p-a", "delivered", 7).await.unwrap());
        let b = batch.message(&mut tx, "p-b").await.unwrap().unwrap();
        assert!(batch.hear(&mut tx, "p-b", "failed", 7).await.unwrap());
        batch
            .move_message(&mut tx, &b, MessageState::Failed, "p-b", None, Some("número inválido".into()), 7)
            .await
            .unwrap();
        assert!(batch.newer_rules(&mut tx, &a).await.unwrap().is_empty());
        assert!(!batch.has_open_issue(&mut tx, &a).await.unwrap());
        batch.flush(&mut tx, 8).await.unwrap();
        tx.commit().await.unwrap();

        let mut conn = store.conn().await.unwrap();
        let mut messages = Vec::new();
        for id in ids {
            let m = store::message_by_id(&mut conn, id).await.unwrap().unwrap();
            messages.push((m.state.to_string(), m.provider_message_id, m.recipient_id, m.error, m.state_at));
        }
        let mut heard = Vec::new();
        for (id, s) in [("p-a", "delivered"), ("p-a", "read"), ("p-b", "sent"), ("p-b", "failed"), ("p-a", "failed")] {
            if store::status_event_seen(&mut conn, id, s).await.unwrap() {
                heard.push((id.to_string(), s.to_string()));
            }
        }
        (messages, heard)
    }

    /// Held in memory and written at the end, or asked and written one at a time: the store
    /// ends the same.
    #[tokio::test]
    async fn a_batch_leaves_the_store_as_statuses_applied_one_at_a_time_do() {
        let direct = apply_with(false).await;
        assert_eq!(direct.0[0], ("read".into(), Some("p-a".into()), Some("wa-1".into()), None, 6));
        assert_eq!(direct.0[1], ("failed".into(), Some("p-b".into()), None, Some("número inválido".into()), 7));
        assert_eq!(direct.1.len(), 4);
        assert_eq!(apply_with(true).await, direct);
    }
}
