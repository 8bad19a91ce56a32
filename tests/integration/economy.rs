//! Google API economy and quota handling.

use std::sync::Arc;
use std::time::Duration;

use recado::domain::{FieldWrite, RecordKey, WriteTarget};
use recado::engine::flusher::Flusher;
use recado::engine::{Clock, EngineCtx};
use recado::rules::RuleSet;
use recado::sandbox::google::FaultSpec;
use recado::sandbox::google::Kind;
use recado::sandbox::GoogleFault;
use recado::store::{self, Store};

use crate::harness::{row, wait_for, Harness, SHEET, TAB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_costs_one_request() {
    let mut h = Harness::new((1..=50).map(|i| row(i, &format!("P{i}"), "Sí", "Activo")).collect()).await;
    h.start().await;
    h.quiesce().await;
    h.sandbox.google().reset_counts();
    let start = h.polls();
    wait_for("ten idle polls", Duration::from_secs(20), || async { h.polls() >= start + 10 }).await;
    let counts = h.sandbox.google().counts();
    let probes = counts.get(Kind::DriveGet.name()).copied().unwrap_or(0);
    let total: u64 = counts.values().sum();
    assert!(probes >= 5, "polls happened ({probes})");
    assert_eq!(total, probes, "nothing but the version probe while the sheet is unchanged: {counts:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_429_delays_the_poll_and_loses_nothing() {
    let mut h = Harness::new(vec![]).await;
    h.user(80, true, None);
    h.start().await;
    // Drive signals its rate limit as 403 userRateLimitExceeded or 429 rateLimitExceeded
    // (its legacy error shape), Sheets as 429 RESOURCE_EXHAUSTED.
    h.sandbox.google().inject(GoogleFault { status: 403, count: 1, scope: Some("drive".into()) });
    h.sandbox.google().inject(GoogleFault { status: 429, count: 1, scope: Some("drive".into()) });
    h.sandbox.google().inject(GoogleFault { status: 429, count: 1, scope: Some("read".into()) });
    h.add_row(row(80, "Diego", "Sí", "Activo"));
    h.wait_cell("80", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    assert_eq!(h.sent_to(80).len(), 1);
    let source = h.running().ctx().health.get("source:inscripciones").unwrap();
    assert_eq!(source.failures, 0, "a quota answer is a delay, not a failure: {source:?}");
    let quota = source.quota.expect("/healthz shows the source's quota");
    assert!(quota.per_minute > 0 && quota.rate_limit_strikes == 0, "strikes clear once reads succeed: {quota:?}");
    h.stop().await;
}

/// The harness's store and a flusher of its sheet outside a running daemon, after the source
/// has looked at the tab (as the poller does before the first flush), and the source's id.
async fn flusher_of(h: &Harness) -> (Store, Flusher, String) {
    let config = recado::config::Config::from_yaml(&h.yaml()).unwrap();
    let store = Store::open(&h.state_path()).await.unwrap();
    let rules = Arc::new(RuleSet::compile(&config.rules).unwrap());
    let (sources, writers) = recado::app::connect_sources(&config, &recado::app::http_client().unwrap()).unwrap();
    sources[0].time_zone().await.unwrap();
    sources[0].read(&recado::sources::ReadSpec::default(), None).await.unwrap();
    let source_id = config.sources[0].id().to_string();
    let groups: Vec<Vec<String>> = writers.iter().map(|w| w.source_ids()).collect();
    let ctx = EngineCtx::new(store.clone(), Arc::new(config), rules, Arc::new(Clock::system()), &groups);
    (store, Flusher::new(Arc::clone(&writers[0]), ctx), source_id)
}

/// 5,000 status updates queued → one key read and one write, every cell on its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_5000_updates_costs_one_read_and_one_write() {
    let n = 5000u32;
    let h = Harness::new((1..=n).map(|i| row(i, &format!("P{i}"), "Sí", "Activo")).collect()).await;
    let (store, flusher, source_id) = flusher_of(&h).await;

    // Each record gets several updates; only the last one per cell may be written.
    let mut tx = store.begin().await.unwrap();
    for state in ["sent", "delivered", "read"] {
        let writes: Vec<FieldWrite> = (1..=n)
            .map(|i| FieldWrite {
                source_id: source_id.clone(),
                target: WriteTarget::Record(RecordKey(i.to_string())),
                field: "Estado WhatsApp".into(),
                value: format!("{state} {i}"),
            })
            .collect();
        store::queue_writes(&mut tx, &writes).await.unwrap();
    }
    tx.commit().await.unwrap();
    // The sheet is sorted before the flush: rows are found by key, not by position.
    assert!(h.sandbox.google().sort_by(SHEET, TAB, "Nombre", true));
    h.sandbox.google().reset_counts();

    let report = flusher.flush_once().await.unwrap();
    assert_eq!(report.done.len(), n as usize);
    let counts = h.sandbox.google().counts();
    assert_eq!(counts.get(Kind::ValuesBatchGet.name()).copied(), Some(1), "{counts:?}");
    assert_eq!(counts.get(Kind::ValuesBatchUpdate.name()).copied(), Some(1), "{counts:?}");
    assert_eq!(counts.get(Kind::ValuesGet.name()).copied(), None);
    for i in [1, 777, n] {
        assert_eq!(
            h.sandbox.google().cell_by_key(SHEET, TAB, "ID", &i.to_string(), "Estado WhatsApp").as_deref(),
            Some(format!("read {i}").as_str())
        );
    }
    let mut c = store.conn().await.unwrap();
    assert_eq!(store::pending_write_count(&mut c).await.unwrap(), 0);
    // Nothing left: the next flush only checks the previous write (one read, nothing to
    // repair), and the one after costs nothing.
    drop(c);
    h.sandbox.google().reset_counts();
    let check = flusher.flush_once().await.unwrap();
    assert!(check.done.is_empty() && check.repairs.is_empty(), "{check:?}");
    assert_eq!(h.sandbox.google().counts().get(Kind::ValuesBatchGet.name()).copied(), Some(1));
    assert_eq!(h.sandbox.google().counts().get(Kind::ValuesBatchUpdate.name()).copied(), None);
    h.sandbox.google().reset_counts();
    assert!(flusher.flush_once().await.unwrap().done.is_empty());
    assert!(h.sandbox.google().counts().is_empty());
}

/// The write-back's read cut off halfway (200 and headers, then the connection drops): the
/// flush fails and writes nothing (a half-read key column would place values on the wrong
/// rows or none), every value stays queued, and the next flush writes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_read_cut_short_writes_nothing_and_the_next_flush_writes_everything() {
    let n = 300u32;
    let h = Harness::new((1..=n).map(|i| row(i, &format!("P{i}"), "Sí", "Activo")).collect()).await;
    let (store, flusher, source_id) = flusher_of(&h).await;
    let writes: Vec<FieldWrite> = (1..=n)
        .map(|i| FieldWrite {
            source_id: source_id.clone(),
            target: WriteTarget::Record(RecordKey(i.to_string())),
            field: "Estado WhatsApp".into(),
            value: format!("sent {i}"),
        })
        .collect();
    let mut tx = store.begin().await.unwrap();
    store::queue_writes(&mut tx, &writes).await.unwrap();
    tx.commit().await.unwrap();
    h.sandbox.google().reset_counts();
    let fault = FaultSpec { cut: true, count: 1, scope: Some("read".into()), ..FaultSpec::default() };
    h.sandbox.google().try_inject(fault).unwrap();

    let failed = flusher.flush_once().await.expect_err("a cut answer is a failed flush");
    assert!(failed.to_string().contains("values.batchGet"), "{failed}");
    assert_eq!(h.sandbox.google().counts().get(Kind::ValuesBatchUpdate.name()).copied(), None, "nothing written");
    let mut c = store.conn().await.unwrap();
    assert_eq!(store::pending_write_count(&mut c).await.unwrap(), i64::from(n), "every value still queued");
    drop(c);

    let report = flusher.flush_once().await.unwrap();
    assert_eq!(report.done.len(), n as usize);
    for i in [1, 150, n] {
        assert_eq!(
            h.sandbox.google().cell_by_key(SHEET, TAB, "ID", &i.to_string(), "Estado WhatsApp").as_deref(),
            Some(format!("sent {i}").as_str())
        );
    }
}

/// A Google call that never answers costs one call timeout, not the source: the next poll
/// carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_call_that_never_answers_times_out_and_the_source_carries_on() {
    let mut h = Harness::new(vec![]).await;
    h.extra_source = "    call_timeout: 1s\n".into();
    h.user(81, true, None);
    h.start().await;
    let fault = FaultSpec { timeout: true, scope: Some("read".into()), ..FaultSpec::default() };
    h.sandbox.google().try_inject(fault).unwrap();
    h.add_row(row(81, "Eva", "Sí", "Activo"));
    h.wait_cell("81", "Estado WhatsApp", "read").await;
    let source = h.running().ctx().health.get("source:inscripciones").unwrap();
    assert!(source.rounds > 0);
    h.sandbox.google().release_held();
    h.stop().await;
}

