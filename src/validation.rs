//! Configuration validation, shared by every section and every vendor: a collector of problems
//! that each carry the path where they are (`sources[0].poll_interval`), and parsers for the
//! kinds of values configuration holds (durations, counts, URLs, secrets, time zones) that never
//! panic and never echo a secret.
//!
//! Validation never stops at the first problem: a section records what is wrong and goes on,
//! so `recado check` prints everything at once. Vendor folders use these helpers to validate
//! their own sections; `config` assembles the whole file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::domain::Secret;

/// One configuration problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `rules[2].when.changed`, or the file for problems with the file itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the configuration:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where `*_env` secrets and `RECADO__…` overrides are looked up: the process environment, or
/// a fixed map (tests, so they never race on `set_var`).
#[derive(Debug, Clone, Default)]
pub struct Env(Option<HashMap<String, String>>);

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Env(None)
    }

    /// Exactly these variables and no others.
    pub fn fixed<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Env(Some(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect()))
    }

    pub fn get(&self, name: &str) -> Option<String> {
        match &self.0 {
            Some(map) => map.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
    }

    /// Variables that start with `prefix` (for layered overrides).
    pub fn with_prefix(&self, prefix: &str) -> HashMap<String, String> {
        match &self.0 {
            Some(map) => {
                map.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            None => std::env::vars().filter(|(k, _)| k.starts_with(prefix)).collect(),
        }
    }
}

/// Collects problems as validation walks the tree.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError { path: path.into(), message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.0)
    }

    /// Deserializes one node, recording the problem (with its inner path) if it does not fit.
    /// Values never appear in the message: serde's "invalid type: integer 20261122" would print
    /// a secret given as a number.
    pub fn parse<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut inner = e.path().to_string();
                let msg = redact_serde_message(&e.inner().to_string());
                // "missing field `path`" belongs at `state.path`, not at `state`.
                if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
                    inner = if inner == "." { field.to_string() } else { format!("{inner}.{field}") };
                }
                self.push(join(path, &inner), msg);
                None
            }
        }
    }

    /// A list section: each element parsed on its own so one bad entry hides no other.
    pub fn parse_list<T: DeserializeOwned>(&mut self, path: &str, value: Option<Value>) -> Vec<(String, T)> {
        self.list(path, value).into_iter().filter_map(|(p, v)| self.parse::<T>(&p, v).map(|t| (p, t))).collect()
    }

    /// The elements of a list section with their paths (`rules[3]`), unparsed.
    pub fn list(&mut self, path: &str, value: Option<Value>) -> Vec<(String, Value)> {
        match value {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                items.into_iter().enumerate().map(|(i, v)| (format!("{path}[{i}]"), v)).collect()
            }
            Some(_) => {
                self.push(path, "expected a list");
                Vec::new()
            }
        }
    }

    /// A duration such as `30s`; `default` when absent; must lie within `min..=max`.
    pub fn duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(s) = value else { return default };
        match parse_duration(s) {
            Ok(d) if d < min => {
                self.push(path, format!("must be at least {}", human_duration(min)));
                default
            }
            Ok(d) if d > max => {
                self.push(path, format!("must be at most {}", human_duration(max)));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.push(path, e);
                default
            }
        }
    }

    /// A whole number within `range`; `default` when absent.
    pub fn count(&mut self, path: &str, value: Option<u64>, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
        match value {
            None => default,
            Some(n) if range.contains(&n) => n,
            Some(_) => {
                self.push(path, format!("expected a number between {} and {}", range.start(), range.end()));
                default
            }
        }
    }

    /// A number within `range`; `default` when absent.
    pub fn number(
        &mut self,
        path: &str,
        value: Option<f64>,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
    ) -> f64 {
        match value {
            None => default,
            Some(n) if n.is_finite() && range.contains(&n) && n > 0.0 => n,
            Some(_) => {
                self.push(path, format!("expected a number greater than 0 and at most {}", range.end()));
                default
            }
        }
    }

    pub fn non_empty(&mut self, path: &str, value: &str) {
        if value.trim().is_empty() {
            self.push(path, "must not be empty");
        }
    }

    /// An id that must be unique among its siblings.
    pub fn unique(&mut self, seen: &mut HashSet<String>, path: &str, id: &str) {
        self.non_empty(path, id);
        if !seen.insert(id.to_string()) {
            self.push(path, format!("duplicate id '{id}'"));
        }
    }

    /// Where a file to send comes from: a public http(s) address (an expression over the record
    /// or the answers may fill it), or an absolute path to a file on this machine, which must
    /// be one WhatsApp takes as `kind` (by its extension) and within its size limit: the
    /// provider uploads it.
    pub fn media_source(&mut self, path: &str, kind: crate::domain::MediaKind, value: &str) {
        let Some(file) = crate::domain::local_media_path(value) else {
            let fixed = value.split("{{").next().unwrap_or_default();
            if !(value.starts_with("https://") || value.starts_with("http://")) || fixed.len() <= "https://".len() {
                self.push(
                    path,
                    format!("expected the file's public address (https://…) or an absolute path to a file on this machine, got {value:?}"),
                );
            }
            return;
        };
        let shown = file.display();
        if value.contains("{{") {
            self.push(path, format!("a file on this machine is one fixed path, got {value:?}"));
            return;
        }
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if kind.mime_for(name).is_none() {
            let article = if kind == crate::domain::MediaKind::Image { "an" } else { "a" };
            self.push(
                path,
                format!("WhatsApp takes {article} {} as {}: {shown} is not one", kind.name(), kind.extensions()),
            );
        }
        match std::fs::metadata(file) {
            Err(e) => self.push(path, format!("cannot read {shown}: {e}")),
            Ok(m) if !m.is_file() => self.push(path, format!("expected a file, {shown} is not one")),
            Ok(m) if m.len() > kind.max_bytes() => self.push(
                path,
                format!(
                    "{shown} is {} bytes, over WhatsApp's {} bytes for a {}",
                    m.len(),
                    kind.max_bytes(),
                    kind.name()
                ),
            ),
            Ok(_) => {}
        }
    }

    /// An http(s) URL, with or without a trailing slash as the caller needs.
    pub fn url(&mut self, path: &str, value: Option<String>, default: &str, trailing_slash: bool) -> String {
        let mut v = value.unwrap_or_else(|| default.to_string());
        if !(v.starts_with("http://") || v.starts_with("https://")) || v.contains(char::is_whitespace) {
            self.push(path, format!("expected an http(s) URL, got '{v}'"));
        }
        if trailing_slash && !v.ends_with('/') {
            v.push('/');
        }
        if !trailing_slash {
            while v.ends_with('/') {
                v.pop();
            }
        }
        v
    }

    /// A secret given as exactly one of `name` (inline), `name_env` (an environment variable
    /// holding it) or `name_file` (a file holding it: how systemd credentials arrive).
    pub fn secret(&mut self, env: &Env, path: &str, name: &str, given: SecretSources) -> Option<Secret> {
        let SecretSources { inline, env: var, file } = given;
        let count = [inline.is_some(), var.is_some(), file.is_some()].iter().filter(|b| **b).count();
        if count != 1 {
            self.push(join(path, name), format!("give exactly one of {name}, {name}_env or {name}_file"));
            return None;
        }
        if let Some(v) = inline {
            return match v {
                Value::String(s) if !s.is_empty() => Some(Secret::new(s)),
                Value::String(_) => {
                    self.push(join(path, name), "must not be empty");
                    None
                }
                // Never echo the value: it is a secret, even when mistyped.
                _ => {
                    self.push(join(path, name), "expected text; put the secret in quotes");
                    None
                }
            };
        }
        if let Some(v) = var {
            let Value::String(var) = v else {
                self.push(join(path, &format!("{name}_env")), "expected the name of an environment variable");
                return None;
            };
            return match env.get(&var) {
                Some(v) if !v.is_empty() => Some(Secret::new(v)),
                _ => {
                    self.push(join(path, &format!("{name}_env")), format!("environment variable {var} is not set"));
                    None
                }
            };
        }
        let Some(Value::String(file)) = file else {
            self.push(join(path, &format!("{name}_file")), "expected the path of a file");
            return None;
        };
        let file = match expand_credentials_directory(&file, env) {
            Ok(f) => f,
            Err(message) => {
                self.push(join(path, &format!("{name}_file")), message);
                return None;
            }
        };
        match std::fs::read_to_string(&file) {
            Ok(v) if v.trim().is_empty() => {
                self.push(join(path, &format!("{name}_file")), format!("{file} is empty"));
                None
            }
            Ok(v) => Some(Secret::new(v.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => {
                self.push(join(path, &format!("{name}_file")), format!("cannot read {file}: {e}"));
                None
            }
        }
    }

    /// An IANA time zone such as `America/Santiago`.
    pub fn time_zone(&mut self, path: &str, name: &str) -> Option<chrono_tz::Tz> {
        match name.trim().parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.push(path, format!("expected an IANA time zone such as America/Santiago, got '{name}'"));
                None
            }
        }
    }

    /// An ISO 3166 country for numbers written without a country code; `CL` when absent.
    pub fn region(&mut self, path: &str, value: Option<&str>) -> phonenumber::country::Id {
        let text = value.unwrap_or("CL");
        match phonenumber::country::Id::from_str(&text.trim().to_uppercase()) {
            Ok(r) => r,
            Err(_) => {
                self.push(path, format!("expected an ISO 3166 country code such as CL, AR or MX, got '{text}'"));
                phonenumber::country::Id::CL
            }
        }
    }
}

