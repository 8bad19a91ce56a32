//! The webhook endpoint: handshake, signatures, no side effects for bad requests.

use recado::providers::meta_cloud::webhook::sign;
use recado::store;

use crate::harness::Harness;

fn status_body(wamid: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1","phone_number_id":"1234567890"}},"statuses":[{{"id":"{wamid}","status":"read","timestamp":"1700000000","recipient_id":"56987650001"}}]}}}}]}}]}}"#
    )
}

/// Sends only the head of a POST declaring `len` bytes with `Expect: 100-continue` and returns
/// the first response head the server answers with.
async fn oversized_request_head(url: &str, len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         X-Hub-Signature-256: sha256=00\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_mis_signed_webhooks_are_refused_with_no_effect() {
    let mut h = Harness::new(vec![]).await;
    h.start().await;
    let url = h.webhook_url();
    let http = reqwest::Client::new();
    let body = status_body("wamid.X");

    let r = http.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401, "no signature");
    let r = http
        .post(&url)
        .header("x-hub-signature-256", sign("wrong-secret", body.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "signed with another secret");
    let mut tampered = body.clone().into_bytes();
    tampered[20] ^= 1;
    let r = http
        .post(&url)
        .header("x-hub-signature-256", sign("sandbox-app-secret", body.as_bytes()))
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "body changed after signing");
    let r = http.post(&url).header("x-hub-signature-256", "sha256=nothex").body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{url}-other"))
        .header("x-hub-signature-256", sign("sandbox-app-secret", body.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "unknown provider");
    // Over the body limit: refused from the declared length, before the body is sent (a
    // client streaming 2 MiB into a server that already closed would see a reset instead).
    let head = oversized_request_head(&url, 2 << 20).await;
    assert!(head.starts_with("HTTP/1.1 413"), "body limit, got: {head}");
    assert!(!head.contains("100 Continue"), "the body was never asked for: {head}");

    let mut c = h.store().conn().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks").fetch_one(&mut *c).await.unwrap();
    assert_eq!(stored, 0, "nothing refused was stored");
    drop(c);

    // The same body, properly signed, is accepted and stored.
    let r = http
        .post(&url)
        .header("x-hub-signature-256", sign("sandbox-app-secret", body.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    h.quiesce().await;
    let mut c = h.store().conn().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks").fetch_one(&mut *c).await.unwrap();
    assert_eq!(stored, 1);
    assert_eq!(store::pending_webhook_count(&mut c).await.unwrap(), 0, "processed");
    drop(c);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_handshake() {
    let mut h = Harness::new(vec![]).await;
    h.start().await;
    let url = h.webhook_url();
    let http = reqwest::Client::new();
    let ok = http
        .get(format!("{url}?hub.mode=subscribe&hub.verify_token=sandbox-verify&hub.challenge=1158201444"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    let bad = http.get(format!("{url}?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1")).send().await.unwrap();
    assert_eq!(bad.status(), 403);
    let health: serde_json::Value =
        http.get(url.replace("/webhooks/whatsapp", "/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    h.stop().await;
}

async fn post_signed(h: &Harness, body: &str) -> u16 {
    reqwest::Client::new()
        .post(h.webhook_url())
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign("sandbox-app-secret", body.as_bytes()))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// One delivery that cannot be applied (here: its message's stored content is damaged) is
/// parked with its reason; the deliveries after it — an opt-out among them — are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_cannot_be_applied_is_parked_and_the_rest_go_on() {
    let mut h = Harness::new(vec![]).await;
    h.user(60, true, None);
    h.start().await;
    h.add_row(crate::harness::row(60, "Elena", "Sí", "Activo"));
    h.add_row(crate::harness::row(61, "Hugo", "Sí", "Activo"));
    h.wait_cell("60", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    let m = h.messages().await.into_iter().find(|m| m.record_key.0 == "60").unwrap();
    let wamid = m.provider_message_id.clone().unwrap();
    let mut c = h.store().conn().await.unwrap();
    sqlx::query("UPDATE messages SET content = 'not json' WHERE id = $1").bind(m.id).execute(&mut *c).await.unwrap();
    drop(c);
    // A status not seen before for the damaged message, then an opt-out from 61.
    assert_eq!(post_signed(&h, &status_body(&wamid).replace("\"read\"", "\"failed\"")).await, 200);
    let baja = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"1234567890"},"contacts":[{"profile":{"name":"Hugo"},"wa_id":"56987650061"}],"messages":[{"from":"56987650061","id":"wamid.BAJA61","timestamp":"1700000000","type":"text","text":{"body":"BAJA"}}]}}]}]}"#;
    assert_eq!(post_signed(&h, baja).await, 200);
    h.wait_cell("61", "Consentimiento", "BAJA").await;
    let store = h.store();
    crate::harness::wait_for("the damaged delivery to be parked", std::time::Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            let mut c = store.conn().await.unwrap();
            store::parked_webhook_count(&mut c).await.unwrap() == 1
                && store::pending_webhook_count(&mut c).await.unwrap() == 0
        }
    })
    .await;
    let mut c = h.store().conn().await.unwrap();
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM webhooks WHERE parked_at IS NOT NULL")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert!(outcome.starts_with("parked: ") && outcome.contains("message content"), "{outcome}");
    drop(c);
    h.stop().await;
}

