//! Personalized digests: select and rank an edition's papers for one subscriber,
//! render them with askama (HTML and plain text), and build the message.
//!
//! Work that is the same for every reader (words for matching, author lines,
//! trimmed and wrapped abstracts) is done once per edition in [`Edition::new`];
//! per reader only ranking, templating and message building remain, with no I/O.

pub mod dkim;
pub mod message;
pub mod qp;
pub mod rank;

use askama::Template;
use chrono::NaiveDate;

use crate::domain::{Format, MaxPapers, Paper, SubscriberEmail, SubscriberName, Topics};
use rank::Searchable;

/// The width plain-text parts are wrapped at.
pub const TEXT_WIDTH: usize = 72;
/// Abstracts are trimmed at a word boundary to about this many characters.
pub const ABSTRACT_CHARS: usize = 600;
/// In long digests the HTML shows abstracts trimmed to about this many characters.
pub const BRIEF_ABSTRACT_CHARS: usize = 280;
/// Digests with more papers than this use the brief abstracts in HTML.
pub const BRIEF_ABOVE: usize = 20;
/// Gmail clips HTML over 102 KB; the HTML part as sent (encoded) stays under this.
pub const HTML_BUDGET: usize = 100 * 1024;
/// Authors shown before "et al.".
pub const AUTHORS_SHOWN: usize = 3;

/// A paper with everything the templates need, computed once per edition.
#[derive(Debug, Clone)]
pub struct PreparedPaper {
    pub paper: Paper,
    pub search: Searchable,
    pub hf_url: String,
    pub arxiv_url: Option<String>,
    pub thumbnail: Option<String>,
    /// "A, B, C et al."
    pub authors_line: String,
    /// The abstract trimmed at a word boundary.
    pub abstract_short: String,
    /// Shorter still, for long digests' HTML.
    pub abstract_brief: String,
    /// The same, wrapped and indented for the text part.
    pub abstract_wrapped: String,
    /// The title wrapped with a four-column hanging indent; the first four
    /// columns are replaced by the paper's number in each digest.
    title_wrapped: String,
    /// The card's HTML below its first line (templates/mail/paper.html), rendered
    /// once per edition; with the full and with the brief abstract.
    pub card_html: String,
    pub card_html_brief: String,
    /// The text part's block below the title (templates/mail/paper.txt).
    pub block_text: String,
    /// The three fragments above, quoted-printable encoded once per edition and
    /// spliced into each message (see [`qp::encode_spliced`]).
    encoded: [Vec<u8>; 3],
}

#[derive(Template)]
#[template(path = "mail/paper.html")]
struct PaperHtml<'a> {
    p: &'a PreparedPaper,
    abstract_text: &'a str,
}

#[derive(Template)]
#[template(path = "mail/paper.txt")]
struct PaperText<'a> {
    p: &'a PreparedPaper,
}

/// One edition's papers in the editor's order, prepared for rendering.
#[derive(Debug, Clone)]
pub struct Edition {
    pub date: NaiveDate,
    pub papers: Vec<PreparedPaper>,
}

