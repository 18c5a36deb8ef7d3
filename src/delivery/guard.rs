//! The server-refusal guard. When many different recipients in a row are
//! refused with the same reply (a relay that will not relay for us, a
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

/// A reply with the recipient's address taken out, so the same refusal of
/// different recipients reads the same ("554 5.7.1 <a@x>: Relay access denied").
pub fn reply_key(reason: &str, recipient: &str) -> String {
    let lower = reason.to_ascii_lowercase();
    lower.replace(&recipient.to_ascii_lowercase(), "")
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
        if self.run.len() < SAME_REPLY_IN_A_ROW {
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
