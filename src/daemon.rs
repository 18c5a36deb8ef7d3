//! `paperpost run`: the long-running service. Holds the scheduler lock, applies
//! the subscriber file at start and on SIGHUP, starts editions on schedule
//! (catching up a fire missed within `schedule.catch_up`), runs the delivery
//! engine, and stops gracefully on SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
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
        // Never forced: a mass removal waits for the operator.
        let mode = crate::ingest::subscriber_file::SyncMode::default();
        crate::ingest::subscriber_file::sync(&app.pool, &app.keys, &entries, &[], mode).await
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
                tracing::info!(who = %crate::telemetry::address(who), %how, "listed in the subscriber file but unsubscribed; left unsubscribed");
            }
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %crate::telemetry::causes(&e), "cannot apply the subscriber file; nothing changed")
        }
    }
}

/// On each SIGHUP until `stop`: applies the subscriber file, then reads the
/// configuration again. The settings that can change while running (the rate
/// limit, the retry policy, the newsletter texts, the log level) are applied
/// and logged; others are named as needing a restart. A broken file is
/// reported and the old settings stay.
async fn reloader(
    app: App,
    engine: Option<Arc<Engine>>,
    hup: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut applied = app.settings.clone();
    loop {
        tokio::select! {
            _ = hup.notified() => {}
            _ = stop.cancelled() => return,
        }
        sync_subscriber_file(&app).await;
        let new = match crate::config::Settings::load(applied.source.as_deref()) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the configuration again; the old one stays");
                continue;
            }
        };
        let changes = applied.changes(&new);
        if let Some(engine) = &engine {
            match app.composer_for(&new) {
                Ok(composer) => engine.reload(&new, composer),
                Err(e) => {
                    tracing::error!(error = %crate::telemetry::causes(&e), "cannot apply the new configuration; the old one stays");
                    continue;
                }
            }
        }
        crate::telemetry::reload(&new.log);
        if changes.live.is_empty() && changes.restart.is_empty() {
            tracing::info!("the configuration is unchanged");
        }
        if !changes.live.is_empty() {
            tracing::info!(keys = %changes.live.join(", "), "configuration applied");
        }
        if !changes.restart.is_empty() {
            tracing::warn!(keys = %changes.restart.join(", "), "changed settings that take effect at the next start (systemctl restart paperpost)");
        }
        applied = new;
    }
}

/// Starts the edition due at `fire_time`, if there is one, unless that fire
/// time was handled already (by this process or one before a restart). The
/// fire time is recorded once handled, so a failure is tried again.
#[tracing::instrument(name = "fire", skip_all, fields(time = %fire_time.to_rfc3339(), by))]
pub async fn fire(
    schedule: &Schedule,
    pool: &crate::store::Pool,
    engine: &Engine,
    fire_time: DateTime<Utc>,
    by: &str,
) -> anyhow::Result<()> {
    let at = fire_time.timestamp_millis();
    let mut conn = pool.acquire().await?;
    if deliveries::fire_handled(&mut conn, at).await? {
        tracing::info!("fire time already handled; nothing to do");
        return Ok(());
    }
    let selected: Vec<_> = store::papers::selected_dates(&mut conn)
        .await?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let started = deliveries::started_dates(&mut conn).await?;
    drop(conn);
    match schedule.due_edition(schedule.today(fire_time), &selected, &started) {
        Ok(date) => {
            // From the fire time: after a catch-up, zones whose hour has
            // passed get it now, not tomorrow.
            let send_at = |tz: &str| schedule.send_at(tz, fire_time);
            match deliveries::start_edition(pool, date, by, send_at).await? {
                deliveries::Started::Now(n) => {
                    tracing::info!(edition = %date, subscribers = n, "edition started");
                    engine.wake();
                }
                deliveries::Started::Already => {
                    tracing::info!(edition = %date, "edition already started")
                }
            }
        }
        Err(why) => tracing::info!(reason = %why, "no edition to send"),
    }
    let mut conn = pool.acquire().await?;
    deliveries::record_fire(&mut conn, at, by).await?;
    Ok(())
}

