//! Criterion benches of the pure core: change detection and rule evaluation.
//!
//! `cargo bench --bench core` — figures and machine in BENCHMARKS.md.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use recado::config::{RuleConfig, SendSpec, TemplateSpec, Trigger};
use recado::diff::{diff, fingerprints, record_fingerprint, Snapshot, SnapshotRow, StoredRows};
use recado::domain::{CellValue, PhoneNumber, Record, RecordKey};
use recado::rules::{RecordFacts, RuleSet};

const COLUMNS: [&str; 8] = ["ID", "Nombre", "Teléfono", "Curso", "Mentor", "Consentimiento", "Estado", "Comuna"];

fn record(i: usize, version: usize) -> Record {
    let mut fields = BTreeMap::new();
    fields.insert("ID".to_string(), CellValue::Number(i as f64));
    fields.insert("Nombre".to_string(), CellValue::Text(format!("Participante número {i}").into()));
    fields.insert(
        "Teléfono".to_string(),
        CellValue::Text(format!("+56 9 {:04} {:04}", i / 10_000 % 10_000, i % 10_000).into()),
    );
    fields.insert(
        "Curso".to_string(),
        CellValue::Text(["Soldadura", "Gasfitería", "Cocina", "Electricidad"][i % 4].into()),
    );
    fields.insert("Mentor".to_string(), CellValue::Text(format!("Mentor {}", i % 97).into()));
    fields.insert("Consentimiento".to_string(), CellValue::Text("Sí".into()));
    fields.insert(
        "Estado".to_string(),
        CellValue::Text(if version > 0 && i.is_multiple_of(100) { "Egresado" } else { "Activo" }.into()),
    );
    fields.insert("Comuna".to_string(), CellValue::Text(format!("Comuna {}", i % 346).into()));
    debug_assert_eq!(fields.len(), COLUMNS.len());
    Record { key: RecordKey(i.to_string()), fields: fields.into_iter().collect() }
}

/// The old snapshot (memory's fingerprints, and the stored rows of the records that moved, as
/// the poller reads them back), and the fresh read as records: 1% changed, 0.1% added, 0.1%
/// removed.
fn tables(n: usize) -> (Snapshot, StoredRows, Vec<Record>) {
    let rows: StoredRows = (0..n)
        .map(|i| {
            let r = record(i, 0);
            (r.key.clone(), SnapshotRow::of(&r))
        })
        .collect();
    let old = fingerprints(&rows);
    let fresh: Vec<Record> = (n / 1000..n + n / 1000).map(|i| record(i, 1)).collect();
    let moved = recado::diff::moved_rows(&old, fresh.iter().map(|r| (r, record_fingerprint(r))));
    let stored = moved
        .iter()
        .filter_map(|&i| fresh.get(i).map(|r| &r.key))
        .filter_map(|k| rows.get(k).map(|r| (k.clone(), r.clone())))
        .collect();
    (old, stored, fresh)
}

fn bench_diff(c: &mut Criterion) {
    let mut g = c.benchmark_group("diff");
    g.sample_size(10);
    for n in [100_000usize, 1_000_000] {
        let (mut old, stored, fresh) = tables(n);
        g.bench_with_input(BenchmarkId::new("fingerprint_and_diff", n), &n, |b, _| {
            b.iter(|| {
                let changes = diff(&mut old, &stored, &fresh);
                assert!(changes.len() >= n / 100);
                changes.len()
            })
        });
    }
    g.finish();
}

