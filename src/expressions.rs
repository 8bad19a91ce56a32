//! Expressions over a record: rule filters (`Curso == 'Soldadura'`) and message parameters
//! (`{{ Nombre }}`, `{{ row["Fecha cita"] | date }}`), with minijinja (pure).
//!
//! One environment definition serves configuration checks (`recado check` reports a bad
//! expression with its path) and rule evaluation. Undefined names are errors, so a misspelt
//! field name never sends an empty parameter. Every field is a variable under its name and
//! all of them are also under `row` for names that are not identifiers.

use std::collections::BTreeMap;

use minijinja::value::Kwargs;
use minijinja::{Environment, State, UndefinedBehavior, Value};

use crate::domain::{CellValue, Record};
use crate::schedule::DateOrder;

/// The hidden variable carrying the source's date order to the `date` filter.
const DATE_ORDER_VAR: &str = "__recado_date_order";
/// The hidden variable carrying the source's date format for date cells.
const DATE_FORMAT_VAR: &str = "__recado_date_format";
/// The hidden variable mapping the text each date cell of the record is shown as back to its
/// serial, so `| date(...)` reads any date cell whatever format it is shown in.
const DATE_SERIALS_VAR: &str = "__recado_date_serials";

/// The environment every expression is compiled in.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("date", date_filter);
    env
}

/// `{{ row["Fecha cita"] | date }}` → `28/11/2026 15:00`; `| date("%d de %B")` for another
/// format. Reads date cells (serial numbers), ISO text and day/month/year text in the order the
/// record's source declares (`date_order`).
fn date_filter(
    state: &State,
    value: Value,
    format: Option<String>,
    _kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
    let order = state
        .lookup(DATE_ORDER_VAR)
        .and_then(|v| v.as_str().and_then(|s| s.parse::<DateOrder>().ok()))
        .unwrap_or_default();
    let text = value.to_string();
    // A date cell of this record is read from its serial, not from the text it is shown as.
    let serial = state
        .lookup(DATE_SERIALS_VAR)
        .and_then(|m| m.get_item(&value).ok())
        .and_then(|v| f64::try_from(v).ok())
        .map(crate::domain::record::format_number);
    let d = crate::schedule::parse_date(serial.as_deref().unwrap_or(&text), order)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e))?;
    let fmt = match format {
        Some(f) => f,
        None => {
            let base = state.lookup(DATE_FORMAT_VAR).and_then(|v| v.as_str().map(String::from));
            default_format(base.as_deref(), order, d.time.is_some())
        }
    };
    format_date(&d, &fmt)
}

fn format_date(d: &crate::schedule::DateValue, fmt: &str) -> Result<String, minijinja::Error> {
    use std::fmt::Write;
    let dt = d.date.and_time(d.time.unwrap_or(chrono::NaiveTime::MIN));
    let items: Vec<chrono::format::Item<'_>> = chrono::format::StrftimeItems::new(fmt).collect();
    if items.iter().any(|i| matches!(i, chrono::format::Item::Error)) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("invalid date format '{fmt}'"),
        ));
    }
    let mut out = String::new();
    write!(out, "{}", dt.format_with_items(items.into_iter())).map_err(|_| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("invalid date format '{fmt}'"))
    })?;
    Ok(out)
}

/// The format a date cell is shown in when no format is given: the configured one, else the
/// date order's (`dmy` → `28/11/2026`), with ` 15:00` when the cell has a time of day.
pub fn default_format(configured: Option<&str>, order: DateOrder, has_time: bool) -> String {
    let date = match configured {
        Some(f) => return if has_time && !f.contains("%H") { format!("{f} %H:%M") } else { f.to_string() },
        None => match order {
            DateOrder::Dmy => "%d/%m/%Y",
            DateOrder::Mdy => "%m/%d/%Y",
            DateOrder::Ymd => "%Y-%m-%d",
        },
    };
    if has_time {
        format!("{date} %H:%M")
    } else {
        date.to_string()
    }
}

/// How a source writes dates, for expressions over its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DateStyle {
    pub order: DateOrder,
    /// A strftime format for date cells (`%d/%m/%Y`); the order's when absent.
    pub format: Option<String>,
}

/// Checks that `expr` is a valid filter expression (configuration validation).
pub fn check_expression(expr: &str) -> Result<(), String> {
    let env = environment();
    env.compile_expression(expr)
        .map_err(|e| format!("invalid expression: {}", e.detail().unwrap_or(&e.to_string())))?;
    // Unknown filters and tests are only found when evaluating: try it with every name
    // undefined-but-chainable, and report only "unknown" errors.
    let mut lenient = environment();
    lenient.set_undefined_behavior(UndefinedBehavior::Chainable);
    let source = format!("{{% if {expr} %}}1{{% endif %}}");
    let t = lenient
        .template_from_str(&source)
        .map_err(|e| format!("invalid expression: {}", e.detail().unwrap_or(&e.to_string())))?;
    match t.render(minijinja::context! {}) {
        Err(e) if is_unknown_name(&e) => Err(format!("invalid expression: {}", e.detail().unwrap_or(&e.to_string()))),
        _ => Ok(()),
    }
}

