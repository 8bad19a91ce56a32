//! `recado forget`: erasing recado's copy of one person's personal data, keeping only what
//! honours their opt-out — a keyed hash of their number (HMAC-SHA256 with a random key kept in
//! this state file), so nothing is sent to that number again and nothing else about them stays.
//!
//! Messages are kept as bare rows (their idempotency keys stop a rule from messaging the record
//! again as if it were new) with the number, the content and the error erased. recado's copy of
//! the records that hold the number keeps only its fingerprint, which the poller reads as "not
//! news" the next time it sees the record (`SnapshotRow::is_erased`).

use sqlx::SqliteConnection;

use super::StoreResult;

/// What was erased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    pub messages: u64,
    pub replies: u64,
    pub conversations: u64,
    pub provider_ids: u64,
    pub raw_webhooks: u64,
    /// Records (in any source) whose copy recado kept, and whose entry in the phone index went.
    pub record_copies: u64,
    /// Values waiting to be written to their records (their replies, answers, statuses), or
    /// to records their conversations were adding with their number in them.
    pub queued_writes: u64,
    pub contact: bool,
    /// Files they sent (the caller removes their bytes).
    pub media_ids: Vec<i64>,
    /// The opt-out was kept, as a keyed hash of the number.
    pub opt_out_kept: bool,
}

/// The key of the number hashes (created on first use).
async fn hash_key(conn: &mut SqliteConnection) -> StoreResult<Vec<u8>> {
    let existing: Option<String> =
        sqlx::query_scalar("SELECT value FROM store_keys WHERE name = 'phone_hash'").fetch_optional(&mut *conn).await?;
    if let Some(k) = existing.and_then(|k| hex::decode(k).ok()) {
        return Ok(k);
    }
    let key: [u8; 32] = rand::random();
    sqlx::query("INSERT INTO store_keys (name, value) VALUES ('phone_hash', $1) ON CONFLICT (name) DO NOTHING")
        .bind(hex::encode(key))
        .execute(&mut *conn)
        .await?;
    let stored: String =
        sqlx::query_scalar("SELECT value FROM store_keys WHERE name = 'phone_hash'").fetch_one(&mut *conn).await?;
    Ok(hex::decode(stored).unwrap_or_else(|_| key.to_vec()))
}

fn phone_hash(key: &[u8], phone: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex::encode(ring::hmac::sign(&k, phone.as_bytes()).as_ref())
}

/// When an erased person (by number) had opted out, for the numbers given.
pub async fn erased_opt_outs(
    conn: &mut SqliteConnection,
    phones: &[&str],
) -> StoreResult<std::collections::HashMap<String, i64>> {
    let mut out = std::collections::HashMap::new();
    let any: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM erased_contacts").fetch_one(&mut *conn).await?;
    if any == 0 || phones.is_empty() {
        return Ok(out);
    }
    let key = hash_key(conn).await?;
    for p in phones {
        let at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT opted_out_at FROM erased_contacts WHERE phone_hash = $1")
                .bind(phone_hash(&key, p))
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(Some(at)) = at {
            out.insert((*p).to_string(), at);
        }
    }
    Ok(out)
}

