//! Rendering and message building: the HTML parsed with an HTML parser, the
//! message parsed back with a MIME parser, hostile input, and limits.

use crate::support;

use mail_parser::{MessageParser, MimeHeaders};
use paperpost::{
    config::Settings,
    digest::{Composer, Edition, Reader},
    domain::{Format, MaxPapers, Paper, PaperDraft, SubscriberEmail, SubscriberName, Topics},
    ingest::papers::{PaperFormat, parse},
    security::Keys,
};
use scraper::{Html, Selector};

fn settings(extra: &[(&str, &str)]) -> Settings {
    let mut env = vec![
        (
            "PAPERPOST__HTTP__PUBLIC_URL",
            "https://news.example.org/pp/",
        ),
        (
            "PAPERPOST__MAIL__FROM",
            "Paperpost Daily <digest@news.example.org>",
        ),
    ];
    env.extend_from_slice(extra);
    support::settings(&env)
}

fn keys() -> Keys {
    Keys::from_bytes(support::SECRET.as_bytes())
}

fn sample_edition() -> Edition {
    let bytes = std::fs::read(support::fixture("daily_papers-2024-03-11.json")).unwrap();
    let records = parse(
        std::path::Path::new("sample.json"),
        bytes,
        PaperFormat::Auto,
    )
    .unwrap();
    Edition::new(
        chrono::NaiveDate::from_ymd_opt(2024, 3, 11).unwrap(),
        records.into_iter().map(|r| r.paper).collect(),
        false,
    )
}

struct Who {
    email: SubscriberEmail,
    name: Option<SubscriberName>,
    topics: Topics,
}

impl Who {
    fn new(email: &str, name: Option<&str>, topics: &str) -> Self {
        Who {
            email: SubscriberEmail::parse(email).unwrap(),
            name: name.map(|n| SubscriberName::parse(n).unwrap()),
            topics: Topics::parse_separated(topics, ',').unwrap(),
        }
    }

    fn reader(&self, format: Format, max: i64) -> Reader<'_> {
        Reader {
            uuid: "6f1c2b9e-0000-4000-8000-000000000001",
            email: &self.email,
            name: self.name.as_ref(),
            topics: &self.topics,
            format,
            max_papers: MaxPapers::new(max).unwrap(),
        }
    }
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn text_of(doc: &Html, s: &str) -> Vec<String> {
    doc.select(&sel(s))
        .map(|e| e.text().collect::<String>().trim().to_string())
        .collect()
}

