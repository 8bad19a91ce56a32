//! People: their opt-out, the 24-hour window their last message opened, the provider ids they
//! are known by, and what they wrote to us.

use std::collections::HashMap;

use sqlx::sqlite::SqliteRow;
use sqlx::SqliteConnection;

use super::{col, StoreResult};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    /// E.164.
    pub phone: String,
    pub opted_out_at: Option<i64>,
    pub last_inbound_at: Option<i64>,
    /// Their answer to the privacy notice (`accepted` / `refused`) and its version.
    pub consent: Option<String>,
    pub consent_version: Option<String>,
    /// The language they chose in a conversation.
    pub language: Option<String>,
}

impl Contact {
    /// Whether they answered "No acepto" to privacy notice `version` (the current one, when
    /// one is configured) and have not opted back in since.
    pub fn refused_notice(&self, version: Option<&str>) -> bool {
        version
            .is_some_and(|v| self.consent_version.as_deref() == Some(v) && self.consent.as_deref() != Some("accepted"))
    }
}

fn contact_from_row(r: &SqliteRow) -> StoreResult<Contact> {
    Ok(Contact {
        phone: col(r, "phone")?,
        opted_out_at: col(r, "opted_out_at")?,
        last_inbound_at: col(r, "last_inbound_at")?,
        consent: col(r, "consent")?,
        consent_version: col(r, "consent_version")?,
        language: col(r, "language")?,
    })
}

/// The contact; a number never seen whose person was erased after opting out is returned as
/// opted out.
pub async fn contact(conn: &mut SqliteConnection, phone: &str) -> StoreResult<Option<Contact>> {
    let row = sqlx::query(
        "SELECT phone, opted_out_at, last_inbound_at, consent, consent_version, language FROM contacts WHERE phone = $1",
    )
    .bind(phone)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(r) => contact_from_row(&r).map(Some),
        None => Ok(super::erased_opt_outs(conn, &[phone]).await?.get(phone).map(|at| Contact {
            phone: phone.to_string(),
            opted_out_at: Some(*at),
            ..Default::default()
        })),
    }
}

