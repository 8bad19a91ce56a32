//! Table-driven and property tests of the schedule maths, including DST transitions.

use super::*;
use chrono::Timelike;
use proptest::prelude::*;

/// Table rows: input, order, expected (date, time).
type DateCase = (&'static str, DateOrder, Option<(NaiveDate, Option<NaiveTime>)>);
/// Table rows: zone, date, time, offset, at, expected instant.
type FireCase = (Tz, NaiveDate, Option<NaiveTime>, &'static str, Option<NaiveTime>, DateTime<Utc>);

fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap()
}

fn t(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).unwrap()
}

fn utc(y: i32, m: u32, day: u32, h: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, day, h, min, 0).unwrap()
}

#[test]
fn offsets() {
    for (text, days, minutes, back) in [
        ("-2d", -2, 0, "-2d"),
        ("-6w", -42, 0, "-6w"),
        ("+3h", 0, 180, "+3h"),
        ("-90m", 0, -90, "-90m"),
        ("1d", 1, 0, "+1d"),
    ] {
        let o: Offset = text.parse().unwrap();
        assert_eq!((o.days, o.minutes), (days, minutes), "{text}");
        assert_eq!(o.to_string(), back);
    }
    for bad in ["", "2", "-2x", "d", "--2d", "2 days"] {
        assert!(bad.parse::<Offset>().is_err(), "{bad}");
    }
}

#[test]
fn dates_from_cells() {
    let cases: &[DateCase] = &[
        ("45658", DateOrder::Dmy, Some((d(2025, 1, 1), None))),
        ("45658.5", DateOrder::Dmy, Some((d(2025, 1, 1), Some(t(12, 0))))),
        ("2026-11-21", DateOrder::Dmy, Some((d(2026, 11, 21), None))),
        ("2026-11-21 10:30", DateOrder::Dmy, Some((d(2026, 11, 21), Some(t(10, 30))))),
        ("2026-11-21T10:30:00", DateOrder::Mdy, Some((d(2026, 11, 21), Some(t(10, 30))))),
        ("21/11/2026", DateOrder::Dmy, Some((d(2026, 11, 21), None))),
        ("21-11-26 9:05", DateOrder::Dmy, Some((d(2026, 11, 21), Some(t(9, 5))))),
        ("11/21/2026", DateOrder::Mdy, Some((d(2026, 11, 21), None))),
        ("21.11.2026", DateOrder::Dmy, Some((d(2026, 11, 21), None))),
        ("29/02/2028", DateOrder::Dmy, Some((d(2028, 2, 29), None))),
        ("29/02/2027", DateOrder::Dmy, None),
        ("31/04/2026", DateOrder::Dmy, None),
        ("11/21/2026", DateOrder::Dmy, None),
        ("mañana", DateOrder::Dmy, None),
        ("", DateOrder::Dmy, None),
        ("21/11", DateOrder::Dmy, None),
        ("0", DateOrder::Dmy, None),
    ];
    for (text, order, want) in cases {
        let got = parse_date(text, *order).ok().map(|v| (v.date, v.time));
        assert_eq!(got, *want, "{text} ({order:?})");
    }
}