#[test]
fn html_digest_structure_links_and_personalization() {
    let composer = Composer::new(&settings(&[]), keys()).unwrap();
    let edition = sample_edition();
    let who = Who::new(
        "ada@example.org",
        Some("Ada Lovelace"),
        "time series,quantization",
    );
    let rendered = composer
        .render(&edition, &who.reader(Format::Html, 3))
        .unwrap();
    let html = rendered.html.expect("html part");
    let doc = Html::parse_document(&html);

    assert_eq!(text_of(&doc, "h1"), ["Paperpost Daily"]);
    let titles = text_of(&doc, "h2");
    assert_eq!(titles.len(), 3, "max papers is kept");
    // Both matching papers first (by upvotes), then the most upvoted other one.
    assert_eq!(
        titles[0],
        "ShiftAddLLM: Accelerating Pretrained LLMs via Post-Training Multiplication-Less Reparameterization"
    );
    assert_eq!(
        titles[1],
        "Time-LLM: Time Series Forecasting by Reprogramming Large Language Models"
    );
    assert_eq!(
        titles[2],
        "Transcoders Find Interpretable LLM Feature Circuits"
    );
    assert!(html.contains("matches: quantization"));
    assert!(html.contains("matches: time series"));
    assert!(
        text_of(&doc, "p")
            .iter()
            .any(|p| p == "Hello Ada Lovelace,")
    );

    let hrefs: Vec<&str> = doc
        .select(&sel("a"))
        .filter_map(|a| a.value().attr("href"))
        .collect();
    assert!(hrefs.contains(&"https://huggingface.co/papers/2406.05981"));
    assert!(hrefs.contains(&"https://arxiv.org/abs/2406.05981"));
    assert!(hrefs.contains(&"https://github.com/GATECH-EIC/ShiftAddLLM"));
    let token = keys().subscriber_token("6f1c2b9e-0000-4000-8000-000000000001");
    let unsubscribe = format!("https://news.example.org/pp/unsubscribe/{token}");
    let unsub_link = doc
        .select(&sel("a"))
        .find(|a| a.value().attr("href") == Some(unsubscribe.as_str()));
    assert_eq!(
        unsub_link.map(|a| a.text().collect::<String>()),
        Some("Unsubscribe".into()),
        "a visible unsubscribe link"
    );
    assert!(hrefs.contains(&format!("https://news.example.org/pp/preferences/{token}").as_str()));
    assert!(html.contains("ada@example.org is subscribed to Paperpost Daily"));
    assert!(
        text_of(&doc, "p")
            .iter()
            .any(|p| p == "Sent by Paperpost Daily <digest@news.example.org>")
    );

    // Email-safe shell.
    let meta: Vec<_> = doc.select(&sel("meta[name=color-scheme]")).collect();
    assert_eq!(meta.len(), 1);
    assert!(html.contains("@media (prefers-color-scheme: dark)"));
    assert!(doc.select(&sel("script")).next().is_none());
    assert!(
        doc.select(&sel("link")).next().is_none(),
        "no external CSS or fonts"
    );
    assert!(!html.contains("@import") && !html.contains("url("));
    let pre = doc.select(&sel("body > div")).next().unwrap();
    assert!(
        pre.value().attr("style").unwrap().contains("display:none"),
        "hidden preheader first"
    );
    assert!(pre.text().collect::<String>().starts_with("ShiftAddLLM"));
    assert!(
        doc.select(&sel("table[role=presentation]")).count() >= 2,
        "table layout"
    );
    assert!(html.contains("max-width:600px"));
}

#[test]
fn no_name_no_topics_gives_neutral_greeting_and_upvote_order() {
    let composer = Composer::new(&settings(&[]), keys()).unwrap();
    let edition = sample_edition();
    let who = Who::new("x@example.org", None, "");
    let r = composer
        .render(&edition, &who.reader(Format::Html, 10))
        .unwrap();
    let doc = Html::parse_document(r.html.as_ref().unwrap());
    assert!(text_of(&doc, "p").iter().any(|p| p == "Hello,"));
    let upvotes: Vec<String> = text_of(&doc, "h2");
    assert_eq!(upvotes.len(), 5);
    assert!(upvotes[0].starts_with("ShiftAddLLM"), "117 upvotes first");
    assert!(
        upvotes[4].starts_with("Unsupervised Translation"),
        "9 upvotes last"
    );
    assert!(!r.html.unwrap().contains("matches:"));
}

#[test]
fn text_part_is_wrapped_and_lists_links() {
    let composer = Composer::new(&settings(&[]), keys()).unwrap();
    let edition = sample_edition();
    let who = Who::new("zoe@example.org", Some("Zoë Ñúñez-Øster"), "quantization");
    let r = composer
        .render(&edition, &who.reader(Format::Text, 5))
        .unwrap();
    assert!(r.html.is_none());
    let text = r.text;
    for line in text.lines() {
        let w = line.chars().count();
        let is_url = line
            .trim_start()
            .split_once(": ")
            .is_some_and(|(_, v)| v.starts_with("http"));
        assert!(
            w <= 72 || is_url,
            "longer than the 72 columns the README promises ({w}): {line:?}"
        );
    }
    assert!(text.starts_with("Paperpost Daily - Monday, 11 March 2024\n"));
    assert!(text.contains("Hello Zoë Ñúñez-Øster,"));
    assert!(text.contains(" 1. ShiftAddLLM"));
    assert!(text.contains("    matches: quantization"));
    assert!(text.contains("    Paper: https://huggingface.co/papers/2406.05981"));
    assert!(text.contains("    arXiv: https://arxiv.org/abs/2406.05981"));
    assert!(
        text.contains("characters such as <, >, & and \"quotes\""),
        "no HTML escaping in text"
    );
    assert!(text.contains("\n-- \n"), "signature separator");
    assert!(text.contains("Unsubscribe: https://news.example.org/pp/unsubscribe/"));
}

