//! The daemon's own paper fetching (`papers.source_url`): at each
//! `papers.fetch_cron` time it fetches the day `papers.fetch_days_ago` before
//! and selects its papers, so that the next edition exists when the edition
//! cron fires. At start it fetches at once if that day has nothing selected
//! yet. A failed fetch changes nothing and is tried again every
//! `papers.fetch_retry` until it works or the next fetch time comes.

use chrono::{DateTime, NaiveDate, Utc};
use tokio_util::sync::CancellationToken;

use crate::{
    app::App,
    ingest::fetch::{self, Fetcher},
    schedule::Schedule,
};

/// At start: fetches the current fetch day if nothing is selected for it
/// yet. Returns the day if it is still to be fetched (the fetch failed).
async fn at_start(app: &App, fetcher: &Fetcher) -> Option<NaiveDate> {
    let date = match first_date(app).await {
        Ok(d) => d?,
        Err(e) => {
            tracing::warn!(error = %crate::telemetry::causes(&e), "cannot tell whether the day's papers are in; fetching them");
            app.fetch_date()
        }
    };
    (!attempt(app, fetcher, date).await).then_some(date)
}

/// Runs until `shutdown`. The first fetch (at start, if the day's papers are
/// not in) is reported on `started`, so the daemon can catch up a missed
/// edition with them.
pub async fn run(
    app: App,
    fetcher: Fetcher,
    started: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let mut pending = at_start(&app, &fetcher).await;
    let _ = started.send(());
    let cron = fetch_schedule(&app);
    let mut retry_at = pending.map(|_| Utc::now() + app.settings.papers.fetch_retry);
    loop {
        if retry_at.is_none()
            && let Some(date) = pending
        {
            if attempt(&app, &fetcher, date).await {
                pending = None;
            } else {
                retry_at = Some(Utc::now() + app.settings.papers.fetch_retry);
            }
        }
        let next_fire = cron.next_after(Utc::now());
        let (wake, fires) = match (next_fire, retry_at) {
            (Some(f), Some(r)) if r < f => (Some(r), false),
            (Some(f), _) => (Some(f), true),
            (None, r) => (r, false),
        };
        if !sleep_until(wake, &shutdown).await {
            return;
        }
        retry_at = None;
        if fires {
            pending = Some(app.fetch_date());
        }
    }
}

/// The fetch cron in the schedule's time zone.
fn fetch_schedule(app: &App) -> Schedule {
    let mut s = app.settings.schedule.clone();
    s.cron = app.settings.papers.fetch_cron.clone();
    Schedule::from_settings(&s)
}

/// The day to fetch at start: the current fetch day, if nothing is selected
/// for it yet.
async fn first_date(app: &App) -> anyhow::Result<Option<NaiveDate>> {
    let date = app.fetch_date();
    let mut conn = app.pool.acquire().await?;
    let selected = crate::store::papers::selection_origin(&mut conn, date).await?;
    Ok(selected.is_none().then_some(date))
}

/// One fetch; true if it worked.
async fn attempt(app: &App, fetcher: &Fetcher, date: NaiveDate) -> bool {
    use tracing::Instrument;
    let span = tracing::info_span!("fetch", %date, url = %fetcher.url(date));
    let result = fetch::fetch_and_import(app, fetcher, date)
        .instrument(span.clone())
        .await;
    // No await below: the span is entered only to log.
    let _enter = span.enter();
    match result {
        Ok(r) => {
            tracing::info!(result = %fetch::summary(&r, date), "fetched the day's papers");
            true
        }
        Err(e) => {
            tracing::error!(
                error = %crate::telemetry::causes(&e),
                retry_in = ?app.settings.papers.fetch_retry,
                "cannot fetch the day's papers; nothing changed"
            );
            false
        }
    }
}

/// Sleeps until `t` (for ever if `None`); false if shutdown came first.
async fn sleep_until(t: Option<DateTime<Utc>>, shutdown: &CancellationToken) -> bool {
    let wait = match t {
        Some(t) => (t - Utc::now()).to_std().unwrap_or_default(),
        None => std::time::Duration::from_secs(365 * 86_400),
    };
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = shutdown.cancelled() => false,
    }
}
