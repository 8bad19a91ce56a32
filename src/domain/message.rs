//! What we send and what providers tell us back, in provider-neutral terms.

use serde::{Deserialize, Serialize};

/// An approved template with its rendered parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMessage {
    pub name: String,
    pub language: String,
    /// Body parameters in order ({{1}}, {{2}}, …).
    #[serde(default)]
    pub body: Vec<String>,
    /// Suffix appended to the template's dynamic URL button, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub button_url_suffix: Option<String>,
}

/// The content of one outbound message. Stored as JSON in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MessageContent {
    Template(TemplateMessage),
    /// Free text: only allowed inside the 24-hour customer-service window.
    Text {
        body: String,
    },
}

impl MessageContent {
    /// A short description for logs and the plan: the template name or "text".
    pub fn label(&self) -> String {
        match self {
            MessageContent::Template(t) => t.name.clone(),
            MessageContent::Text { .. } => "text".to_string(),
        }
    }
}

/// An error a provider reported, by its code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderError {
    pub code: i64,
    pub title: String,
    pub details: Option<String>,
}

impl ProviderError {
    /// The text written back to the row: code, title and details.
    pub fn describe(&self) -> String {
        match &self.details {
            Some(d) if !d.is_empty() && d != &self.title => format!("{} ({}): {}", self.title, self.code, d),
            _ => format!("{} ({})", self.title, self.code),
        }
    }
}

/// What an inbound message carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboundKind {
    Text {
        body: String,
    },
    /// A tap on a template quick-reply button.
    Button {
        payload: String,
        text: String,
    },
    /// A tap on an interactive reply button or list row.
    Interactive {
        id: String,
        title: String,
    },
    /// Media, location, … recorded by type only.
    Other {
        message_type: String,
    },
}

impl InboundKind {
    /// The text a person would read as the reply.
    pub fn text(&self) -> String {
        match self {
            InboundKind::Text { body } => body.clone(),
            InboundKind::Button { text, .. } => text.clone(),
            InboundKind::Interactive { title, .. } => title.clone(),
            InboundKind::Other { message_type } => format!("[{message_type}]"),
        }
    }
}

/// A provider webhook event, parsed out of the vendor's wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProviderEvent {
    Status {
        provider_message_id: String,
        /// One of sent/delivered/read/failed.
        status: super::MessageState,
        /// Unix seconds.
        timestamp: i64,
        recipient_id: Option<String>,
        /// What we put in `biz_opaque_callback_data`: our outbox id.
        callback_data: Option<String>,
        error: Option<ProviderError>,
    },
    Inbound {
        provider_message_id: String,
        /// The sender's WhatsApp id (digits, no `+`).
        from: String,
        profile_name: Option<String>,
        timestamp: i64,
        /// The message this one replies to, if the user quoted one.
        context_message_id: Option<String>,
        kind: InboundKind,
    },
}
