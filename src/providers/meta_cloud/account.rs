//! What `recado check --online` asks Meta: whether the token reaches the phone number
//! (`GET /{version}/{phone_number_id}`), and whether each template recado will send is in the
//! WhatsApp Business Account's registry (`GET /{version}/{waba_id}/message_templates`, every
//! page) approved, in that language, with the parameters recado fills, and with quick-reply
//! buttons that the flow reading its replies (a rule's `on_reply`) takes as answers.
//!
//! Meta refuses a template send whose parameters do not match the approved template
//! (132000), whose header needs a parameter recado does not give (132012), or whose name or
//! language is unknown (132001); each of these is found here instead, before a person misses
//! a message. Nothing is sent.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{errors, MetaCloud};
use crate::providers::TemplateUse;

/// Pages of the template list read at most (100 templates a page; Meta allows a few thousand
/// per account).
const MAX_PAGES: usize = 60;

#[derive(Debug, Deserialize)]
struct TemplatePage {
    #[serde(default)]
    data: Vec<Template>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Debug, Deserialize)]
struct Paging {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Template {
    name: String,
    language: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    rejected_reason: Option<String>,
    #[serde(default)]
    parameter_format: Option<String>,
    #[serde(default)]
    components: Vec<Component>,
}

#[derive(Debug, Clone, Deserialize)]
struct Component {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    buttons: Vec<Button>,
}

#[derive(Debug, Clone, Deserialize)]
struct Button {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

impl MetaCloud {
    pub async fn check_online(&self, uses: &[TemplateUse]) -> Vec<String> {
        let c = &self.config;
        let number = format!("{}/{}/{}", c.base_url, c.api_version, c.phone_number_id);
        let request = self
            .http
            .get(&number)
            .query(&[("fields", "verified_name,display_phone_number,quality_rating")])
            .bearer_auth(c.access_token.expose());
        if let Err(e) = self.get(request).await {
            return vec![format!(
                "the phone number id {} could not be read with the access token: {e}",
                c.phone_number_id
            )];
        }
        if uses.is_empty() {
            return Vec::new();
        }
        let Some(waba) = &c.business_account_id else {
            return vec![format!(
                "templates cannot be checked: set business_account_id (the WhatsApp Business Account id) so that {} can be looked up",
                names(uses)
            )];
        };
        let templates = match self.templates(waba).await {
            Ok(t) => t,
            Err(e) => return vec![format!("the message templates of business account {waba} could not be read: {e}")],
        };
        uses.iter().filter_map(|u| compare(u, &templates)).collect()
    }

    /// Every template of the account, following `paging.next`.
    async fn templates(&self, waba: &str) -> Result<Vec<Template>, String> {
        let c = &self.config;
        let mut request = self
            .http
            .get(format!("{}/{}/{}/message_templates", c.base_url, c.api_version, waba))
            .query(&[("fields", "name,language,status,rejected_reason,parameter_format,components"), ("limit", "100")]);
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let bytes = self.get(request.bearer_auth(c.access_token.expose())).await?;
            let page: TemplatePage =
                serde_json::from_slice(&bytes).map_err(|e| format!("unreadable template list from Meta: {e}"))?;
            out.extend(page.data);
            match page.paging.and_then(|p| p.next) {
                // The token goes only to Meta's own address.
                Some(next) if next.starts_with(&format!("{}/", c.base_url)) => request = self.http.get(next),
                Some(_) => return Err("Meta's next page of templates is at another address; not followed".into()),
                None => return Ok(out),
            }
        }
        Err(format!("the account has more than {} templates; the list was not read to its end", MAX_PAGES * 100))
    }