/// Runs until SIGTERM or SIGINT. While another process sends for the same
/// database, serves the web endpoint only, and takes over sending when it
/// stops.
pub async fn run(app: App) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    crate::security::report_new_secret();
    let shutdown = CancellationToken::new();
    let hup = Arc::new(tokio::sync::Notify::new());
    let signal_task = tokio::spawn(signals.handle(shutdown.clone(), Arc::clone(&hup)));
    let endpoint = Endpoint::Socket(crate::web::bind(&app)?);
    let web_tasks = TaskTracker::new();
    let result = match acquire_or_stand_by(&app, endpoint, &web_tasks, &shutdown, &hup).await {
        Ok(Some((lock, endpoint))) => {
            let result = serve(&app, endpoint, &web_tasks, &lock, shutdown.clone(), hup).await;
            lock.release().await;
            result
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    // The endpoint stops with the rest, whatever ended it.
    shutdown.cancel();
    web_tasks.close();
    web_tasks.wait().await;
    signal_task.abort();
    tracing::info!("paperpost stopped");
    result
}

/// The web endpoint of `run`: its socket, bound at start, until a server
/// serves it; the standby's server goes on serving as the sender's.
enum Endpoint {
    Socket(std::net::TcpListener),
    Serving(crate::web::Web),
}

impl Endpoint {
    /// Serves it as `role` on `tracker` until `shutdown`: a standby's server
    /// becomes the sender's, with no connection closed or made to wait.
    async fn serve_as(
        self,
        app: &App,
        role: crate::web::Role,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Endpoint> {
        Ok(match self {
            Endpoint::Socket(listener) => Endpoint::Serving(
                crate::web::start(app, listener, role, tracker, shutdown.clone()).await?,
            ),
            Endpoint::Serving(web) => {
                web.become_sender(role);
                Endpoint::Serving(web)
            }
        })
    }
}

/// The sending lock; while another process holds it, serves the web
/// endpoint alone until the lock frees up. `None` if shutdown came first.
async fn acquire_or_stand_by(
    app: &App,
    endpoint: Endpoint,
    web_tasks: &TaskTracker,
    shutdown: &CancellationToken,
    hup: &Arc<tokio::sync::Notify>,
) -> anyhow::Result<Option<(Lock, Endpoint)>> {
    let ttl = app.settings.database.lock_ttl;
    match Lock::acquire(&app.pool, ttl).await {
        Ok(lock) => return Ok(Some((lock, endpoint))),
        Err(e) if e.downcast_ref::<crate::lock::Held>().is_some() => {
            tracing::warn!(
                "{}; serving the web endpoint only, and sending once it stops",
                crate::telemetry::causes(&e)
            );
        }
        Err(e) => return Err(e),
    }
    let liveness = Arc::new(Liveness::standby());
    let role = crate::web::Role {
        liveness: Arc::clone(&liveness),
        engine: None,
    };
    let endpoint = endpoint.serve_as(app, role, web_tasks, shutdown).await?;
    let standby_stop = shutdown.child_token();
    let tracker = TaskTracker::new();
    // The watchdog is pinged while standing by, or systemd kills the standby.
    tracker.spawn(crate::systemd::watch(
        app.pool.clone(),
        liveness,
        None,
        standby_stop.clone(),
    ));
    tracker.spawn(reloader(
        app.clone(),
        None,
        Arc::clone(hup),
        standby_stop.clone(),
    ));
    tracker.close();
    crate::systemd::standing_by();
    let lock = wait_for_the_lock(app, shutdown).await;
    standby_stop.cancel();
    tracker.wait().await;
    Ok(lock.map(|lock| (lock, endpoint)))
}

/// Tries for the sending lock every TTL/3, and at once when its holder
/// releases it; `None` if shutdown came first.
async fn wait_for_the_lock(app: &App, shutdown: &CancellationToken) -> Option<Lock> {
    let ttl = app.settings.database.lock_ttl;
    let mut watch = crate::lock::Watch::default();
    let mut releases = crate::store::LockReleases::listen(&app.pool).await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ttl / 3) => {}
            _ = releases.released() => {}
            _ = shutdown.cancelled() => return None,
        }
        match Lock::acquire_watching(&app.pool, ttl, &mut watch).await {
            Ok(lock) => {
                tracing::info!("the sending process stopped; this one sends from now on");
                return Some(lock);
            }
            Err(e) if e.downcast_ref::<crate::lock::Held>().is_some() => {}
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::causes(&e), "cannot take the sending lock")
            }
        }
    }
}