#[test]
fn fire_times_across_daylight_saving() {
    let madrid: Tz = "Europe/Madrid".parse().unwrap();
    let santiago: Tz = "America/Santiago".parse().unwrap();
    let asuncion: Tz = "America/Asuncion".parse().unwrap();
    let at10 = Some(t(10, 0));
    let cases: &[FireCase] = &[
        // Two days before at 10:00 stays 10:00 local on either side of Madrid's spring change.
        (madrid, d(2026, 3, 30), Some(t(15, 0)), "-2d", at10, utc(2026, 3, 28, 9, 0)),
        (madrid, d(2026, 3, 31), Some(t(15, 0)), "-2d", at10, utc(2026, 3, 29, 8, 0)),
        // 02:30 does not exist on 29 March in Madrid: the first minute that does (03:00 CEST).
        (madrid, d(2026, 3, 29), Some(t(2, 30)), "+0d", None, utc(2026, 3, 29, 1, 0)),
        // 02:30 happens twice on 25 October: the earlier one (CEST).
        (madrid, d(2026, 10, 25), Some(t(2, 30)), "+0d", None, utc(2026, 10, 25, 0, 30)),
        // Hour offsets are absolute: 3 hours before 04:00 CET (03:00 UTC) on the fold day is
        // 00:00 UTC, which Madrid calls 02:00 CEST, not 01:00.
        (madrid, d(2026, 10, 25), Some(t(4, 0)), "-3h", None, utc(2026, 10, 25, 0, 0)),
        // Santiago in summer (UTC-3) and winter (UTC-4).
        (santiago, d(2027, 1, 15), None, "-1d", at10, utc(2027, 1, 14, 13, 0)),
        (santiago, d(2026, 7, 15), None, "-1d", at10, utc(2026, 7, 14, 14, 0)),
        // Asunción has stayed at UTC-3 all year since October 2024.
        (asuncion, d(2026, 7, 15), None, "-1w", at10, utc(2026, 7, 8, 13, 0)),
        // Hour offsets count from the appointment's own time, not from `at`.
        (santiago, d(2026, 11, 28), Some(t(15, 0)), "-3h", at10, utc(2026, 11, 28, 15, 0)),
        (santiago, d(2026, 11, 28), None, "-3h", at10, utc(2026, 11, 28, 10, 0)),
        // Month ends and leap days.
        (santiago, d(2028, 3, 1), None, "-1d", at10, utc(2028, 2, 29, 13, 0)),
        (santiago, d(2026, 3, 31), Some(t(9, 0)), "+1d", None, utc(2026, 4, 1, 12, 0)),
    ];
    for (tz, date, time, offset, at, want) in cases {
        let got = fire_at(&DateValue { date: *date, time: *time }, offset.parse().unwrap(), *at, *tz);
        assert_eq!(got, Some(*want), "{tz} {date} {time:?} {offset} at {at:?}");
    }
}

#[test]
fn santiago_spring_forward_midnight_moves_to_the_first_real_minute() {
    // Chile moves clocks from 00:00 to 01:00 on the first Sunday of September.
    let santiago: Tz = "America/Santiago".parse().unwrap();
    let got = fire_at(&DateValue { date: d(2026, 9, 6), time: None }, Offset { days: 0, minutes: 0 }, None, santiago)
        .unwrap();
    let local = got.with_timezone(&santiago);
    assert_eq!(local.date_naive(), d(2026, 9, 6));
    assert_eq!((local.hour(), local.minute()), (1, 0));
}

#[test]
fn cron_in_a_time_zone() {
    let santiago: Tz = "America/Santiago".parse().unwrap();
    let quarterly = CronSchedule::parse("0 10 1 */3 *").unwrap();
    let next = quarterly.next_after(utc(2026, 11, 21, 12, 0), santiago).unwrap();
    assert_eq!(next, utc(2027, 1, 1, 13, 0), "1 January 10:00 summer time (UTC-3)");
    let after = quarterly.next_after(next, santiago).unwrap();
    assert_eq!(after, utc(2027, 4, 1, 13, 0), "1 April 10:00, still UTC-3 before the April change");
    let with_seconds = CronSchedule::parse("30 0 10 * * *").unwrap();
    assert_eq!(
        with_seconds.next_after(utc(2026, 7, 1, 0, 0), santiago).unwrap(),
        Utc.with_ymd_and_hms(2026, 7, 1, 14, 0, 30).unwrap()
    );
    let weekdays = CronSchedule::parse("0 9 * * 1-5").unwrap();
    assert_eq!(
        weekdays.next_after(utc(2026, 11, 21, 12, 0), santiago).unwrap(),
        utc(2026, 11, 23, 12, 0),
        "Saturday → Monday 09:00"
    );
    assert!(CronSchedule::parse("0 10 1 */3").is_err());
    assert!(CronSchedule::parse("0 25 * * *").is_err());
    assert!(CronSchedule::parse("every quarter").is_err());
}

