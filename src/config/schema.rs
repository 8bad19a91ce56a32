//! The configuration's JSON Schema, derived from the very types the YAML is read into (their
//! doc comments become descriptions), and the reference page `docs/configuration.md` made from
//! it. Editors validate a `recado.yaml` with the schema (`recado schema > recado.schema.json`,
//! then `# yaml-language-server: $schema=recado.schema.json` at the top of the file); a test
//! keeps the committed copies in sync with the code.
//!
//! The schema says what each field is and which fields exist; `recado check` says everything
//! else (durations, ids that must exist, WhatsApp's limits), with paths.

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::raw::*;

/// A vendor entry: its `type` and the type its fields are read into.
struct Vendor {
    kind: &'static str,
    schema: fn(&mut SchemaGenerator) -> schemars::Schema,
}

/// `providers[*].type`, as `config::validate` dispatches them.
const PROVIDERS: &[Vendor] = &[
    Vendor { kind: "meta_cloud", schema: |g| g.subschema_for::<crate::providers::meta_cloud::config::RawMetaCloud>() },
    Vendor { kind: "twilio", schema: |g| g.subschema_for::<crate::providers::twilio::config::RawTwilio>() },
];

/// `sources[*].type`.
const SOURCES: &[Vendor] = &[
    Vendor {
        kind: "google_sheets",
        schema: |g| g.subschema_for::<crate::sources::google_sheets::config::RawGoogleSheets>(),
    },
    Vendor { kind: "salesforce", schema: |g| g.subschema_for::<crate::sources::salesforce::config::RawSalesforce>() },
];

/// The whole configuration's schema (JSON Schema 2020-12).
fn json_schema() -> Value {
    let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut properties = Map::new();
    properties.insert("state".into(), described::<RawState>(&mut g, "Where recado keeps its state."));
    properties.insert("http".into(), described::<RawHttp>(&mut g, "The webhook and operator HTTP server."));
    properties.insert(
        "providers".into(),
        json!({ "description": "WhatsApp senders, one entry per number; `type` says which vendor.",
                "type": "array", "items": vendor_entries(&mut g, PROVIDERS) }),
    );
    properties.insert(
        "sources".into(),
        json!({ "description": "Systems of record recado watches and writes back to; `type` says which vendor.",
                "type": "array", "items": vendor_entries(&mut g, SOURCES) }),
    );
    properties.insert(
        "rules".into(),
        json!({ "description": "What to send, to whom, when.", "type": "array", "items": g.subschema_for::<RawRule>() }),
    );
    properties.insert(
        "flows".into(),
        json!({ "description": "Conversations: menus, questions, surveys answered in the chat.",
                "type": "array", "items": g.subschema_for::<crate::flows::config::RawFlow>() }),
    );
    properties.insert(
        "handoff".into(),
        described::<crate::handoff::config::RawHandoffSection>(
            &mut g,
            "A person takes over: the inbox staff answer from, and what the person is told.",
        ),
    );
    properties.insert("inbound".into(), described::<RawInbound>(&mut g, "What people who write are answered."));
    properties.insert(
        "defaults".into(),
        described::<RawDefaults>(&mut g, "Time zone, quiet hours and lateness every rule inherits."),
    );
    // Steps and the consent notice are read in two passes (their versions are hashed from the
    // YAML as written), so their fields are typed here.
    let step = serde_json::to_value(g.subschema_for::<crate::flows::config::RawStep>()).unwrap_or_default();
    let consent = serde_json::to_value(g.subschema_for::<crate::flows::config::RawConsent>()).unwrap_or_default();
    let template = serde_json::to_value(g.subschema_for::<RawTemplate>()).unwrap_or_default();
    let mut defs: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    if let Some(handoff) = defs.get_mut("RawHandoffSection") {
        handoff["properties"]["reopen_template"] = template;
    }
    if let Some(flow) = defs.get_mut("RawFlow") {
        flow["properties"]["steps"]["items"] = step;
    }
    if let Some(inbound) = defs.get_mut("RawInbound") {
        inbound["properties"]["consent"] = consent;
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/recado/recado/docs/recado.schema.json",
        "title": "recado configuration",
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "$defs": defs,
    })
}

