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
    /// The file of a template whose header is an image, a document or a video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMedia>,
}

/// A template header's file, at a public address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMedia {
    pub kind: MediaKind,
    pub link: String,
    /// A document's name as the person sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
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
    /// A question with options: reply buttons, or a list opened by a button labelled
    /// `list_button`. Free-form, so inside the window only. Providers that cannot show
    /// buttons send it as numbered text.
    Choice {
        body: String,
        options: Vec<ReplyOption>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        list_button: Option<String>,
    },
    /// An image, a document or a video at a public address, with an optional caption.
    /// Free-form, so inside the window only.
    Media {
        kind: MediaKind,
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        /// The name a document is shown with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
    },
}

/// What kind of file a [`MessageContent::Media`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Document,
    Video,
}

impl MediaKind {
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Document => "document",
            MediaKind::Video => "video",
        }
    }

    /// The MIME type WhatsApp takes a file of this kind as, from the file name's extension
    /// (WhatsApp's supported media types: JPEG and PNG images; MP4 and 3GPP videos; text, PDF
    /// and Office documents).
    pub fn mime_for(self, file_name: &str) -> Option<&'static str> {
        let ext = file_name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        let types: &[(&str, &'static str)] = match self {
            MediaKind::Image => &[("jpg", "image/jpeg"), ("jpeg", "image/jpeg"), ("png", "image/png")],
            MediaKind::Video => &[("mp4", "video/mp4"), ("3gp", "video/3gpp")],
            MediaKind::Document => &[
                ("pdf", "application/pdf"),
                ("txt", "text/plain"),
                ("doc", "application/msword"),
                ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
                ("xls", "application/vnd.ms-excel"),
                ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
                ("ppt", "application/vnd.ms-powerpoint"),
                ("pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
            ],
        };
        types.iter().find(|(e, _)| *e == ext).map(|(_, m)| *m)
    }

    /// The extensions [`Self::mime_for`] knows, for error messages.
    pub fn extensions(self) -> &'static str {
        match self {
            MediaKind::Image => ".jpg, .jpeg or .png",
            MediaKind::Video => ".mp4 or .3gp",
            MediaKind::Document => ".pdf, .txt, .doc, .docx, .xls, .xlsx, .ppt or .pptx",
        }
    }

    /// The largest file of this kind WhatsApp takes (5 MB images, 16 MB videos, 100 MB
    /// documents).
    pub fn max_bytes(self) -> u64 {
        match self {
            MediaKind::Image => 5 * 1024 * 1024,
            MediaKind::Video => 16 * 1024 * 1024,
            MediaKind::Document => 100 * 1024 * 1024,
        }
    }
}

/// A file on this machine rather than at a public address: an absolute path, which a provider
/// with a media API uploads and sends by its media id (see `providers`).
pub fn local_media_path(link: &str) -> Option<&std::path::Path> {
    link.starts_with('/').then(|| std::path::Path::new(link))
}

/// The file a message carries, from its configured source and that source rendered over the
/// record or the answers: a configured file on this machine as it is; anything else must
/// have rendered to an http(s) address. Data never names a local file: a cell holding
/// `/etc/passwd` is refused, not uploaded.
pub fn media_link(configured: &str, rendered: &str) -> Result<String, String> {
    if local_media_path(configured).is_some() {
        return Ok(configured.to_string());
    }
    let link = rendered.trim();
    if link.starts_with("https://") || link.starts_with("http://") {
        Ok(link.to_string())
    } else {
        Err(format!("expected a public http(s) address, got '{link}'"))
    }
}

/// One option of a [`MessageContent::Choice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyOption {
    /// Comes back with the tap.
    pub id: String,
    pub title: String,
}

impl MessageContent {
    /// A short description for logs and the plan: the template name, "text" or "choice".
    pub fn label(&self) -> String {
        match self {
            MessageContent::Template(t) => t.name.clone(),
            MessageContent::Text { .. } => "text".to_string(),
            MessageContent::Choice { .. } => "choice".to_string(),
            MessageContent::Media { kind, .. } => kind.name().to_string(),
        }
    }

    /// Free-form content (not a template): WhatsApp only delivers it inside the 24-hour window.
    pub fn is_free_form(&self) -> bool {
        !matches!(self, MessageContent::Template(_))
    }

