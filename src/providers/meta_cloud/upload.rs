//! Files on this machine, sent by media id: a template's header or a flow's file given as an
//! absolute path is uploaded once through `POST /{version}/{phone-number-id}/media` (multipart:
//! `messaging_product=whatsapp`, `type`, `file`), and every message after that carries
//! `{"id": …}` instead of `{"link": …}`.
//!
//! Meta keeps an uploaded file for 30 days, so an upload is reused for 29 and while the file
//! keeps its size and modification time; a changed file is uploaded again. One upload at a time:
//! a campaign of thousands of messages that all carry the same file waits for the first upload
//! and then reuses it. The cache lives in the process, so a restart uploads each file once more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use super::MetaCloud;
use crate::domain::{MediaKind, MessageContent, ProviderError};
use crate::providers::{SendError, MEDIA_DOWNLOAD_TIMEOUT};

/// How long an upload is reused: a day less than Meta keeps it.
const REUSE_FOR: Duration = Duration::from_secs(29 * 24 * 3600);

/// Uploads made by this process, by path.
#[derive(Default)]
pub struct Uploads {
    done: tokio::sync::Mutex<HashMap<PathBuf, Uploaded>>,
    /// Set when Meta failed a message for a media id it does not hold: the next send starts
    /// from no uploads (the lock may be held by an upload, so this does not wait for it).
    stale: std::sync::atomic::AtomicBool,
}

impl Uploads {
    pub fn forget_all(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::Release);
    }
}

struct Uploaded {
    id: String,
    len: u64,
    modified: Option<SystemTime>,
    at: Instant,
}

#[derive(Deserialize)]
struct UploadResponse {
    id: String,
}

/// The local files a message carries, with their kind.
pub fn local_files(content: &MessageContent) -> Vec<(MediaKind, &str)> {
    let link = match content {
        MessageContent::Media { kind, url, .. } => Some((*kind, url.as_str())),
        MessageContent::Template(t) => t.header.as_ref().map(|h| (h.kind, h.link.as_str())),
        _ => None,
    };
    link.filter(|(_, l)| crate::domain::local_media_path(l).is_some()).into_iter().collect()
}

fn unreadable(path: &Path, reason: String) -> SendError {
    SendError::Permanent {
        error: ProviderError {
            code: 0,
            title: "cannot upload the file".into(),
            details: Some(format!("{}: {reason}", path.display())),
        },
    }
}

impl MetaCloud {
    /// The media id of each local file `content` carries (path → id), uploading those not
    /// uploaded yet or changed since.
    pub(super) async fn media_ids(&self, content: &MessageContent) -> Result<HashMap<String, String>, SendError> {
        let mut ids = HashMap::new();
        for (kind, link) in local_files(content) {
            let path = Path::new(link);
            let meta = tokio::fs::metadata(path).await.map_err(|e| unreadable(path, e.to_string()))?;
            let (len, modified) = (meta.len(), meta.modified().ok());
            // Held across the upload: a burst of sends of the same file makes one upload.
            let mut done = self.uploads.done.lock().await;
            if self.uploads.stale.swap(false, std::sync::atomic::Ordering::AcqRel) {
                done.clear();
            }
            let fresh = done
                .get(path)
                .filter(|u| u.len == len && u.modified == modified && u.at.elapsed() < REUSE_FOR)
                .map(|u| u.id.clone());
            let id = match fresh {
                Some(id) => id,
                None => {
                    let id = self.upload(kind, path, len).await?;
                    done.insert(path.to_path_buf(), Uploaded { id: id.clone(), len, modified, at: Instant::now() });
                    id
                }
            };
            ids.insert(link.to_string(), id);
        }
        Ok(ids)
    }

    async fn upload(&self, kind: MediaKind, path: &Path, len: u64) -> Result<String, SendError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let mime = kind
            .mime_for(name)
            .ok_or_else(|| unreadable(path, format!("WhatsApp takes {} as {}", kind.name(), kind.extensions())))?;
        if len > kind.max_bytes() {
            return Err(unreadable(
                path,
                format!("{len} bytes, over WhatsApp's {} bytes for a {}", kind.max_bytes(), kind.name()),
            ));
        }
        let bytes = tokio::fs::read(path).await.map_err(|e| unreadable(path, e.to_string()))?;
        let boundary = format!("recado{}", hex::encode(rand::random::<[u8; 12]>()));
        let body = multipart(&boundary, mime, name, &bytes);
        let url = format!("{}/{}/{}/media", self.config.base_url, self.config.api_version, self.config.phone_number_id);
        let request = self
            .http
            .post(url)
            .bearer_auth(self.config.access_token.expose())
            .header(reqwest::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .body(body);
        // No message went out if an upload's answer is lost: try again, it is not a send in doubt.
        let (status, answer) =
            crate::providers::exchange(request, "Meta", MEDIA_DOWNLOAD_TIMEOUT).await.map_err(|e| match e {
                SendError::InDoubt { reason } => SendError::Retry { reason: format!("uploading the file: {reason}") },
                other => other,
            })?;
        if !status.is_success() {
            return Err(super::errors::classify(status.as_u16(), &answer));
        }
        let parsed: UploadResponse = serde_json::from_slice(&answer)
            .map_err(|e| SendError::Retry { reason: format!("unreadable answer from Meta to an upload: {e}") })?;
        tracing::info!(provider = %self.config.settings.id, file = %name, bytes = len, "uploaded a file to send by media id");
        Ok(parsed.id)
    }
}

/// A `multipart/form-data` body with Meta's three fields.
fn multipart(boundary: &str, mime: &str, file_name: &str, bytes: &[u8]) -> Vec<u8> {
    let safe_name: String = file_name.chars().map(|c| if c == '"' || c.is_control() { '_' } else { c }).collect();
    let mut body = Vec::with_capacity(bytes.len() + 512);
    for (name, value) in [("messaging_product", "whatsapp"), ("type", mime)] {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{safe_name}\"\r\nContent-Type: {mime}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_has_the_three_fields_and_the_bytes() {
        let body = multipart("B", "application/pdf", "Requisitos \"2026\".pdf", b"%PDF-1.4");
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.starts_with("--B\r\nContent-Disposition: form-data; name=\"messaging_product\"\r\n\r\nwhatsapp\r\n")
        );
        assert!(text.contains("name=\"type\"\r\n\r\napplication/pdf\r\n"));
        assert!(text.contains(
            "filename=\"Requisitos _2026_.pdf\"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4\r\n--B--\r\n"
        ));
    }
}