impl Edition {
    pub fn new(date: NaiveDate, papers: Vec<Paper>, thumbnails: bool) -> Self {
        let papers = papers
            .into_iter()
            .map(|paper| {
                let abstract_short = trim_words(&paper.abstract_text, ABSTRACT_CHARS);
                let wrap = |s: &str, first: &str, rest: &str| {
                    textwrap::fill(
                        s,
                        textwrap::Options::new(TEXT_WIDTH)
                            .initial_indent(first)
                            .subsequent_indent(rest),
                    )
                };
                let mut p = PreparedPaper {
                    search: Searchable::new(&paper),
                    hf_url: paper.hf_url(),
                    arxiv_url: paper.arxiv_url(),
                    thumbnail: if thumbnails {
                        paper.thumbnail.clone()
                    } else {
                        None
                    },
                    authors_line: authors_line(&paper.authors),
                    abstract_wrapped: wrap(&abstract_short, "    ", "    "),
                    title_wrapped: wrap(&paper.title, "    ", "    "),
                    abstract_brief: trim_words(&abstract_short, BRIEF_ABSTRACT_CHARS),
                    abstract_short,
                    paper,
                    card_html: String::new(),
                    card_html_brief: String::new(),
                    block_text: String::new(),
                    encoded: Default::default(),
                };
                // Rendering into a String cannot fail for these templates.
                p.card_html = PaperHtml {
                    p: &p,
                    abstract_text: &p.abstract_short,
                }
                .render()
                .unwrap_or_default();
                p.card_html_brief = PaperHtml {
                    p: &p,
                    abstract_text: &p.abstract_brief,
                }
                .render()
                .unwrap_or_default();
                p.block_text = PaperText { p: &p }.render().unwrap_or_default();
                // Fragments fill whole lines of the digest: no final line break.
                for f in [&mut p.card_html, &mut p.card_html_brief, &mut p.block_text] {
                    f.truncate(f.trim_end_matches(['\r', '\n']).len());
                }
                for (slot, f) in
                    p.encoded
                        .iter_mut()
                        .zip([&p.card_html, &p.card_html_brief, &p.block_text])
                {
                    qp::encode(f, slot);
                }
                p
            })
            .collect();
        Self { date, papers }
    }

    /// A part's body as sent: `text` quoted-printable encoded, with this
    /// edition's pre-encoded fragments spliced in for its marker lines.
    pub fn encode(&self, text: &str) -> Vec<u8> {
        let mut encoded = Vec::with_capacity(16 * 1024);
        qp::encode_spliced(text, &mut encoded, |line| self.fragment(line));
        encoded
    }

    /// The pre-encoded fragment a marker line (from [`PaperView::card`] or
    /// [`PaperView::block`] in segmented rendering) stands for.
    pub fn fragment(&self, line: &[u8]) -> Option<&[u8]> {
        let inner = line.strip_prefix(&[MARK])?.strip_suffix(&[MARK])?;
        let (&kind, index) = inner.split_first()?;
        let index: usize = std::str::from_utf8(index).ok()?.parse().ok()?;
        let slot = match kind {
            b'c' => 0,
            b'b' => 1,
            b't' => 2,
            _ => return None,
        };
        self.papers.get(index).map(|p| p.encoded[slot].as_slice())
    }

    /// "Wednesday, 11 March 2024"
    pub fn date_long(&self) -> String {
        self.date.format("%A, %-d %B %Y").to_string()
    }

    /// "11 Mar 2024"
    pub fn date_short(&self) -> String {
        self.date.format("%-d %b %Y").to_string()
    }
}

/// "A, B, C et al." for more than [`AUTHORS_SHOWN`] authors.
pub fn authors_line(authors: &[String]) -> String {
    if authors.len() > AUTHORS_SHOWN {
        format!("{} et al.", authors[..AUTHORS_SHOWN].join(", "))
    } else {
        authors.join(", ")
    }
}

/// Trims `s` to at most about `max` characters at a word boundary, adding "…".
pub fn trim_words(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut = s.char_indices().nth(max).map(|(i, _)| i).unwrap_or(s.len());
    let head = &s[..cut];
    let head = match head.rfind(char::is_whitespace) {
        Some(i) if i > cut / 2 => &head[..i],
        _ => head,
    };
    format!(
        "{}…",
        head.trim_end_matches(
            |c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '.' | '-')
        )
    )
}

/// Who a digest is for: what rendering needs of a subscriber.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    pub uuid: &'a str,
    pub email: &'a SubscriberEmail,
    pub name: Option<&'a SubscriberName>,
    pub topics: &'a Topics,
    pub format: Format,
    pub max_papers: MaxPapers,
}

impl<'a> From<&'a crate::store::subscribers::Subscriber> for Reader<'a> {
    fn from(s: &'a crate::store::subscribers::Subscriber) -> Self {
        Reader {
            uuid: &s.uuid,
            email: &s.email,
            name: s.profile.name.as_ref(),
            topics: &s.profile.topics,
            format: s.profile.format,
            max_papers: s.profile.max_papers,
        }
    }
}