/// A read whose answer is cut off halfway (200 and headers, then the connection drops) is a
/// failed poll, never a shorter tab: no record is taken as removed, and the next read carries
/// on where the last good one left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cut_short_is_a_failed_poll_not_a_shorter_tab() {
    let rows: Vec<Vec<serde_json::Value>> = (1000..1300).map(|n| row(n, "Persona", "Sí", "Activo")).collect();
    let mut h = Harness::new(rows).await;
    h.user(81, true, None);
    h.start().await;
    let snapshot_len = || async {
        let mut conn = h.store().conn().await.unwrap();
        store::load_snapshot(&mut conn, "inscripciones").await.unwrap().0.len()
    };
    assert_eq!(snapshot_len().await, 300);
    let fault = FaultSpec { cut: true, count: 2, scope: Some("read".into()), ..FaultSpec::default() };
    h.sandbox.google().try_inject(fault).unwrap();
    let failures = || h.running().ctx().health.get("source:inscripciones").map_or(0, |c| c.failures);
    // The sheet changes, so the next polls read it (and get the cut answers).
    h.add_row(row(81, "Eva", "Sí", "Activo"));
    wait_for("a failed poll", Duration::from_secs(20), || async { failures() >= 1 }).await;
    let source = h.running().ctx().health.get("source:inscripciones").unwrap();
    assert!(
        source.last_error.as_deref().is_some_and(|e| e.contains("values.get: answer cut short")),
        "{:?}",
        source.last_error
    );
    // Then the whole answer: the new row is news, and nothing was removed on the way (records
    // taken as removed would have come back as new ones, each sent a welcome).
    h.wait_cell("81", "Estado WhatsApp", "read").await;
    assert_eq!(snapshot_len().await, 301, "every record of the tab is still known");
    assert_eq!(h.sandbox.meta().sent_count(), 1, "only the new row's welcome");
    h.stop().await;
}

