//! Domain types that can only hold valid values ("parse, don't validate").
//!
//! Every value that comes from a user (CLI flag, CSV cell, TOML file, web form)
//! goes through one of these `parse` functions before it reaches the store.

mod email;
mod paper;
mod subscriber;

pub use email::SubscriberEmail;
pub use paper::{Paper, PaperDraft, PaperId, normalize_ws};
pub use subscriber::{
    EndedBy, Format, MaxPapers, SubscriberName, SubscriberSource, SubscriberStatus, TimeZone,
    Topic, Topics,
};

/// Where one delivery row is: waiting, being sent, or final (the last three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryStatus {
    Queued,
    Sending,
    Sent,
    Failed,
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Who made a date's selection. A fetch replaces only a selection a fetch made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectionOrigin {
    /// `paperpost papers import`.
    File,
    /// `paperpost papers select`.
    Hand,
    /// The daemon or `paperpost papers fetch`, from `papers.source_url`.
    Fetch,
}

impl SelectionOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Hand => "hand",
            Self::Fetch => "fetch",
        }
    }
}

/// Why a value was rejected. The message is meant for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// True for characters that must never reach a header or a log line unescaped:
/// C0/C1 controls (CR, LF, TAB, NUL, ...) and Unicode bidi overrides.
pub(crate) fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}
