//! The digest as an Internet message: headers for deliverability and one-click
//! unsubscribe (RFC 2369, RFC 8058), MIME parts, optional DKIM.

use lettre::{
    Message,
    message::{
        Body, Mailbox, MultiPart, SinglePart,
        header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue},
    },
};

use super::{Edition, Reader, Rendered, dkim::Dkim};
use crate::config::Settings;

/// Message settings, read and checked once at start-up.
pub struct Envelope {
    from: Mailbox,
    reply_to: Option<Mailbox>,
    list_id: String,
    message_id_domain: String,
    unsubscribe_mailto: Option<lettre::Address>,
    dkim: Option<std::sync::Arc<Dkim>>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("from", &self.from)
            .field("list_id", &self.list_id)
            .field("dkim", &self.dkim.is_some())
            .finish_non_exhaustive()
    }
}

const fn name(s: &'static str) -> HeaderName {
    HeaderName::new_from_ascii_str(s)
}

impl Envelope {
    /// Reads the DKIM keys if signing is on; a missing or bad key names
    /// `mail.dkim.key_file` and the file.
    pub fn from_settings(s: &Settings) -> anyhow::Result<Self> {
        let from_domain = s.mail.from.email.domain().to_ascii_lowercase();
        let list_id = match s.newsletter.title.is_ascii() {
            true => format!(
                "\"{}\" <{}>",
                s.newsletter.title.replace(['\\', '"'], ""),
                s.newsletter.list_id
            ),
            false => format!("<{}>", s.newsletter.list_id),
        };
        let dkim = Dkim::from_settings(&s.mail.dkim, &from_domain)?.map(std::sync::Arc::new);
        Ok(Self {
            from: s.mail.from.clone(),
            reply_to: s.mail.reply_to.clone(),
            list_id,
            message_id_domain: s.mail.message_id_domain.clone().unwrap_or(from_domain),
            unsubscribe_mailto: s.mail.unsubscribe_mailto.clone(),
            dkim,
        })
    }

    /// The Message-ID of a reader's digest for an edition: the same on every
    /// attempt, so a retried message is recognizably the same message.
    pub fn message_id(&self, edition: &Edition, reader: &Reader<'_>) -> String {
        format!(
            "<digest.{}.{}@{}>",
            edition.date, reader.uuid, self.message_id_domain
        )
    }

    /// Builds the message: text/plain alone, or multipart/alternative with the
    /// text part first and HTML second.
    pub fn build(
        &self,
        edition: &Edition,
        reader: &Reader<'_>,
        rendered: Rendered,
        unsubscribe_url: &str,
    ) -> anyhow::Result<Message> {
        // lettre quotes and RFC 2047-encodes the display name as needed; names
        // cannot hold CR or LF (SubscriberName), and lettre encodes them anyway.
        let to = Mailbox::new(
            reader.name.map(|n| n.as_str().to_string()),
            reader.email.to_address(),
        );
        let mut list_unsubscribe = format!("<{unsubscribe_url}>");
        if let Some(addr) = &self.unsubscribe_mailto {
            list_unsubscribe.push_str(&format!(", <mailto:{addr}?subject=unsubscribe>"));
        }
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .date_now()
            .message_id(Some(self.message_id(edition, reader)))
            .raw_header(HeaderValue::new(name("List-Id"), self.list_id.clone()))
            .raw_header(HeaderValue::new(name("List-Unsubscribe"), list_unsubscribe))
            .raw_header(HeaderValue::new(
                name("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ))
            .raw_header(HeaderValue::new(
                name("Feedback-ID"),
                format!(
                    "{}:{}:digest:{}",
                    edition.date.format("%Y%m%d"),
                    reader.format.as_str(),
                    self.list_id_bare()
                ),
            ))
            .raw_header(HeaderValue::new(
                name("Auto-Submitted"),
                "auto-generated".into(),
            ))
            .raw_header(HeaderValue::new(name("Precedence"), "list".into()));
        if let Some(r) = &self.reply_to {
            b = b.reply_to(r.clone());
        }
        let text = part(ContentType::TEXT_PLAIN, edition.encode(&rendered.text));
        let message = match rendered.html_part {
            Some(html) => b.multipart(
                MultiPart::alternative()
                    .singlepart(text)
                    .singlepart(part(ContentType::TEXT_HTML, html)),
            )?,
            None => b.singlepart(text)?,
        };
        Ok(message)
    }

    /// The keys that sign every message, if any.
    pub fn dkim(&self) -> Option<&std::sync::Arc<Dkim>> {
        self.dkim.as_ref()
    }

    /// The message as sent: formatted, and signed when DKIM is on (on the
    /// calling thread; the delivery engine signs off it).
    pub fn finish(&self, message: &Message) -> anyhow::Result<Vec<u8>> {
        let raw = message.formatted();
        match &self.dkim {
            Some(d) => d.sign(&raw),
            None => Ok(raw),
        }
    }

    /// A plain-text message that is not a digest (a subscription
    /// confirmation): the same sender, Reply-To and DKIM signature.
    pub fn notice(&self, to: Mailbox, subject: &str, text: String) -> anyhow::Result<Message> {
        let id = format!(
            "<notice.{}@{}>",
            uuid::Uuid::new_v4(),
            self.message_id_domain
        );
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .date_now()
            .message_id(Some(id))
            .raw_header(HeaderValue::new(
                name("Auto-Submitted"),
                "auto-generated".into(),
            ));
        if let Some(r) = &self.reply_to {
            b = b.reply_to(r.clone());
        }
        // Plain ASCII goes as 7bit so a long link stays on one line for
        // terminal readers; anything else quoted-printable.
        // (lettre would pick quoted-printable for any line over 76 characters;
        // 7bit allows 998.)
        let seven_bit =
            text.is_ascii() && text.lines().all(|l| l.len() <= 998 && !l.contains('\r'));
        let part =
            if seven_bit {
                let crlf = text.replace('\n', "\r\n").into_bytes();
                SinglePart::builder().header(ContentType::TEXT_PLAIN).body(
                    Body::dangerous_pre_encoded(crlf, ContentTransferEncoding::SevenBit),
                )
            } else {
                SinglePart::plain(text)
            };
        Ok(b.singlepart(part)?)
    }

    fn list_id_bare(&self) -> &str {
        self.list_id
            .rsplit(['<', '>'])
            .nth(1)
            .unwrap_or(&self.list_id)
    }
}

/// A UTF-8 text part whose body is already quoted-printable encoded
/// ([`Edition::encode`]).
fn part(content_type: ContentType, encoded: Vec<u8>) -> SinglePart {
    SinglePart::builder()
        .header(content_type)
        .body(Body::dangerous_pre_encoded(
            encoded,
            ContentTransferEncoding::QuotedPrintable,
        ))
}
