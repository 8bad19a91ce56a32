//! Pure domain types shared by every layer: records and keys, phone numbers, message content,
//! message states and the events providers report.
//!
//! Nothing here does IO or reads the clock; vendor JSON never appears here. Sources turn their
//! rows into [`Record`]s, providers turn their webhooks into [`ProviderEvent`]s, and the engine
//! moves [`MessageState`]s forward with [`MessageState::advance`].

mod message;
mod phone;
pub mod record;
mod status;

pub use message::{InboundKind, MessageContent, ProviderError, ProviderEvent, TemplateMessage};
pub use phone::{mask_phone, PhoneError, PhoneNumber};
pub use record::{CellValue, Record, RecordKey};
pub use status::MessageState;
