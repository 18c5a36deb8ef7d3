//! What a mail server's refusal means, from its reply code (RFC 5321) and its
//! enhanced status code (RFC 3463): the pure decision beside the SMTP code in
//! `mailer` that applies it.
//!
//! Only a mailbox-level refusal is a bounce (it counts toward
//! `mail.bounce.threshold` and may suppress the subscriber). A refusal about
//! policy, relaying, authentication, the server or the network says nothing
//! about the recipient's mailbox: the delivery fails or is retried, and nobody
//! is suppressed.

/// The step of the SMTP transaction a reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Mail,
    Rcpt,
    Data,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Mail => "MAIL",
            Step::Rcpt => "RCPT",
            Step::Data => "DATA",
        })
    }
}

/// What to do about a refused message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The mailbox does not exist or is disabled (5.1.x, 5.2.1; without an
    /// enhanced code 550, 551 or 553 to RCPT): a hard bounce.
    Bounce,
    /// Refused for good, not because of the mailbox (5.7.x policy, 5.5.x
    /// protocol, other 5xx): the delivery fails; nobody is suppressed.
    Refused,
    /// Worth another try: any 4xx; a 5xx to MAIL FROM (our sender, not the
    /// recipient); mailbox full (5.2.2, or 552 without an enhanced code);
    /// the server's or the network's trouble (5.3.x, 5.4.x).
    Retry,
}

/// The enhanced status code (class, subject, detail) that starts a reply's
/// text, as in "5.1.1 User unknown".
pub fn enhanced(text: &str) -> Option<(u8, u16, u16)> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts
        .next()?
        .trim_end_matches([',', ';', ':'])
        .parse()
        .ok()?;
    (parts.next().is_none() && matches!(class, 2 | 4 | 5) && subject < 1000 && detail < 1000)
        .then_some((class, subject, detail))
}

/// What a permanent (5.x.x) enhanced status code says about the
/// recipient: the one code table that both the SMTP reply classifier
/// ([`judge`]) and the bounce report classifier (`bounce::classify`) read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// The mailbox does not exist or is disabled (5.1.x, 5.2.1).
    Mailbox,
    /// A condition that may pass: mailbox full (5.2.2), the mail system or
    /// the network (5.3.x, 5.4.x).
    Passing,
    /// Policy, protocol, security or anything else (5.5.x, 5.6.x, 5.7.x, ...):
    /// nothing about the mailbox.
    Policy,
}

/// The meaning of the permanent status code 5.`subject`.`detail`.
pub fn meaning(subject: u16, detail: u16) -> Meaning {
    match (subject, detail) {
        (1, _) | (2, 1) => Meaning::Mailbox,
        (2, 2) | (3, _) | (4, _) => Meaning::Passing,
        _ => Meaning::Policy,
    }
}

/// What a refusal with reply `code` and `text` to `step` means.
pub fn judge(step: Step, code: u16, text: &str) -> Verdict {
    if code < 500 || step == Step::Mail {
        return Verdict::Retry;
    }
    match enhanced(text) {
        Some((5, subject, detail)) => match meaning(subject, detail) {
            Meaning::Mailbox => Verdict::Bounce,
            Meaning::Passing => Verdict::Retry,
            Meaning::Policy => Verdict::Refused,
        },
        // No enhanced code (or one that contradicts the reply code).
        _ => match code {
            550 | 551 | 553 if step == Step::Rcpt => Verdict::Bounce,
            552 => Verdict::Retry,
            _ => Verdict::Refused,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{Step::*, Verdict::*, *};

    #[test]
    fn enhanced_codes_are_read_from_the_start_of_the_text() {
        assert_eq!(enhanced("5.1.1 <bob@x.org>: User unknown"), Some((5, 1, 1)));
        assert_eq!(enhanced("5.1.10 Null MX"), Some((5, 1, 10)));
        assert_eq!(enhanced("4.7.0 Try later"), Some((4, 7, 0)));
        assert_eq!(enhanced("Relaying denied"), None);
        assert_eq!(enhanced("5.1 half"), None);
        assert_eq!(enhanced("1.2.3 wrong class"), None);
        assert_eq!(enhanced(""), None);
    }

    #[test]
    fn only_mailbox_refusals_are_bounces() {
        let table = [
            (Rcpt, 550, "5.1.1 User unknown", Bounce),
            (Rcpt, 550, "5.1.10 Recipient address has null MX", Bounce),
            (Rcpt, 550, "5.2.1 Mailbox disabled", Bounce),
            (Data, 550, "5.1.1 User unknown", Bounce),
            (Rcpt, 550, "5.7.1 Relaying denied", Refused),
            (
                Rcpt,
                554,
                "5.7.1 <r@example.org>: Relay access denied",
                Refused,
            ),
            (
                Rcpt,
                535,
                "5.7.8 Authentication credentials invalid",
                Refused,
            ),
            (Rcpt, 550, "5.5.1 Bad sequence", Refused),
            (Rcpt, 552, "5.2.2 Mailbox full", Retry),
            (Rcpt, 550, "5.3.0 Other mail system problem", Retry),
            (Rcpt, 550, "5.4.4 Unable to route", Retry),
            (Data, 554, "5.7.1 Message rejected as spam", Refused),
            // Without an enhanced code: by the reply code.
            (
                Rcpt,
                550,
                "Requested action not taken: mailbox unavailable",
                Bounce,
            ),
            (Rcpt, 551, "User not local", Bounce),
            (Rcpt, 553, "Mailbox name not allowed", Bounce),
            (Rcpt, 552, "Exceeded storage allocation", Retry),
            (Rcpt, 554, "Transaction failed", Refused),
            (Data, 550, "Rejected", Refused),
            // A 4xx enhanced code on a 5xx reply: the reply code decides.
            (Rcpt, 550, "4.2.2 odd", Bounce),
            // Our sender refused, or a temporary failure: retry.
            (Mail, 550, "5.1.8 Bad sender address", Retry),
            (Mail, 553, "5.7.1 Sender not allowed", Retry),
            (Rcpt, 450, "4.2.1 Try again", Retry),
            (Rcpt, 421, "Service not available", Retry),
        ];
        for (step, code, text, want) in table {
            assert_eq!(judge(step, code, text), want, "{step:?} {code} {text}");
        }
    }
}