async fn serve(
    app: &App,
    endpoint: Endpoint,
    web_tasks: &TaskTracker,
    lock: &Lock,
    shutdown: CancellationToken,
    hup: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let (settings, pool) = (&app.settings, &app.pool);
    recover(pool).await?;
    sync_subscriber_file(app).await;
    let schedule = Schedule::from_settings(&settings.schedule);
    let engine = app.engine(lock.fence())?;
    let tracker = TaskTracker::new();

    let liveness = Arc::new(Liveness::sending(settings.database.lock_ttl));
    liveness.lock_held();
    liveness.scheduler_alive();
    let role = crate::web::Role {
        liveness: Arc::clone(&liveness),
        engine: Some(Arc::clone(&engine)),
    };
    endpoint.serve_as(app, role, web_tasks, &shutdown).await?;

    let (engine_task, first_fetch) =
        spawn_tasks(app, lock, &engine, &liveness, &tracker, (hup, &shutdown))?;
    tracker.close();

    crate::systemd::ready();
    let next = schedule.next_after(Utc::now());
    tracing::info!(
        cron = %settings.schedule.cron.source,
        timezone = %settings.schedule.timezone,
        next = ?next.map(|t| t.to_rfc3339()),
        mail = %engine.describe_transport(),
        database = %settings.database.describe(),
        "paperpost is running"
    );
    let _ = tokio::time::timeout(FIRST_FETCH_PATIENCE, first_fetch).await;
    if let Some(missed) = schedule.missed(Utc::now()) {
        tracing::info!(fire_time = %missed.to_rfc3339(), "catching up a fire time missed while stopped");
        let firing = Firing {
            schedule: &schedule,
            pool,
            engine: &engine,
            liveness: &liveness,
            shutdown: &shutdown,
        };
        firing.fire(missed, "catch-up").await;
    }
    schedule_loop(&schedule, pool, &engine, &liveness, &shutdown).await;
    crate::systemd::stopping();
    tracing::info!("stopping: finishing the messages in flight");
    tracker.wait().await;
    engine_task
        .await
        .map_err(|e| anyhow::anyhow!("the delivery engine panicked: {e}"))?
        .context("the delivery engine stopped")
}