/// Checks that `text` is a valid parameter template (configuration validation): its syntax, and
/// that every filter, test and function it names exists (minijinja would only say so when
/// rendering).
pub fn check_template(text: &str) -> Result<(), String> {
    let mut env = environment();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    let t = env
        .template_from_str(text)
        .map_err(|e| format!("invalid template: {}", e.detail().unwrap_or(&e.to_string())))?;
    match t.render(minijinja::context! {}) {
        Err(e) if is_unknown_name(&e) => Err(format!("invalid template: {}", e.detail().unwrap_or(&e.to_string()))),
        _ => Ok(()),
    }
}

fn is_unknown_name(e: &minijinja::Error) -> bool {
    matches!(
        e.kind(),
        minijinja::ErrorKind::UnknownFilter | minijinja::ErrorKind::UnknownTest | minijinja::ErrorKind::UnknownFunction
    )
}

/// The template context of a record: each field by name, all of them under `row`, and the
/// source's date style for the `date` filter. Date cells render as readable dates.
pub fn context(record: &Record, dates: &DateStyle) -> Value {
    context_with(record, dates, &[])
}

/// The same, with `aliases`: names expressions use that match a field only by case
/// (`{{ nombre }}` for the header `Nombre`) are variables too.
pub fn context_with(record: &Record, dates: &DateStyle, aliases: &[String]) -> Value {
    let mut fields: BTreeMap<String, Value> = BTreeMap::new();
    let mut serials: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in &record.fields {
        let shown = cell(v, dates);
        if let CellValue::Date(serial) = v {
            serials.entry(shown.to_string()).or_insert(Value::from(*serial));
        }
        fields.insert(k.clone(), shown);
    }
    for alias in aliases {
        if !fields.contains_key(alias) {
            if let Some(v) = record.get(alias) {
                let value = cell(v, dates);
                fields.insert(alias.clone(), value);
            }
        }
    }
    let row = Value::from(fields.clone());
    // Relationship paths (`Contacto__r.Name`) are also reachable with dots:
    // `{{ Contacto__r.Name }}`.
    let mut nested: BTreeMap<String, PathTree> = BTreeMap::new();
    for (k, v) in fields.iter().filter(|(k, _)| k.contains('.')) {
        let parts: Vec<&str> = k.split('.').collect();
        let Some((first, rest)) = parts.split_first() else { continue };
        nested.entry((*first).to_string()).or_default().insert(rest, v.clone());
    }
    for (name, tree) in nested {
        fields.entry(name).or_insert_with(|| tree.into_value());
    }
    fields.insert("row".to_string(), row);
    let order = match dates.order {
        DateOrder::Dmy => "dmy",
        DateOrder::Mdy => "mdy",
        DateOrder::Ymd => "ymd",
    };
    fields.insert(DATE_ORDER_VAR.to_string(), Value::from(order));
    if !serials.is_empty() {
        fields.insert(DATE_SERIALS_VAR.to_string(), Value::from(serials));
    }
    if let Some(f) = &dates.format {
        fields.insert(DATE_FORMAT_VAR.to_string(), Value::from(f.as_str()));
    }
    Value::from(fields)
}

/// The fields under one relationship name, nested as the path is.
#[derive(Default)]
struct PathTree {
    leaves: BTreeMap<String, Value>,
    branches: BTreeMap<String, PathTree>,
}

impl PathTree {
    fn insert(&mut self, rest: &[&str], v: Value) {
        match rest {
            [] => {}
            [leaf] => {
                self.leaves.insert((*leaf).to_string(), v);
            }
            [head, tail @ ..] => self.branches.entry((*head).to_string()).or_default().insert(tail, v),
        }
    }

    fn into_value(self) -> Value {
        let mut map = self.leaves;
        for (k, t) in self.branches {
            map.entry(k).or_insert_with(|| t.into_value());
        }
        Value::from(map)
    }
}