#[test]
fn sending_windows() {
    let santiago: Tz = "America/Santiago".parse().unwrap();
    let w = SendWindow::parse(
        Some("09:00-20:00"),
        &["lun".into(), "mar".into(), "mié".into(), "jue".into(), "vie".into()],
        &["2026-12-25".into()],
    )
    .unwrap();
    // Thursday 24 December 21:00 local → Friday is a holiday, then the weekend → Monday 09:00.
    let thu_night = resolve_local(santiago, d(2026, 12, 24).and_time(t(21, 0)));
    assert_eq!(w.next_allowed(thu_night, santiago), resolve_local(santiago, d(2026, 12, 28).and_time(t(9, 0))));
    let inside = resolve_local(santiago, d(2026, 12, 23).and_time(t(12, 0)));
    assert_eq!(w.next_allowed(inside, santiago), inside);
    let early = resolve_local(santiago, d(2026, 12, 23).and_time(t(7, 59)));
    assert_eq!(w.next_allowed(early, santiago), resolve_local(santiago, d(2026, 12, 23).and_time(t(9, 0))));
    // A window across midnight.
    let night = SendWindow::parse(Some("20:00-02:00"), &[], &[]).unwrap();
    assert!(night.allows(d(2026, 1, 1).and_time(t(1, 0))));
    assert!(!night.allows(d(2026, 1, 1).and_time(t(3, 0))));
    assert!(SendWindow::parse(Some("9-20"), &["funday".into()], &["25/12".into()]).unwrap_err().len() == 3);
}

#[test]
fn lateness() {
    let due = utc(2026, 1, 1, 10, 0);
    assert!(!too_late(due, utc(2026, 1, 1, 12, 0), Duration::from_secs(3 * 3600)));
    assert!(too_late(due, utc(2026, 1, 1, 13, 1), Duration::from_secs(3 * 3600)));
    assert!(!too_late(due, utc(2025, 12, 31, 0, 0), Duration::ZERO), "not due yet is never late");
}

proptest! {
    /// Day offsets at a fixed hour always land on that local hour, on the right local day.
    #[test]
    fn day_offsets_keep_the_local_hour(days_from_2026 in 0i64..730, offset in -60i64..60, hour in 6u32..22, zone in 0usize..3) {
        let tz: Tz = ["America/Santiago", "America/Asuncion", "Europe/Madrid"][zone].parse().unwrap();
        let date = d(2026, 1, 1) + chrono::Duration::days(days_from_2026);
        let at = t(hour, 0);
        let fired = fire_at(&DateValue { date, time: None }, Offset { days: offset, minutes: 0 }, Some(at), tz).unwrap();
        let local = fired.with_timezone(&tz);
        prop_assert_eq!(local.date_naive(), date + chrono::Duration::days(offset));
        prop_assert_eq!(local.time(), at);
    }

    /// `next_allowed` is never earlier than its input and always allowed.
    #[test]
    fn next_allowed_is_allowed(minutes in 0i64..(366 * 24 * 60), start in 6u32..12, len in 1u32..12) {
        let tz: Tz = "America/Santiago".parse().unwrap();
        let w = SendWindow::parse(Some(&format!("{start:02}:00-{:02}:00", start + len)), &["mon".into(), "wed".into(), "sat".into()], &["2026-03-04".into()]).unwrap();
        let at = utc(2026, 1, 1, 0, 0) + chrono::Duration::minutes(minutes);
        let next = w.next_allowed(at, tz);
        prop_assert!(next >= at);
        prop_assert!(w.allows(next.with_timezone(&tz).naive_local()));
    }
}

#[test]
fn a_phone_in_a_date_column_is_not_shown_whole() {
    let e = parse_date("+56 9 8765 4321", DateOrder::Dmy).unwrap_err();
    assert!(e.contains("+56 9 **** *321") && !e.contains("8765"), "{e}");
    let e = parse_date("pronto", DateOrder::Dmy).unwrap_err();
    assert!(e.starts_with("'pronto' is not a date"), "{e}");
}
