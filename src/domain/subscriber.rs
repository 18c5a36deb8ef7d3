use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::{ParseError, is_forbidden_char};

/// A display name: 1..=200 characters, no control characters (so no CR or LF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberName(String);

impl SubscriberName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ParseError::new("name is empty"));
        }
        if s.chars().any(is_forbidden_char) {
            return Err(ParseError::new(format!(
                "name {s:?} contains control characters (line breaks, tabs, ...)"
            )));
        }
        let n = s.chars().count();
        if n > Self::MAX_CHARS {
            return Err(ParseError::new(format!(
                "name is {n} characters long; at most {} are allowed",
                Self::MAX_CHARS
            )));
        }
        Ok(Self(s.to_string()))
    }

    /// Parses an optional cell: empty or blank means "no name".
    pub fn parse_optional(input: &str) -> Result<Option<Self>, ParseError> {
        if input.trim().is_empty() {
            Ok(None)
        } else {
            Self::parse(input).map(Some)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One topic of interest, such as `llm` or `time series`: 1..=64 characters, no
/// control characters and no `,` or `;` (the list separators).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Topic(String);

impl Topic {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = super::normalize_ws(input);
        if s.is_empty() {
            return Err(ParseError::new("topic is empty"));
        }
        if input.chars().any(|c| is_forbidden_char(c) && c != '\t') || s.contains([',', ';']) {
            return Err(ParseError::new(format!(
                "topic {s:?} contains a control character, ',' or ';'"
            )));
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(ParseError::new(format!(
                "topic {s:?} is longer than {} characters",
                Self::MAX_CHARS
            )));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most 20 distinct topics (compared case-insensitively), in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Topics(Vec<Topic>);

impl Topics {
    pub const MAX: usize = 20;

    pub fn from_list<S: AsRef<str>>(items: &[S]) -> Result<Self, ParseError> {
        let mut out: Vec<Topic> = Vec::new();
        for item in items {
            if item.as_ref().trim().is_empty() {
                continue;
            }
            let t = Topic::parse(item.as_ref())?;
            if !out.iter().any(|o| o.0.to_lowercase() == t.0.to_lowercase()) {
                out.push(t);
            }
        }
        if out.len() > Self::MAX {
            return Err(ParseError::new(format!(
                "{} topics given; at most {} are allowed",
                out.len(),
                Self::MAX
            )));
        }
        Ok(Self(out))
    }

    /// Parses a list separated by `sep` (`,` on the command line, `;` in CSV).
    pub fn parse_separated(input: &str, sep: char) -> Result<Self, ParseError> {
        let items: Vec<&str> = input.split(sep).collect();
        Self::from_list(&items)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Topic> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `a;b;c`, the CSV form.
    pub fn join(&self, sep: &str) -> String {
        self.0
            .iter()
            .map(Topic::as_str)
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// The stored form: a JSON array of strings.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("strings serialize")
    }

    /// Reads the stored form. Values in the database were parsed before they were
    /// written; anything unreadable yields no topics rather than a crash.
    pub fn from_json(s: &str) -> Self {
        let items: Vec<String> = serde_json::from_str(s).unwrap_or_default();
        Self::from_list(&items).unwrap_or_default()
    }
}

/// An IANA time zone such as `Europe/Berlin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(pub chrono_tz::Tz);

impl TimeZone {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        chrono_tz::Tz::from_str(s).map(TimeZone).map_err(|_| {
            ParseError::new(format!(
                "unknown time zone {s:?} (use an IANA name such as UTC, Europe/Berlin or America/New_York)"
            ))
        })
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone(chrono_tz::UTC)
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

/// Which parts a subscriber's digest has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// HTML with a plain-text alternative.
    #[default]
    Html,
    /// Plain text only.
    Text,
}

impl Format {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        match input.trim().to_ascii_lowercase().as_str() {
            "html" => Ok(Format::Html),
            "text" | "txt" | "plain" => Ok(Format::Text),
            other => Err(ParseError::new(format!(
                "unknown format {other:?} (expected html or text)"
            ))),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Html => "html",
            Format::Text => "text",
        }
    }
}

/// How many papers a digest holds at most: 1..=50.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MaxPapers(u8);

impl MaxPapers {
    pub const LIMIT: u8 = 50;

    pub fn new(n: i64) -> Result<Self, ParseError> {
        if (1..=i64::from(Self::LIMIT)).contains(&n) {
            Ok(Self(n as u8))
        } else {
            Err(ParseError::new(format!(
                "max papers {n} is out of range (1 to {})",
                Self::LIMIT
            )))
        }
    }

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        let n: i64 = s.parse().map_err(|_| {
            ParseError::new(format!(
                "max papers {s:?} is not a whole number (1 to {})",
                Self::LIMIT
            ))
        })?;
        Self::new(n)
    }

    pub fn get(&self) -> u8 {
        self.0
    }
}

impl Default for MaxPapers {
    fn default() -> Self {
        Self(10)
    }
}

/// Where a subscriber is in their life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SubscriberStatus {
    /// Signed up on the web and has not confirmed yet.
    Pending,
    /// Gets the digest.
    Active,
    /// Asked to stop (or was removed); history is kept.
    Unsubscribed,
    /// Mail to them bounced permanently.
    Bounced,
}

impl SubscriberStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Unsubscribed => "unsubscribed",
            Self::Bounced => "bounced",
        }
    }
}