fn bench_rules(c: &mut Criterion) {
    let rules = vec![
        RuleConfig {
            id: "confirmacion".into(),
            source: "s".into(),
            trigger: Trigger::RowAdded,
            filter: Some("Curso != ''".into()),
            provider: "p".into(),
            send: SendSpec::Template(TemplateSpec {
                name: "confirmacion".into(),
                language: "es".into(),
                languages: Vec::new(),
                body: vec!["{{ Nombre }}".into(), "{{ Curso }}".into(), "{{ Mentor }}".into()],
                button_url_suffix: None,
                body_text_chars: recado::config::DEFAULT_BODY_TEXT_CHARS,
                header: None,
            }),
            time_zone: None,
            window: None,
            lateness: None,
            on_reply: None,
            hands_off_other_replies: false,
            write_back: None,
        },
        RuleConfig {
            id: "encuesta".into(),
            source: "s".into(),
            trigger: Trigger::Changed { field: "Estado".into(), to: Some("Egresado".into()) },
            filter: None,
            provider: "p".into(),
            send: SendSpec::Template(TemplateSpec {
                name: "encuesta".into(),
                language: "es".into(),
                languages: Vec::new(),
                body: vec!["{{ Nombre }}".into()],
                button_url_suffix: Some("{{ ID | urlencode }}".into()),
                body_text_chars: recado::config::DEFAULT_BODY_TEXT_CHARS,
                header: None,
            }),
            time_zone: None,
            window: None,
            lateness: None,
            on_reply: None,
            hands_off_other_replies: false,
            write_back: None,
        },
    ];
    let set = RuleSet::compile(&rules).unwrap();
    let records: Vec<Record> = (0..10_000).map(|i| record(i, 0)).collect();
    let phone = Ok(PhoneNumber::from_e164_unchecked("+56987654321"));
    c.bench_function("rules/evaluate_10k_added", |b| {
        b.iter(|| {
            let mut n = 0;
            for r in &records {
                let facts = RecordFacts {
                    phone: &phone,
                    consent: Some(true),
                    gate_columns: &[],
                    dates: &recado::expressions::DateStyle::default(),
                };
                n += set.evaluate("s", &recado::diff::Change::Added(r.key.clone()), r, &facts).intents.len();
            }
            assert_eq!(n, 10_000);
            n
        })
    });
}

fn bench_planning(c: &mut Criterion) {
    use recado::config::Defaults;
    use recado::rules::{TimeContext, TimerPlan};
    let template = || {
        SendSpec::Template(TemplateSpec {
            name: "recordatorio".into(),
            language: "es".into(),
            languages: Vec::new(),
            body: vec!["{{ Nombre }}".into()],
            button_url_suffix: None,
            body_text_chars: recado::config::DEFAULT_BODY_TEXT_CHARS,
            header: None,
        })
    };
    let date_rule = |id: &str, offsets: &[&str], at: Option<chrono::NaiveTime>| RuleConfig {
        id: id.into(),
        source: "s".into(),
        trigger: Trigger::Date {
            field: "Fecha cita".into(),
            offsets: offsets.iter().map(|o| o.parse().unwrap()).collect(),
            at,
        },
        filter: None,
        provider: "p".into(),
        send: template(),
        time_zone: None,
        window: None,
        lateness: None,
        on_reply: None,
        hands_off_other_replies: false,
        write_back: None,
    };
    let rules = vec![
        date_rule("cita", &["-2d"], chrono::NaiveTime::from_hms_opt(10, 0, 0)),
        date_rule("renovacion", &["-6w", "-1w"], None),
    ];
    let set = RuleSet::compile(&rules).unwrap();
    let records: Vec<Record> = (0..100_000)
        .map(|i| {
            let mut r = record(i, 0);
            // Serial dates spread over the next year, half of them with a time of day.
            let serial = 46_348.0 + (i % 365) as f64 + if i % 2 == 0 { 0.4375 } else { 0.0 };
            r.fields.insert("Fecha cita".to_string(), CellValue::Number(serial));
            r
        })
        .collect();
    let phone = Ok(PhoneNumber::from_e164_unchecked("+56987654321"));
    let defaults = Defaults { time_zone: None, window: None, lateness: std::time::Duration::from_secs(3 * 3600) };
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let time = TimeContext {
        now,
        source_tz: "America/Santiago".parse().unwrap(),
        record_tz: None,
        defaults: &defaults,
        date_order: Default::default(),
    };
    let mut g = c.benchmark_group("planning");
    g.sample_size(10);
    g.bench_function("plan_timers_100k_records_2_date_rules", |b| {
        b.iter(|| {
            let mut due = 0;
            for r in &records {
                let facts = RecordFacts {
                    phone: &phone,
                    consent: Some(true),
                    gate_columns: &[],
                    dates: &recado::expressions::DateStyle::default(),
                };
                due += set.plan_timers("s", r, &facts, &time).iter().filter(|p| matches!(p, TimerPlan::Due(_))).count();
            }
            assert!(due > 100_000);
            due
        })
    });
    g.finish();
}

criterion_group!(benches, bench_diff, bench_rules, bench_planning);
criterion_main!(benches);