/// A header's raw value, unfolded.
fn header_text(m: &mail_parser::Message<'_>, name: &str) -> String {
    m.header_raw(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .replace("\r\n", "")
        .trim()
        .to_string()
}

#[test]
fn message_headers_and_parts_parse_back() {
    let s = settings(&[
        (
            "PAPERPOST__MAIL__REPLY_TO",
            "Editors <editors@news.example.org>",
        ),
        (
            "PAPERPOST__MAIL__UNSUBSCRIBE_MAILTO",
            "unsubscribe@news.example.org",
        ),
    ]);
    let composer = Composer::new(&s, keys()).unwrap();
    let edition = sample_edition();
    let who = Who::new("zoe@example.org", Some("Zoë \"Z\" Ñúñez-Øster, PhD"), "llm");
    let message = composer
        .compose(&edition, &who.reader(Format::Html, 10))
        .unwrap();
    let raw = message.formatted();
    let parsed = MessageParser::default().parse(&raw).expect("parses");

    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("digest@news.example.org"));
    assert_eq!(from.name(), Some("Paperpost Daily"));
    let to = parsed.to().unwrap().first().unwrap();
    assert_eq!(to.address(), Some("zoe@example.org"));
    assert_eq!(
        to.name(),
        Some("Zoë \"Z\" Ñúñez-Øster, PhD"),
        "non-ASCII name round-trips"
    );
    assert_eq!(
        parsed.reply_to().unwrap().first().unwrap().address(),
        Some("editors@news.example.org")
    );
    let subject = parsed.subject().unwrap();
    assert!(
        subject.starts_with("Paperpost Daily, 11 Mar 2024: ShiftAddLLM"),
        "{subject}"
    );
    assert!(subject.chars().count() <= 78, "{subject}");
    assert!(parsed.date().is_some());
    assert_eq!(
        parsed.message_id(),
        Some("digest.2024-03-11.6f1c2b9e-0000-4000-8000-000000000001@news.example.org")
    );
    assert_eq!(
        header_text(&parsed, "List-Id"),
        "\"Paperpost Daily\" <daily.paperpost.example.org>"
    );
    let token = keys().subscriber_token("6f1c2b9e-0000-4000-8000-000000000001");
    assert_eq!(
        header_text(&parsed, "List-Unsubscribe"),
        format!(
            "<https://news.example.org/pp/unsubscribe/{token}>, <mailto:unsubscribe@news.example.org?subject=unsubscribe>"
        )
    );
    assert_eq!(
        header_text(&parsed, "List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    assert_eq!(
        header_text(&parsed, "Feedback-ID"),
        "20240311:html:digest:daily.paperpost.example.org"
    );

    // multipart/alternative: text first, then HTML.
    let ct = parsed.content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("multipart", Some("alternative"))
    );
    assert_eq!(parsed.text_body.len(), 1);
    assert_eq!(parsed.html_body.len(), 1);
    let parts: Vec<String> = parsed
        .parts
        .iter()
        .skip(1)
        .map(|p| {
            let ct = p.content_type().unwrap();
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
        })
        .collect();
    assert_eq!(parts, ["text/plain", "text/html"]);
    assert!(
        parsed
            .body_text(0)
            .unwrap()
            .contains("Hello Zoë \"Z\" Ñúñez-Øster, PhD,")
    );
    let html = parsed.body_html(0).unwrap();
    assert!(
        html.contains("Hello Zoë &quot;Z&quot; Ñúñez-Øster, PhD,")
            || html.contains("Hello Zoë &#34;Z&#34; Ñúñez-Øster, PhD,"),
        "{}",
        &html[..200]
    );

    // Without a mailto configured, only the link is offered.
    let plain = Composer::new(&settings(&[]), keys()).unwrap();
    let raw = plain
        .compose(&edition, &who.reader(Format::Text, 10))
        .unwrap()
        .formatted();
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(
        header_text(&parsed, "List-Unsubscribe"),
        format!("<https://news.example.org/pp/unsubscribe/{token}>")
    );
    let ct = parsed.content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("text", Some("plain")),
        "format=text is text only"
    );
    assert!(!support::has_html_part(&parsed), "no HTML part");
    assert!(parsed.reply_to().is_none());
}

