//! Reading a report: a delivery status notification (`multipart/report`
//! with `message/delivery-status`, RFC 3464), a feedback report
//! (`message/feedback-report`, RFC 5965), a bounce in plain text (hard only
//! on explicit evidence), or an auto-reply (ignored).

use mail_parser::{MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use super::classify::{Kind, classify, classify_text};

/// One recipient's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kind: Kind,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
    /// The address the report is about (Final-Recipient, Original-Rcpt-To).
    pub recipient: Option<String>,
    /// The original message's Message-ID, when it came back.
    pub message_id: Option<String>,
    /// The link token in the original message's List-Unsubscribe.
    pub link_token: Option<String>,
    /// Where the report itself was addressed (a VERP address, if any).
    pub addressed_to: Vec<String>,
    /// The report's identity: its Message-ID, or a hash of its bytes.
    pub event_key: String,
}

/// What a message delivered to the bounce address is.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// One report per recipient it names.
    Reports(Vec<Report>),
    /// An out-of-office or other automatic answer: nothing to do.
    AutoReply,
    /// Not a report at all.
    Nothing,
}

/// The parts of a report message that matter.
#[derive(Default)]
struct Pieces {
    delivery_status: Option<String>,
    feedback: Option<String>,
    original_headers: Option<String>,
    text: String,
}

pub fn parse(raw: &[u8]) -> Parsed {
    let Some(m) = MessageParser::default().parse(raw) else {
        return Parsed::Nothing;
    };
    let event_key = m
        .message_id()
        .map(str::to_string)
        .unwrap_or_else(|| hex::encode(Sha256::digest(raw)));
    let addressed_to: Vec<String> = ["X-Original-To", "Delivered-To", "To", "Envelope-To"]
        .iter()
        .filter_map(|h| m.header_raw(*h))
        .flat_map(addresses)
        .collect();
    let pieces = pieces(&m);
    let original = pieces.original_headers.as_deref().unwrap_or("");
    let base = Report {
        kind: Kind::Unknown,
        status: None,
        diagnostic: None,
        recipient: None,
        message_id: header(original, "Message-ID").map(|v| v.trim().to_string()),
        link_token: header(original, "List-Unsubscribe").and_then(|v| link_token(&v)),
        addressed_to,
        event_key,
    };
    if let Some(dsn) = &pieces.delivery_status {
        return Parsed::Reports(dsn_reports(dsn, &base));
    }
    if let Some(arf) = &pieces.feedback {
        return Parsed::Reports(vec![arf_report(arf, base)]);
    }
    if is_auto_reply(&m) {
        return Parsed::AutoReply;
    }
    if looks_like_a_bounce(&m) {
        let kind = classify_text(&pieces.text);
        return Parsed::Reports(vec![Report { kind, ..base }]);
    }
    Parsed::Nothing
}

fn pieces(m: &mail_parser::Message<'_>) -> Pieces {
    let mut p = Pieces::default();
    for part in &m.parts {
        let (ctype, subtype) = part
            .content_type()
            .map(|c| {
                (
                    c.ctype().to_ascii_lowercase(),
                    c.subtype().unwrap_or("").to_ascii_lowercase(),
                )
            })
            .unwrap_or_default();
        let text = || String::from_utf8_lossy(part.contents()).into_owned();
        match (ctype.as_str(), subtype.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") => {
                p.delivery_status = Some(text())
            }
            ("message", "feedback-report") => p.feedback = Some(text()),
            ("text", "rfc822-headers" | "global-headers") => p.original_headers = Some(text()),
            ("message", "rfc822" | "global") => {
                if let PartType::Message(inner) = &part.body {
                    let raw = String::from_utf8_lossy(inner.raw_message()).into_owned();
                    let head = raw.split("\r\n\r\n").next().unwrap_or(&raw);
                    p.original_headers =
                        Some(head.split("\n\n").next().unwrap_or(head).to_string());
                }
            }
            ("text", _) if p.text.len() < 64 * 1024 => p.text.push_str(&text()),
            _ => {}
        }
    }
    p
}

/// Header fields (`Name: value`, folded lines joined) in order.
fn fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

/// The first value of header `name` in a header block.
fn header(block: &str, name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    fields(block)
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The per-recipient blocks of a delivery-status part, each a report.
fn dsn_reports(dsn: &str, base: &Report) -> Vec<Report> {
    let normalized = dsn.replace("\r\n", "\n");
    normalized
        .split("\n\n")
        .map(fields)
        .filter_map(|f| {
            let get = |n: &str| f.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let action = get("action")?;
            let (status, diagnostic) = (get("status"), get("diagnostic-code"));
            let kind = classify(&action, status.as_deref(), diagnostic.as_deref())?;
            let recipient = get("final-recipient")
                .or_else(|| get("original-recipient"))
                .map(|r| {
                    r.split_once(';')
                        .map_or(r.clone(), |(_, a)| a.trim().to_string())
                });
            Some(Report {
                kind,
                status,
                diagnostic,
                recipient,
                ..base.clone()
            })
        })
        .collect()
}

fn arf_report(arf: &str, base: Report) -> Report {
    let f = fields(arf);
    let get = |n: &str| f.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let kind = match get("feedback-type").map(|t| t.to_ascii_lowercase()) {
        Some(t) if t == "abuse" || t == "fraud" => Kind::Complaint,
        _ => Kind::Unknown,
    };
    Report {
        kind,
        recipient: get("original-rcpt-to"),
        diagnostic: get("feedback-type").map(|t| format!("feedback: {t}")),
        ..base
    }
}

/// The 64-hex-digit token in an unsubscribe link (`.../unsubscribe/TOKEN`).
fn link_token(list_unsubscribe: &str) -> Option<String> {
    list_unsubscribe
        .split(['<', '>', ',', ' '])
        .filter_map(|u| u.split("/unsubscribe/").nth(1))
        .map(|t| {
            t.chars()
                .take_while(char::is_ascii_hexdigit)
                .collect::<String>()
        })
        .find(|t| t.len() == 64)
        .map(|t| t.to_ascii_lowercase())
}

/// The addresses in a header value: `<a@b>` forms, else bare words with @.
fn addresses(value: &str) -> Vec<String> {
    let bracketed: Vec<String> = value
        .split('<')
        .skip(1)
        .filter_map(|s| s.split('>').next())
        .map(|s| s.trim().to_string())
        .collect();
    if !bracketed.is_empty() {
        return bracketed;
    }
    value
        .split([',', ' ', ';'])
        .filter(|w| w.contains('@'))
        .map(|w| w.trim().to_string())
        .collect()
}

fn is_auto_reply(m: &mail_parser::Message<'_>) -> bool {
    let has = |h: &str| m.header_raw(h).is_some();
    let submitted = m
        .header_raw("Auto-Submitted")
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("auto-replied"));
    submitted
        || has("X-Autoreply")
        || has("X-Autorespond")
        || m.header_raw("Precedence")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("auto_reply"))
}

fn looks_like_a_bounce(m: &mail_parser::Message<'_>) -> bool {
    let from = m.header_raw("From").unwrap_or("").to_ascii_lowercase();
    let subject = m.subject().unwrap_or("").to_ascii_lowercase();
    from.contains("mailer-daemon")
        || from.contains("postmaster")
        || [
            "undeliver",
            "delivery status",
            "delivery failure",
            "returned mail",
        ]
        .iter()
        .any(|s| subject.contains(s))
}
