//! The code's boundaries, checked on the source text: vendor names stay in their folders, and
//! the top-level modules form layers (a module names only modules below it: no import cycles).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules, lowest layer first: each may use only those before it.
const LAYERS: &[&str] = &[
    "domain",
    "schedule",
    "diff",
    "expressions",
    "validation",
    "flows",
    "handoff",
    "sources",
    "providers",
    "config",
    "rules",
    "store",
    "metrics",
    "engine",
    "http",
    "sandbox",
    "systemd",
    "app",
    "plan",
    "preflight",
    "report",
    "demo",
    "cli",
];

/// Modules that must not know any vendor.
const VENDOR_FREE: &[&str] = &[
    "domain",
    "schedule",
    "diff",
    "expressions",
    "validation",
    "flows",
    "handoff",
    "rules",
    "store",
    "engine",
    "http",
    "plan",
    "systemd",
];

/// Words that name a vendor, its wire format or its concepts.
const VENDOR_WORDS: &[&str] = &[
    "google",
    "googlesheets",
    "google_sheets",
    "sheets",
    "sheet",
    "spreadsheet",
    "spreadsheets",
    "drive",
    "meta",
    "meta_cloud",
    "metacloud",
    "twilio",
    "salesforce",
    "soql",
    "wa_id",
    "wamid",
    "hub",
    "a1",
    "biz_opaque_callback_data",
    "graph",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The files of a top-level module (`src/x.rs` or everything under `src/x/`).
fn files_of(module: &str) -> Vec<PathBuf> {
    let single = src().join(format!("{module}.rs"));
    if single.exists() {
        return vec![single];
    }
    let mut out = Vec::new();
    let mut stack = vec![src().join(module)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "sql") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

#[test]
fn vendor_names_stay_in_their_folders() {
    let mut leaks = Vec::new();
    for module in VENDOR_FREE {
        for file in files_of(module) {
            let text = std::fs::read_to_string(&file).unwrap();
            // Migrations 1 and 4 carry the column name of earlier builds, which 4 renames away.
            let legacy = file.extension().is_some_and(|e| e == "sql");
            for (n, line) in text.lines().enumerate() {
                // The IANA media type of a workbook names no vendor's API.
                let line_words =
                    line.replace("\"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet\"", "");
                for w in words(&line_words) {
                    if VENDOR_WORDS.contains(&w.as_str()) && !(legacy && w == "wa_id") {
                        leaks.push(format!(
                            "{}:{}: '{w}' in: {}",
                            file.strip_prefix(src()).unwrap().display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(leaks.is_empty(), "vendor names outside the vendor folders and the wiring:\n{}", leaks.join("\n"));
}

/// The top-level modules a file names through `crate::…`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, …}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(item.trim().split("::").next().unwrap_or("").to_string());
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(item.trim().split("::").next().unwrap_or("").to_string());
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.insert(name);
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

#[test]
fn top_level_modules_form_layers_without_cycles() {
    let mut upward = Vec::new();
    for (i, module) in LAYERS.iter().enumerate() {
        for file in files_of(module) {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in crate_references(&text) {
                match LAYERS.iter().position(|m| *m == used) {
                    Some(j) if j > i => {
                        upward.push(format!("{} uses {used}", file.strip_prefix(src()).unwrap().display()))
                    }
                    Some(_) => {}
                    None => upward.push(format!("{} uses {used}, which is not in the layer list", file.display())),
                }
            }
        }
    }
    assert!(upward.is_empty(), "a module uses one above it (a cycle in the making):\n{}", upward.join("\n"));
    // Every top-level module is in the list.
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
        let m = line.trim_end_matches(';');
        assert!(LAYERS.contains(&m), "module {m} is not in the layer list");
    }
}