/// The daemon's tasks beside the scheduler: the reloader, the paper
/// fetcher, the lock's heartbeat, the delivery engine and the systemd
/// watch. Returns the engine's task (its error is the daemon's: it exits
/// non-zero, so systemd's Restart=on-failure restarts it) and the signal of
/// the first fetch.
fn spawn_tasks(
    app: &App,
    lock: &Lock,
    engine: &Arc<Engine>,
    liveness: &Arc<Liveness>,
    tracker: &TaskTracker,
    (hup, shutdown): (Arc<tokio::sync::Notify>, &CancellationToken),
) -> anyhow::Result<(
    tokio::task::JoinHandle<anyhow::Result<()>>,
    tokio::sync::oneshot::Receiver<()>,
)> {
    let reload = reloader(app.clone(), Some(Arc::clone(engine)), hup, shutdown.clone());
    tracker.spawn(reload);
    // The day's papers first (if fetching is on and they are not in), so that
    // a catch-up has them; a slow source is not waited for long.
    let (fetched, first_fetch) = tokio::sync::oneshot::channel();
    match crate::ingest::fetch::Fetcher::new(&app.settings.papers)? {
        Some(fetcher) => {
            let fetching = crate::autopilot::run(app.clone(), fetcher, fetched, shutdown.clone());
            tracker.spawn(fetching);
        }
        None => drop(fetched),
    }
    let held = Arc::clone(liveness);
    tracker.spawn(lock.heartbeat(shutdown.clone(), move || held.lock_held()));
    tracker.spawn(prune_daily(app.clone(), shutdown.clone()));
    let engine_task = {
        let (engine, shutdown) = (Arc::clone(engine), shutdown.clone());
        tracker.spawn(async move {
            let result = engine
                .run(crate::delivery::Until::Shutdown, shutdown.clone())
                .await;
            if let Err(e) = &result {
                tracing::error!(error = %crate::telemetry::causes(e), "the delivery engine stopped");
                shutdown.cancel();
            }
            result
        })
    };
    let watch = crate::systemd::watch(
        app.pool.clone(),
        Arc::clone(liveness),
        Some(Arc::clone(engine)),
        shutdown.clone(),
    );
    tracker.spawn(watch);
    Ok((engine_task, first_fetch))
}

/// How often the daemon prunes old history, and how long after start first.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
const PRUNE_FIRST: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes (or, dry, counts) history older than `retention` ([`store::prune`]).
pub async fn prune(app: &App, dry_run: bool) -> anyhow::Result<crate::store::prune::Pruned> {
    let keep = &app.settings.retention;
    Ok(crate::store::prune::prune(&app.pool, &app.writer, keep, dry_run).await?)
}

/// Prunes daily until `shutdown`; a failure is logged and tried the next day.
async fn prune_daily(app: App, shutdown: CancellationToken) {
    let mut wait = PRUNE_FIRST;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        wait = PRUNE_EVERY;
        match prune(&app, false).await {
            Ok(p) if p == Default::default() => {}
            Ok(p) => tracing::info!(
                deliveries = p.deliveries,
                editions = p.editions,
                link_events = p.link_events,
                fires = p.fires,
                papers = p.papers,
                "pruned history older than [retention]"
            ),
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::causes(&e), "cannot prune old history; trying again tomorrow")
            }
        }
    }
}

/// How long a catch-up at start waits for the first fetch of the day's papers.
const FIRST_FETCH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// What firing a fire time needs.
struct Firing<'a> {
    schedule: &'a Schedule,
    pool: &'a crate::store::Pool,
    engine: &'a Engine,
    liveness: &'a Liveness,
    shutdown: &'a CancellationToken,
}

/// How long a fire time whose edition could not be started waits before it
/// is tried again.
const FIRE_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

impl Firing<'_> {
    /// Fires `fire_time`; one that fails (the database unwritable, say) is
    /// tried again every [`FIRE_RETRY`] while it is within `schedule.catch_up`.
    async fn fire(&self, fire_time: DateTime<Utc>, by: &str) {
        loop {
            let Err(e) = fire(self.schedule, self.pool, self.engine, fire_time, by).await else {
                return;
            };
            let retry = Utc::now() + FIRE_RETRY;
            if !self.schedule.within_catch_up(fire_time, retry) {
                tracing::error!(error = %crate::telemetry::causes(&e), fire_time = %fire_time.to_rfc3339(), "cannot start the edition; giving up on this fire time");
                return;
            }
            tracing::error!(error = %crate::telemetry::causes(&e), fire_time = %fire_time.to_rfc3339(), "cannot start the edition; trying again in 30 s");
            if !wait_until(Some(retry), self.liveness, self.shutdown).await {
                return;
            }
        }
    }
}

