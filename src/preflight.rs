//! `recado check --online`: what only the live services can tell, asked before the daemon
//! starts. Each provider is asked whether its credentials work and whether every template the
//! configuration sends exists, is approved, in that language, with the parameters the
//! configuration fills (each vendor folder knows how to ask). Each source is reached as the
//! daemon will reach it (same clients, same credentials): a source that refuses says who
//! recado is there and what to do (whom to share with, which user needs access); every field
//! the configuration names (key, phone, consent, language, time zone, write-back, and what
//! rules read) must be in the source, and a misspelt one gets "did you mean …?" with the list
//! of real names. (A write-back field that is missing is added by recado, so it is reported
//! only when it looks like a misspelt existing one.)
//!
//! Nothing is written and nothing is sent.

use crate::config::Config;
use crate::domain::spelling::closest;
use crate::sources::{ReadSpec, Source};

/// One problem found, about one configured thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `sources.<id>` or the like.
    pub subject: String,
    pub message: String,
}

/// Checks every source and every provider against the live services.
pub async fn check_online(config: &Config) -> anyhow::Result<Vec<Finding>> {
    let http = crate::app::http_client()?;
    let (sources, writers) = crate::app::connect_sources(config, &http)?;
    let mut findings = Vec::new();
    for source in &sources {
        let found = check_source(config, source).await;
        let reachable = found.is_empty();
        findings.extend(found);
        if !reachable {
            continue;
        }
        let id = source.id();
        // The fields that take a status: the source's, and each of its rules' own.
        let status_fields: Vec<String> = config
            .source(id)
            .and_then(|s| s.write_back.status.clone())
            .into_iter()
            .chain(config.rules.iter().filter(|r| r.source == id).filter_map(|r| r.write_back.as_ref()?.status.clone()))
            .collect();
        for writer in writers.iter().filter(|w| w.source_ids().iter().any(|s| s == id)) {
            match writer.write_back_problems(&status_fields).await {
                Ok(problems) => findings
                    .extend(problems.into_iter().map(|message| Finding { subject: format!("sources.{id}"), message })),
                Err(e) => findings.push(Finding { subject: format!("sources.{id}"), message: e.to_string() }),
            }
        }
    }
    let providers = crate::app::connect_providers(config, &http, None);
    let uses = config.template_uses();
    for p in &config.providers {
        let Some(provider) = providers.get(p.id()) else { continue };
        let mine: Vec<_> = uses.iter().filter(|u| u.provider == p.id()).map(|u| u.template.clone()).collect();
        for message in provider.check_online(&mine).await {
            findings.push(Finding { subject: format!("providers.{}", p.id()), message });
        }
    }
    Ok(findings)
}

async fn check_source(config: &Config, source: &Source) -> Vec<Finding> {
    let id = source.id().to_string();
    let subject = format!("sources.{id}");
    let finding = |message: String| Finding { subject: subject.clone(), message };
    // The first call also proves the credentials and the access; a refusal (not a timeout or
    // an outage) says who recado is there and what to do.
    match source.time_zone().await {
        Ok(_) => {}
        Err(e @ crate::sources::SourceError::Denied(_)) => {
            return vec![finding(format!("{e}; {}", source.access_hint()))];
        }
        Err(e) => return vec![finding(e.to_string())],
    }
    match source.can_write().await {
        Ok(Some(false)) => {
            let who = source.access_hint();
            let message = format!(
                "readable but not writable (shared as Viewer): recado writes statuses back and {who}, which must be an Editor"
            );
            return vec![finding(message)];
        }
        Ok(_) => {}
        Err(e) => return vec![finding(e.to_string())],
    }
    let names = match source.field_names().await {
        Ok(n) => n,
        Err(e) => return vec![finding(e.to_string())],
    };
    let wanted = crate::rules::named_fields(config, &id);
    let Some(names) = names else {
        // Only a read tells: one read with every named field required, except the write-back
        // ones, which reads never select (they are recado's own).
        let required = wanted.iter().filter(|(_, by)| by != "write_back").map(|(f, _)| f.clone()).collect();
        let spec = ReadSpec { required, referenced: Vec::new() };
        let settings = source.settings();
        return match async { source.read(&spec, None).await?.into_whole(settings, &spec).await }.await {
            Ok(_) => Vec::new(),
            Err(e) => vec![finding(e.to_string())],
        };
    };
    let mut out = Vec::new();
    for (field, by) in &wanted {
        if names.iter().any(|n| n == field) {
            continue;
        }
        let near = closest(field, &names);
        if by == "write_back" {
            // recado adds a missing write-back column itself; one a few letters from an
            // existing header is a misspelling that would add a second column.
            if let Some(c) = near {
                out.push(finding(format!(
                    "'{field}' (named by write_back) is not in the source and would be added as a new field beside '{c}'; did you mean '{c}'?"
                )));
            }
            continue;
        }
        let hint = match near {
            Some(c) => format!("did you mean '{c}'? "),
            None => String::new(),
        };
        out.push(finding(format!(
            "'{field}' (named by {by}) is not a field of the source; {hint}its fields: {}",
            names.iter().filter(|n| !n.is_empty()).map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
        )));
    }
    out
}