/// A person with a username and no visible number: Meta sends their business-scoped id only.
/// Known from earlier status webhooks, they are matched by it; unknown, their message is kept
/// unmatched; and an unreadable item never drops the statuses that came with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_without_a_visible_number_are_matched_by_their_user_id_and_nothing_is_dropped() {
    let mut h = Harness::new(vec![]).await;
    h.sandbox.meta().add_user(recado::sandbox::SimUser {
        wa_id: crate::harness::wa_id(62),
        user_id: Some("CL.1349120865530274".into()),
        read_after_ms: 40,
        ..Default::default()
    });
    h.start().await;
    h.add_row(crate::harness::row(62, "Olga", "Sí", "Activo"));
    h.wait_cell("62", "Estado WhatsApp", "read").await;
    // Olga hides her number behind a username and writes.
    h.sandbox.meta().add_user(recado::sandbox::SimUser {
        wa_id: crate::harness::wa_id(62),
        user_id: Some("CL.1349120865530274".into()),
        username: Some("@olga".into()),
        phone_visible: false,
        ..Default::default()
    });
    h.sandbox.meta().user_says(&crate::harness::wa_id(62), "¿sigue en pie?", None);
    h.wait_cell("62", "Última respuesta", "¿sigue en pie?").await;
    // Someone unknown, without a number, in the same delivery as a status and a broken item.
    h.add_row(crate::harness::row(63, "Tito", "Sí", "Activo"));
    h.wait_cell("63", "Estado WhatsApp", "delivered").await;
    let wamid = h.sent_to(63)[0].id.clone();
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1","phone_number_id":"1234567890"}},
        "contacts":[{{"profile":{{"name":"X","username":"@x"}},"user_id":"US.777"}}],
        "messages":[{{"from_user_id":"US.777","id":"wamid.U777","timestamp":"1700000000","type":"text","text":{{"body":"hola"}}}},{{"id":"wamid.NOSENDER","type":"text"}}],
        "statuses":[{{"id":"{wamid}","status":"read","timestamp":"1700000001","recipient_id":"56987650063"}}]}}}}]}}]}}"#
    );
    assert_eq!(post_signed(&h, &body).await, 200);
    h.wait_cell("63", "Estado WhatsApp", "read").await;
    let mut c = h.store().conn().await.unwrap();
    let unmatched: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT phone, sender_id FROM inbound WHERE provider_message_id = 'wamid.U777'")
            .fetch_one(&mut *c)
            .await
            .unwrap();
    assert_eq!(unmatched, (None, Some("US.777".to_string())));
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM webhooks ORDER BY id DESC LIMIT 1").fetch_one(&mut *c).await.unwrap();
    assert!(outcome.contains("1 unreadable"), "{outcome}");
    drop(c);
    h.stop().await;
}