/// The settings rendering needs, taken from the configuration once.
#[derive(Debug, Clone)]
pub struct Look {
    pub title: String,
    pub subject_pattern: String,
    pub sender: String,
    pub postal_address: String,
    /// The public base URL without a trailing slash.
    pub base_url: String,
}

impl Look {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Look {
            title: s.newsletter.title.clone(),
            subject_pattern: s.newsletter.subject.clone(),
            sender: s.mail.from.to_string(),
            postal_address: s.newsletter.postal_address.clone(),
            base_url: s.http.public_url.as_str().trim_end_matches('/').to_string(),
        }
    }

    pub fn unsubscribe_url(&self, token: &str) -> String {
        crate::links::url(&self.base_url, crate::links::UNSUBSCRIBE, token)
    }

    pub fn preferences_url(&self, token: &str) -> String {
        crate::links::url(&self.base_url, crate::links::PREFERENCES, token)
    }
}

/// Marks a line that stands for a pre-encoded fragment. Paper text cannot hold
/// it ([`crate::domain::Paper`] removes control characters).
const MARK: u8 = 0x01;

/// One paper as a digest shows it.
pub struct PaperView<'a> {
    pub number: usize,
    /// Its index in the edition.
    pub index: usize,
    /// Render fragment markers instead of fragments (for message bodies).
    pub segmented: bool,
    pub paper: &'a PreparedPaper,
    /// The subscriber's topics it matched, joined with ", "; empty for none.
    pub matched: String,
    pub title_wrapped: String,
}

impl PaperView<'_> {
    fn marker(&self, kind: char) -> std::borrow::Cow<'static, str> {
        format!("{}{kind}{}{}", MARK as char, self.index, MARK as char).into()
    }

    /// The card's HTML below its first line.
    pub fn card(&self, brief: &bool) -> std::borrow::Cow<'_, str> {
        match (self.segmented, *brief) {
            (true, false) => self.marker('c'),
            (true, true) => self.marker('b'),
            (false, false) => self.paper.card_html.as_str().into(),
            (false, true) => self.paper.card_html_brief.as_str().into(),
        }
    }

    /// The text part's block below the title.
    pub fn block(&self) -> std::borrow::Cow<'_, str> {
        if self.segmented {
            self.marker('t')
        } else {
            self.paper.block_text.as_str().into()
        }
    }
}

/// Everything the digest templates show.
pub struct DigestView<'a> {
    pub title: &'a str,
    pub date_long: String,
    pub rule: String,
    pub preheader: String,
    pub greeting: String,
    pub intro: String,
    pub intro_wrapped: String,
    pub papers: Vec<PaperView<'a>>,
    /// Show the brief abstracts in HTML (long digests).
    pub brief: bool,
    pub email: &'a str,
    pub unsubscribe_url: String,
    pub preferences_url: String,
    pub sender: &'a str,
    pub postal_address: &'a str,
    /// The text part's footer lines (why they get it, who sends it), wrapped.
    pub why_wrapped: String,
    pub sent_by_wrapped: String,
}

#[derive(Template)]
#[template(path = "mail/digest.html")]
pub struct DigestHtml<'a> {
    pub d: &'a DigestView<'a>,
}

#[derive(Template)]
#[template(path = "mail/digest.txt")]
pub struct DigestText<'a> {
    pub d: &'a DigestView<'a>,
}

/// A rendered digest: its subject and parts.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    /// Present for format=html.
    pub html: Option<String>,
    /// The HTML part's body as sent: quoted-printable, fragments spliced in.
    /// Its size is what [`HTML_BUDGET`] holds.
    pub html_part: Option<Vec<u8>>,
    /// How many papers it holds.
    pub papers: usize,
}

