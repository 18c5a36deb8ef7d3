//! `paperpost run`: the long-running service. Holds the scheduler lock, applies
//! the subscriber file at start and on SIGHUP, starts editions on schedule
//! (catching up a fire missed within `schedule.catch_up`), runs the delivery
//! engine, and stops gracefully on SIGTERM or SIGINT.

use std::sync::Arc;

use chrono::Utc;
use sqlx::SqlitePool;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    app::App,
    delivery::Engine,
    lock::{Lock, recover},
    schedule::Schedule,
    store::{self, deliveries},
    web::{Liveness, health::SCHEDULER_TICK},
};

/// Applies the subscriber file if it exists.
pub async fn sync_subscriber_file(app: &App) {
    let path = &app.settings.subscribers.file;
    if !path.exists() {
        tracing::debug!(file = %path.display(), "no subscriber file; nothing to sync");
        return;
    }
    let result = async {
        let entries = crate::ingest::subscriber_file::read(path, &app.defaults())?;
        crate::ingest::subscriber_file::sync(&app.pool, &app.keys, &entries, &[], false).await
    }
    .await;
    match result {
        Ok(r) => {
            tracing::info!(
                file = %path.display(),
                listed = r.listed,
                added = r.added.len(),
                updated = r.updated.len(),
                deactivated = r.deactivated.len(),
                "applied the subscriber file"
            );
            for (who, how) in &r.kept_unsubscribed {
                tracing::info!(%who, %how, "listed in the subscriber file but unsubscribed; left unsubscribed");
            }
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %format!("{e:#}"), "cannot apply the subscriber file; nothing changed")
        }
    }
}

/// Starts the due edition for a fire time, if there is one.
pub async fn fire(
    schedule: &Schedule,
    pool: &SqlitePool,
    engine: &Engine,
    by: &str,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let today = schedule.today(now);
    let mut conn = pool.acquire().await?;
    let selected: Vec<_> = store::papers::selected_dates(&mut conn)
        .await?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let started = deliveries::started_dates(&mut conn).await?;
    drop(conn);
    match schedule.due_edition(today, &selected, &started) {
        Ok(date) => {
            match deliveries::start_edition(pool, date, by, |tz| schedule.send_at(tz, now)).await? {
                deliveries::Started::Now(n) => {
                    tracing::info!(edition = %date, subscribers = n, started_by = by, "edition started");
                    engine.wake();
                }
                deliveries::Started::Already => {
                    tracing::info!(edition = %date, "edition already started")
                }
            }
        }
        Err(why) => tracing::info!(reason = %why, started_by = by, "no edition to send"),
    }
    Ok(())
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(app: App) -> anyhow::Result<()> {
    let lock = Lock::acquire(&app.pool).await?;
    let result = serve(&app, &lock).await;
    lock.release().await;
    tracing::info!("paperpost stopped");
    result
}

async fn serve(app: &App, lock: &Lock) -> anyhow::Result<()> {
    let (settings, pool) = (&app.settings, &app.pool);
    recover(pool).await?;
    sync_subscriber_file(app).await;
    let schedule = Schedule::from_settings(&settings.schedule);
    let engine = app.engine()?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    let liveness = Arc::new(Liveness::sending());
    liveness.lock_held();
    liveness.scheduler_alive();
    let web = Some(Arc::clone(&engine));
    crate::web::start(app, Arc::clone(&liveness), web, &tracker, shutdown.clone()).await?;

    tracker.spawn(signals(shutdown.clone(), app.clone()));
    {
        let liveness = Arc::clone(&liveness);
        tracker.spawn(lock.heartbeat(shutdown.clone(), move || liveness.lock_held()));
    }
    {
        let engine = Arc::clone(&engine);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = engine.run(None, false, shutdown.clone()).await {
                tracing::error!(error = %format!("{e:#}"), "the delivery engine stopped");
                shutdown.cancel();
            }
        });
    }
    tracker.close();

    let next = schedule.next_after(Utc::now());
    tracing::info!(
        cron = %settings.schedule.cron.source,
        timezone = %settings.schedule.timezone,
        next = ?next.map(|t| t.to_rfc3339()),
        mail = %engine.describe_transport(),
        database = %settings.database.path.display(),
        "paperpost is running"
    );
    if let Some(missed) = schedule.missed(Utc::now()) {
        tracing::info!(fire_time = %missed.to_rfc3339(), "catching up a fire time missed while stopped");
        fire(&schedule, pool, &engine, "catch-up").await?;
    }
    let mut after = Utc::now();
    while !shutdown.is_cancelled() {
        let Some(next) = schedule.next_after(after) else {
            tracing::warn!(
                "the cron expression never fires again; only resuming unfinished editions"
            );
            shutdown.cancelled().await;
            break;
        };
        // Sleep in short steps so a changed wall clock is noticed.
        while Utc::now() < next && !shutdown.is_cancelled() {
            liveness.scheduler_alive();
            let left = (next - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(SCHEDULER_TICK);
            tokio::select! {
                _ = tokio::time::sleep(left) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        if let Err(e) = fire(&schedule, pool, &engine, "schedule").await {
            tracing::error!(error = %format!("{e:#}"), "cannot start the edition; the next fire time tries again");
        }
        after = next;
    }
    tracing::info!("stopping: finishing the messages in flight");
    tracker.wait().await;
    Ok(())
}

/// `paperpost serve`: the web endpoint alone, until SIGTERM or SIGINT.
pub async fn serve_web(app: App) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let liveness = Arc::new(Liveness::default());
    crate::web::start(&app, liveness, None, &tracker, shutdown.clone()).await?;
    tracker.spawn(signals(shutdown.clone(), app.clone()));
    tracker.close();
    shutdown.cancelled().await;
    tracing::info!("stopping: finishing the requests in flight");
    tracker.wait().await;
    tracing::info!("paperpost stopped");
    Ok(())
}

async fn signals(shutdown: CancellationToken, app: App) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); shutdown.cancel(); return; }
            _ = int.recv() => { tracing::info!("SIGINT received"); shutdown.cancel(); return; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: applying the subscriber file");
                sync_subscriber_file(&app).await;
            }
            _ = shutdown.cancelled() => return,
        }
    }
}