/// Starts the due edition at each fire time until `shutdown`.
async fn schedule_loop(
    schedule: &Schedule,
    pool: &crate::store::Pool,
    engine: &Engine,
    liveness: &Liveness,
    shutdown: &CancellationToken,
) {
    let mut after = Utc::now();
    loop {
        let next = schedule.next_after(after);
        if next.is_none() {
            tracing::warn!(
                "the cron expression never fires again; only resuming unfinished editions"
            );
        }
        if !wait_until(next, liveness, shutdown).await {
            return;
        }
        let Some(next) = next else { return };
        let firing = Firing {
            schedule,
            pool,
            engine,
            liveness,
            shutdown,
        };
        firing.fire(next, "schedule").await;
        after = next;
    }
}

/// Sleeps until `at` (for ever when `None`) in steps of at most
/// [`SCHEDULER_TICK`], so a changed wall clock is noticed and /healthz sees
/// the scheduler alive. False when `shutdown` came first.
async fn wait_until(
    at: Option<chrono::DateTime<Utc>>,
    liveness: &Liveness,
    shutdown: &CancellationToken,
) -> bool {
    while at.is_none_or(|t| Utc::now() < t) {
        liveness.scheduler_alive();
        let left = at.map_or(SCHEDULER_TICK, |t| {
            (t - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(SCHEDULER_TICK)
        });
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = shutdown.cancelled() => return false,
        }
    }
    !shutdown.is_cancelled()
}

/// `paperpost serve`: the web endpoint alone, until SIGTERM or SIGINT.
pub async fn serve_web(app: App) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    crate::security::report_new_secret();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let liveness = Arc::new(Liveness::default());
    let listener = crate::web::bind(&app)?;
    let role = crate::web::Role {
        liveness,
        engine: None,
    };
    crate::web::start(&app, listener, role, &tracker, shutdown.clone()).await?;
    let hup = Arc::new(tokio::sync::Notify::new());
    tracker.spawn(signals.handle(shutdown.clone(), Arc::clone(&hup)));
    tracker.spawn(reloader(app.clone(), None, hup, shutdown.clone()));
    tracker.close();
    crate::systemd::ready();
    shutdown.cancelled().await;
    crate::systemd::stopping();
    tracing::info!("stopping: finishing the requests in flight");
    tracker.wait().await;
    tracing::info!("paperpost stopped");
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP, caught from the moment they are installed:
/// a stop signal during start-up is a graceful stop, not the default kill.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot catch SIGHUP")?,
        })
    }

    /// Cancels `shutdown` on SIGTERM or SIGINT; SIGHUP wakes the reloader.
    async fn handle(mut self, shutdown: CancellationToken, hup: Arc<tokio::sync::Notify>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { tracing::info!("SIGTERM received"); shutdown.cancel(); return; }
                _ = self.int.recv() => { tracing::info!("SIGINT received"); shutdown.cancel(); return; }
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP received: reading the subscriber file and the configuration again");
                    hup.notify_one();
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cron that never fires again leaves the daemon resuming editions:
    /// the scheduler still ticks, so /healthz does not call it dead.
    #[tokio::test(start_paused = true)]
    async fn waiting_for_no_fire_time_keeps_the_scheduler_alive() {
        let liveness = Arc::new(Liveness::sending(std::time::Duration::from_secs(30)));
        liveness.lock_held();
        let shutdown = CancellationToken::new();
        let waiter = {
            let (l, s) = (Arc::clone(&liveness), shutdown.clone());
            tokio::spawn(async move { wait_until(None, &l, &s).await })
        };
        tokio::time::sleep(SCHEDULER_TICK * 10).await;
        assert_eq!(liveness.problem(store::now_ms()), None);
        shutdown.cancel();
        assert!(!waiter.await.unwrap(), "shutdown ends the wait");
    }
}