fn described<T: JsonSchema>(g: &mut SchemaGenerator, description: &str) -> Value {
    let mut s = serde_json::to_value(g.subschema_for::<T>()).unwrap_or_default();
    if let Some(o) = s.as_object_mut() {
        o.insert("description".into(), json!(description));
    }
    s
}

/// One of the vendors' entries, each with its `type` required and its own fields only.
fn vendor_entries(g: &mut SchemaGenerator, vendors: &[Vendor]) -> Value {
    let one_of: Vec<Value> = vendors
        .iter()
        .map(|v| {
            let fields = serde_json::to_value((v.schema)(g)).unwrap_or_default();
            let name = fields["$ref"].as_str().and_then(|r| r.rsplit('/').next()).unwrap_or_default().to_string();
            json!({ "$ref": format!("#/$defs/{}", entry_name(&name)), "x-recado-fields": name, "x-recado-type": v.kind })
        })
        .collect();
    json!({ "oneOf": one_of })
}

/// The definition of a vendor entry: its fields plus `type`.
fn entry_name(fields: &str) -> String {
    format!("{fields}Entry")
}

/// The schema with each vendor entry defined (its fields, and `type` as a constant).
pub fn schema() -> Value {
    let mut s = json_schema();
    let mut entries = Vec::new();
    for section in ["providers", "sources"] {
        for item in s["properties"][section]["items"]["oneOf"].as_array().cloned().unwrap_or_default() {
            let fields = item["x-recado-fields"].as_str().unwrap_or_default().to_string();
            let kind = item["x-recado-type"].as_str().unwrap_or_default().to_string();
            let mut def = s["$defs"][&fields].clone();
            def["properties"]["type"] = json!({ "const": kind, "description": "The vendor of this entry." });
            let mut required: Vec<Value> = def["required"].as_array().cloned().unwrap_or_default();
            required.insert(0, json!("type"));
            def["required"] = Value::Array(required);
            entries.push((entry_name(&fields), fields, def));
        }
        if let Some(items) = s["properties"][section]["items"]["oneOf"].as_array_mut() {
            for item in items {
                if let Some(o) = item.as_object_mut() {
                    o.remove("x-recado-fields");
                    o.remove("x-recado-type");
                }
            }
        }
    }
    if let Some(defs) = s["$defs"].as_object_mut() {
        for (entry, fields, def) in entries {
            defs.remove(&fields);
            defs.insert(entry, def);
        }
        for def in defs.values_mut() {
            add_aliases(def);
        }
    }
    s
}

/// Fields read under a second name (`#[serde(alias)]`, which schemars does not see): (field,
/// alias, another field that only the owning definition has).
const ALIASES: &[(&str, &str, &str)] = &[("column", "field", "granted_values"), ("consumer_key", "client_id", "flow")];

/// Lets `def` take each alias in place of its field (one of the two, when it is required).
fn add_aliases(def: &mut Value) {
    for (field, alias, marker) in ALIASES {
        let Some(props) = def["properties"].as_object_mut() else { continue };
        let Some(original) = props.get(*field).cloned() else { continue };
        if !props.contains_key(*marker) {
            continue;
        }
        let mut same = original;
        same["description"] = json!(format!("Another name for `{field}`."));
        props.insert(alias.to_string(), same);
        let required = def["required"].as_array().cloned().unwrap_or_default();
        if required.iter().any(|r| r == field) {
            def["required"] = Value::Array(required.into_iter().filter(|r| r != field).collect());
            def["oneOf"] = json!([{ "required": [field] }, { "required": [alias] }]);
        }
    }
}

