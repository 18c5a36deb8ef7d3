//! `paperpost run`: the long-running service. Holds the scheduler lock, applies
//! the subscriber file at start and on SIGHUP, starts editions on schedule
//! (catching up a fire missed within `schedule.catch_up`), runs the delivery
//! engine, and stops gracefully on SIGTERM or SIGINT.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use sqlx::SqlitePool;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Settings,
    delivery::Engine,
    digest::Composer,
    mailer::Mailer,
    schedule::Schedule,
    security::Keys,
    store::{self, deliveries},
};

/// How long the scheduler lock lasts without a heartbeat.
pub const LOCK_TTL: Duration = Duration::from_secs(30);

/// The scheduler lock: only one process sends for a database at a time.
pub struct Lock {
    pool: SqlitePool,
    me: String,
}

fn host() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// True if `holder` ("host:pid:tag") names a process on this host that is gone.
fn is_dead_local(holder: &str) -> bool {
    let mut parts = holder.split(':');
    let (Some(h), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if h != host() || pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

impl Lock {
    /// Takes the lock, or fails naming the process that holds it. A holder on
    /// this machine that is no longer running is taken over at once.
    pub async fn acquire(pool: &SqlitePool) -> anyhow::Result<Self> {
        let me = format!(
            "{}:{}:{:08x}",
            host(),
            std::process::id(),
            fastrand::u32(..)
        );
        let ttl = LOCK_TTL.as_millis() as i64;
        let mut conn = pool.acquire().await?;
        let Some(other) = deliveries::try_lock(&mut conn, &me, ttl, None).await? else {
            return Ok(Self {
                pool: pool.clone(),
                me,
            });
        };
        if is_dead_local(&other.holder)
            && deliveries::try_lock(&mut conn, &me, ttl, Some(&other.holder))
                .await?
                .is_none()
        {
            tracing::warn!(previous = %other.holder, "took over the lock of a paperpost process that is no longer running");
            return Ok(Self {
                pool: pool.clone(),
                me,
            });
        }
        let left = ((other.expires_at - store::now_ms()) / 1000).max(0);
        anyhow::bail!(
            "another paperpost process ({}) is sending for this database; only one may at a time \
             (its lock expires {left} s after it stops)",
            other.holder
        )
    }

    /// Renews the lock until `shutdown`; losing it cancels `shutdown`.
    pub fn heartbeat(
        &self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let pool = self.pool.clone();
        let me = self.me.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LOCK_TTL / 3) => {}
                    _ = shutdown.cancelled() => return,
                }
                let renewed = async {
                    let mut conn = pool.acquire().await?;
                    anyhow::Ok(
                        deliveries::renew_lock(&mut conn, &me, LOCK_TTL.as_millis() as i64).await?,
                    )
                }
                .await;
                match renewed {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!("lost the scheduler lock to another process; stopping");
                        shutdown.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the scheduler lock; retrying")
                    }
                }
            }
        }
    }

    pub async fn release(self) {
        if let Ok(mut conn) = self.pool.acquire().await {
            let _ = deliveries::release_lock(&mut conn, &self.me).await;
        }
    }
}

/// After taking the lock: rows that were being sent when the last holder
/// stopped go back to the queue.
pub async fn recover(pool: &SqlitePool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let n = deliveries::release_in_flight(&mut conn).await?;
    if n > 0 {
        tracing::warn!(
            messages = n,
            "messages were being sent when paperpost last stopped; they are sent again (a recipient may get one twice)"
        );
    }
    Ok(())
}

/// Applies the subscriber file if it exists.
pub async fn sync_subscriber_file(settings: &Settings, pool: &SqlitePool, keys: &Keys) {
    let path = &settings.subscribers.file;
    if !path.exists() {
        tracing::debug!(file = %path.display(), "no subscriber file; nothing to sync");
        return;
    }
    let s = &settings.subscribers;
    let defaults = store::subscribers::Profile {
        name: None,
        topics: Default::default(),
        timezone: s.default_timezone,
        format: s.default_format,
        max_papers: s.default_max_papers,
    };
    let result = async {
        let entries = crate::ingest::subscriber_file::read(path, &defaults)?;
        crate::ingest::subscriber_file::sync(pool, keys, &entries, &[], false).await
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
pub async fn run(settings: Settings, pool: SqlitePool, keys: Keys) -> anyhow::Result<()> {
    let lock = Lock::acquire(&pool).await?;
    let result = serve(&settings, &pool, &keys, &lock).await;
    lock.release().await;
    tracing::info!("paperpost stopped");
    result
}

async fn serve(
    settings: &Settings,
    pool: &SqlitePool,
    keys: &Keys,
    lock: &Lock,
) -> anyhow::Result<()> {
    recover(pool).await?;
    sync_subscriber_file(settings, pool, keys).await;
    let composer = Composer::new(settings, keys.clone())?;
    let mailer = Mailer::from_settings(&settings.mail)?;
    let schedule = Schedule::from_settings(&settings.schedule);
    let engine = Engine::new(settings, pool.clone(), composer, Arc::clone(&mailer));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    tracker.spawn(signals(
        shutdown.clone(),
        settings.clone(),
        pool.clone(),
        keys.clone(),
    ));
    tracker.spawn(lock.heartbeat(shutdown.clone()));
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
        mail = %mailer.describe(),
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
            let left = (next - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(Duration::from_secs(30));
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

async fn signals(shutdown: CancellationToken, settings: Settings, pool: SqlitePool, keys: Keys) {
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
                sync_subscriber_file(&settings, &pool, &keys).await;
            }
            _ = shutdown.cancelled() => return,
        }
    }
}
