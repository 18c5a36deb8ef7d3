use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ParseError, is_forbidden_char};

/// Collapses every run of whitespace (including line breaks) into one space and trims.
pub fn normalize_ws(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// A paper's identifier: an arXiv id such as `2403.06410` (or `hep-th/9901001`),
/// or, for papers from a plain text file, `t-` and a hash of the normalized title.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PaperId(String);

impl PaperId {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ParseError::new("paper id is empty"));
        }
        if s.len() > 64
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
            || s.contains("..")
            || s.starts_with(['/', '.'])
        {
            return Err(ParseError::new(format!(
                "paper id {s:?} is not an arXiv-style id (letters, digits, '.', '-', '_', '/'; at most 64)"
            )));
        }
        Ok(Self(s.to_string()))
    }

    /// The stable id of a paper known only by its title: a re-import of the same
    /// title (whatever its case, spacing or punctuation) yields the same id.
    pub fn from_title(title: &str) -> Self {
        let normalized: String = normalize_ws(
            &title
                .chars()
                .map(|c| {
                    if c.is_alphanumeric() {
                        c.to_lowercase().next().unwrap_or(c)
                    } else {
                        ' '
                    }
                })
                .collect::<String>(),
        );
        let digest = Sha256::digest(normalized.as_bytes());
        Self(format!("t-{}", &hex::encode(digest)[..16]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for ids that look like arXiv ids, which have an arxiv.org page.
    pub fn is_arxiv(&self) -> bool {
        !self.0.starts_with("t-")
    }
}

impl TryFrom<String> for PaperId {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<PaperId> for String {
    fn from(id: PaperId) -> String {
        id.0
    }
}

impl std::fmt::Display for PaperId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A research paper as paperpost stores it. Built only through [`Paper::new`],
/// which enforces the limits below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paper {
    pub id: PaperId,
    pub title: String,
    #[serde(rename = "abstract")]
    pub abstract_text: String,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub upvotes: i64,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
    #[serde(default)]
    pub num_comments: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
}

/// Unchecked paper fields, as read from a file.
#[derive(Debug, Default, Clone)]
pub struct PaperDraft {
    pub id: Option<String>,
    pub title: String,
    pub abstract_text: String,
    pub authors: Vec<String>,
    pub upvotes: i64,
    pub keywords: Vec<String>,
    pub github_repo: Option<String>,
    pub thumbnail: Option<String>,
    pub num_comments: i64,
    pub published_at: Option<DateTime<Utc>>,
}

impl Paper {
    pub const MAX_TITLE_CHARS: usize = 1_000;
    pub const MAX_ABSTRACT_BYTES: usize = 100 * 1024;
    pub const MAX_AUTHORS: usize = 2_000;

    pub fn new(d: PaperDraft) -> Result<Self, ParseError> {
        let title = strip_controls(&normalize_ws(&d.title));
        if title.is_empty() {
            return Err(ParseError::new("the title is empty"));
        }
        if title.chars().count() > Self::MAX_TITLE_CHARS {
            return Err(ParseError::new(format!(
                "the title is longer than {} characters",
                Self::MAX_TITLE_CHARS
            )));
        }
        if d.abstract_text.len() > Self::MAX_ABSTRACT_BYTES {
            return Err(ParseError::new(format!(
                "the abstract is {} KB; at most 100 KB is allowed",
                d.abstract_text.len().div_ceil(1024)
            )));
        }
        let abstract_text = strip_controls(&normalize_ws(&d.abstract_text));
        if abstract_text.is_empty() {
            return Err(ParseError::new(format!(
                "paper {title:?} has an empty abstract"
            )));
        }
        let id = match d.id.as_deref() {
            Some(raw) => PaperId::parse(raw)?,
            None => PaperId::from_title(&title),
        };
        if d.authors.len() > Self::MAX_AUTHORS {
            return Err(ParseError::new(format!(
                "more than {} authors",
                Self::MAX_AUTHORS
            )));
        }
        let authors = clean_list(d.authors, 300);
        let keywords = clean_list(d.keywords, 100);
        Ok(Paper {
            id,
            title,
            abstract_text,
            authors,
            upvotes: d.upvotes.max(0),
            keywords,
            github_repo: d.github_repo.and_then(web_link),
            thumbnail: d.thumbnail.and_then(web_link),
            num_comments: d.num_comments.max(0),
            published_at: d.published_at,
        })
    }

    /// This paper's page on Hugging Face.
    pub fn hf_url(&self) -> String {
        format!("https://huggingface.co/papers/{}", self.id)
    }

    /// The arXiv abstract page, for arXiv ids.
    pub fn arxiv_url(&self) -> Option<String> {
        self.id
            .is_arxiv()
            .then(|| format!("https://arxiv.org/abs/{}", self.id))
    }
}

/// Drops control characters and bidi overrides that survive whitespace normalization.
fn strip_controls(s: &str) -> String {
    if s.chars().any(is_forbidden_char) {
        s.chars().filter(|c| !is_forbidden_char(*c)).collect()
    } else {
        s.to_string()
    }
}

/// Whitespace-normalized, non-empty entries, each at most `max_chars` long.
fn clean_list(items: Vec<String>, max_chars: usize) -> Vec<String> {
    items
        .into_iter()
        .map(|s| {
            normalize_ws(&s)
                .chars()
                .filter(|c| !is_forbidden_char(*c))
                .take(max_chars)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Keeps only absolute http(s) links; anything else (`javascript:`, relative
/// paths, garbage) is dropped, as the link is optional.
fn web_link(s: String) -> Option<String> {
    let url = url::Url::parse(s.trim()).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(title: &str) -> PaperDraft {
        PaperDraft {
            title: title.into(),
            abstract_text: "An abstract.".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids() {
        assert!(PaperId::parse("2403.06410").is_ok());
        assert!(PaperId::parse("hep-th/9901001").is_ok());
        assert!(PaperId::parse("2403.06410v2").is_ok());
        for bad in ["", "a b", "../etc", "<script>", "x\ny"] {
            assert!(PaperId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            PaperId::from_title("Attention Is  All you need!"),
            PaperId::from_title("attention is all you need")
        );
        assert_ne!(
            PaperId::from_title("Attention is all you need"),
            PaperId::from_title("Attention is not all you need")
        );
        assert!(!PaperId::from_title("x").is_arxiv());
    }

    #[test]
    fn paper_limits() {
        assert!(Paper::new(draft("  ")).is_err());
        let p = Paper::new(draft("A\n  title")).unwrap();
        assert_eq!(p.title, "A title");
        let mut big = draft("t");
        big.abstract_text = "a ".repeat(60 * 1024);
        assert!(Paper::new(big).is_err());
        let mut links = draft("t");
        links.github_repo = Some("javascript:alert(1)".into());
        links.thumbnail = Some("https://example.org/x.png".into());
        let p = Paper::new(links).unwrap();
        assert_eq!(p.github_repo, None);
        assert_eq!(p.thumbnail.as_deref(), Some("https://example.org/x.png"));
    }
}
