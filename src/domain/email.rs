use std::fmt;

use super::{ParseError, is_forbidden_char};

/// A syntactically valid mailbox address (`local@domain`), as lettre will accept it.
///
/// Kept as typed; comparisons in the store are case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscriberEmail(String);

impl SubscriberEmail {
    pub const MAX_LEN: usize = 254;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ParseError::new("email address is empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(ParseError::new(format!(
                "email address is longer than {} characters",
                Self::MAX_LEN
            )));
        }
        if s.chars().any(|c| is_forbidden_char(c) || c.is_whitespace()) {
            return Err(ParseError::new(format!(
                "invalid email address {s:?}: it contains spaces or control characters"
            )));
        }
        let addr: lettre::Address = s
            .parse()
            .map_err(|e| ParseError::new(format!("invalid email address {s:?}: {e}")))?;
        if !addr.domain().contains('.') && !addr.domain().eq_ignore_ascii_case("localhost") {
            return Err(ParseError::new(format!(
                "invalid email address {s:?}: the domain has no dot"
            )));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address as shown to someone who may not own it: the first
    /// character of the local part, then `***`: `a***@example.org`.
    pub fn masked(&self) -> String {
        let (local, domain) = self.0.rsplit_once('@').unwrap_or(("", &self.0));
        let first: String = local.chars().take(1).collect();
        format!("{first}***@{domain}")
    }

    /// The inbox this address reaches, as far as we can tell: lower case,
    /// without a `+tag`, and for Gmail without dots in the local part
    /// (googlemail.com is gmail.com). One key for the per-inbox limit on
    /// confirmation mails; never used to send.
    pub fn mailbox(&self) -> String {
        let lower = self.0.to_lowercase();
        let (local, domain) = lower.rsplit_once('@').unwrap_or((&lower, ""));
        let local = local.split('+').next().unwrap_or(local);
        match domain {
            "gmail.com" | "googlemail.com" => format!("{}@gmail.com", local.replace('.', "")),
            _ => format!("{local}@{domain}"),
        }
    }

    pub fn to_address(&self) -> lettre::Address {
        // Parsed by `parse`, so this cannot fail.
        self.0
            .parse()
            .expect("SubscriberEmail holds a valid address")
    }
}

impl AsRef<str> for SubscriberEmail {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriberEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn one_inbox_however_it_is_written() {
        let m = |e: &str| SubscriberEmail::parse(e).unwrap().mailbox();
        assert_eq!(m("T.Arget+news@GoogleMail.com"), "target@gmail.com");
        assert_eq!(m("target@gmail.com"), m("ta.rget+1@gmail.com"));
        assert_eq!(m("Bob+x@Example.org"), "bob@example.org");
        assert_ne!(m("b.ob@example.org"), m("bob@example.org"));
        assert_eq!(m("+only@example.org"), "@example.org");
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in [
            "ada@example.org",
            "a.b+tag@sub.example.co.uk",
            " Ada@Example.org ",
        ] {
            assert!(SubscriberEmail::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            SubscriberEmail::parse(" x@y.io ").unwrap().as_str(),
            "x@y.io"
        );
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "",
            "   ",
            "ada",
            "@example.org",
            "ada@",
            "ada@@example.org",
            "ada example@example.org",
            "ada@example.org\r\nBcc: victim@example.org",
            "ada@nodot",
        ] {
            assert!(
                SubscriberEmail::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let long = format!("{}@example.org", "a".repeat(250));
        assert!(SubscriberEmail::parse(&long).is_err());
    }

    proptest! {
        #[test]
        fn never_holds_a_line_break(s in "[a-z]{0,5}[\r\n]?[a-z@.]{0,9}[\r\n][a-z.]{0,5}") {
            if let Ok(e) = SubscriberEmail::parse(&s) {
                prop_assert!(!e.as_str().contains(['\r', '\n']));
            }
        }

        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = SubscriberEmail::parse(&s);
        }
    }
}
