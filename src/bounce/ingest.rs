//! Applying a report: match it to the delivery it is about, record it once,
//! and do what its kind asks of the subscriber, inside one write.

use std::time::Duration;

use super::{Kind, Parsed, Report, parse};
use crate::{
    app::App,
    domain::{EndedBy, SubscriberStatus},
    security::Keys,
    store::{
        self, StoreError,
        alerts::{self, AlertKind},
        bounces::{self, NewBounce},
        deliveries, subscribers,
    },
};

/// The largest report read (the original message it quotes included).
pub const MAX_REPORT: usize = 1024 * 1024;

/// A VERP tag names a delivery for this long after it was sent.
pub const VERP_VALID: Duration = Duration::from_secs(30 * 86_400);

/// The settings the policy reads (`mail.bounce`).
#[derive(Debug, Clone)]
pub struct Policy {
    pub threshold: i64,
    pub verp_domain: Option<String>,
    pub soft_editions: i64,
    pub soft_window: Duration,
    pub guard_domains: i64,
    pub guard_window: Duration,
    /// Hard reports for more than this share of an edition's messages
    /// within the window (and at least [`GUARD_MIN_REPORTS`]) trip it too.
    pub guard_share: f64,
}

/// The share rule needs this many hard reports in the window: a small list
/// with a few dead addresses is not a relay's fault.
pub const GUARD_MIN_REPORTS: i64 = 20;

impl Policy {
    pub fn from_app(app: &App) -> Self {
        let b = &app.settings.mail.bounce;
        Policy {
            threshold: i64::from(b.threshold),
            verp_domain: b.verp_domain.clone(),
            soft_editions: i64::from(b.soft_editions),
            soft_window: b.soft_window,
            guard_domains: i64::from(b.guard_domains),
            guard_window: b.guard_window,
            guard_share: b.guard_share,
        }
    }
}

/// What one report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Recorded; nothing else (unmatched, delayed, unknown, or not yet at a
    /// limit).
    Recorded,
    /// The subscriber is now bounced.
    Bounced,
    /// The subscriber is now unsubscribed (a complaint).
    Unsubscribed,
    /// A policy block: an alert, the subscriber untouched.
    Alerted,
    /// The guard found the relay at fault: that window's suppressions undone.
    TakenBack(usize),
    /// Recorded before: nothing done again.
    Replay,
}

/// What a message to the bounce address came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Ingested {
    Reports(Vec<(Kind, bool, Effect)>),
    AutoReply,
    NotAReport,
}

/// Reads one message delivered to the bounce address (`to`: the address it
/// was delivered to, when the MTA says) and applies what it reports.
pub async fn ingest(
    app: &App,
    raw: &[u8],
    to: Option<&str>,
    source: &str,
) -> Result<Ingested, StoreError> {
    let reports = match parse(raw) {
        Parsed::Reports(r) => r,
        Parsed::AutoReply => return Ok(Ingested::AutoReply),
        Parsed::Nothing => return Ok(Ingested::NotAReport),
    };
    let policy = Policy::from_app(app);
    let mut done = Vec::new();
    for (i, report) in reports.iter().enumerate() {
        let mut tx = crate::store::write(&app.writer).await?;
        let event_key = if i == 0 {
            report.event_key.clone()
        } else {
            format!("{}#{i}", report.event_key)
        };
        let new = matched(&mut tx, &app.keys, &policy, report, to, source, event_key).await?;
        let is_matched = new.subscriber_id.is_some();
        let effect = apply(&mut tx, &policy, report.kind, &new).await?;
        tx.commit().await?;
        log(report, &new, &effect);
        done.push((report.kind, is_matched, effect));
    }
    Ok(Ingested::Reports(done))
}

/// Applies one event a provider reported through its (authenticated)
/// webhook: matched by the recipient address it names, which the provider
/// vouches for. A replayed event (same source and event key) does nothing.
pub async fn provider_event(
    app: &App,
    source: &str,
    report: &Report,
) -> Result<Effect, StoreError> {
    let policy = Policy::from_app(app);
    let mut tx = crate::store::write(&app.writer).await?;
    let key = report.event_key.clone();
    let mut new = matched(&mut tx, &app.keys, &policy, report, None, source, key).await?;
    if new.subscriber_id.is_none()
        && let Some(r) = &report.recipient
        && let Some(s) = subscribers::find_by_email(&mut tx, r).await?
    {
        new.subscriber_id = Some(s.id);
        new.matched_by = "provider";
        new.edition_date = report
            .message_id
            .as_deref()
            .and_then(|m| edition_of(m, &s.uuid));
    }
    let effect = apply(&mut tx, &policy, report.kind, &new).await?;
    tx.commit().await?;
    log(report, &new, &effect);
    Ok(effect)
}

