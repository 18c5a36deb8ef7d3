//! The server-refusal guard. When many different recipients in a row, at
//! several domains, are refused with the same reply (the same step, code and
//! enhanced code: [`reply_key`]; a relay that will not relay for us, a
//! blocklisted address, bad credentials), the fault is the server's, not the
//! recipients': sending pauses like the circuit breaker, attempts are not
//! counted, and nobody is suppressed, including the recipients refused earlier
//! in the same run, whose refusals are undone. A pure decision; the engine
//! applies it.

/// How many different recipients refused in a row with the same reply make it
/// the server's fault.
pub const SAME_REPLY_IN_A_ROW: usize = 5;

/// One recipient's refusal, as the engine recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub delivery: i64,
    pub subscriber: i64,
    /// It counted as a hard bounce.
    pub bounce: bool,
    /// The recipient's domain ([`domain_key`]).
    pub domain: u64,
}

/// A recipient domain, compared without regard to case.
pub fn domain_key(domain: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    domain.to_ascii_lowercase().hash(&mut h);
    h.finish()
}

/// What a refusal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// About this recipient: record it as it is.
    Recipient,
    /// The server refuses everyone: this refusal does not count, and the
    /// earlier ones in `undo` are to be taken back (empty once already tripped).
    Server { undo: Vec<Refusal> },
}

#[derive(Debug, Default)]
pub struct Guard {
    reply: String,
    run: Vec<Refusal>,
    tripped: bool,
}

/// How many recipient domains a run must span before the refusals are the
/// server's: dead mailboxes next to each other at one domain are not.
pub const DISTINCT_DOMAINS: usize = 3;

/// What makes two refusals "the same reply": the step, the reply code and
/// the enhanced status code ("rcpt 550 5.7.1"); without an enhanced code,
/// the words of the reply less everything that varies per message or
/// recipient (addresses, host names and IPs, ids, numbers).
pub fn reply_key(reason: &str, recipient: &str) -> String {
    let lower = reason.to_ascii_lowercase();
    let lower = lower.replace(&recipient.to_ascii_lowercase(), "");
    let (step, rest) = lower.split_once(':').unwrap_or(("", &lower));
    let tokens: Vec<&str> = rest
        .split(|c: char| c.is_whitespace() || "()[]<>;,:=".contains(c))
        .filter(|t| !t.is_empty())
        .collect();
    let code = tokens.iter().find(|t| {
        t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit()) && t.starts_with(['4', '5'])
    });
    let enhanced = tokens.iter().find(|t| is_enhanced_code(t));
    let code = code.copied().unwrap_or("");
    match enhanced {
        Some(e) => format!("{} {code} {e}", step.trim()),
        None => {
            let words: Vec<&str> = tokens
                .iter()
                .copied()
                .filter(|t| !t.contains(['@', '.']) && !t.bytes().any(|b| b.is_ascii_digit()))
                .collect();
            format!("{} {code} {}", step.trim(), words.join(" "))
        }
    }
}