/// A secret file's path with a leading `${CREDENTIALS_DIRECTORY}` replaced by the directory
/// systemd hands the service its `LoadCredential=` files in (set for `ExecStartPre=` too), so
/// one configuration works whatever the unit is called.
fn expand_credentials_directory(file: &str, env: &Env) -> Result<String, String> {
    const VAR: &str = "${CREDENTIALS_DIRECTORY}";
    let Some(rest) = file.strip_prefix(VAR) else {
        return Ok(file.to_string());
    };
    match env.get("CREDENTIALS_DIRECTORY") {
        Some(dir) if !dir.is_empty() => Ok(format!("{}{rest}", dir.trim_end_matches('/'))),
        _ => Err(format!(
            "{file} names ${{CREDENTIALS_DIRECTORY}}, which is not set: systemd sets it for a unit with LoadCredential=; elsewhere give the file's path"
        )),
    }
}

/// The three ways a secret can be given, as written (values unparsed, so that a mistyped
/// secret is reported without being echoed).
#[derive(Debug, Default)]
pub struct SecretSources {
    pub inline: Option<Value>,
    pub env: Option<Value>,
    pub file: Option<Value>,
}

impl SecretSources {
    pub fn new(inline: Option<Value>, env: Option<Value>, file: Option<Value>) -> Self {
        Self { inline, env, file }
    }
}

