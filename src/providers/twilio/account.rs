//! What `recado check --online` asks Twilio: whether the credentials open the account
//! (`GET /2010-04-01/Accounts/{sid}.json`, which must be `active`; with an API key, which may
//! not read that resource, one page of the Messages list), and for each Content SID
//! the configuration maps a template to, whether the Content API has it
//! (`GET /v1/Content/{sid}`: its language and its variables) and WhatsApp approved it
//! (`GET /v1/Content/{sid}/ApprovalRequests`), and that each quick-reply button of a template
//! whose replies a flow reads is an answer that flow takes.
//!
//! Twilio accepts a send with an unapproved or mismatched template and fails it afterwards
//! (63016, 63028), one person at a time; these are found here instead. Nothing is sent.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{errors, Twilio};
use crate::providers::TemplateUse;

#[derive(Deserialize)]
struct Account {
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    variables: Option<Map<String, Value>>,
    #[serde(default)]
    types: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct Approval {
    #[serde(default)]
    whatsapp: Option<WhatsAppApproval>,
}

#[derive(Deserialize)]
struct WhatsAppApproval {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    rejection_reason: Option<String>,
}

impl Twilio {
    pub async fn check_online(&self, uses: &[TemplateUse]) -> Vec<String> {
        let c = &self.config;
        if c.api_key.is_some() {
            // A standard API key may not read the Accounts resource: the Messages list (one
            // entry) proves the key and the account instead.
            let page = format!("{}/2010-04-01/Accounts/{}/Messages.json?PageSize=1", c.base_url, c.account_sid);
            if let Err(e) = self.get_json::<Value>(&page).await {
                return vec![format!("the account could not be read with the configured API key: {e}")];
            }
        } else {
            let account = format!("{}/2010-04-01/Accounts/{}.json", c.base_url, c.account_sid);
            match self.get_json::<Account>(&account).await {
                Err(e) => return vec![format!("the account could not be read with the configured credentials: {e}")],
                Ok(a) => {
                    if let Some(status) = a.status.filter(|s| s != "active") {
                        return vec![format!("the account is {status}, not active: Twilio sends nothing for it")];
                    }
                }
            }
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for u in uses {
            let reader = u.replies_read_by.as_ref().map(|r| r.flow.clone());
            if !seen.insert((u.name.clone(), u.language.clone(), u.parameters, u.url_button, reader)) {
                continue;
            }
            let what = format!("template '{}' ({}, sent by {})", u.name, u.language, u.used_by);
            // `recado check` already refused a template without a Content SID.
            let Some(sid) = c.content_sid(&u.name, &u.language) else { continue };
            if let Some(problem) = self.check_content(sid, u).await {
                out.push(format!("{what}, Content SID {sid}: {problem}"));
            }
        }
        out
    }

    async fn check_content(&self, sid: &str, u: &TemplateUse) -> Option<String> {
        let base = &self.config.content_base_url;
        let content = match self.get_json::<Content>(&format!("{base}/v1/Content/{sid}")).await {
            Ok(c) => c,
            Err(e) => return Some(e),
        };
        let mut problems = Vec::new();
        // A URL action whose address takes a variable is filled by `button_url_suffix`.
        let url_variable = content.types.iter().flat_map(|t| t.values()).any(|t| {
            t["actions"].as_array().is_some_and(|actions| {
                actions.iter().any(|a| a["type"] == "URL" && a["url"].as_str().is_some_and(|u| u.contains("{{")))
            })
        });
        match (url_variable, u.url_button) {
            (true, false) => {
                problems.push("its URL button takes a variable and the configuration gives no button_url_suffix".into())
            }
            (false, true) => problems.push(
                "the configuration gives a button_url_suffix and the template has no URL button that takes one".into(),
            ),
            _ => {}
        }
        if let Some(language) = content.language.filter(|l| !l.eq_ignore_ascii_case(&u.language)) {
            problems.push(format!("it is in '{language}', not '{}'", u.language));
        }
        let given = u.parameters + usize::from(u.url_button);
        let takes = content.variables.map(|v| v.len()).unwrap_or(0);
        if takes != given {
            problems.push(format!(
                "it takes {takes} variable(s) and the configuration gives {given} (Twilio fails the message with 63028)"
            ));
        }
        match self.get_json::<Approval>(&format!("{base}/v1/Content/{sid}/ApprovalRequests")).await {
            Err(e) => problems.push(format!("its WhatsApp approval could not be read: {e}")),
            Ok(a) => match a.whatsapp.and_then(|w| w.status.map(|s| (s, w.rejection_reason))) {
                Some((status, _)) if status == "approved" => {}
                Some((status, reason)) => problems.push(format!(
                    "WhatsApp approval is '{status}', not 'approved'{}",
                    reason.filter(|r| !r.is_empty()).map(|r| format!(" (reason: {r})")).unwrap_or_default()
                )),
                None => problems.push("it was never submitted for WhatsApp approval".into()),
            },
        }
        if let Some(reader) = &u.replies_read_by {
            // `twilio/quick-reply` actions are all quick replies; a card's have a type.
            let quick_replies: Vec<String> = content
                .types
                .iter()
                .flatten()
                .flat_map(|(kind, t)| {
                    let all = kind == "twilio/quick-reply";
                    t["actions"].as_array().cloned().unwrap_or_default().into_iter().filter_map(move |a| {
                        (all || a["type"] == "QUICK_REPLY").then(|| a["title"].as_str().map(String::from)).flatten()
                    })
                })
                .collect();
            problems.extend(reader.unread_buttons(&quick_replies));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// One authenticated GET within the call timeout, read as `T`; a refusal in Twilio's words
    /// with its code.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let (user, password) = self.credentials();
        let request = self.http.get(url).basic_auth(user, Some(password));
        let (status, bytes) = crate::providers::exchange(request, "Twilio", self.config.settings.call_timeout)
            .await
            .map_err(|e| e.describe())?;
        if !status.is_success() {
            return Err(errors::classify(status.as_u16(), &bytes).describe());
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer from Twilio: {e}"))
    }
}