impl FromStr for SubscriberStatus {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "pending" => Ok(Self::Pending),
            "active" => Ok(Self::Active),
            "unsubscribed" => Ok(Self::Unsubscribed),
            "bounced" => Ok(Self::Bounced),
            other => Err(ParseError::new(format!("unknown status {other:?}"))),
        }
    }
}

/// Who ended a subscription. A `sync` of the subscriber file brings back only
/// those it ended itself; nobody else's decision is undone by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndedBy {
    /// The subscriber file no longer listed them.
    Sync,
    /// `paperpost subscribers remove`.
    Cli,
    /// The subscriber, with a link in a digest or on the web.
    Link,
    /// Their mail bounced (`mail.bounce.threshold`).
    Bounce,
    /// They reported our mail as spam (a feedback report): never brought
    /// back without their own confirmation or an explicit operator action.
    Complaint,
}

impl EndedBy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Cli => "cli",
            Self::Link => "link",
            Self::Bounce => "bounce",
            Self::Complaint => "complaint",
        }
    }
}

impl FromStr for EndedBy {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "sync" => Ok(Self::Sync),
            "cli" => Ok(Self::Cli),
            "link" => Ok(Self::Link),
            "bounce" => Ok(Self::Bounce),
            "complaint" => Ok(Self::Complaint),
            other => Err(ParseError::new(format!(
                "unknown unsubscribed_by {other:?}"
            ))),
        }
    }
}

/// How a subscriber came to be. A `sync` of the subscriber file only ever
/// touches subscribers whose source is `File`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriberSource {
    Cli,
    Import,
    File,
    Web,
}

impl SubscriberSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::Import => "import",
            Self::File => "file",
            Self::Web => "web",
        }
    }
}

impl FromStr for SubscriberSource {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "cli" => Ok(Self::Cli),
            "import" => Ok(Self::Import),
            "file" => Ok(Self::File),
            "web" => Ok(Self::Web),
            other => Err(ParseError::new(format!("unknown source {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert_eq!(
            SubscriberName::parse("  Zoë Ñúñez ").unwrap().as_str(),
            "Zoë Ñúñez"
        );
        assert!(SubscriberName::parse("").is_err());
        assert!(SubscriberName::parse("Ada\r\nBcc: x@y.z").is_err());
        assert!(SubscriberName::parse("Ada\tLovelace").is_err());
        assert!(SubscriberName::parse("Ada\u{202E}ecalevol").is_err());
        assert!(SubscriberName::parse(&"é".repeat(200)).is_ok());
        assert!(SubscriberName::parse(&"é".repeat(201)).is_err());
        assert_eq!(SubscriberName::parse_optional("  ").unwrap(), None);
    }

    #[test]
    fn topics() {
        let t = Topics::parse_separated("LLM; time  series;;llm ", ';').unwrap();
        assert_eq!(t.join(","), "LLM,time series");
        let twenty: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        assert_eq!(Topics::from_list(&twenty).unwrap().len(), 20);
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert!(Topics::from_list(&many).is_err());
        assert!(Topic::parse(&"x".repeat(64)).is_ok());
        assert!(Topic::parse(&"x".repeat(65)).is_err());
        assert!(Topic::parse("a\nb").is_err());
        let round = Topics::from_json(&t.to_json());
        assert_eq!(round, t);
    }

    #[test]
    fn time_zones_formats_and_limits() {
        assert_eq!(
            TimeZone::parse("Europe/Berlin").unwrap().name(),
            "Europe/Berlin"
        );
        assert!(TimeZone::parse("Mars/Olympus").is_err());
        assert_eq!(Format::parse("TEXT").unwrap(), Format::Text);
        assert!(Format::parse("pdf").is_err());
        assert!(MaxPapers::parse("0").is_err());
        assert!(MaxPapers::parse("51").is_err());
        assert!(MaxPapers::parse("ten").is_err());
        assert_eq!(MaxPapers::parse(" 50 ").unwrap().get(), 50);
        assert_eq!(MaxPapers::parse("1").unwrap().get(), 1);
    }

    proptest! {
        #[test]
        fn names_never_hold_control_characters(s in "\\PC{0,20}[\\x00-\\x1f\\x7f]\\PC{0,20}") {
            if let Ok(n) = SubscriberName::parse(&s) {
                prop_assert!(!n.as_str().chars().any(char::is_control));
            }
        }

        #[test]
        fn max_papers_in_range(n in any::<i64>()) {
            prop_assert_eq!(MaxPapers::new(n).is_ok(), (1..=50).contains(&n));
        }
    }
}