    /// The text a person reads, options numbered (`1. Horarios`), for providers and places
    /// that cannot show buttons.
    pub fn readable_text(&self) -> String {
        match self {
            MessageContent::Template(t) if t.body.is_empty() => t.name.clone(),
            MessageContent::Template(t) => format!("{}: {}", t.name, t.body.join(" | ")),
            MessageContent::Text { body } => body.clone(),
            MessageContent::Choice { body, options, .. } => {
                let mut out = body.clone();
                out.push('\n');
                for (i, o) in options.iter().enumerate() {
                    out.push_str(&format!("\n{}. {}", i + 1, o.title));
                }
                out
            }
            MessageContent::Media { kind, url, caption, filename } => {
                let name = filename.as_deref().unwrap_or(url);
                match caption {
                    Some(c) => format!("[{} {name}] {c}", kind.name()),
                    None => format!("[{} {name}]", kind.name()),
                }
            }
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
    /// A photo, a document, a voice note, a video or a sticker: recado fetches the file
    /// through the provider's API (`media` is the provider's reference to it, opaque outside
    /// the provider).
    Media {
        /// `image`, `document`, `audio`, `video`, `sticker`.
        media_type: String,
        media: MediaRef,
        /// As the provider announced it (the file's own may differ).
        mime_type: String,
        caption: String,
        filename: Option<String>,
    },
    /// A shared location, its coordinates as the provider wrote them.
    Location {
        latitude: String,
        longitude: String,
        /// The place's name and address, when the person shared a place.
        name: String,
        address: String,
    },
    /// Reactions, contacts, … recorded by type only.
    Other {
        message_type: String,
    },
}

/// A provider's reference to a file a person sent (a media id, or the media's address under
/// the message, depending on the provider). Only the provider that gave it can fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef(pub String);

/// A map link for coordinates (OpenStreetMap: no account, no key).
pub fn map_link(latitude: &str, longitude: &str) -> String {
    format!("https://www.openstreetmap.org/?mlat={latitude}&mlon={longitude}#map=17/{latitude}/{longitude}")
}

impl InboundKind {
    /// The name stored with the message.
    pub fn name(&self) -> &'static str {
        match self {
            InboundKind::Text { .. } => "text",
            InboundKind::Button { .. } => "button",
            InboundKind::Interactive { .. } => "interactive",
            InboundKind::Media { .. } => "media",
            InboundKind::Location { .. } => "location",
            InboundKind::Other { .. } => "other",
        }
    }
}

impl InboundKind {
    /// The text a person would read as the reply.
    pub fn text(&self) -> String {
        match self {
            InboundKind::Text { body } => body.clone(),
            InboundKind::Button { text, .. } => text.clone(),
            InboundKind::Interactive { title, .. } => title.clone(),
            InboundKind::Media { media_type, caption, .. } if caption.trim().is_empty() => format!("[{media_type}]"),
            InboundKind::Media { media_type, caption, .. } => format!("[{media_type}] {}", caption.trim()),
            InboundKind::Location { latitude, longitude, name, address } => {
                let place: Vec<&str> = [name.trim(), address.trim()].into_iter().filter(|s| !s.is_empty()).collect();
                let place = if place.is_empty() { String::new() } else { format!(" {}", place.join(", ")) };
                format!("[location] {latitude},{longitude}{place} {}", map_link(latitude, longitude))
            }
            InboundKind::Other { message_type } => format!("[{message_type}]"),
        }
    }
}

/// Who wrote to us. Providers identify people by phone number, by their own user id, or both;
/// either may be missing (a WhatsApp user with a username and no visible number has only the
/// provider's id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sender {
    pub phone: Option<super::PhoneNumber>,
    /// The provider's own ids for the person (stable for the provider; they may differ from
    /// the number we send to). Opaque outside the provider.
    pub user_ids: Vec<String>,
}

/// A provider webhook event, parsed out of the vendor's wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    Status {
        provider_message_id: String,
        /// One of sent/delivered/read/failed.
        status: super::MessageState,
        /// Unix seconds.
        timestamp: i64,
        /// The provider's ids for the recipient, when it says.
        recipient_ids: Vec<String>,
        /// What we asked the provider to echo back: our outbox id.
        callback_data: Option<String>,
        error: Option<ProviderError>,
    },
    Inbound {
        provider_message_id: String,
        from: Sender,
        profile_name: Option<String>,
        timestamp: i64,
        /// The message this one replies to, if the user quoted one.
        context_message_id: Option<String>,
        kind: InboundKind,
    },
}

/// A message a rule wants sent, before it is in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub rule_id: String,
    pub source_id: String,
    pub record_key: super::RecordKey,
    pub provider_id: String,
    /// `rule:record:occurrence`, unique in the store: a record gets a rule's message once per
    /// occurrence.
    pub idempotency_key: String,
    pub phone: super::PhoneNumber,
    pub content: MessageContent,
    /// Template to use when free text cannot be sent (outside the 24-hour window).
    pub fallback: Option<MessageContent>,
    /// What was changed in rendered parameters so WhatsApp accepts them (a multi-line cell
    /// put on one line, over-long parameters cut), for the log. Not stored.
    pub adjustments: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_never_names_a_local_file() {
        assert_eq!(
            media_link("/srv/recado/requisitos.pdf", "/srv/recado/requisitos.pdf").unwrap(),
            "/srv/recado/requisitos.pdf"
        );
        assert_eq!(
            media_link("{{ Certificado }}", " https://muni.example/c/7.pdf ").unwrap(),
            "https://muni.example/c/7.pdf"
        );
        assert!(media_link("{{ Certificado }}", "/etc/passwd").is_err());
        assert!(media_link("{{ Certificado }}", "file:///etc/passwd").is_err());
    }

    #[test]
    fn whatsapp_types_by_extension() {
        assert_eq!(MediaKind::Document.mime_for("Requisitos.PDF"), Some("application/pdf"));
        assert_eq!(MediaKind::Image.mime_for("afiche.jpeg"), Some("image/jpeg"));
        assert_eq!(MediaKind::Image.mime_for("afiche.gif"), None);
        assert_eq!(MediaKind::Video.mime_for("sin_extension"), None);
    }
}
