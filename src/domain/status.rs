//! The life of an outbound message and the only transitions it may take.

use std::fmt;
use std::str::FromStr;

/// Where a message is. Provider statuses only move forward: a late `delivered` never overwrites
/// `read`, and `failed`/`skipped` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageState {
    /// Committed to the outbox, waiting for its turn (or for a retry).
    Queued,
    /// Committed as being sent: the HTTP call may be in flight.
    Sending,
    /// Accepted by the provider / reported sent.
    Sent,
    Delivered,
    Read,
    /// The provider refused or reported a failure; the reason is stored.
    Failed,
    /// Not sent by policy (opted out, no consent, outside the window without fallback, …).
    Skipped,
}

impl MessageState {
    pub const ALL: [MessageState; 7] = [
        MessageState::Queued,
        MessageState::Sending,
        MessageState::Sent,
        MessageState::Delivered,
        MessageState::Read,
        MessageState::Failed,
        MessageState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Sending => "sending",
            MessageState::Sent => "sent",
            MessageState::Delivered => "delivered",
            MessageState::Read => "read",
            MessageState::Failed => "failed",
            MessageState::Skipped => "skipped",
        }
    }

    fn rank(self) -> u8 {
        match self {
            MessageState::Queued => 0,
            MessageState::Sending => 1,
            MessageState::Sent => 2,
            MessageState::Delivered => 3,
            MessageState::Read => 4,
            MessageState::Failed | MessageState::Skipped => 5,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, MessageState::Read | MessageState::Failed | MessageState::Skipped)
    }

    /// The state after a provider reports `incoming`, or `None` when the report must be ignored
    /// (a duplicate, a step backwards, or anything after a terminal state).
    ///
    /// `failed` after `delivered` is ignored: the message reached the phone.
    pub fn advance(self, incoming: MessageState) -> Option<MessageState> {
        if self.is_terminal() || incoming == self {
            return None;
        }
        match incoming {
            MessageState::Failed => (self.rank() < MessageState::Delivered.rank()).then_some(incoming),
            MessageState::Queued | MessageState::Sending | MessageState::Skipped => None,
            _ => (incoming.rank() > self.rank()).then_some(incoming),
        }
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageState::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| format!("unknown message state '{s}'"))
    }
}

impl serde::Serialize for MessageState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for MessageState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::MessageState::{self, *};

    #[test]
    fn transitions_table() {
        let table: &[(MessageState, MessageState, Option<MessageState>)] = &[
            (Sending, Sent, Some(Sent)),
            (Queued, Delivered, Some(Delivered)),
            (Sent, Delivered, Some(Delivered)),
            (Sent, Read, Some(Read)),
            (Delivered, Sent, None),
            (Read, Delivered, None),
            (Read, Failed, None),
            (Sent, Sent, None),
            (Sent, Failed, Some(Failed)),
            (Sending, Failed, Some(Failed)),
            (Delivered, Failed, None),
            (Failed, Read, None),
            (Skipped, Sent, None),
        ];
        for (from, incoming, want) in table {
            assert_eq!(from.advance(*incoming), *want, "{from} + {incoming}");
        }
    }

    proptest::proptest! {
        /// Whatever order and duplication the webhooks arrive in, the final state is the
        /// furthest one reported (failed only if nothing reached the phone).
        #[test]
        fn order_does_not_matter(events in proptest::collection::vec(0usize..4, 1..12)) {
            let reported: Vec<MessageState> = events.iter().map(|i| [Sent, Delivered, Read, Failed][*i]).collect();
            let mut state = Sending;
            for e in &reported {
                if let Some(next) = state.advance(*e) { state = next; }
            }
            let reached_phone = reported.iter().any(|s| matches!(s, Delivered | Read));
            if reported.contains(&Read) && !(reported.contains(&Failed) && state == Failed) {
                proptest::prop_assert_eq!(state, Read);
            }
            if state == Failed {
                // Failed only wins when it came before anything that reached the phone.
                let first_failed = reported.iter().position(|s| *s == Failed).unwrap();
                let first_phone = reported.iter().position(|s| matches!(s, Delivered | Read));
                proptest::prop_assert!(first_phone.is_none_or(|p| p > first_failed));
            }
            if !reached_phone && !reported.contains(&Failed) {
                proptest::prop_assert_eq!(state, Sent);
            }
        }
    }
}