/// Builds the view of one reader's digest. `token` goes into their links.
pub fn view<'a>(
    edition: &'a Edition,
    look: &'a Look,
    reader: &Reader<'a>,
    token: &str,
    segmented: bool,
) -> DigestView<'a> {
    let input: Vec<(&Searchable, i64)> = edition
        .papers
        .iter()
        .map(|p| (&p.search, p.paper.upvotes))
        .collect();
    let topic_words = rank::topic_words(reader.topics);
    let topic_names: Vec<&str> = reader.topics.iter().map(|t| t.as_str()).collect();
    let picks = rank::rank(&input, &topic_words, usize::from(reader.max_papers.get()));
    let papers: Vec<PaperView<'a>> = picks
        .iter()
        .enumerate()
        .map(|(i, pick)| {
            let paper = &edition.papers[pick.index];
            let number = i + 1;
            let mut title_wrapped = paper.title_wrapped.clone();
            let label = format!("{number:>2}. ");
            if title_wrapped.len() >= 4 {
                title_wrapped.replace_range(..4, &label);
            }
            PaperView {
                number,
                index: pick.index,
                segmented,
                paper,
                matched: pick
                    .matched
                    .iter()
                    .map(|&t| topic_names[t])
                    .collect::<Vec<_>>()
                    .join(", "),
                title_wrapped,
            }
        })
        .collect();
    let matching = picks.iter().filter(|p| !p.matched.is_empty()).count();
    let n = papers.len();
    let intro = match (n, matching) {
        (1, _) => "Here is today's paper.".to_string(),
        (_, 0) => format!("Here are today's {n} papers, most upvoted first."),
        (_, m) if m == n => format!("Here are today's {n} papers; all of them match your topics."),
        (_, 1) => {
            format!("Here are today's {n} papers; the one that matches your topics comes first.")
        }
        (_, m) => {
            format!("Here are today's {n} papers; the {m} that match your topics come first.")
        }
    };
    let preheader = match papers.first() {
        Some(p) if n > 1 => format!("{} and {} more", p.paper.paper.title, n - 1),
        Some(p) => p.paper.paper.title.clone(),
        None => String::new(),
    };
    let date_long = edition.date_long();
    let heading_len = look.title.chars().count() + 3 + date_long.chars().count();
    DigestView {
        title: &look.title,
        rule: "=".repeat(heading_len.min(TEXT_WIDTH)),
        date_long,
        preheader,
        greeting: match reader.name {
            Some(name) => format!("Hello {name},"),
            None => "Hello,".to_string(),
        },
        intro_wrapped: textwrap::fill(&intro, TEXT_WIDTH),
        intro,
        brief: papers.len() > BRIEF_ABOVE,
        papers,
        email: reader.email.as_str(),
        unsubscribe_url: look.unsubscribe_url(token),
        preferences_url: look.preferences_url(token),
        sender: &look.sender,
        postal_address: &look.postal_address,
        why_wrapped: footer_fill(&format!(
            "You get this digest because {} is subscribed to {}.",
            reader.email.as_str(),
            look.title
        )),
        sent_by_wrapped: footer_fill(&match look.postal_address.as_str() {
            "" => format!("Sent by {}", look.sender),
            address => format!("Sent by {}, {address}", look.sender),
        }),
    }
}

/// A footer line wrapped at [`TEXT_WIDTH`], breaking only at spaces: per
/// message, so without the Unicode line-breaking rules paper text gets (they
/// cost a fifth of the digest's speed here).
fn footer_fill(line: &str) -> String {
    if line.chars().count() <= TEXT_WIDTH {
        return line.to_string();
    }
    let options = textwrap::Options::new(TEXT_WIDTH)
        .word_separator(textwrap::WordSeparator::AsciiSpace)
        .break_words(false);
    textwrap::fill(line, options)
}

/// The subject: the configured pattern, trimmed at a word boundary to 78 characters.
pub fn subject(look: &Look, edition: &Edition, top: Option<&str>) -> String {
    let s = look
        .subject_pattern
        .replace("{title}", &look.title)
        .replace("{date}", &edition.date_short())
        .replace("{top}", top.unwrap_or("today's papers"));
    // Inputs are single-line already; this makes sure of it.
    trim_words(&crate::domain::normalize_ws(&s), 77)
}