fn hostile_paper() -> Paper {
    Paper::new(PaperDraft {
        id: Some("2401.66666".into()),
        title: "<script>alert('t')</script> \"Quoted\" &amp; Title\r\nBcc: victim@example.org".into(),
        abstract_text: "An abstract with <img src=x onerror=alert(1)> and &amp; and a javascript:alert(1) link.".into(),
        authors: vec!["<b>Mallory</b>".into()],
        github_repo: Some("javascript:alert(1)".into()),
        keywords: vec!["<i>kw</i>".into()],
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn hostile_input_renders_as_harmless_text() {
    let composer = Composer::new(&settings(&[]), keys()).unwrap();
    let edition = Edition::new(
        chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
        vec![hostile_paper()],
        true,
    );
    let who = Who::new("eve@example.org", Some("<Eve> & \"Co\""), "");
    let message = composer
        .compose(&edition, &who.reader(Format::Html, 5))
        .unwrap();
    let raw = message.formatted();
    let parsed = MessageParser::default().parse(&raw).unwrap();

    // No header was injected.
    assert!(parsed.header_raw("Bcc").is_none());
    assert_eq!(
        parsed.to().unwrap().first().unwrap().address(),
        Some("eve@example.org")
    );
    assert_eq!(parsed.to().unwrap().iter().count(), 1);
    let subject = parsed.subject().unwrap();
    assert!(!subject.contains('\n') && !subject.contains('\r'));

    let html = parsed.body_html(0).unwrap();
    let doc = Html::parse_document(&html);
    assert!(doc.select(&sel("script")).next().is_none());
    assert!(doc.select(&sel("img[onerror]")).next().is_none());
    assert!(doc.select(&sel("b")).next().is_none());
    for a in doc.select(&sel("a")) {
        let href = a.value().attr("href").unwrap();
        assert!(
            href.starts_with("https://") || href.starts_with("http://"),
            "{href}"
        );
    }
    let title = text_of(&doc, "h2").remove(0);
    assert!(
        title.starts_with("<script>alert('t')</script> \"Quoted\" &amp; Title"),
        "shown as text: {title}"
    );
    let body = doc.root_element().text().collect::<String>();
    assert!(
        body.contains("<img src=x onerror=alert(1)>"),
        "shown as text"
    );
    assert!(body.contains("Hello <Eve> & \"Co\","));

    let text = parsed.body_text(0).unwrap();
    assert!(
        text.contains("<script>alert('t')</script>"),
        "text part is not escaped"
    );
}

#[test]
fn fifty_long_papers_stay_under_gmails_clipping_limit() {
    let composer = Composer::new(&settings(&[]), keys()).unwrap();
    let papers: Vec<Paper> = (0..50)
        .map(|i| {
            Paper::new(PaperDraft {
                id: Some(format!("2401.{i:05}")),
                title: format!(
                    "A rather long title for paper number {i} that goes on and on about {}",
                    "things ".repeat(20)
                ),
                abstract_text: "Long abstract with plenty of words & symbols <>. ".repeat(2000),
                authors: (0..40).map(|a| format!("Author {a}")).collect(),
                github_repo: Some(format!("https://github.com/example/repo-{i}")),
                upvotes: i,
                ..Default::default()
            })
            .unwrap()
        })
        .collect();
    let edition = Edition::new(
        chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
        papers,
        false,
    );
    let who = Who::new("a@example.org", Some("A"), "symbols");
    let r = composer
        .render(&edition, &who.reader(Format::Html, 50))
        .unwrap();
    let html = r.html.unwrap();
    assert_eq!(r.papers, 50);
    let sent = r.html_part.unwrap().len();
    assert!(sent <= 100 * 1024, "the HTML part as sent is {sent} bytes");
    // Abstracts are trimmed at a word boundary.
    let doc = Html::parse_document(&html);
    let abstracts: Vec<String> = text_of(&doc, "p")
        .into_iter()
        .filter(|p| p.starts_with("Long abstract"))
        .collect();
    assert_eq!(abstracts.len(), 50);
    for a in &abstracts {
        assert!(a.ends_with('…'), "{a}");
        let last = a.trim_end_matches('…').rsplit(' ').next().unwrap();
        assert!(
            [
                "Long", "abstract", "with", "plenty", "of", "words", "&", "symbols", "<>"
            ]
            .contains(&last),
            "cut mid-word: {last}"
        );
    }
}

/// The raw (still encoded) body of the message's text/html part, as sent.
fn html_part_as_sent(raw: &[u8]) -> &[u8] {
    let parsed = MessageParser::default().parse(raw).unwrap();
    let part = parsed
        .parts
        .iter()
        .find(|p| {
            use mail_parser::MimeHeaders;
            p.content_type()
                .is_some_and(|c| c.c_type == "text" && c.subtype() == Some("html"))
        })
        .expect("an HTML part");
    &raw[part.offset_body as usize..part.offset_end as usize]
}

#[test]
fn the_html_part_as_sent_fits_gmails_limit_with_thumbnails_as_previewed() {
    // Twenty papers (not enough for brief abstracts by count) whose cards,
    // thumbnails and all, quoted-printable encode to more than the budget:
    // the size that decides is the part as sent, in preview and in mail alike.
    let composer = Composer::new(
        &settings(&[("PAPERPOST__NEWSLETTER__THUMBNAILS", "true")]),
        keys(),
    )
    .unwrap();
    let papers: Vec<Paper> = (0..20)
        .map(|i| {
            Paper::new(PaperDraft {
                id: Some(format!("2401.{i:05}")),
                title: format!("Études naïves {i}: {}", "€€ résumé «café» ".repeat(11)),
                abstract_text: "Über Größe €€ «déjà» — ".repeat(40),
                authors: (0..5).map(|a| format!("Zoë Ærø {a}")).collect(),
                github_repo: Some(format!("https://github.com/example/repo-{i}")),
                thumbnail: Some(format!(
                    "https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/2401.{i:05}.png"
                )),
                upvotes: i,
                ..Default::default()
            })
            .unwrap()
        })
        .collect();
    let edition = Edition::new(
        chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
        papers,
        true,
    );
    let who = Who::new("a@example.org", Some("A"), "");
    let reader = who.reader(Format::Html, 20);
    let raw = composer.compose(&edition, &reader).unwrap().formatted();
    let part = html_part_as_sent(&raw);
    assert!(
        part.len() <= 100 * 1024,
        "the HTML part as sent is {} bytes",
        part.len()
    );
    let parsed = MessageParser::default().parse(&raw).unwrap();
    let sent = parsed.body_html(0).unwrap();
    assert!(sent.contains("<img"), "thumbnails are shown");
    // Brief abstracts were chosen, in the message and in the preview alike.
    let preview = composer.render(&edition, &reader).unwrap().html.unwrap();
    let crlf = |s: &str| s.replace("\r\n", "\n").trim_end().to_string();
    assert_eq!(crlf(&sent), crlf(&preview));
    let full_abstract = edition.papers[0].abstract_short.as_str();
    assert!(
        !preview.contains(full_abstract),
        "full abstracts do not fit"
    );
}

#[test]
fn dkim_signature_covers_the_required_headers() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim.key");
    // An ed25519 secret key: 32 bytes, base64.
    std::fs::write(&key, "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=").unwrap();
    let s = settings(&[
        ("PAPERPOST__MAIL__DKIM__SELECTOR", "pp2024"),
        ("PAPERPOST__MAIL__DKIM__ALGORITHM", "ed25519"),
        ("PAPERPOST__MAIL__DKIM__KEY_FILE", key.to_str().unwrap()),
    ]);
    let composer = Composer::new(&s, keys()).unwrap();
    let who = Who::new("a@example.org", None, "");
    let message = composer
        .compose(&sample_edition(), &who.reader(Format::Html, 3))
        .unwrap();
    let raw = composer.envelope.finish(&message).unwrap();
    let parsed = MessageParser::default().parse(&raw).unwrap();
    let sig = header_text(&parsed, "DKIM-Signature").replace(['\r', '\n', ' ', '\t'], "");
    assert!(sig.contains("d=news.example.org;"), "{sig}");
    assert!(sig.contains("s=pp2024;"), "{sig}");
    assert!(sig.contains("a=ed25519-sha256;"), "{sig}");
    let h = sig
        .split(';')
        .find_map(|kv| kv.strip_prefix("h="))
        .unwrap()
        .to_ascii_lowercase();
    for needed in [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-id",
    ] {
        assert!(
            h.split(':').any(|x| x == needed),
            "{needed} not signed: {h}"
        );
    }

    // A bad key stops start-up naming the key.
    std::fs::write(&key, "not a key").unwrap();
    let err = Composer::new(&s, keys()).err().unwrap().to_string();
    assert!(err.contains("mail.dkim.key_file"), "{err}");
    let missing = settings(&[
        ("PAPERPOST__MAIL__DKIM__SELECTOR", "x"),
        ("PAPERPOST__MAIL__DKIM__KEY_FILE", "/nonexistent/key.pem"),
    ]);
    assert!(
        Composer::new(&missing, keys())
            .err()
            .unwrap()
            .to_string()
            .contains("mail.dkim.key_file")
    );
}

#[test]
fn subjects_are_trimmed_at_a_word_boundary() {
    let s = settings(&[("PAPERPOST__NEWSLETTER__SUBJECT", "[{title}] {top} ({date})")]);
    let composer = Composer::new(&s, keys()).unwrap();
    let who = Who::new("a@example.org", None, "");
    let r = composer
        .render(&sample_edition(), &who.reader(Format::Text, 1))
        .unwrap();
    assert!(
        r.subject.starts_with("[Paperpost Daily] ShiftAddLLM: "),
        "{}",
        r.subject
    );
    assert!(r.subject.chars().count() <= 78);
    assert!(r.subject.ends_with('…'));
    assert!(!r.subject.ends_with(" …"));
    let bad = support::try_settings(&[("PAPERPOST__NEWSLETTER__SUBJECT", "{title} {weather}")]);
    assert!(bad.unwrap_err().to_string().contains("newsletter.subject"));
}

#[test]
fn sent_messages_carry_exactly_the_previewed_digest() {
    // Messages are assembled from fragments encoded once per edition; what a
    // reader decodes must be the very digest `render` (and so preview) shows.
    let composer = Composer::new(&settings(&[]), keys()).unwrap();
    let mut papers: Vec<Paper> = {
        let e = sample_edition();
        e.papers.into_iter().map(|p| p.paper).collect()
    };
    papers.push(hostile_paper());
    let edition = Edition::new(
        chrono::NaiveDate::from_ymd_opt(2024, 3, 11).unwrap(),
        papers,
        true,
    );
    for (topics, format, max) in [
        ("llm", Format::Html, 10),
        ("", Format::Text, 3),
        ("quantization,rl", Format::Html, 30),
    ] {
        let who = Who::new("zoe@example.org", Some("Zoë"), topics);
        let reader = who.reader(format, max);
        let plain = composer.render(&edition, &reader).unwrap();
        let raw = composer.compose(&edition, &reader).unwrap().formatted();
        let parsed = MessageParser::default().parse(&raw).unwrap();
        // (A single-part body ends with the message's final line break.)
        let crlf = |s: &str| s.replace("\r\n", "\n").trim_end().to_string();
        assert_eq!(
            crlf(&parsed.body_text(0).unwrap()),
            crlf(&plain.text),
            "text part for {topics:?}"
        );
        if let Some(html) = plain.html {
            assert_eq!(
                crlf(&parsed.body_html(0).unwrap()),
                crlf(&html),
                "html part for {topics:?}"
            );
        }
        assert!(!raw.contains(&1u8), "a fragment marker leaked");
    }
}

#[test]
fn control_characters_in_paper_text_cannot_forge_a_fragment() {
    let p = Paper::new(PaperDraft {
        id: Some("2401.00001".into()),
        title: "\u{1}c0\u{1}".into(),
        abstract_text: "line\n\u{1}t0\u{1}\nmore".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(p.title, "c0");
    assert!(!p.abstract_text.contains('\u{1}'));
}
