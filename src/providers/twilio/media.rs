//! Files people send, fetched as Twilio serves them: the `MediaUrl` of the inbound message
//! (under `/Messages/MM…/Media/ME…`), read with the account's credentials (HTTP Basic, as
//! accounts that protect their media require); Twilio may redirect to a temporary address,
//! which reqwest follows without the credentials. Credentials are only ever sent to Twilio's
//! own API address (`base_url`).

use super::Twilio;
use crate::domain::MediaRef;
use crate::providers::{read_capped, transport_reason, FetchedMedia, MediaError, MEDIA_DOWNLOAD_TIMEOUT};

impl Twilio {
    pub async fn fetch_media(&self, media: &MediaRef, max: u64) -> Result<FetchedMedia, MediaError> {
        let base = self.config.base_url.trim_end_matches('/');
        let own = media.0.strip_prefix(base).is_some_and(|rest| rest.starts_with('/')) && !media.0.contains("..");
        if !own || !media.0.contains("/Media/") {
            return Err(MediaError::Gone(
                "the media address is not under Twilio's API address (base_url): credentials are not sent to it".into(),
            ));
        }
        let (user, password) = self.credentials();
        let response = self
            .http
            .get(&media.0)
            .basic_auth(user, Some(password))
            .timeout(MEDIA_DOWNLOAD_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                MediaError::Transient(format!(
                    "cannot download the file from Twilio: {}",
                    transport_reason(&e, "Twilio")
                ))
            })?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            401 | 403 => {
                return Err(MediaError::Transient(format!(
                    "Twilio refused the credentials when asked for a file (HTTP {status})"
                )))
            }
            // Twilio may answer 404 for a moment right after the webhook, before the file is
            // stored: tried again (and given up after the loop's last attempt).
            404 => return Err(MediaError::Transient(
                "Twilio does not have the file (HTTP 404): it may not be stored yet, or was deleted from the message"
                    .into(),
            )),
            s => return Err(MediaError::Transient(format!("Twilio could not give the file (HTTP {s})"))),
        }
        let mime_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = read_capped(response, max, MEDIA_DOWNLOAD_TIMEOUT, "Twilio").await?;
        Ok(FetchedMedia { bytes, mime_type })
    }
}
