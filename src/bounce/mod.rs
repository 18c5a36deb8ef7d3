//! What happens after the mail server accepted a message: bounce reports
//! (RFC 3464 delivery status notifications) and complaints (RFC 5965
//! feedback reports) that come back later, read (`parse`), judged (`classify`,
//! on the same code table as the SMTP reply classifier) and applied to the
//! subscriber they name (`ingest`).

pub mod classify;
pub mod ingest;
pub mod parse;

pub use classify::{Kind, classify};
pub use parse::{Parsed, Report, parse};