/// The contact a provider id belongs to.
pub async fn contact_by_user_id(conn: &mut SqliteConnection, user_id: &str) -> StoreResult<Option<Contact>> {
    let row = sqlx::query(
        "SELECT c.phone, c.opted_out_at, c.last_inbound_at, c.consent, c.consent_version, c.language FROM contact_ids i JOIN contacts c ON c.phone = i.phone WHERE i.user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(contact_from_row).transpose()
}

/// Creates the contact if needed. A number whose person was erased (`recado forget`) after
/// opting out comes back opted out.
pub async fn upsert_contact(conn: &mut SqliteConnection, phone: &str, now: i64) -> StoreResult<()> {
    // Known contacts (nearly every call) cost one statement.
    let known = sqlx::query("UPDATE contacts SET updated_at = $2 WHERE phone = $1")
        .bind(phone)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0;
    if known {
        return Ok(());
    }
    let opted_out = super::erased_opt_outs(conn, &[phone]).await?.get(phone).copied();
    sqlx::query(
        "INSERT INTO contacts (phone, updated_at, opted_out_at, opt_out_text) VALUES ($1, $2, $3, $4)
         ON CONFLICT (phone) DO UPDATE SET updated_at = excluded.updated_at",
    )
    .bind(phone)
    .bind(now)
    .bind(opted_out)
    .bind(opted_out.map(|_| "(before being forgotten)"))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records provider ids of a contact (later ids for the same person are added, not replaced).
pub async fn add_contact_ids(conn: &mut SqliteConnection, phone: &str, ids: &[String], now: i64) -> StoreResult<()> {
    for id in ids.iter().filter(|i| !i.is_empty()) {
        sqlx::query(
            "INSERT INTO contact_ids (user_id, phone, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET phone = excluded.phone, updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(phone)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The 24-hour window: keeps the latest inbound time.
pub async fn set_last_inbound(conn: &mut SqliteConnection, phone: &str, at: i64, now: i64) -> StoreResult<()> {
    sqlx::query(
        "UPDATE contacts SET last_inbound_at = CASE WHEN last_inbound_at IS NULL OR last_inbound_at < $2 THEN $2 ELSE last_inbound_at END,
         updated_at = $3 WHERE phone = $1",
    )
    .bind(phone)
    .bind(at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_opted_out(conn: &mut SqliteConnection, phone: &str, text: &str, now: i64) -> StoreResult<()> {
    sqlx::query("UPDATE contacts SET opted_out_at = COALESCE(opted_out_at, $2), opt_out_text = $3, updated_at = $2 WHERE phone = $1")
        .bind(phone)
        .bind(now)
        .bind(text)
        .execute(conn)
        .await?;
    Ok(())
}

/// Replies to outbox message `message_id` received before inbound message `except`.
pub async fn earlier_replies(conn: &mut SqliteConnection, message_id: i64, except: &str) -> StoreResult<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM inbound WHERE in_reply_to = $1 AND provider_message_id <> $2")
        .bind(message_id)
        .bind(except)
        .fetch_one(conn)
        .await?)
}

/// A person opted back in: recado may write to them again (and asks for consent again).
pub async fn clear_opted_out(conn: &mut SqliteConnection, phone: &str, now: i64) -> StoreResult<()> {
    sqlx::query(
        "UPDATE contacts SET opted_out_at = NULL, opt_out_text = NULL, consent = NULL, consent_version = NULL, updated_at = $2 WHERE phone = $1",
    )
    .bind(phone)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The language a person chose.
pub async fn set_language(conn: &mut SqliteConnection, phone: &str, language: &str, now: i64) -> StoreResult<()> {
    sqlx::query("UPDATE contacts SET language = $2, updated_at = $3 WHERE phone = $1")
        .bind(phone)
        .bind(language)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a person's answer to the privacy notice.
pub async fn set_consent(
    conn: &mut SqliteConnection,
    phone: &str,
    accepted: bool,
    method: &str,
    version: &str,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE contacts SET consent = $2, consent_at = $3, consent_method = $4, consent_version = $5, updated_at = $3 WHERE phone = $1",
    )
    .bind(phone)
    .bind(if accepted { "accepted" } else { "refused" })
    .bind(now)
    .bind(method)
    .bind(version)
    .execute(conn)
    .await?;
    Ok(())
}

/// Erases what `phone` wrote: the text of their inbound messages, and the raw bodies of the
/// applied deliveries received since `since` that carry their number (someone who refused the
/// privacy notice). The rows stay, as `recado forget` leaves them, so a redelivery is still
/// known.
pub async fn erase_words_of(conn: &mut SqliteConnection, phone: &str, since: i64) -> StoreResult<()> {
    sqlx::query("UPDATE inbound SET body = '' WHERE phone = $1").bind(phone).execute(&mut *conn).await?;
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 8 {
        sqlx::query(
            "UPDATE webhooks SET body = '' WHERE received_at >= $1 AND processed_at IS NOT NULL AND body LIKE $2",
        )
        .bind(since)
        .bind(format!("%{digits}%"))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Contacts for several phones at once (the dispatcher checks a chunk in one query).
pub async fn contacts_for(conn: &mut SqliteConnection, phones: &[&str]) -> StoreResult<HashMap<String, Contact>> {
    if phones.is_empty() {
        return Ok(HashMap::new());
    }
    let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT phone, opted_out_at, last_inbound_at, consent, consent_version, language FROM contacts WHERE phone IN ",
    );
    super::push_list(&mut qb, phones.iter().copied());
    let rows = qb.build().fetch_all(&mut *conn).await?;
    let mut found: HashMap<String, Contact> =
        rows.iter().map(|r| contact_from_row(r).map(|c| (c.phone.clone(), c))).collect::<StoreResult<_>>()?;
    let missing: Vec<&str> = phones.iter().copied().filter(|p| !found.contains_key(*p)).collect();
    for (phone, at) in super::erased_opt_outs(conn, &missing).await? {
        found.insert(phone.clone(), Contact { phone, opted_out_at: Some(at), ..Default::default() });
    }
    Ok(found)
}

/// An inbound message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRow<'a> {
    pub provider_message_id: &'a str,
    pub provider_id: &'a str,
    pub sender_id: Option<&'a str>,
    pub phone: Option<&'a str>,
    /// (source id, record key) of the conversation it belongs to.
    pub record: Option<(&'a str, &'a str)>,
    pub in_reply_to: Option<i64>,
    pub kind: &'a str,
    pub body: &'a str,
    pub received_at: i64,
}

/// Stores an inbound message. False when it was already stored (a redelivered webhook).
pub async fn insert_inbound(conn: &mut SqliteConnection, m: &InboundRow<'_>) -> StoreResult<bool> {
    let r = sqlx::query(
        "INSERT INTO inbound (provider_message_id, provider_id, sender_id, phone, source_id, record_key, in_reply_to, kind, body, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(m.provider_message_id)
    .bind(m.provider_id)
    .bind(m.sender_id)
    .bind(m.phone)
    .bind(m.record.map(|r| r.0))
    .bind(m.record.map(|r| r.1))
    .bind(m.in_reply_to)
    .bind(m.kind)
    .bind(m.body)
    .bind(m.received_at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Inbound messages stored (for summaries and tests).
pub async fn inbound_count(conn: &mut SqliteConnection) -> StoreResult<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM inbound").fetch_one(conn).await?)
}

/// Ids of this provider's inbound messages received since `since` (Unix ms).
pub async fn inbound_ids_since(
    conn: &mut SqliteConnection,
    provider_id: &str,
    since: i64,
) -> StoreResult<std::collections::HashSet<String>> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT provider_message_id FROM inbound WHERE provider_id = $1 AND received_at >= $2")
            .bind(provider_id)
            .bind(since)
            .fetch_all(conn)
            .await?;
    Ok(ids.into_iter().collect())
}

/// [`upsert_contact`] for a batch of distinct numbers, in one statement a 500. `known` is what
/// [`contacts_for`] found for them: a number forgotten after it opted out comes back opted out.
pub async fn upsert_contacts(
    conn: &mut SqliteConnection,
    phones: &[&str],
    known: &HashMap<String, Contact>,
    now: i64,
) -> StoreResult<()> {
    for chunk in phones.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO contacts (phone, updated_at, opted_out_at, opt_out_text) ",
        );
        qb.push_values(chunk, |mut b, phone| {
            let opted_out = known.get(*phone).and_then(|c| c.opted_out_at);
            b.push_bind(*phone)
                .push_bind(now)
                .push_bind(opted_out)
                .push_bind(opted_out.map(|_| "(before being forgotten)"));
        });
        qb.push(" ON CONFLICT (phone) DO UPDATE SET updated_at = excluded.updated_at");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// [`add_contact_ids`] for a batch of (number, the provider's id for it), in one statement a
/// 500. An id given twice keeps its last number, as one call after another would.
pub async fn add_contact_ids_many(conn: &mut SqliteConnection, pairs: &[(&str, &str)], now: i64) -> StoreResult<()> {
    let mut last: HashMap<&str, &str> = HashMap::new();
    for (phone, id) in pairs.iter().filter(|(_, id)| !id.is_empty()) {
        last.insert(id, phone);
    }
    let rows: Vec<(&str, &str)> = last.into_iter().collect();
    for chunk in rows.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO contact_ids (user_id, phone, updated_at) ");
        qb.push_values(chunk, |mut b, (id, phone)| {
            b.push_bind(*id).push_bind(*phone).push_bind(now);
        });
        qb.push(" ON CONFLICT (user_id) DO UPDATE SET phone = excluded.phone, updated_at = excluded.updated_at");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}
