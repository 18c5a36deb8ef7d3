//! The pure decision: what one report means for its subscriber.

use crate::mailer::reply::{self, Meaning};

/// What a report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The mailbox does not exist or is disabled: counts toward
    /// `mail.bounce.threshold`.
    Hard,
    /// A condition that may pass (full mailbox, a 4.x.x status): suppresses
    /// only after `mail.bounce.soft_editions` editions.
    Soft,
    /// Refused by policy (5.7.x, DMARC 5.7.26): the sender's problem, never
    /// the subscriber's; raises an alert.
    Block,
    /// They marked our mail as spam: unsubscribed at once.
    Complaint,
    /// Not delivered yet (`Action: delayed`): recorded only.
    Delayed,
    /// A report without evidence either way: recorded only.
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hard => "hard",
            Kind::Soft => "soft",
            Kind::Block => "block",
            Kind::Complaint => "complaint",
            Kind::Delayed => "delayed",
            Kind::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Kind::Hard,
            Kind::Soft,
            Kind::Block,
            Kind::Complaint,
            Kind::Delayed,
            Kind::Unknown,
        ]
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// The kind of a delivery status notification's recipient: its `Action`,
/// its `Status` (an enhanced code) and its `Diagnostic-Code` (`smtp; 550
/// 5.1.1 ...`). `None` when it reports a delivery (delivered, relayed,
/// expanded): not a bounce at all.
pub fn classify(action: &str, status: Option<&str>, diagnostic: Option<&str>) -> Option<Kind> {
    match action.trim().to_ascii_lowercase().as_str() {
        "failed" => {}
        "delayed" => return Some(Kind::Delayed),
        "delivered" | "relayed" | "expanded" => return None,
        _ => return Some(Kind::Unknown),
    }
    let code = status
        .and_then(reply::enhanced)
        .or_else(|| diagnostic.and_then(diagnostic_code));
    Some(match code {
        Some((5, subject, detail)) => match reply::meaning(subject, detail) {
            Meaning::Mailbox => Kind::Hard,
            Meaning::Passing => Kind::Soft,
            Meaning::Policy => Kind::Block,
        },
        Some((4, _, _)) => Kind::Soft,
        _ => Kind::Unknown,
    })
}

/// The enhanced code in a `Diagnostic-Code` value: `smtp; 550 5.1.1 User
/// unknown` (past the type and the reply code).
fn diagnostic_code(value: &str) -> Option<(u8, u16, u16)> {
    let text = value.split_once(';').map_or(value, |(_, t)| t).trim();
    let text = text
        .split_once(' ')
        .filter(|(code, _)| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .map_or(text, |(_, rest)| rest.trim_start_matches('-').trim());
    reply::enhanced(text)
}

/// A text bounce (not a delivery status notification) is hard only on
/// explicit evidence: a 5.1.x or 5.2.1 code in its text.
pub fn classify_text(text: &str) -> Kind {
    let hard = text.split_whitespace().any(|w| {
        let w = w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '.');
        matches!(reply::enhanced(w), Some((5, s, d)) if reply::meaning(s, d) == Meaning::Mailbox)
    });
    if hard { Kind::Hard } else { Kind::Unknown }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailer::reply::{Step, Verdict, judge};

    #[test]
    fn reports_by_action_and_status() {
        let table = [
            ("failed", Some("5.1.1"), None, Some(Kind::Hard)),
            ("failed", Some("5.2.1"), None, Some(Kind::Hard)),
            ("failed", Some("5.2.2"), None, Some(Kind::Soft)),
            ("failed", Some("4.4.7"), None, Some(Kind::Soft)),
            ("failed", Some("5.7.26"), None, Some(Kind::Block)),
            ("failed", Some("5.7.1"), None, Some(Kind::Block)),
            (
                "failed",
                None,
                Some("smtp; 550 5.1.1 <a@b.org>: User unknown"),
                Some(Kind::Hard),
            ),
            (
                "failed",
                None,
                Some("smtp; 550 Requested action not taken"),
                Some(Kind::Unknown),
            ),
            ("Failed", Some("5.1.10"), None, Some(Kind::Hard)),
            ("delayed", Some("4.2.2"), None, Some(Kind::Delayed)),
            ("delivered", Some("2.0.0"), None, None),
            ("failed", None, None, Some(Kind::Unknown)),
        ];
        for (action, status, diag, want) in table {
            assert_eq!(
                classify(action, status, diag),
                want,
                "{action} {status:?} {diag:?}"
            );
        }
    }

    /// The two classifiers read one table: a refusal during the SMTP
    /// session is a bounce exactly when the same code in a report is hard,
    /// a retry exactly when soft.
    #[test]
    fn the_report_and_reply_classifiers_agree() {
        for subject in 0..10 {
            for detail in 0..30 {
                let code = format!("5.{subject}.{detail}");
                let sync = judge(Step::Rcpt, 550, &format!("{code} text"));
                let later = classify("failed", Some(&code), None).unwrap();
                assert_eq!(sync == Verdict::Bounce, later == Kind::Hard, "{code}");
                assert_eq!(sync == Verdict::Retry, later == Kind::Soft, "{code}");
                assert_eq!(sync == Verdict::Refused, later == Kind::Block, "{code}");
            }
        }
    }

    #[test]
    fn text_bounces_are_hard_only_on_evidence() {
        assert_eq!(
            classify_text("550 5.1.1 <x@y.org>: Recipient address rejected"),
            Kind::Hard
        );
        assert_eq!(
            classify_text("Mailbox full, try later (4.2.2)"),
            Kind::Unknown
        );
        assert_eq!(classify_text("I am out of the office"), Kind::Unknown);
    }
}
