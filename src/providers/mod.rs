//! WhatsApp providers: sending, error classification and webhook parsing per vendor.
//!
//! Each vendor lives in its own folder with the same shape (`mod.rs` client, `errors.rs`
//! classification, `webhook.rs` parsing and signatures). Outside these folders nobody sees
//! vendor JSON: the engine talks to [`Provider`] with domain types.

pub mod meta_cloud;

use std::time::Duration;

use crate::config::ProviderConfig;
use crate::domain::{MessageContent, PhoneNumber, ProviderError, ProviderEvent};

/// A send the provider accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The provider's message id (`wamid.…`).
    pub provider_message_id: String,
    /// The provider's id for the recipient (may differ from the number we sent to).
    pub recipient_id: Option<String>,
}

/// Why a send did not go through, classified by the vendor's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Transient: try this message again later.
    Retry { reason: String },
    /// The number's throughput was exceeded: slow the whole provider down.
    Throttled { reason: String, pause: Duration },
    /// Too many messages to this one recipient: retry it after a pause.
    PairRate { reason: String },
    /// Free-form message outside the 24-hour window: use the template fallback if any.
    WindowClosed { error: ProviderError },
    /// This message will never be accepted as it is.
    Permanent { error: ProviderError },
    /// Credentials or account problem: pause the provider and alert; messages wait.
    Unavailable { reason: String },
    /// The request may have reached the provider and the answer was lost.
    InDoubt { reason: String },
}

impl SendError {
    pub fn describe(&self) -> String {
        match self {
            SendError::Retry { reason }
            | SendError::Throttled { reason, .. }
            | SendError::PairRate { reason }
            | SendError::Unavailable { reason }
            | SendError::InDoubt { reason } => reason.clone(),
            SendError::WindowClosed { error } | SendError::Permanent { error } => error.describe(),
        }
    }
}

/// A configured provider (closed set: one variant per vendor).
#[derive(Clone)]
pub enum Provider {
    MetaCloud(meta_cloud::MetaCloud),
}

impl Provider {
    pub fn new(config: &ProviderConfig, http: reqwest::Client) -> Self {
        match config {
            ProviderConfig::MetaCloud(c) => Provider::MetaCloud(meta_cloud::MetaCloud::new(c.clone(), http)),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Provider::MetaCloud(m) => &m.config().id,
        }
    }

    /// Sends one message; `callback_data` is echoed back in status webhooks (our outbox id).
    pub async fn send(
        &self,
        to: &PhoneNumber,
        content: &MessageContent,
        callback_data: &str,
    ) -> Result<Accepted, SendError> {
        match self {
            Provider::MetaCloud(m) => m.send(to, content, callback_data).await,
        }
    }

    /// Parses a verified webhook body into events.
    pub fn parse_webhook(&self, body: &[u8]) -> Result<Vec<ProviderEvent>, String> {
        match self {
            Provider::MetaCloud(_) => meta_cloud::webhook::parse(body),
        }
    }
}