fn log(report: &Report, new: &NewBounce, effect: &Effect) {
    tracing::info!(
        kind = report.kind.as_str(),
        matched_by = new.matched_by,
        subscriber = new.subscriber_id,
        delivery = new.delivery_id,
        status = report.status.as_deref().unwrap_or(""),
        effect = ?effect,
        "bounce report"
    );
}

/// The report as a row: matched by its VERP address, else by the link token
/// the original message carried; the Message-ID is kept, never matched.
async fn matched(
    conn: &mut crate::store::Conn,
    keys: &Keys,
    policy: &Policy,
    report: &Report,
    to: Option<&str>,
    source: &str,
    event_key: String,
) -> Result<NewBounce, StoreError> {
    let recipient = report.recipient.clone();
    let domain = recipient
        .as_deref()
        .and_then(|r| r.rsplit_once('@'))
        .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase());
    let mut new = NewBounce {
        kind: report.kind.as_str(),
        source: source.to_string(),
        matched_by: "none",
        status: report.status.clone(),
        diagnostic: report.diagnostic.clone(),
        diagnostic_key: Some(diagnostic_key(report)),
        recipient,
        domain,
        message_id: report.message_id.clone(),
        event_key,
        ..NewBounce::default()
    };
    if let Some((id, subscriber, edition)) = by_verp(conn, keys, policy, report, to).await? {
        new.delivery_id = Some(id);
        new.subscriber_id = Some(subscriber);
        new.edition_date = Some(edition);
        new.matched_by = "verp";
    } else if let Some(token) = &report.link_token
        && let Some(s) = subscribers::find_by_token(conn, token).await?
    {
        new.subscriber_id = Some(s.id);
        new.matched_by = "link-token";
        new.edition_date = report
            .message_id
            .as_deref()
            .and_then(|m| edition_of(m, &s.uuid));
    }
    Ok(new)
}

/// The edition date in one of our digests' Message-IDs
/// (`<digest.DATE.UUID@domain>`) when it is the subscriber's (`uuid`): for
/// counting reports per edition, never for matching.
fn edition_of(message_id: &str, uuid: &str) -> Option<String> {
    let rest = message_id
        .trim()
        .trim_start_matches('<')
        .strip_prefix("digest.")?;
    let (date, rest) = rest.split_once('.')?;
    let ours = rest.split('@').next()? == uuid;
    (ours && date.parse::<chrono::NaiveDate>().is_ok()).then(|| date.to_string())
}

/// The delivery a VERP address of ours names, if its tag is good and the
/// message went out within [`VERP_VALID`].
async fn by_verp(
    conn: &mut crate::store::Conn,
    keys: &Keys,
    policy: &Policy,
    report: &Report,
    to: Option<&str>,
) -> Result<Option<(i64, i64, String)>, StoreError> {
    let Some(domain) = &policy.verp_domain else {
        return Ok(None);
    };
    let candidates = to
        .into_iter()
        .chain(report.addressed_to.iter().map(String::as_str));
    let Some(id) = candidates
        .filter_map(|a| keys.verp_delivery(a, domain))
        .next()
    else {
        return Ok(None);
    };
    let Some((subscriber, edition, sent_at)) = bounces::delivery(conn, id).await? else {
        return Ok(None);
    };
    let fresh = sent_at.is_some_and(|t| t >= store::now_ms() - VERP_VALID.as_millis() as i64);
    Ok(fresh.then_some((id, subscriber, edition)))
}