/// Meta retries an unacknowledged webhook for days at growing intervals: after an outage of
/// (compressed) hours, the reply still arrives and reaches the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_during_a_long_outage_arrives_after_the_restart() {
    let settings = recado::sandbox::MetaSettings {
        status_delay_ms: 30,
        messages_per_second: 1000.0,
        // An hour of Meta's schedule is 360 ms here.
        webhook_time_scale: 0.0001,
        ..Default::default()
    };
    let mut h = Harness::with_settings(vec![], settings).await;
    h.user(64, true, None);
    h.start().await;
    h.add_row(crate::harness::row(64, "Marta", "Sí", "Activo"));
    h.wait_cell("64", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    h.stop().await;
    let wamid = h.sent_to(64)[0].id.clone();
    let (_, failures) = h.sandbox.meta().delivery_stats();
    h.sandbox.meta().user_says(&crate::harness::wa_id(64), "llego tarde", Some(&wamid));
    // Down for what Meta counts as more than an hour of retries.
    crate::harness::wait_for("Meta to retry through an hour", std::time::Duration::from_secs(20), || async {
        h.sandbox.meta().delivery_stats().1 >= failures + 8
    })
    .await;
    h.start().await;
    h.wait_cell("64", "Última respuesta", "llego tarde").await;
    h.stop().await;
}

/// Meta does not keep webhook order: a late `sent` of a send that Meta already reported failed
/// (and recado queued again) must not mark the message sent; the new send goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_status_of_a_failed_send_does_not_stand_for_its_retry() {
    let mut h = Harness::new(vec![]).await;
    h.sandbox.meta().update_settings(|s| s.statuses = false);
    h.user(64, false, None);
    h.start().await;
    h.add_row(crate::harness::row(64, "Inés", "Sí", "Activo"));
    h.wait_cell("64", "Estado WhatsApp", "sent").await;
    let first = h.sent_to(64)[0].id.clone();
    let id = h.messages().await[0].id;
    let status = |state: &str, extra: &str| {
        format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1","phone_number_id":"1234567890"}},
            "statuses":[{{"id":"{first}","status":"{state}","timestamp":"1700000001","recipient_id":"{}","biz_opaque_callback_data":"{id}"{extra}}}]}}}}]}}]}}"#,
            crate::harness::wa_id(64)
        )
    };
    let failed = status("failed", r#","errors":[{"code":131000,"title":"Something went wrong"}]"#);
    assert_eq!(post_signed(&h, &failed).await, 200);
    crate::harness::wait_for("the message to be queued again", std::time::Duration::from_secs(20), || async {
        h.messages().await[0].state == recado::domain::MessageState::Queued
    })
    .await;
    assert_eq!(post_signed(&h, &status("delivered", "")).await, 200);
    h.quiet().await;
    assert_eq!(h.messages().await[0].state, recado::domain::MessageState::Queued, "the late status is not the retry's");
    h.clock.advance(std::time::Duration::from_secs(3600));
    crate::harness::wait_for("the retry to go out", std::time::Duration::from_secs(20), || async {
        h.sent_to(64).len() == 2
    })
    .await;
    h.quiesce().await;
    let m = &h.messages().await[0];
    assert_ne!(m.provider_message_id.as_deref(), Some(first.as_str()));
    h.stop().await;
}

/// Throttling that Meta reports by webhook (130429 on a `failed` status) slows every send of
/// the provider down, exactly as when a send is answered with it: the provider is paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_reported_by_webhook_pauses_the_provider() {
    let mut h = Harness::new(vec![]).await;
    h.sandbox.meta().update_settings(|s| s.statuses = false);
    h.user(65, false, None);
    h.start().await;
    h.add_row(crate::harness::row(65, "Rosa", "Sí", "Activo"));
    h.wait_cell("65", "Estado WhatsApp", "sent").await;
    let wamid = h.sent_to(65)[0].id.clone();
    let pause = h.running().ctx().provider_pauses.get("whatsapp").cloned().expect("the provider's pause");
    assert!(pause.lock().unwrap().is_none_or(|t| t <= tokio::time::Instant::now()), "not paused yet");
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1","phone_number_id":"1234567890"}},
        "statuses":[{{"id":"{wamid}","status":"failed","timestamp":"1700000001","recipient_id":"{}","errors":[{{"code":130429,"title":"Rate limit hit"}}]}}]}}}}]}}]}}"#,
        crate::harness::wa_id(65)
    );
    assert_eq!(post_signed(&h, &body).await, 200);
    crate::harness::wait_for("the message to be queued again", std::time::Duration::from_secs(20), || async {
        h.messages().await[0].state == recado::domain::MessageState::Queued
    })
    .await;
    assert!(pause.lock().unwrap().is_some_and(|t| t > tokio::time::Instant::now()), "every send of the provider waits");
    h.stop().await;
}

