//! What an approved template needs: its name, languages and parameters as configured
//! ([`TemplateSpec`]), WhatsApp's limits on its text, and making parameters acceptable to it
//! (the same on every provider: they are WhatsApp's rules).

/// An approved template and how to fill its parameters (expressions over a record, or a
/// conversation's answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    pub name: String,
    pub language: String,
    /// Other languages it is approved in: a contact's chosen language among them is used.
    pub languages: Vec<String>,
    pub body: Vec<String>,
    pub button_url_suffix: Option<String>,
    /// Characters of the template's own body text (without parameters).
    pub body_text_chars: usize,
    /// A header that is an image, a document or a video.
    pub header: Option<HeaderSpec>,
}

/// A template's media header: its kind (as approved) and the file's public address (an
/// expression over the record, e.g. a certificate per person), with a document's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSpec {
    pub kind: super::MediaKind,
    pub url: String,
    pub filename: Option<String>,
}

impl TemplateSpec {
    /// Every variable the template is sent with: the body's, then a URL button's suffix.
    pub fn variables(&self) -> usize {
        self.body.len() + usize::from(self.button_url_suffix.is_some())
    }

    /// Its language, then the other languages it is approved in.
    pub fn all_languages(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.language.as_str()).chain(self.languages.iter().map(String::as_str))
    }
}

/// Most characters a template's body text and its parameters may have together: WhatsApp
/// refuses more, whichever provider carries it. What the template's own text does not take is
/// left for the parameters.
pub const TEMPLATE_TEXT_LIMIT: usize = 1024;

/// What a template's own body text is taken to be when `body_text_chars` is not given.
pub const DEFAULT_BODY_TEXT_CHARS: usize = 200;

/// Makes template parameters acceptable to WhatsApp, which refuses (error 132018) parameters
/// with a line break, a tab or more than four spaces in a row, and over-long ones: line breaks
/// and tabs become spaces, runs of spaces become one, and when all of them are too long the
/// longest are cut with an ellipsis so that all of them fit in `max_chars`. Returns what was
/// changed, for the log.
pub fn normalise_parameters(params: &mut [String], max_chars: usize) -> Vec<String> {
    let mut notes = Vec::new();
    for (i, p) in params.iter_mut().enumerate() {
        if let Some(out) = one_line(p) {
            notes.push(format!("template parameter {}: line breaks, tabs or repeated spaces replaced", i + 1));
            *p = out;
        }
    }
    let total = |ps: &[String]| ps.iter().map(|p| p.chars().count()).sum::<usize>();
    let max_chars = max_chars.max(params.len() * 2);
    if total(params) > max_chars {
        notes.push(format!("template parameters longer than {max_chars} characters together: cut"));
        while total(params) > max_chars {
            let Some((i, len)) = params.iter().map(|p| p.chars().count()).enumerate().max_by_key(|(_, n)| *n) else {
                break;
            };
            let excess = total(params) - max_chars;
            let keep = len.saturating_sub(excess + 1).max(1);
            if keep + 1 >= len {
                break;
            }
            let mut cut: String = params[i].chars().take(keep).collect();
            cut.push('…');
            params[i] = cut;
        }
    }
    notes
}

/// `text` on one line with single spaces (line breaks and tabs become spaces, runs of spaces
/// one), or `None` when it already is.
pub fn one_line(text: &str) -> Option<String> {
    // Most parameters already are: answered without allocating.
    let clean =
        !text.contains(['\n', '\r', '\t']) && !text.contains("  ") && !text.starts_with(' ') && !text.ends_with(' ');
    if clean {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last_space = false;
    for c in text.chars() {
        let c = if matches!(c, '\n' | '\r' | '\t') { ' ' } else { c };
        if c == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    let out = out.trim().to_string();
    (out != text).then_some(out)
}