fn join(path: &str, inner: &str) -> String {
    if inner == "." || inner.is_empty() {
        path.to_string()
    } else if inner.starts_with('[') || path.is_empty() {
        format!("{path}{inner}")
    } else {
        format!("{path}.{inner}")
    }
}

/// serde says "invalid type: integer `20261122`, expected a string" and "invalid value: …";
/// keep what was expected and drop the value.
fn redact_serde_message(msg: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            let kind = rest.split([' ', ',']).next().unwrap_or("value");
            let expected = rest.split_once(", expected ").map(|(_, e)| e).unwrap_or("something else");
            return format!("{}{kind}, expected {expected}", prefix);
        }
    }
    msg.to_string()
}

/// The longest duration any setting may have: about ten years. Larger numbers are a typo, and
/// would overflow time arithmetic.
pub const LONGEST_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Parses `500ms`, `30s`, `2m`, `1h`, `1d`, `2w`; at most [`LONGEST_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("expected a duration such as 30s, 5m or 1h, got '{s}'");
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.len() > 15 {
        return Err(if num.len() > 15 { format!("'{s}' is far too long a duration") } else { bad() });
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        "w" => n * 7.0 * 86400.0,
        _ => return Err(bad()),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("expected a non-negative duration, got '{s}'"));
    }
    if secs > LONGEST_DURATION.as_secs_f64() {
        return Err(format!("'{s}' is longer than ten years"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `90s` → "90 s", `2h` → "2 h", for messages.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(86_400_000) && ms > 0 {
        format!("{} d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{} h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("99999999999999999999d").is_err(), "huge numbers are refused, not a panic");
        assert!(parse_duration("4000d").is_err());
        assert!(parse_duration("1e400s").is_err());
    }

    #[test]
    fn a_secret_file_under_the_credentials_directory_is_read_from_where_systemd_put_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("meta_access_token"), "token-from-systemd\n").expect("write");
        let under_systemd = Env::fixed([("CREDENTIALS_DIRECTORY", dir.path().display().to_string())]);
        let given =
            || SecretSources::new(None, None, Some(serde_json::json!("${CREDENTIALS_DIRECTORY}/meta_access_token")));
        let mut p = Problems::new();
        let s = p.secret(&under_systemd, "providers[0]", "access_token", given());
        assert_eq!(s.map(|s| s.expose().to_string()), Some("token-from-systemd".to_string()));

        let mut p = Problems::new();
        assert!(p.secret(&Env::fixed::<&str, &str>([]), "providers[0]", "access_token", given()).is_none());
        let text = p.into_errors().to_string();
        assert!(text.contains("providers[0].access_token_file") && text.contains("LoadCredential"), "{text}");
    }

    #[test]
    fn secrets_are_never_echoed() {
        let mut p = Problems::new();
        let s = p.secret(
            &Env::fixed::<&str, &str>([]),
            "providers[0]",
            "access_token",
            SecretSources::new(Some(serde_json::json!(20261122)), None, None),
        );
        assert!(s.is_none());
        let text = p.into_errors().to_string();
        assert!(text.contains("providers[0].access_token"), "{text}");
        assert!(!text.contains("20261122"), "{text}");
    }

    #[test]
    fn serde_messages_lose_their_values() {
        assert_eq!(
            redact_serde_message("invalid type: integer `20261122`, expected a string"),
            "invalid type: integer, expected a string"
        );
    }

    #[test]
    fn fixed_environment() {
        let env = Env::fixed([("RECADO_X", "1")]);
        assert_eq!(env.get("RECADO_X").as_deref(), Some("1"));
        assert_eq!(env.get("PATH"), None);
    }
}