/// A read cut off after some of its parts were committed: the rows of those parts stand, and
/// the next read looks at every record again, so a problem fixed in a committed part (a phone
/// that was not a number) is still cleared from its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_problem_fixed_in_a_part_committed_before_a_cut_is_still_cleared() {
    // At the top of the tab: in the first part, which arrives whole before the cut.
    let mut bad = row(999, "Sin número", "Sí", "Activo");
    bad[2] = serde_json::json!("no tiene");
    let rows: Vec<Vec<serde_json::Value>> =
        std::iter::once(bad).chain((1000..9000).map(|n| row(n, "Persona", "Sí", "Activo"))).collect();
    let mut h = Harness::new(rows).await;
    h.start().await;
    wait_for("the row's problem written", Duration::from_secs(20), || async {
        h.cell("999", "Error WhatsApp").contains("not a phone number")
    })
    .await;
    h.quiesce().await;
    let fault = FaultSpec { cut: true, count: 1, scope: Some("read".into()), ..FaultSpec::default() };
    h.sandbox.google().try_inject(fault).unwrap();
    let failures = || h.running().ctx().health.get("source:inscripciones").map_or(0, |c| c.failures);
    h.edit("999", "Teléfono", serde_json::json!(crate::harness::phone(999)));
    wait_for("a failed poll", Duration::from_secs(20), || async { failures() >= 1 }).await;
    wait_for("the row's problem cleared", Duration::from_secs(20), || async {
        h.cell("999", "Error WhatsApp").is_empty()
    })
    .await;
    let snapshot = {
        let mut conn = h.store().conn().await.unwrap();
        store::load_snapshot(&mut conn, "inscripciones").await.unwrap().0
    };
    assert_eq!(snapshot.len(), 8001, "every record known once, nothing removed");
    h.stop().await;
}

