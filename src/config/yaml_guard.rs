//! A look at a YAML file before it is loaded: its size, its encoding, its shape, and how many
//! nodes it expands to. YAML aliases copy whole subtrees, so nine lines can name billions of
//! nodes ("billion laughs"); the loader would try to build them all. Counting the expansion
//! from the parser's events costs time proportional to the text, never to the expansion.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Largest configuration file accepted.
pub const MAX_BYTES: usize = 1 << 20;
/// Most nodes a configuration may expand to (aliases counted as copies).
pub const MAX_NODES: u64 = 200_000;

/// Checks a configuration file's bytes; on success returns its text.
pub fn check(bytes: &[u8]) -> Result<&str, String> {
    if bytes.len() > MAX_BYTES {
        return Err(format!("the file is {} bytes; a configuration is at most {MAX_BYTES}", bytes.len()));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not a text file (invalid UTF-8 at byte {}); expected YAML", e.valid_up_to()))?;
    if text.contains('\0') {
        return Err("not a text file (it contains NUL bytes); expected YAML".into());
    }
    let mut counter = Counter::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut counter, false).map_err(|e| {
        format!("invalid YAML at line {}, column {}: {}", e.marker().line(), e.marker().col() + 1, e.info())
    })?;
    if counter.total > MAX_NODES {
        return Err(format!(
            "the YAML expands to more than {MAX_NODES} values (aliases repeat whole sections); refusing to load it"
        ));
    }
    match counter.top {
        None | Some(Top::Mapping) => Ok(text),
        Some(Top::Other) => {
            Err("expected sections (state, http, providers, sources, rules, …) at the top level".into())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Mapping,
    Other,
}

#[derive(Default)]
struct Counter {
    /// Nodes each anchor stands for.
    anchors: HashMap<usize, u64>,
    /// Open containers: (anchor id, nodes so far).
    stack: Vec<(usize, u64)>,
    total: u64,
    top: Option<Top>,
}

impl Counter {
    fn add(&mut self, n: u64) {
        self.total = self.total.saturating_add(n);
        if let Some(top) = self.stack.last_mut() {
            top.1 = top.1.saturating_add(n);
        }
    }

    fn first(&mut self, kind: Top) {
        if self.stack.is_empty() && self.top.is_none() {
            self.top = Some(kind);
        }
    }
}

impl MarkedEventReceiver for Counter {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        match ev {
            Event::Scalar(value, _, anchor, _) => {
                // An empty document is fine; a document that is one scalar is not a config.
                if !(self.stack.is_empty() && value.is_empty()) {
                    self.first(Top::Other);
                }
                self.add(1);
                if anchor > 0 {
                    self.anchors.insert(anchor, 1);
                }
            }
            Event::SequenceStart(anchor, _) => {
                self.first(Top::Other);
                self.total = self.total.saturating_add(1);
                self.stack.push((anchor, 1));
            }
            Event::MappingStart(anchor, _) => {
                self.first(Top::Mapping);
                self.total = self.total.saturating_add(1);
                self.stack.push((anchor, 1));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, n)) = self.stack.pop() {
                    if anchor > 0 {
                        self.anchors.insert(anchor, n);
                    }
                    if let Some(parent) = self.stack.last_mut() {
                        parent.1 = parent.1.saturating_add(n);
                    }
                }
            }
            Event::Alias(id) => {
                let n = self.anchors.get(&id).copied().unwrap_or(1);
                self.add(n);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_bomb_is_refused_quickly() {
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\ni: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
        let err = check(bomb.as_bytes()).unwrap_err();
        assert!(err.contains("expands to more than"), "{err}");
    }

    #[test]
    fn ordinary_aliases_are_fine() {
        let yaml = "defaults: &d\n  lateness: 3h\nother: *d\n";
        assert!(check(yaml.as_bytes()).is_ok());
    }

    #[test]
    fn garbage_and_wrong_shapes_say_what_they_are() {
        assert!(check(&[0xff, 0xfe, 0x00, 0x12]).unwrap_err().contains("not a text file"));
        assert!(check(b"\x00\x01\x02").unwrap_err().contains("not a text file"));
        assert!(check(b"just some words").unwrap_err().contains("top level"));
        assert!(check(b"- a\n- b\n").unwrap_err().contains("top level"));
        assert!(check(b"state: [unclosed").unwrap_err().contains("invalid YAML at line"));
        assert!(check(b"").is_ok());
    }
}