/// "5.7.1", "4.2.2": class.subject.detail (RFC 3463).
fn is_enhanced_code(t: &str) -> bool {
    let parts: Vec<&str> = t.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Guard {
    /// A refusal with `reply` (see [`reply_key`]).
    pub fn refused(&mut self, reply: String, r: Refusal) -> Judgement {
        if reply != self.reply {
            *self = Guard {
                reply,
                run: vec![r],
                tripped: false,
            };
            return Judgement::Recipient;
        }
        if self.tripped {
            return Judgement::Server { undo: Vec::new() };
        }
        if !self.run.iter().any(|x| x.subscriber == r.subscriber) {
            self.run.push(r);
        }
        let domains: std::collections::HashSet<u64> = self.run.iter().map(|x| x.domain).collect();
        if self.run.len() < SAME_REPLY_IN_A_ROW || domains.len() < DISTINCT_DOMAINS {
            return Judgement::Recipient;
        }
        self.tripped = true;
        let undo = self.run.drain(..).filter(|x| *x != r).collect();
        Judgement::Server { undo }
    }

    /// A message was accepted: the run is over. True if the guard had tripped.
    pub fn accepted(&mut self) -> bool {
        std::mem::take(self).tripped
    }

    #[cfg(test)]
    pub fn tripped(&self) -> bool {
        self.tripped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(i: i64) -> Refusal {
        Refusal {
            delivery: 100 + i,
            subscriber: i,
            bounce: i % 2 == 0,
            // Each test recipient at a domain of its own.
            domain: i as u64,
        }
    }

    #[test]
    fn the_same_reply_to_enough_different_recipients_is_the_servers_fault() {
        let mut g = Guard::default();
        let relay = || "rcpt: 554 5.7.1 <>: relay access denied".to_string();
        for i in 0..4 {
            assert_eq!(g.refused(relay(), r(i)), Judgement::Recipient);
        }
        // The same recipient again does not make a run longer.
        assert_eq!(g.refused(relay(), r(3)), Judgement::Recipient);
        assert_eq!(
            g.refused(relay(), r(4)),
            Judgement::Server {
                undo: vec![r(0), r(1), r(2), r(3)]
            }
        );
        assert!(g.tripped());
        assert_eq!(g.refused(relay(), r(5)), Judgement::Server { undo: vec![] });
        assert!(g.accepted(), "an accepted message ends it");
        assert!(!g.tripped());
        assert_eq!(g.refused(relay(), r(6)), Judgement::Recipient);
    }

    #[test]
    fn different_replies_are_about_recipients() {
        let mut g = Guard::default();
        for i in 0..20 {
            let reply = format!("rcpt: 550 5.1.1 user {i} unknown");
            assert_eq!(g.refused(reply, r(i)), Judgement::Recipient);
        }
        assert!(!g.tripped());
    }

    /// A refusal of `who` (`name@domain`) with `reason`, keyed.
    fn refuse(g: &mut Guard, i: i64, who: &str, reason: &str) -> Judgement {
        let domain = who.rsplit('@').next().unwrap();
        g.refused(
            reply_key(reason, who),
            Refusal {
                domain: domain_key(domain),
                ..r(i)
            },
        )
    }

    #[test]
    fn a_reply_with_a_per_message_id_is_still_the_same_reply() {
        let mut g = Guard::default();
        let domains = ["gmail.com", "outlook.com", "example.org"];
        let mut last = Judgement::Recipient;
        for i in 0..5 {
            let who = format!("r{i}@{}", domains[i as usize % 3]);
            let reason = format!(
                "rcpt: 550 5.7.1 Relaying denied. Proxy ID {:x}{:x} - gsmtp",
                0x5eed_u64 * (i as u64 + 1),
                0xbeef_cafe_u64 + i as u64
            );
            last = refuse(&mut g, i, &who, &reason);
        }
        assert!(matches!(last, Judgement::Server { .. }), "{last:?}");
    }

    #[test]
    fn dead_mailboxes_at_one_domain_are_not_the_servers_fault() {
        let mut g = Guard::default();
        for i in 0..8 {
            let who = format!("gone{i}@example.org");
            let reason = format!(
                "rcpt: 550 5.1.1 <{who}>: Recipient address rejected: User unknown in virtual \
                 mailbox table"
            );
            assert_eq!(
                refuse(&mut g, i, &who, &reason),
                Judgement::Recipient,
                "{i}"
            );
        }
    }

    #[test]
    fn replies_are_keyed_on_step_code_and_enhanced_code() {
        assert_eq!(
            reply_key(
                "rcpt: 550 5.7.1 Relaying denied. Proxy ID 3fa9 - gsmtp",
                "a@x.org"
            ),
            reply_key("RCPT: 550 5.7.1 relaying denied (ticket 77812)", "b@y.org"),
        );
        assert_ne!(
            reply_key("rcpt: 550 5.7.1 relaying denied", "a@x.org"),
            reply_key("mail: 550 5.7.1 relaying denied", "a@x.org"),
        );
        // Without an enhanced code the words count, less ids and hosts.
        assert_eq!(
            reply_key(
                "rcpt: 554 Relay access denied; id=8812ab on mx1.example.net",
                "a@x.org"
            ),
            reply_key(
                "rcpt: 554 Relay access denied; id=c0ffee01 on mx7.example.net",
                "b@y.org"
            ),
        );
    }

    #[test]
    fn the_recipient_is_taken_out_of_the_reply() {
        assert_eq!(
            reply_key(
                "RCPT: 554 5.7.1 <Bob@X.org>: Relay access denied",
                "bob@x.org"
            ),
            reply_key(
                "RCPT: 554 5.7.1 <ann@x.org>: Relay access denied",
                "ann@x.org"
            ),
        );
    }
}