/// A part of a read that the store refuses to commit, while the part after it was already
/// planned into memory: memory is loaded again from the store, so the records of the parts not
/// committed are still new at the next read, and every new row is queued its welcome once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_the_store_refuses_leaves_its_records_new_for_the_next_read() {
    let mut h = Harness::new((1000..1100).map(|n| row(n, "Persona", "Sí", "Activo")).collect()).await;
    h.start().await;
    h.quiesce().await;
    // The store refuses one record of the second part (of 2,000 records) of the next read.
    {
        let mut conn = h.store().conn().await.unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse_one BEFORE INSERT ON snapshot_rows WHEN NEW.record_key = '4500'
             BEGIN SELECT RAISE(ABORT, 'injected: the store refuses this record'); END",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    let failures = || h.running().ctx().health.get("source:inscripciones").map_or(0, |c| c.failures);
    let new: Vec<Vec<serde_json::Value>> = (2000..8000).map(|n| row(n, "Persona", "Sí", "Activo")).collect();
    assert!(h.sandbox.google().append_rows(crate::harness::SHEET, crate::harness::TAB, new));
    wait_for("a poll the store refused", Duration::from_secs(30), || async { failures() >= 1 }).await;
    {
        let mut conn = h.store().conn().await.unwrap();
        sqlx::query("DROP TRIGGER refuse_one").execute(&mut *conn).await.unwrap();
    }
    let snapshot_len = || async {
        let mut conn = h.store().conn().await.unwrap();
        store::load_snapshot(&mut conn, "inscripciones").await.unwrap().0.len()
    };
    wait_for("every record committed", Duration::from_secs(60), || async { snapshot_len().await == 6100 }).await;
    h.quiesce().await;
    let messages = h.messages().await;
    let mut keys: Vec<u32> = messages.iter().filter_map(|m| m.record_key.0.parse().ok()).collect();
    keys.sort_unstable();
    assert_eq!(keys, (2000..8000).collect::<Vec<u32>>(), "each new row queued once, and no other");
    h.stop().await;
}

/// A whole tab's read, however slow its answer, ends well before the watchdog calls its loop
/// stuck (and restarts the service into the same slow read).
#[test]
fn a_whole_tab_read_ends_well_before_its_loop_is_called_stuck() {
    assert!(recado::sources::google_sheets::client::WHOLE_READ_MOST * 2 <= recado::engine::STUCK_AFTER);
}

/// Stopping never waits for a poll stuck on a call that does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_a_hung_poll() {
    let mut h = Harness::new(vec![]).await;
    h.extra_source = "    call_timeout: 300s\n".into();
    h.start().await;
    let fault = FaultSpec { timeout: true, scope: Some("drive".into()), count: 1000, ..FaultSpec::default() };
    h.sandbox.google().try_inject(fault).unwrap();
    let probes = h.sandbox.google().count(Kind::DriveGet);
    wait_for("a probe to hang", Duration::from_secs(20), || async {
        h.sandbox.google().count(Kind::DriveGet) > probes
    })
    .await;
    let app = h.app.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), app.stop()).await.expect("stop does not wait for the hung call");
    h.sandbox.google().release_held();
}

/// Reading a sheet again parses only the phone numbers of the rows that changed: the first read
/// after start parses each row's, and a poll after one edit parses that row's number and no
/// other, whichever cell changed (counted by `recado_phone_parses_total`, not timed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_after_one_edit_parses_at_most_the_one_changed_phone() {
    let rows: Vec<Vec<serde_json::Value>> =
        (1000..1300).map(|n| crate::harness::row(n, "Persona", "Sí", "Activo")).collect();
    let mut h = crate::harness::Harness::new(rows).await;
    h.start().await;
    let polls = || h.metric("recado_polls_total", "source=\"inscripciones\"");
    let parses = || h.metric("recado_phone_parses_total", "source=\"inscripciones\"");
    let read_back = || h.metric("recado_snapshot_reads_total", "source=\"inscripciones\"");
    let first = parses().await;
    assert_eq!(first, 300, "the first read parses each row's number once");
    assert_eq!(read_back().await, 0, "a baseline reads no stored row back");

    // Another column changes: that row's number, and only it, is parsed again.
    h.edit("1001", "Estado", serde_json::json!("Egresado"));
    let after = polls().await;
    crate::harness::wait_for("two more polls", std::time::Duration::from_secs(20), || async {
        polls().await >= after + 2
    })
    .await;
    assert_eq!(parses().await, first + 1, "only the edited row's number parsed again");
    assert_eq!(read_back().await, 1, "only the edited record's stored row is read back, once");

    // One phone changes: that number, and only it, is parsed.
    h.edit("1002", "Teléfono", serde_json::json!(crate::harness::phone(1999)));
    crate::harness::wait_for("the changed number parsed", std::time::Duration::from_secs(20), || async {
        parses().await == first + 2
    })
    .await;
    let after = polls().await;
    crate::harness::wait_for("two more polls", std::time::Duration::from_secs(20), || async {
        polls().await >= after + 2
    })
    .await;
    assert_eq!(parses().await, first + 2);
    assert_eq!(read_back().await, 2);
    h.stop().await;
}