    /// One GET within the call timeout; a refusal in Meta's words with its code.
    async fn get(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, String> {
        let (status, bytes) = crate::providers::exchange(request, "Meta", self.config.settings.call_timeout)
            .await
            .map_err(|e| e.describe())?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(errors::classify(status.as_u16(), &bytes).describe())
        }
    }
}

fn names(uses: &[TemplateUse]) -> String {
    let set: BTreeSet<String> = uses.iter().map(|u| format!("'{}' ({})", u.name, u.language)).collect();
    set.into_iter().collect::<Vec<_>>().join(", ")
}

/// What is wrong with `u` against the account's templates, if anything.
fn compare(u: &TemplateUse, templates: &[Template]) -> Option<String> {
    let what = format!("template '{}' ({}, sent by {})", u.name, u.language, u.used_by);
    let same_name: Vec<&Template> = templates.iter().filter(|t| t.name == u.name).collect();
    if same_name.is_empty() {
        let all: Vec<String> = templates.iter().map(|t| t.name.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let hint = crate::domain::spelling::did_you_mean(&u.name, &all);
        return Some(format!("{what} does not exist in the business account; {hint}"));
    }
    let Some(t) = same_name.iter().find(|t| t.language == u.language) else {
        let languages: Vec<&str> = same_name.iter().map(|t| t.language.as_str()).collect();
        return Some(format!("{what} has no '{}' translation; it exists in {}", u.language, languages.join(", ")));
    };
    if t.status != "APPROVED" {
        let reason = t.rejected_reason.as_deref().filter(|r| !r.is_empty() && *r != "NONE");
        return Some(format!(
            "{what} is {}, not APPROVED{}",
            t.status,
            reason.map(|r| format!(" (reason: {r})")).unwrap_or_default()
        ));
    }
    let mut problems = Vec::new();
    let body = t.components.iter().find(|c| c.kind.eq_ignore_ascii_case("BODY"));
    let body_params = body.and_then(|b| b.text.as_deref()).map(placeholders).unwrap_or_default();
    let named = t.parameter_format.as_deref().is_some_and(|f| f.eq_ignore_ascii_case("NAMED"))
        || body_params.iter().any(|p| p.parse::<usize>().is_err());
    if named {
        problems.push(format!(
            "its body has named parameters ({}), and recado fills numbered ones: create it with {{{{1}}}}, {{{{2}}}}, …",
            body_params.iter().map(|p| format!("{{{{{p}}}}}")).collect::<Vec<_>>().join(", ")
        ));
    } else if body_params.len() != u.parameters {
        problems.push(format!(
            "its body takes {} parameter(s) and the configuration gives {} (Meta refuses the message with 132000)",
            body_params.len(),
            u.parameters
        ));
    }
    let header = t.components.iter().find(|c| c.kind.eq_ignore_ascii_case("HEADER"));
    let format = header.map(|h| h.format.as_deref().unwrap_or("TEXT").to_uppercase());
    match (header, format.as_deref(), u.header) {
        (Some(_), Some(f), Some(kind)) if f.eq_ignore_ascii_case(kind.name()) => {}
        (None, _, Some(kind)) | (Some(_), Some("TEXT"), Some(kind)) => problems.push(format!(
            "it has no media header and the configuration sends a {} (Meta refuses the message with 132000)",
            kind.name()
        )),
        (Some(_), Some(f), Some(kind)) => problems.push(format!(
            "its header is {f} and the configuration sends a {} (Meta refuses the message with 132012)",
            kind.name()
        )),
        (Some(h), Some("TEXT"), None) if h.text.as_deref().is_some_and(|text| !placeholders(text).is_empty()) => {
            problems.push(
                "its TEXT header needs a parameter, which recado does not send (Meta refuses the message with 132012)"
                    .into(),
            );
        }
        (Some(_), Some("TEXT"), None) => {}
        (Some(_), Some(f), None) => problems.push(format!(
            "its {f} header needs a file: give the template a header ({{{}: <public address>}}) (Meta refuses the message with 131008)",
            f.to_lowercase()
        )),
        _ => {}
    }
    let dynamic_url = t
        .components
        .iter()
        .filter(|c| c.kind.eq_ignore_ascii_case("BUTTONS"))
        .flat_map(|c| c.buttons.iter())
        .any(|b| b.kind.eq_ignore_ascii_case("URL") && b.url.as_deref().is_some_and(|url| url.contains("{{")));
    match (dynamic_url, u.url_button) {
        (true, false) => {
            problems.push("its URL button takes a suffix and the configuration gives no button_url_suffix".into())
        }
        (false, true) => problems.push(
            "the configuration gives a button_url_suffix and the template has no URL button that takes one".into(),
        ),
        _ => {}
    }
    if let Some(reader) = &u.replies_read_by {
        let quick_replies: Vec<String> = t
            .components
            .iter()
            .filter(|c| c.kind.eq_ignore_ascii_case("BUTTONS"))
            .flat_map(|c| c.buttons.iter())
            .filter(|b| b.kind.eq_ignore_ascii_case("QUICK_REPLY"))
            .filter_map(|b| b.text.clone())
            .collect();
        problems.extend(reader.unread_buttons(&quick_replies));
    }
    (!problems.is_empty()).then(|| format!("{what}: {}", problems.join("; ")))
}

/// The distinct names inside `{{…}}` in a template text, in order of first appearance.
fn placeholders(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim().to_string();
        if !out.contains(&name) {
            out.push(name);
        }
        rest = &after[end + 2..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(status: &str, body: &str) -> Template {
        serde_json::from_value(serde_json::json!({
            "name": "recordatorio", "language": "es", "status": status,
            "components": [ { "type": "BODY", "text": body } ]
        }))
        .unwrap()
    }

    fn usage(parameters: usize) -> TemplateUse {
        TemplateUse {
            name: "recordatorio".into(),
            language: "es".into(),
            parameters,
            url_button: false,
            header: None,
            used_by: "rule r".into(),
            replies_read_by: None,
        }
    }

    #[test]
    fn counts_distinct_numbered_parameters() {
        assert_eq!(placeholders("Hola {{1}}, tu hora es {{2}}; {{1}} ya sabe"), vec!["1", "2"]);
        let ok = [template("APPROVED", "Hola {{1}}, tu hora es {{2}}")];
        assert_eq!(compare(&usage(2), &ok), None);
        let wrong = compare(&usage(1), &ok).unwrap();
        assert!(wrong.contains("takes 2 parameter(s) and the configuration gives 1"), "{wrong}");
    }

    #[test]
    fn named_parameters_language_and_status_are_reported() {
        let named = compare(&usage(1), &[template("APPROVED", "Hola {{nombre}}")]).unwrap();
        assert!(named.contains("named parameters ({{nombre}})"), "{named}");
        let pending = compare(&usage(1), &[template("PENDING", "Hola {{1}}")]).unwrap();
        assert!(pending.contains("is PENDING, not APPROVED"), "{pending}");
        let mut en = template("APPROVED", "Hi {{1}}");
        en.language = "en_US".into();
        let missing = compare(&usage(1), &[en]).unwrap();
        assert!(missing.contains("has no 'es' translation; it exists in en_US"), "{missing}");
    }
}
