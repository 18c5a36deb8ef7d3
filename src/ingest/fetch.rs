//! Papers on autopilot: GETs a day's papers from `papers.source_url` (Hugging
//! Face daily_papers JSON) and imports them exactly like `papers import
//! --format hf`, keeping the top `papers.auto_select` by upvotes. A fetch
//! replaces only a selection a fetch made, never the editor's, and never
//! one whose edition has started.

use std::{path::Path, time::Duration};

use chrono::NaiveDate;
use futures_util::StreamExt;

use super::papers::{self, ImportReport, PaperFormat, Record};
use crate::{app::App, config::PapersSettings, domain::SelectionOrigin, metrics::OutcomeLabel};

/// A body larger than this is refused (a day has a few dozen papers, ~100 KB).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Requests per fetch, with 1 s then 2 s between them.
const ATTEMPTS: u32 = 3;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {} MB; refused", MAX_BODY_BYTES / 1024 / 1024)]
    TooLarge { url: String },
    #[error("{url} did not send daily_papers JSON: {reason}")]
    Invalid { url: String, reason: String },
    #[error("{url} listed no papers for {date}")]
    Empty { url: String, date: NaiveDate },
    #[error(
        "{url} sent {n} papers published {published} for {date}: stale (a paper's own date may be \
         at most {DAYS_BEFORE} days before and {DAYS_AFTER} after the day asked for)"
    )]
    OutOfWindow {
        url: String,
        date: NaiveDate,
        n: usize,
        published: String,
    },
    #[error(
        "{url} sent the same papers for {date} as the {last} edition, which has gone out: stale"
    )]
    SameAsLast {
        url: String,
        date: NaiveDate,
        last: NaiveDate,
    },
}

/// How many days before the day asked for a paper's own date may be (a
/// Monday's list has papers from the Thursday before, and holidays).
pub const DAYS_BEFORE: i64 = 7;
/// How many days after (the source's day is UTC, the schedule's may not be).
pub const DAYS_AFTER: i64 = 1;

/// The records whose own date (if they have one) lies in the window around
/// `date`; an error naming the dates when none does.
pub fn in_window(
    records: Vec<Record>,
    date: NaiveDate,
    url: &str,
) -> Result<Vec<Record>, FetchError> {
    let from = date - chrono::Duration::days(DAYS_BEFORE);
    let to = date + chrono::Duration::days(DAYS_AFTER);
    let n = records.len();
    let mut outside = std::collections::BTreeSet::new();
    let kept: Vec<Record> = records
        .into_iter()
        .filter(|r| match r.date {
            Some(d) if d < from || d > to => {
                outside.insert(d);
                false
            }
            _ => true,
        })
        .collect();
    if kept.is_empty() && n > 0 {
        let published: Vec<String> = outside.iter().map(NaiveDate::to_string).collect();
        return Err(FetchError::OutOfWindow {
            url: url.to_string(),
            date,
            n,
            published: published.join(", "),
        });
    }
    if kept.len() < n {
        tracing::warn!(%date, left_out = n - kept.len(), "papers dated outside the window left out of the fetch");
    }
    Ok(kept)
}

