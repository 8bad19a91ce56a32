//! Files people send, fetched as Meta documents it: `GET /<media-id>` (with the access token)
//! answers the file's details and a download address valid for five minutes, which is then
//! read with the same token. Media ids in webhooks expire after seven days.

use serde::Deserialize;
use serde_json::Value;
use sha2::Digest;

use super::MetaCloud;
use crate::domain::MediaRef;
use crate::providers::{read_capped, transport_reason, FetchedMedia, MediaError, MEDIA_DOWNLOAD_TIMEOUT};

#[derive(Deserialize)]
struct MediaInfo {
    url: String,
    #[serde(default)]
    mime_type: String,
    /// Hex SHA-256 of the file.
    #[serde(default)]
    sha256: String,
    /// Bytes; Meta sends a string or a number.
    #[serde(default)]
    file_size: Value,
}

/// Whether `url` is one of Meta's own (https on its domains), or on the configured API's host.
fn meta_host(url: &str, base_url: &str) -> bool {
    let (Ok(u), Ok(base)) = (reqwest::Url::parse(url), reqwest::Url::parse(base_url)) else { return false };
    let host = u.host_str().unwrap_or("");
    if host == base.host_str().unwrap_or("") && u.port_or_known_default() == base.port_or_known_default() {
        return true;
    }
    u.scheme() == "https"
        && ["fbsbx.com", "facebook.com", "whatsapp.net", "fbcdn.net"]
            .iter()
            .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

impl MetaCloud {
    pub async fn fetch_media(&self, media: &MediaRef, max: u64) -> Result<FetchedMedia, MediaError> {
        let c = &self.config;
        let timeout = c.settings.call_timeout;
        // A media id is digits; anything else never goes into the URL.
        if media.0.is_empty() || !media.0.chars().all(|ch| ch.is_ascii_alphanumeric()) {
            return Err(MediaError::Gone(format!("'{}' is not a Meta media id", media.0)));
        }
        let url = format!("{}/{}/{}", c.base_url, c.api_version, media.0);
        let request = self
            .http
            .get(&url)
            .query(&[("phone_number_id", c.phone_number_id.as_str())])
            .bearer_auth(c.access_token.expose())
            .timeout(timeout);
        let response = request.send().await.map_err(|e| {
            MediaError::Transient(format!("cannot ask Meta for the file: {}", transport_reason(&e, "Meta")))
        })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        match status {
            200 => {}
            401 | 403 => {
                return Err(MediaError::Transient(format!(
                    "Meta refused the access token when asked for a file (HTTP {status}): {}",
                    super::errors::classify(status, &body).describe()
                )))
            }
            400 | 404 => {
                return Err(MediaError::Gone(format!(
                    "Meta no longer has the file (media ids in webhooks expire after 7 days): {}",
                    super::errors::classify(status, &body).describe()
                )))
            }
            _ => {
                return Err(MediaError::Transient(format!(
                    "Meta could not give the file's address (HTTP {status}): {}",
                    super::errors::classify(status, &body).describe()
                )))
            }
        }
        let info: MediaInfo = serde_json::from_slice(&body)
            .map_err(|e| MediaError::Transient(format!("unreadable file details from Meta: {e}")))?;
        let size = match &info.file_size {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        if let Some(size) = size.filter(|s| *s > max) {
            return Err(MediaError::TooLarge { size, max });
        }
        // The token goes only to Meta's own hosts (or to the configured API's, the sandbox).
        if !meta_host(&info.url, &c.base_url) {
            return Err(MediaError::Gone(
                "Meta answered a download address that is not Meta's: the access token is not sent to it".into(),
            ));
        }
        let download = self
            .http
            .get(&info.url)
            .bearer_auth(c.access_token.expose())
            .timeout(MEDIA_DOWNLOAD_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                MediaError::Transient(format!("cannot download the file from Meta: {}", transport_reason(&e, "Meta")))
            })?;
        match download.status().as_u16() {
            200 => {}
            // The address lived five minutes: the next try asks for a new one.
            404 | 410 => return Err(MediaError::Transient("Meta's download address expired: asking again".into())),
            s => return Err(MediaError::Transient(format!("Meta refused the download (HTTP {s})"))),
        }
        let served =
            download.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = read_capped(download, max, MEDIA_DOWNLOAD_TIMEOUT, "Meta").await?;
        if info.sha256.len() == 64 && hex::encode(sha2::Sha256::digest(&bytes)) != info.sha256.to_lowercase() {
            return Err(MediaError::Transient(
                "the file from Meta does not match its SHA-256: downloading again".into(),
            ));
        }
        let mime_type = if info.mime_type.is_empty() { served.unwrap_or_default() } else { info.mime_type };
        Ok(FetchedMedia { bytes, mime_type })
    }
}
