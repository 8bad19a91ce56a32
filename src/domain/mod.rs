//! Pure domain types shared by every layer: records and keys, phone numbers, message content,
//! intents, message states, the events providers report, write-back targets and secrets.
//!
//! Nothing here does IO or reads the clock; vendor JSON never appears here. Sources turn their
//! rows into [`Record`]s, providers turn their webhooks into [`ProviderEvent`]s, and the engine
//! moves [`MessageState`]s forward with [`MessageState::advance`].

mod message;
mod phone;
pub mod record;
mod secret;
pub mod spelling;
mod status;
mod target;
mod template;

pub use message::{
    local_media_path, map_link, media_link, HeaderMedia, InboundKind, Intent, MediaKind, MediaRef, MessageContent,
    ProviderError, ProviderEvent, ReplyOption, Sender, TemplateMessage,
};
pub use phone::{mask_if_phone, mask_phone, mask_phones_in, MaskedText, PhoneError, PhoneNumber};
pub use record::{same_field, CellText, CellValue, Fields, Record, RecordKey};
pub use secret::Secret;
pub use status::MessageState;
pub use target::{interaction, FieldWrite, PendingWrite, WriteTarget};
pub use template::{
    normalise_parameters, one_line, HeaderSpec, TemplateSpec, DEFAULT_BODY_TEXT_CHARS, TEMPLATE_TEXT_LIMIT,
};

/// Upper case without accents, for keyword matching (`Bája` = `BAJA`).
pub fn normalise_keyword(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            'á' | 'à' | 'ä' | 'â' | 'Á' | 'À' | 'Ä' | 'Â' => 'A',
            'é' | 'è' | 'ë' | 'ê' | 'É' | 'È' | 'Ë' | 'Ê' => 'E',
            'í' | 'ì' | 'ï' | 'î' | 'Í' | 'Ì' | 'Ï' | 'Î' => 'I',
            'ó' | 'ò' | 'ö' | 'ô' | 'Ó' | 'Ò' | 'Ö' | 'Ô' => 'O',
            'ú' | 'ù' | 'ü' | 'û' | 'Ú' | 'Ù' | 'Ü' | 'Û' => 'U',
            'ñ' | 'Ñ' => 'N',
            other => other.to_ascii_uppercase(),
        })
        .collect()
}