/// `docs/configuration.md`: every section and field with its type and description.
pub fn markdown() -> String {
    let s = schema();
    let defs = s["$defs"].as_object().cloned().unwrap_or_default();
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the configuration's types by `recado schema --format markdown`; do not edit by\n\
         hand (a test compares this file with the code). The JSON Schema is\n\
         [recado.schema.json](recado.schema.json); `recado check` validates everything else and reports\n\
         every problem with its path. Secrets (`*_env`, `*_file`) are given as exactly one of the three\n\
         forms; `*_file` paths may use `${CREDENTIALS_DIRECTORY}`.\n",
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut pending: Vec<(String, String)> = Vec::new();
    for (section, v) in s["properties"].as_object().cloned().unwrap_or_default() {
        out.push_str(&format!("\n## `{section}`\n\n{}\n", v["description"].as_str().unwrap_or_default()));
        let target = if v["type"] == "array" { &v["items"] } else { &v };
        if let Some(options) = target["oneOf"].as_array() {
            for o in options {
                let name = def_name(o);
                let kind = defs.get(&name).map(|d| d["properties"]["type"]["const"].clone()).unwrap_or_default();
                out.push_str(&format!("\n### `{section}[*]` with `type: {}`\n", kind.as_str().unwrap_or_default()));
                fields(&mut out, &defs, &name, &format!("{section}[*]"), &mut pending);
                seen.insert(name);
            }
        } else {
            let name = def_name(target);
            let path = if v["type"] == "array" { format!("{section}[*]") } else { section.clone() };
            fields(&mut out, &defs, &name, &path, &mut pending);
            seen.insert(name);
        }
    }
    while let Some((name, path)) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        out.push_str(&format!("\n### `{path}`\n"));
        fields(&mut out, &defs, &name, &path, &mut pending);
    }
    out
}

fn def_name(v: &Value) -> String {
    v["$ref"].as_str().and_then(|r| r.rsplit('/').next()).unwrap_or_default().to_string()
}

/// A table of the fields of definition `name`; nested definitions are queued for their own
/// table under `path`.
fn fields(out: &mut String, defs: &Map<String, Value>, name: &str, path: &str, pending: &mut Vec<(String, String)>) {
    let Some(def) = defs.get(name) else { return };
    if let Some(d) = def["description"].as_str() {
        out.push_str(&format!("\n{}\n", one_paragraph(d)));
    }
    let required: Vec<&str> =
        def["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let Some(props) = def["properties"].as_object() else {
        out.push_str(&format!("\nType: {}.\n", type_of(def)));
        return;
    };
    out.push_str("\n| field | type | description |\n|---|---|---|\n");
    for (field, p) in props {
        let mut kind = type_of(p);
        if required.contains(&field.as_str()) {
            kind.push_str(", required");
        }
        let list = if p["type"] == "array" || p["type"].as_array().is_some_and(|t| t.contains(&json!("array"))) {
            "[*]"
        } else {
            ""
        };
        for nested in refs(p) {
            pending.push((nested, format!("{path}.{field}{list}")));
        }
        let description = p["description"].as_str().map(one_paragraph).unwrap_or_default().replace('|', "\\|");
        out.push_str(&format!("| `{field}` | {kind} | {description} |\n"));
    }
}

/// Every definition a property refers to (directly, in an array, or as an option).
fn refs(p: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if p.get("$ref").is_some() {
        out.push(def_name(p));
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = p.get(key).filter(|v| v.is_object()) {
            out.extend(refs(inner));
        }
    }
    for key in ["anyOf", "oneOf"] {
        for inner in p[key].as_array().into_iter().flatten() {
            out.extend(refs(inner));
        }
    }
    out
}

/// A short, human name for a property's type.
fn type_of(p: &Value) -> String {
    if p.get("$ref").is_some() {
        return format!("`{}`", def_name(p).trim_start_matches("Raw"));
    }
    if let Some(c) = p.get("const") {
        return format!("`{c}`");
    }
    if let Some(options) = p["anyOf"].as_array().or(p["oneOf"].as_array()) {
        let names: Vec<String> = options.iter().filter(|o| o["type"] != "null").map(type_of).collect();
        return names.join(" or ");
    }
    let types: Vec<&str> = match &p["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => Vec::new(),
    };
    match types.as_slice() {
        ["array"] => format!("list of {}", type_of(&p["items"])),
        ["object"] if p.get("additionalProperties").is_some_and(Value::is_object) => {
            format!("map of {}", type_of(&p["additionalProperties"]))
        }
        [] => "any".into(),
        ts => ts.join(" or "),
    }
}

/// A doc comment's lines as one paragraph (the table needs one line).
fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