/// Staff add a column and leave it empty: every record's fingerprint moves but no field
/// changes. The stored fingerprints follow, so the next edit reads back one stored row, not
/// every row again (memory keeps fingerprints only; the text is read back for moved records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_column_added_does_not_make_later_polls_read_every_row_back() {
    use crate::harness::{header, row, SHEET, TAB};
    let rows: Vec<Vec<serde_json::Value>> = (1000..1050).map(|n| row(n, "Persona", "Sí", "Activo")).collect();
    let mut h = crate::harness::Harness::new(rows.clone()).await;
    h.start().await;
    let read_back = || h.metric("recado_snapshot_reads_total", "source=\"inscripciones\"");
    let mut all = vec![header().into_iter().chain([serde_json::json!("Notas")]).collect::<Vec<_>>()];
    all.extend(rows.iter().map(|r| r.iter().cloned().chain([serde_json::json!("")]).collect()));
    h.sandbox.google().seed(SHEET, "America/Santiago", vec![(TAB.to_string(), all)]);
    h.quiesce_polls(2).await;
    let after_column = read_back().await;
    assert_eq!(after_column, 50, "each record moved: its stored row is read back once");
    h.edit("1001", "Mentor", serde_json::json!("Otra persona"));
    h.quiesce_polls(2).await;
    assert_eq!(read_back().await, after_column + 1, "then only the edited record's row");
    assert!(h.messages().await.is_empty(), "an empty column is news to nobody");
    h.stop().await;
}

/// Deliveries that arrive while the store is busy wait their turn together and are stored in
/// one transaction, not one each (group commit); each is still stored before its 200, and
/// every status is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_that_arrive_together_are_stored_in_one_transaction() {
    let n = 40u32;
    let mut h = Harness::new(vec![]).await;
    for i in 1..=n {
        h.user(i, false, None);
    }
    h.start().await;
    for i in 1..=n {
        h.add_row(row(i, &format!("P{i}"), "Sí", "Activo"));
    }
    for i in 1..=n {
        h.wait_cell(&i.to_string(), "Estado WhatsApp", "delivered").await;
    }
    h.quiesce().await;
    let scrape = |name: &'static str| h.metric(name, "");
    let reads: Vec<_> =
        h.sandbox.meta().sent().iter().filter_map(|m| h.sandbox.meta().signed_status(m, "read")).collect();
    assert_eq!(reads.len(), n as usize);

    // The store is busy (a long transaction holds it) while every "read" arrives.
    let busy = h.store().begin().await.unwrap();
    let http = reqwest::Client::new();
    let posts: Vec<_> = reads
        .into_iter()
        .map(|r| {
            let mut post = http.post(&r.url).body(r.body);
            for (name, value) in r.headers {
                post = post.header(name, value);
            }
            tokio::spawn(async move { post.send().await.map(|a| a.status().as_u16()).unwrap_or(0) })
        })
        .collect();
    wait_for("every delivery verified and waiting to be stored", Duration::from_secs(20), || async {
        scrape("recado_webhooks_storing").await == u64::from(n)
    })
    .await;
    let commits = scrape("recado_webhook_commits_total").await;
    assert!(posts.iter().all(|p| !p.is_finished()), "nothing is answered before it is stored");
    drop(busy);
    for p in posts {
        assert_eq!(p.await.unwrap(), 200);
    }
    // The writer may have taken the first one alone before the others queued behind it.
    let stored_in = scrape("recado_webhook_commits_total").await - commits;
    assert!((1..=2).contains(&stored_in), "{n} deliveries stored in {stored_in} transactions");
    for i in 1..=n {
        h.wait_cell(&i.to_string(), "Estado WhatsApp", "read").await;
    }
    h.stop().await;
}