/// The diagnostic without what differs between recipients (addresses, host
/// names, numbers), so one relay's one refusal has one key.
pub fn diagnostic_key(report: &Report) -> String {
    let text = report.diagnostic.as_deref().unwrap_or("");
    let words: Vec<String> = text
        .split_whitespace()
        .filter(|w| !w.contains('@'))
        .filter(|w| {
            let host_like = w.contains('.') && w.chars().any(|c| c.is_ascii_alphabetic());
            !host_like
        })
        .map(|w| {
            w.chars()
                .map(|c| {
                    if c.is_ascii_digit() {
                        '#'
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect()
        })
        .collect();
    let mut key = format!(
        "{} {}",
        report.status.as_deref().unwrap_or(""),
        words.join(" ")
    );
    key.truncate(200);
    key
}

/// Records the report and does what its kind asks.
async fn apply(
    conn: &mut crate::store::Conn,
    policy: &Policy,
    kind: Kind,
    new: &NewBounce,
) -> Result<Effect, StoreError> {
    let Some(id) = bounces::record(conn, new).await? else {
        return Ok(Effect::Replay);
    };
    if kind == Kind::Block {
        return block(conn, new).await;
    }
    let Some(subscriber) = new.subscriber_id else {
        return Ok(Effect::Recorded);
    };
    let Some(s) = subscribers::find_by_id(conn, subscriber).await? else {
        return Ok(Effect::Recorded);
    };
    let active = s.status == SubscriberStatus::Active;
    match kind {
        Kind::Hard if active => hard(conn, policy, id, new, subscriber).await,
        Kind::Soft if active => soft(conn, policy, subscriber).await,
        Kind::Complaint if s.status != SubscriberStatus::Unsubscribed => {
            let (status, by) = (SubscriberStatus::Unsubscribed, EndedBy::Complaint);
            subscribers::end_subscription(conn, subscriber, status, by).await?;
            Ok(Effect::Unsubscribed)
        }
        _ => Ok(Effect::Recorded),
    }
}

async fn block(conn: &mut crate::store::Conn, new: &NewBounce) -> Result<Effect, StoreError> {
    let message = format!(
        "a receiving server refused our mail by policy ({} {}): not the subscriber's fault; \
         check SPF, DKIM and DMARC alignment and the sending reputation (5.7.26 is a DMARC failure)",
        new.status.as_deref().unwrap_or(""),
        new.diagnostic.as_deref().unwrap_or("")
    );
    alerts::set(conn, AlertKind::Bounces, Some(&message)).await?;
    Ok(Effect::Alerted)
}

async fn hard(
    conn: &mut crate::store::Conn,
    policy: &Policy,
    id: i64,
    new: &NewBounce,
    subscriber: i64,
) -> Result<Effect, StoreError> {
    if let Some(d) = new.delivery_id
        && bounces::delivery_counted(conn, d, id).await?
    {
        return Ok(Effect::Recorded);
    }
    let n = deliveries::add_hard_bounce(conn, subscriber).await?;
    let mut effect = Effect::Recorded;
    if n >= policy.threshold {
        let (status, by) = (SubscriberStatus::Bounced, EndedBy::Bounce);
        subscribers::end_subscription(conn, subscriber, status, by).await?;
        effect = Effect::Bounced;
    }
    if let Some(taken) = guard(conn, policy, new).await? {
        return Ok(Effect::TakenBack(taken));
    }
    Ok(effect)
}

/// The guard in the database: one diagnostic from `guard_domains` recipient
/// domains within `guard_window` is the relay's doing (it accepted
/// everything and bounces it later). That window's hard bounces with it stop
/// counting, the suppressions they made are undone, and an alert stays up
/// until an operator clears it.
async fn guard(
    conn: &mut crate::store::Conn,
    policy: &Policy,
    new: &NewBounce,
) -> Result<Option<usize>, StoreError> {
    let Some(key) = &new.diagnostic_key else {
        return Ok(None);
    };
    let since = store::now_ms() - policy.guard_window.as_millis() as i64;
    let spread = bounces::domains_with(conn, key, since).await? >= policy.guard_domains;
    let share = match &new.edition_date {
        Some(edition) if !spread => {
            let (hard, sent) = bounces::hard_share(conn, edition, since).await?;
            hard >= GUARD_MIN_REPORTS && hard as f64 > policy.guard_share * sent as f64
        }
        _ => false,
    };
    if !spread && !share {
        return Ok(None);
    }
    let window = match &new.edition_date {
        Some(edition) if !spread => bounces::Window::Edition(edition),
        _ => bounces::Window::Diagnostic(key),
    };
    let taken = bounces::take_back(conn, window, since).await?;
    for s in &taken {
        subscribers::undo_bounce(conn, *s, policy.threshold).await?;
    }
    let why = if spread {
        format!(
            "one diagnostic ({key}) from {} or more recipient domains",
            policy.guard_domains
        )
    } else {
        format!(
            "hard reports for over {:.0}% of an edition's messages",
            policy.guard_share * 100.0
        )
    };
    let message = format!(
        "bounce reports: {why} within {}: the relay's fault, not the recipients'; those \
         suppressions were undone. Check the relay, then `paperpost bounces clear-alert`",
        humantime::format_duration(policy.guard_window)
    );
    alerts::set(conn, AlertKind::Bounces, Some(&message)).await?;
    tracing::error!(diagnostic = %key, "bounce guard: the relay bounces everyone; suppressions undone");
    Ok(Some(taken.len()))
}

async fn soft(
    conn: &mut crate::store::Conn,
    policy: &Policy,
    subscriber: i64,
) -> Result<Effect, StoreError> {
    let since = store::now_ms() - policy.soft_window.as_millis() as i64;
    if bounces::soft_editions(conn, subscriber, since).await? < policy.soft_editions {
        return Ok(Effect::Recorded);
    }
    let (status, by) = (SubscriberStatus::Bounced, EndedBy::Bounce);
    subscribers::end_subscription(conn, subscriber, status, by).await?;
    Ok(Effect::Bounced)
}