/// Twilio signs the URL it called and the form: behind a reverse proxy that is the configured
/// public URL (with or without the default port), never the address recado listens on.
/// Unsigned, mis-signed or tampered requests change nothing; a good one is answered with empty
/// TwiML and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_requests_are_verified_against_the_public_url() {
    use recado::providers::twilio::webhook::compute_signature;
    let mut h = Harness::on(crate::harness::Vendor::Twilio, vec![]).await;
    h.public_url = Some("https://recado.example.org");
    h.start().await;
    let local = h.webhook_url();
    let public = "https://recado.example.org/webhooks/whatsapp";
    let token = h.sandbox.twilio().settings().auth_token;
    let params: Vec<(String, String)> = [
        ("MessageSid", "SM00000000000000000000000000000062"),
        ("SmsStatus", "received"),
        ("From", "whatsapp:+56987650062"),
        ("To", "whatsapp:+14155238886"),
        ("WaId", "56987650062"),
        ("Body", "hola, ¿a qué hora?"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let http = reqwest::Client::new();
    let post = |signature: Option<String>, form: Vec<(String, String)>| {
        let mut r = http.post(&local).form(&form);
        if let Some(s) = signature {
            r = r.header("x-twilio-signature", s);
        }
        async move { r.send().await.unwrap() }
    };
    assert_eq!(post(None, params.clone()).await.status(), 403, "unsigned");
    let wrong_token = compute_signature("another-token", public, &params);
    assert_eq!(post(Some(wrong_token), params.clone()).await.status(), 403, "another account's token");
    let over_local = compute_signature(&token, &local, &params);
    assert_eq!(post(Some(over_local), params.clone()).await.status(), 403, "signed over the proxy's upstream URL");
    let good = compute_signature(&token, public, &params);
    let mut tampered = params.clone();
    tampered[5].1 = "BAJA".into();
    assert_eq!(post(Some(good.clone()), tampered).await.status(), 403, "a parameter changed after signing");
    let mut c = h.store().conn().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks").fetch_one(&mut *c).await.unwrap();
    assert_eq!(stored, 0, "nothing refused was stored");
    drop(c);

    let r = post(Some(good), params.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/xml"));
    assert_eq!(r.text().await.unwrap(), r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#);
    // Twilio's signing side may add the default port: accepted too (and de-duplicated).
    let with_port = compute_signature(&token, "https://recado.example.org:443/webhooks/whatsapp", &params);
    assert_eq!(post(Some(with_port), params.clone()).await.status(), 200);
    h.quiesce().await;
    let mut c = h.store().conn().await.unwrap();
    assert_eq!(store::inbound_count(&mut c).await.unwrap(), 1, "one message, heard twice");
    let contact = store::contact(&mut c, "+56987650062").await.unwrap().unwrap();
    assert!(contact.last_inbound_at.is_some(), "the window opened");
    drop(c);
    h.stop().await;
}

/// Twilio's other inbound shapes over real HTTP: a list reply (`ListId`/`ListTitle`) to the
/// template recado sent, and a photo (`NumMedia`, `MediaUrl0`, `MediaContentType0`) reach their
/// rows like text does. A JSON body signed through `bodySHA256` is verified over the body's hash
/// (tampered → 403, nothing stored); as it is no message request, it is parked, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_list_replies_media_and_json_bodies_arrive_over_http() {
    use crate::harness::{e164, row, wait_for, Vendor};
    use recado::providers::twilio::webhook::{body_sha256, compute_signature};
    let mut h = Harness::on(Vendor::Twilio, vec![]).await;
    h.start().await;
    h.add_row(row(63, "Ana", "Sí", "Activo"));
    h.add_row(row(64, "Beto", "Sí", "Activo"));
    wait_for("both templates sent", std::time::Duration::from_secs(20), || async {
        h.sent_to(63).len() == 1 && h.sent_to(64).len() == 1
    })
    .await;
    let settings = h.sandbox.twilio().settings();
    let url = h.webhook_url();
    let http = reqwest::Client::new();
    let post_form = |fields: Vec<(&str, String)>| {
        let params: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let signature = compute_signature(&settings.auth_token, &url, &params);
        let request = http.post(&url).header("x-twilio-signature", signature).form(&params);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let from = |n: u32| vec![("From", format!("whatsapp:{}", e164(n))), ("WaId", e164(n)[1..].to_string())];
    let mut list_reply = from(63);
    list_reply.extend([
        ("MessageSid", "SM00000000000000000000000000000063".to_string()),
        ("SmsStatus", "received".into()),
        ("To", settings.sender.clone()),
        ("MessageType", "interactive".into()),
        ("Body", "Martes 10:00".into()),
        ("ListId", "horario-2".into()),
        ("ListTitle", "Martes 10:00".into()),
        ("OriginalRepliedMessageSid", h.sent_to(63)[0].id.clone()),
        ("NumMedia", "0".into()),
    ]);
    assert_eq!(post_form(list_reply).await, 200);
    let mut photo = from(64);
    photo.extend([
        ("MessageSid", "MM00000000000000000000000000000064".to_string()),
        ("SmsStatus", "received".into()),
        ("To", settings.sender.clone()),
        ("MessageType", "image".into()),
        ("Body", String::new()),
        ("NumMedia", "1".into()),
        ("MediaContentType0", "image/jpeg".into()),
        (
            "MediaUrl0",
            format!("https://api.twilio.com/2010-04-01/Accounts/{}/Messages/MM64/Media/ME1", settings.account_sid),
        ),
    ]);
    assert_eq!(post_form(photo).await, 200);
    h.wait_cell("63", "Última respuesta", "Martes 10:00").await;
    // A photo's reply is its kind and the link recado serves it at.
    wait_for("the photo's reply", std::time::Duration::from_secs(20), || async {
        h.cell("64", "Última respuesta").starts_with("[image] /media/")
    })
    .await;

    let json_body = br#"{"type":"com.twilio.messaging.message.delivered","data":{"messageSid":"SM1"}}"#;
    let json_url = format!("{url}?bodySHA256={}", body_sha256(json_body));
    let signature = compute_signature(&settings.auth_token, &json_url, &[]);
    let post_json = |body: &'static [u8]| {
        let request = http
            .post(&json_url)
            .header("x-twilio-signature", signature.clone())
            .header("content-type", "application/json")
            .body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post_json(br#"{"type":"com.twilio.messaging.message.failed","data":{"messageSid":"SM1"}}"#).await, 403);
    let mut c = h.store().conn().await.unwrap();
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE body LIKE '{%'").fetch_one(&mut *c).await.unwrap();
    assert_eq!(stored, 0, "the tampered body was not stored");
    drop(c);
    assert_eq!(post_json(json_body).await, 200);
    let store = h.store();
    wait_for("the JSON delivery to be parked", std::time::Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            let mut c = store.conn().await.unwrap();
            store::parked_webhook_count(&mut c).await.unwrap() == 1
        }
    })
    .await;
    h.stop().await;
}

/// With `status_callback_url`, Twilio calls (and signs) that address, not recado's public URL:
/// callbacks signed over it, with the query recado added, are accepted; over another host, not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_callbacks_are_verified_against_the_configured_status_callback_url() {
    use recado::providers::twilio::webhook::compute_signature;
    let mut h = Harness::on(crate::harness::Vendor::Twilio, vec![]).await;
    h.public_url = Some("https://recado.example.org");
    h.extra_provider = "    status_callback_url: \"https://callbacks.example.org/twilio\"\n".into();
    h.start().await;
    let token = h.sandbox.twilio().settings().auth_token;
    let params: Vec<(String, String)> = [
        ("MessageSid", "SM00000000000000000000000000000075"),
        ("MessageStatus", "delivered"),
        ("To", "whatsapp:+56987650075"),
        ("From", "whatsapp:+14155238886"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let local = format!("{}?recado_message=75", h.webhook_url());
    let http = reqwest::Client::new();
    let post = |signed_over: &str| {
        let signature = compute_signature(&token, signed_over, &params);
        let request = http.post(&local).header("x-twilio-signature", signature).form(&params);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post("https://callbacks.example.org/twilio?recado_message=75").await, 200);
    assert_eq!(
        post("https://recado.example.org/webhooks/whatsapp?recado_message=75").await,
        200,
        "the public URL still works"
    );
    assert_eq!(post("https://elsewhere.example.org/twilio?recado_message=75").await, 403);
    assert_eq!(post("https://callbacks.example.org/twilio?recado_message=76").await, 403, "the query is signed too");
    h.stop().await;
}