impl FetchError {
    /// Worth another request at once: the server or the network may recover.
    fn transient(&self) -> bool {
        match self {
            FetchError::Unreachable { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 429,
            // Not at once: the daemon tries these again at papers.fetch_retry.
            FetchError::TooLarge { .. }
            | FetchError::Invalid { .. }
            | FetchError::Empty { .. }
            | FetchError::OutOfWindow { .. }
            | FetchError::SameAsLast { .. } => false,
        }
    }
}

/// Fetches days' papers from `papers.source_url`.
pub struct Fetcher {
    client: reqwest::Client,
    template: String,
}

impl Fetcher {
    /// `None` when `papers.source_url` is empty (fetching is off).
    pub fn new(settings: &PapersSettings) -> anyhow::Result<Option<Self>> {
        let Some(template) = settings.source_url.clone() else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .connect_timeout(settings.fetch_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("paperpost/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Fetcher { client, template }))
    }

    pub fn url(&self, date: NaiveDate) -> String {
        self.template.replace("{date}", &date.to_string())
    }

    /// The papers of `date`, trying again (1 s, then 2 s later) after a
    /// failure that may pass.
    pub async fn fetch(&self, date: NaiveDate) -> Result<Vec<Record>, FetchError> {
        let url = self.url(date);
        let mut wait = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let result = self.get(&url).await.and_then(|body| {
                papers::parse(Path::new(&url), body, PaperFormat::Hf).map_err(|e| {
                    FetchError::Invalid {
                        url: url.clone(),
                        reason: crate::telemetry::causes(&e),
                    }
                })
            });
            match result {
                Err(e) if e.transient() && attempt < ATTEMPTS => {
                    tracing::warn!(error = %e, retry_in = ?wait, "fetching the papers failed; trying again");
                    tokio::time::sleep(wait).await;
                    (wait, attempt) = (wait * 2, attempt + 1);
                }
                other => return other,
            }
        }
    }

    /// One GET, its body read up to [`MAX_BODY_BYTES`].
    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let unreachable = |e: reqwest::Error| FetchError::Unreachable {
            url: url.to_string(),
            reason: describe(&e),
        };
        let response = self.client.get(url).send().await.map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let status = status.as_u16();
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_string(),
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(unreachable)?;
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A reqwest error with its causes, without the URL (the caller names it).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

/// The top `k` records by upvotes (ties in the source's order); all of them,
/// in the source's order, when `k` is 0.
pub fn auto_select(mut records: Vec<Record>, k: u32) -> Vec<Record> {
    if k == 0 {
        return records;
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.paper.upvotes));
    records.truncate(k as usize);
    records
}

/// Fetches `date`'s papers and imports them as `date`'s selection (unless the
/// editor made one, or its edition started). The outcome is recorded for
/// `paperpost status` and /metrics; on failure nothing else changes.
pub async fn fetch_and_import(
    app: &App,
    fetcher: &Fetcher,
    date: NaiveDate,
) -> anyhow::Result<ImportReport> {
    let result = async {
        let label = fetcher.url(date);
        let records = fetcher.fetch(date).await?;
        if records.is_empty() {
            return Err(FetchError::Empty { url: label, date }.into());
        }
        let records = in_window(records, date, &label)?;
        let records = auto_select(records, app.settings.papers.auto_select);
        same_as_last(app, &records, date, &label).await?;
        let groups = papers::by_date(Path::new(&label), &records, Some(date), None)?;
        papers::store(&app.pool, &records, &groups, SelectionOrigin::Fetch).await
    }
    .await;
    let (ok, message) = match &result {
        Ok(r) => (true, summary(r, date)),
        Err(e) => (false, crate::telemetry::causes(e)),
    };
    let outcome = if ok { "ok" } else { "failed" };
    app.metrics
        .fetches
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
    if ok {
        app.metrics
            .fetch_success_time
            .set(chrono::Utc::now().timestamp());
    }
    let mut conn = app.pool.acquire().await?;
    crate::store::papers::record_fetch(&mut conn, date, ok, &message).await?;
    result
}

/// An error when `records` are the very papers (in the same order) of the
/// newest edition started before `date`: a source serving yesterday's list.
async fn same_as_last(
    app: &App,
    records: &[Record],
    date: NaiveDate,
    url: &str,
) -> anyhow::Result<()> {
    let mut conn = app.pool.acquire().await?;
    let started = crate::store::deliveries::started_dates(&mut conn).await?;
    let Some(last) = started.into_iter().filter(|d| *d < date).max() else {
        return Ok(());
    };
    let sent: Vec<String> = crate::store::papers::selection(&mut conn, last)
        .await?
        .into_iter()
        .map(|p| p.id.to_string())
        .collect();
    let fetched: Vec<String> = records.iter().map(|r| r.paper.id.to_string()).collect();
    if !sent.is_empty() && sent == fetched {
        return Err(FetchError::SameAsLast {
            url: url.to_string(),
            date,
            last,
        }
        .into());
    }
    Ok(())
}

/// One line on what a fetch did.
pub fn summary(r: &ImportReport, date: NaiveDate) -> String {
    if let Some((_, why)) = r.kept.first() {
        return format!("{date}: nothing changed: {why}");
    }
    match r.dates.first() {
        Some((_, n, true)) => format!("{date}: {n} papers selected"),
        Some((_, n, false)) => format!("{date}: selection unchanged ({n} papers)"),
        None => format!("{date}: the source listed no papers"),
    }
}