fn cell(v: &CellValue, dates: &DateStyle) -> Value {
    match v {
        CellValue::Empty => Value::from(""),
        CellValue::Text(s) => Value::from(s.trim()),
        CellValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => Value::from(*n as i64),
        CellValue::Number(n) => Value::from(*n),
        CellValue::Bool(b) => Value::from(*b),
        // A time-of-day cell (`TIME`) is a serial below one day: just the time.
        CellValue::Date(serial) if (0.0..1.0).contains(serial) => {
            let minutes = (serial * 24.0 * 60.0).round() as u32 % (24 * 60);
            Value::from(format!("{:02}:{:02}", minutes / 60, minutes % 60))
        }
        CellValue::Date(serial) => {
            match crate::schedule::parse_date(&crate::domain::record::format_number(*serial), dates.order) {
                Ok(d) => {
                    let fmt = default_format(dates.format.as_deref(), dates.order, d.time.is_some());
                    Value::from(format_date(&d, &fmt).unwrap_or_else(|_| crate::domain::record::format_number(*serial)))
                }
                Err(_) => Value::from(*serial),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RecordKey;

    fn render(expr: &str, record: &Record, dates: &DateStyle) -> String {
        let env = environment();
        env.render_str(expr, context(record, dates)).unwrap_or_else(|e| format!("error: {e}"))
    }

    fn rec(fields: &[(&str, CellValue)]) -> Record {
        Record { key: RecordKey("1".into()), fields: fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    #[test]
    fn the_date_filter_follows_the_sources_date_order() {
        let r = rec(&[("Fecha", CellValue::Text("03/04/2026".into()))]);
        let dmy = DateStyle { order: DateOrder::Dmy, format: None };
        let mdy = DateStyle { order: DateOrder::Mdy, format: None };
        assert_eq!(render("{{ Fecha | date('%Y-%m-%d') }}", &r, &dmy), "2026-04-03");
        assert_eq!(render("{{ Fecha | date('%Y-%m-%d') }}", &r, &mdy), "2026-03-04");
        assert_eq!(render("{{ Fecha | date }}", &r, &mdy), "03/04/2026");
    }

    #[test]
    fn date_cells_render_as_dates_not_serials() {
        let r = rec(&[("Fecha cita", CellValue::Date(46352.4375)), ("Día", CellValue::Date(46352.0))]);
        let style = DateStyle::default();
        assert_eq!(render("{{ row['Fecha cita'] }}", &r, &style), "26/11/2026 10:30");
        assert_eq!(render("{{ Día }}", &r, &style), "26/11/2026");
        assert_eq!(render("{{ Día | date('%d de %m') }}", &r, &style), "26 de 11");
        let custom = DateStyle { order: DateOrder::Dmy, format: Some("%d-%m-%Y".into()) };
        assert_eq!(render("{{ row['Fecha cita'] }}", &r, &custom), "26-11-2026 10:30");
    }

    #[test]
    fn the_date_filter_reads_date_cells_whatever_format_they_are_shown_in() {
        let r = rec(&[("Día", CellValue::Date(46352.0)), ("Otra", CellValue::Text("3 de mayo".into()))]);
        let words = DateStyle { order: DateOrder::Dmy, format: Some("%d de %B".into()) };
        assert_eq!(render("{{ Día }}", &r, &words), "26 de November");
        assert_eq!(render("{{ Día | date('%Y-%m-%d') }}", &r, &words), "2026-11-26");
        assert!(render("{{ Otra | date('%Y') }}", &r, &words).starts_with("error"), "text that is no date");
    }

    /// The README's way to compare dates in a filter: ISO text through the `date` filter.
    #[test]
    fn a_filter_compares_dates_in_iso_form() {
        let env = environment();
        let words = DateStyle { order: DateOrder::Dmy, format: Some("%d de %B".into()) };
        let r = rec(&[("Fecha cita", CellValue::Date(46352.0)), ("Texto", CellValue::Text("28/11/2026".into()))]);
        let test =
            |e: &str| env.compile_expression(e).and_then(|x| x.eval(context(&r, &words))).map(|v| v.is_true()).unwrap();
        assert!(test("row['Fecha cita'] | date('%Y-%m-%d') >= '2026-11-01'"));
        assert!(!test("row['Fecha cita'] | date('%Y-%m-%d') >= '2027-01-01'"));
        assert!(test("Texto | date('%Y-%m-%d') == '2026-11-28'"));
    }

    #[test]
    fn time_cells_render_as_times() {
        let r = rec(&[("Hora cita", CellValue::Date(0.6458333333333334))]);
        assert_eq!(render("{{ row['Hora cita'] }}", &r, &DateStyle::default()), "15:30");
    }

    #[test]
    fn checks() {
        assert!(check_expression("Curso ==").is_err());
        assert!(check_expression("Curso | nosuchfilter == 'x'").is_err());
        assert!(check_template("{{ Nombre ").is_err());
        assert!(check_template("{{ Fecha | dat }}").unwrap_err().contains("dat"));
        assert!(check_template("{{ Fecha | date }} {{ ID | urlencode }}").is_ok());
        assert!(check_expression("Curso == 'x' and Estado != ''").is_ok());
        assert!(check_template("{{ Fecha | date('%Q') }}").is_ok(), "formats are checked when rendering");
    }
}