/// Renders one reader's digest. With `segmented`, each paper's static part is
/// a marker line for [`Edition::fragment`] instead of its text: the form
/// [`message::Envelope::build`] encodes fastest; never shown to anyone.
pub fn render(
    edition: &Edition,
    look: &Look,
    reader: &Reader<'_>,
    token: &str,
    segmented: bool,
) -> Result<Rendered, askama::Error> {
    let mut v = view(edition, look, reader, token, segmented);
    let subject = subject(
        look,
        edition,
        v.papers.first().map(|p| p.paper.paper.title.as_str()),
    );
    let text = DigestText { d: &v }.render()?;
    let (html, html_part) = match reader.format {
        Format::Html => {
            // Measured as sent, cards and thumbnails encoded: the same
            // whether the cards are spliced in (mail) or not (preview).
            let mut html = DigestHtml { d: &v }.render()?;
            let mut part = edition.encode(&html);
            if part.len() > HTML_BUDGET && !v.brief {
                v.brief = true;
                html = DigestHtml { d: &v }.render()?;
                part = edition.encode(&html);
            }
            (Some(html), Some(part))
        }
        Format::Text => (None, None),
    };
    Ok(Rendered {
        subject,
        text,
        html,
        html_part,
        papers: v.papers.len(),
    })
}

/// Renders and builds digests with the configured look, headers and link keys.
pub struct Composer {
    pub look: Look,
    pub envelope: message::Envelope,
    keys: crate::security::Keys,
}

impl Composer {
    /// The signed VERP envelope sender of delivery `id` at `domain`.
    pub fn verp_address(&self, id: i64, domain: &str) -> String {
        self.keys.verp_address(id, domain)
    }

    pub fn new(
        settings: &crate::config::Settings,
        keys: crate::security::Keys,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            look: Look::from_settings(settings),
            envelope: message::Envelope::from_settings(settings)?,
            keys,
        })
    }

    /// The reader's digest with their real links.
    pub fn render(
        &self,
        edition: &Edition,
        reader: &Reader<'_>,
    ) -> Result<Rendered, askama::Error> {
        render(
            edition,
            &self.look,
            reader,
            &self.keys.subscriber_token(reader.uuid),
            false,
        )
    }

    /// The complete message for one reader.
    pub fn compose(
        &self,
        edition: &Edition,
        reader: &Reader<'_>,
    ) -> anyhow::Result<lettre::Message> {
        let token = self.keys.subscriber_token(reader.uuid);
        let rendered = render(edition, &self.look, reader, &token, true)?;
        self.envelope.build(
            edition,
            reader,
            rendered,
            &self.look.unsubscribe_url(&token),
        )
    }

    /// As [`Composer::compose`], with `token` in the links instead of the reader's own.
    pub fn compose_with_token(
        &self,
        edition: &Edition,
        reader: &Reader<'_>,
        token: &str,
    ) -> anyhow::Result<(lettre::Message, Rendered)> {
        let rendered = render(edition, &self.look, reader, token, false)?;
        let message = self.envelope.build(
            edition,
            reader,
            rendered.clone(),
            &self.look.unsubscribe_url(token),
        )?;
        Ok((message, rendered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_at_word_boundaries() {
        assert_eq!(trim_words("short", 10), "short");
        assert_eq!(trim_words("one two three four", 9), "one two…");
        assert_eq!(trim_words("one, two, three", 10), "one, two…");
        let long = "x".repeat(30);
        assert_eq!(trim_words(&long, 10), format!("{}…", "x".repeat(10)));
        assert_eq!(trim_words("äöü äöü äöü", 5), "äöü…");
    }

    #[test]
    fn authors_are_shortened() {
        let a: Vec<String> = ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect();
        assert_eq!(authors_line(&a), "A, B, C et al.");
        assert_eq!(authors_line(&a[..3]), "A, B, C");
        assert_eq!(authors_line(&[]), "");
    }
}
