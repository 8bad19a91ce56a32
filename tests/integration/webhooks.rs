//! The webhook endpoint: handshake, signatures, no side effects for bad requests.

use recado::providers::meta_cloud::webhook::sign;
use recado::store;

use crate::harness::{settle, Harness};

fn status_body(wamid: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1","phone_number_id":"1234567890"}},"statuses":[{{"id":"{wamid}","status":"read","timestamp":"1700000000","recipient_id":"56987650001"}}]}}}}]}}]}}"#
    )
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
    let big = vec![b'x'; 2 << 20];
    let r =
        http.post(&url).header("x-hub-signature-256", sign("sandbox-app-secret", &big)).body(big).send().await.unwrap();
    assert_eq!(r.status(), 413, "body limit");

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
    settle().await;
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