/// Erases what recado holds about `phone` (E.164).
pub async fn forget_contact(conn: &mut SqliteConnection, phone: &str, now: i64) -> StoreResult<Erased> {
    let mut e = Erased::default();
    let opted_out: Option<Option<i64>> = sqlx::query_scalar("SELECT opted_out_at FROM contacts WHERE phone = $1")
        .bind(phone)
        .fetch_optional(&mut *conn)
        .await?;
    let ids: Vec<String> = sqlx::query_scalar("SELECT user_id FROM contact_ids WHERE phone = $1")
        .bind(phone)
        .fetch_all(&mut *conn)
        .await?;
    // A provider's message id can carry the number (some providers' ids are base64 that embed it):
    // the ids of their messages, and the status entries kept under them, go too. A status that
    // arrives later for one of them is one recado does not know, and is ignored.
    let sent_ids: Vec<String> = sqlx::query_scalar(
        "SELECT provider_message_id FROM messages WHERE phone = $1 AND provider_message_id IS NOT NULL",
    )
    .bind(phone)
    .fetch_all(&mut *conn)
    .await?;
    for id in &sent_ids {
        sqlx::query("DELETE FROM status_events WHERE provider_message_id = $1").bind(id).execute(&mut *conn).await?;
    }
    // Their records: recado's copy of each (the snapshot the pollers compare with) keeps only
    // its fingerprint, so reading the record again is not news (see `SnapshotRow::is_erased`);
    // values queued for them go; so does the phone index (the first full read after the daemon
    // starts puts back a record that still holds the number in the source).
    let records: Vec<(String, String)> =
        sqlx::query_as("SELECT source_id, record_key FROM contact_records WHERE phone = $1")
            .bind(phone)
            .fetch_all(&mut *conn)
            .await?;
    for (source_id, key) in &records {
        e.record_copies += sqlx::query(
            "UPDATE snapshot_rows SET fields = '{}', date_fields = NULL WHERE source_id = $1 AND record_key = $2",
        )
        .bind(source_id)
        .bind(key)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        e.queued_writes += sqlx::query(
            "DELETE FROM write_queue WHERE source_id = $1
               AND ((target_kind IN ('record', 'every_copy') AND target = $2)
                    OR (target_kind = 'interaction' AND substr(target, instr(target, '|') + 1) = $2))",
        )
        .bind(source_id)
        .bind(key)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    // Records their conversations were adding (a report with their number in it) and not yet
    // written: every field of such a record goes.
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    e.queued_writes += sqlx::query(
        "DELETE FROM write_queue WHERE target_kind = 'new_record' AND target IN (
             SELECT target FROM write_queue WHERE target_kind = 'new_record'
               AND (instr(value, $1) > 0 OR instr(replace(replace(replace(value, ' ', ''), '-', ''), '+', ''), $2) > 0))",
    )
    .bind(phone)
    .bind(&digits)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM contact_records WHERE phone = $1").bind(phone).execute(&mut *conn).await?;
    let erased_content = r#"{"type":"text","body":""}"#;
    e.messages = sqlx::query(
        "UPDATE messages SET phone = '', content = $2, fallback = NULL, error = NULL, recipient_id = NULL,
                provider_message_id = NULL,
                state = CASE WHEN state IN ('queued', 'sending') THEN 'skipped' ELSE state END,
                idempotency_key = CASE WHEN source_id = '' OR instr(idempotency_key, $3) > 0 THEN 'forgotten:' || id
                                       ELSE idempotency_key END
         WHERE phone = $1",
    )
    .bind(phone)
    .bind(erased_content)
    // A key that names the contact (a conversation reminder's) goes too, and so do the keys of
    // the bot's messages (they hold the provider's id of the message they answered, which can
    // carry the number); a rule's `rule:record:occurrence` stays, so no rule messages the
    // record again as if it were new.
    .bind(phone.trim_start_matches('+'))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    e.replies =
        sqlx::query("DELETE FROM inbound WHERE phone = $1").bind(phone).execute(&mut *conn).await?.rows_affected();
    for id in &ids {
        e.replies +=
            sqlx::query("DELETE FROM inbound WHERE sender_id = $1").bind(id).execute(&mut *conn).await?.rows_affected();
    }
    e.conversations = sqlx::query("DELETE FROM conversations WHERE phone = $1")
        .bind(phone)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    e.media_ids =
        sqlx::query_scalar("DELETE FROM media WHERE phone = $1 RETURNING id").bind(phone).fetch_all(&mut *conn).await?;
    // Their hand-offs: the transcripts hold their words, and so do the values queued for the
    // inbox records (transcript, replies' statuses, a taken reply). (The inbox records
    // themselves are the team's, in their source, as the person's own records are.)
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT key FROM handoffs WHERE phone = $1").bind(phone).fetch_all(&mut *conn).await?;
    for key in &keys {
        e.queued_writes += sqlx::query(
            "DELETE FROM write_queue WHERE (target_kind IN ('new_record', 'record') AND target = $1)
                OR (target_kind = 'taken' AND substr(target, 1, length($1) + 1) = $1 || char(31))",
        )
        .bind(key)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    e.conversations +=
        sqlx::query("DELETE FROM handoffs WHERE phone = $1").bind(phone).execute(&mut *conn).await?.rows_affected();
    e.provider_ids =
        sqlx::query("DELETE FROM contact_ids WHERE phone = $1").bind(phone).execute(&mut *conn).await?.rows_affected();
    // Raw deliveries carry the number (digits, or with `+` in form bodies).
    if digits.len() >= 8 {
        // Only applied (or parked) ones: a delivery still waiting is applied first.
        e.raw_webhooks = sqlx::query(
            "DELETE FROM webhooks WHERE (processed_at IS NOT NULL OR parked_at IS NOT NULL) AND body LIKE $1",
        )
        .bind(format!("%{digits}%"))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    e.contact =
        sqlx::query("DELETE FROM contacts WHERE phone = $1").bind(phone).execute(&mut *conn).await?.rows_affected() > 0;
    if let Some(Some(at)) = opted_out {
        let key = hash_key(conn).await?;
        sqlx::query(
            "INSERT INTO erased_contacts (phone_hash, opted_out_at, erased_at) VALUES ($1, $2, $3)
             ON CONFLICT (phone_hash) DO UPDATE SET opted_out_at = excluded.opted_out_at, erased_at = excluded.erased_at",
        )
        .bind(phone_hash(&key, phone))
        .bind(at)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        e.opt_out_kept = true;
    }
    Ok(e)
}
