//! The delivery engine: claims due rows from the queue, composes each reader's
//! digest, sends it, and records the outcome in the same row.
//!
//! One claimer feeds `mail.concurrency` workers; each worker owns one mail
//! server connection ([`crate::mailer::Sender`]). A worker records every
//! outcome as soon as it has it, so after a crash at most the messages in
//! flight (no more than the concurrency) can go out twice. A circuit breaker
//! pauses claiming while the server is unreachable.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::NaiveDate;
use sqlx::SqlitePool;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{RetrySettings, Settings},
    digest::{Composer, Edition, Reader},
    domain::SubscriberStatus,
    lock::Fence,
    mailer::{Failure, Gate, Mailer, Sender},
    store::{
        self,
        deliveries::{self, Claimed},
        subscribers::{self, Subscriber},
    },
};

/// A subscriber's status is asked for while the message before theirs is
/// sent; when that took longer than this, it is asked again before sending.
const STATUS_MAX_AGE: Duration = Duration::from_millis(50);

mod guard;

/// How long a claimed row stays leased to this process.
pub const LEASE: Duration = Duration::from_secs(300);

/// How often an idle claimer looks for rows whose lease ran out.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Running totals, for progress displays and summaries.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub retried: AtomicU64,
}

impl Progress {
    pub fn done(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.cancelled.load(Ordering::Relaxed)
    }
}

/// Pauses sending while the mail server cannot be reached: after
/// [`Breaker::TRIP_AFTER`] connection failures in a row it opens for a cool-down
/// (1 s, doubling to 60 s), then lets one message probe the server.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
    probing: bool,
    /// When the probe was let through: one that never reports (its
    /// subscriber left, its message could not be built) does not hold the
    /// breaker half-open for ever.
    probe_at: Option<Instant>,
}

/// What the claimer may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    Full,
    /// Half-open: one message may probe the server.
    Probe,
    Wait(Duration),
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: Mutex::new(BreakerState {
                failures: 0,
                open_until: None,
                cooldown: Self::MIN_COOLDOWN,
                probing: false,
                probe_at: None,
            }),
        }
    }
}

impl Breaker {
    pub const TRIP_AFTER: u32 = 3;
    /// How long a probe may go without a verdict before another is let through.
    pub const PROBE_PATIENCE: Duration = Duration::from_secs(120);
    const MIN_COOLDOWN: Duration = Duration::from_secs(1);
    const MAX_COOLDOWN: Duration = Duration::from_secs(60);

    pub fn allowance(&self) -> Allowance {
        let mut s = self.state.lock().expect("breaker lock");
        match s.open_until {
            None => Allowance::Full,
            Some(t) if Instant::now() < t => Allowance::Wait(t - Instant::now()),
            Some(_)
                if s.probing
                    && s.probe_at
                        .is_some_and(|p| p.elapsed() < Self::PROBE_PATIENCE) =>
            {
                Allowance::Wait(Duration::from_millis(50))
            }
            Some(_) => {
                s.probing = true;
                s.probe_at = Some(Instant::now());
                Allowance::Probe
            }
        }
    }

    pub fn success(&self) {
        let mut s = self.state.lock().expect("breaker lock");
        if s.open_until.is_some() {
            tracing::info!("the mail server answers again; sending resumes");
        }
        s.failures = 0;
        s.open_until = None;
        s.cooldown = Self::MIN_COOLDOWN;
        s.probing = false;
    }

    pub fn connection_failure(&self, reason: &str) {
        let mut s = self.state.lock().expect("breaker lock");
        s.failures += 1;
        if s.probing || (s.open_until.is_none() && s.failures >= Self::TRIP_AFTER) {
            tracing::warn!(pause = ?s.cooldown, %reason, "the mail server cannot be reached; pausing sending");
            Self::open(&mut s);
        }
    }

    /// Opens at once (the server refuses every recipient), unless already
    /// open; a failed probe opens it again for longer.
    pub fn trip(&self, reason: &str) {
        let mut s = self.state.lock().expect("breaker lock");
        if s.probing || s.open_until.is_none() {
            tracing::warn!(pause = ?s.cooldown, %reason, "pausing sending");
            Self::open(&mut s);
        }
    }

    fn open(s: &mut BreakerState) {
        s.open_until = Some(Instant::now() + s.cooldown);
        s.cooldown = (s.cooldown * 2).min(Self::MAX_COOLDOWN);
        s.probing = false;
    }

    /// The probe ended without the server's verdict (nothing was claimed, its
    /// subscriber had left, its message could not be built): let another one
    /// through at once.
    pub fn probe_unanswered(&self) {
        let mut s = self.state.lock().expect("breaker lock");
        s.probing = false;
        s.probe_at = None;
    }

    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .expect("breaker lock")
            .open_until
            .is_some()
    }
}

/// The delay before retry number `attempt` (1-based): `base * 2^(attempt-1)`,
/// capped at `max`, with "equal jitter" (between half and all of it).
pub fn backoff(r: &RetrySettings, attempt: u32) -> Duration {
    let exp = r.base_delay.saturating_mul(
        1u32.checked_shl(attempt.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX),
    );
    let capped = exp.min(r.max_delay);
    let half = capped / 2;
    half + half.mul_f64(fastrand::f64())
}

/// An edition's prepared papers, as last loaded.
struct Cached {
    edition: Option<Arc<Edition>>,
    /// [`store::papers::selection_version`] when loaded.
    version: String,
    /// When the version was last compared with the database's.
    checked: Instant,
}

/// How often a cached edition is compared with its selection (an editor may
/// change it while the edition is sent).
const EDITION_RECHECK: Duration = Duration::from_secs(1);

/// Editions cached at most: the oldest checked is dropped to make room.
const EDITIONS_CACHED: usize = 4;

/// The editions being sent, prepared once each, up to [`EDITIONS_CACHED`].
#[derive(Default)]
struct EditionCache(HashMap<NaiveDate, Cached>);

impl EditionCache {
    /// The cached edition if it was compared with the database lately.
    fn fresh(&self, date: NaiveDate) -> Option<Option<Arc<Edition>>> {
        let c = self.0.get(&date)?;
        (c.checked.elapsed() < EDITION_RECHECK).then(|| c.edition.clone())
    }

    /// The cached edition if its selection is still `version`.
    fn confirm(&mut self, date: NaiveDate, version: &str) -> Option<Option<Arc<Edition>>> {
        let c = self.0.get_mut(&date).filter(|c| c.version == version)?;
        c.checked = Instant::now();
        Some(c.edition.clone())
    }

    /// Caches a (re)loaded edition; the least lately checked other one goes
    /// when the cache is full. True if `date` was cached before (it changed).
    fn put(&mut self, date: NaiveDate, version: String, edition: Option<Arc<Edition>>) -> bool {
        if self.0.len() >= EDITIONS_CACHED && !self.0.contains_key(&date) {
            let oldest = self
                .0
                .iter()
                .min_by_key(|(_, c)| c.checked)
                .map(|(d, _)| *d);
            self.0.retain(|d, _| Some(*d) != oldest);
        }
        let checked = Instant::now();
        let cached = Cached {
            edition,
            version,
            checked,
        };
        self.0.insert(date, cached).is_some()
    }
}

struct Job {
    claimed: Claimed,
    subscriber: Subscriber,
}

/// A worker's outcome on its way to the database.
struct Unrecorded {
    id: i64,
    tally: Tally,
    written: tokio::sync::oneshot::Receiver<Result<(), String>>,
}

/// The engine. Build one per process; [`Engine::run`] drives it.
pub struct Engine {
    pool: SqlitePool,
    /// The process's one writing connection ([`store::writer`]).
    writer: SqlitePool,
    composer: Composer,
    mailer: Arc<Mailer>,
    retry: RetrySettings,
    concurrency: usize,
    thumbnails: bool,
    editions: tokio::sync::Mutex<EditionCache>,
    pub breaker: Breaker,
    pub progress: Progress,
    metrics: Arc<crate::metrics::Metrics>,
    /// Whether the server is refusing everyone ([`guard`]).
    guard: Mutex<guard::Guard>,
    /// Refusals the guard took back before their outcome was recorded.
    undone: Mutex<std::collections::HashSet<i64>>,
    /// An alert may be showing (one from an earlier run, until a message is
    /// accepted): the first accepted message clears it.
    alerted: std::sync::atomic::AtomicBool,
    wake: Notify,
    recorder: Recorder,
    /// Claims and sends only while this process holds the sending lock.
    fence: Fence,
}

impl Engine {
    pub fn new(
        settings: &Settings,
        pool: SqlitePool,
        writer: SqlitePool,
        composer: Composer,
        mailer: Arc<Mailer>,
        metrics: Arc<crate::metrics::Metrics>,
        fence: Fence,
    ) -> Arc<Self> {
        let recorder = Recorder::start(
            pool.clone(),
            writer.clone(),
            fence.me().to_string(),
            i64::from(settings.mail.bounce.threshold),
        );
        Arc::new(Self {
            recorder,
            fence,
            pool,
            writer,
            composer,
            mailer,
            retry: settings.mail.retry.clone(),
            concurrency: usize::from(settings.mail.concurrency),
            thumbnails: settings.newsletter.thumbnails,
            editions: Default::default(),
            breaker: Breaker::default(),
            progress: Progress::default(),
            metrics,
            guard: Mutex::default(),
            undone: Mutex::default(),
            alerted: std::sync::atomic::AtomicBool::new(true),
            wake: Notify::new(),
        })
    }

    /// Where messages go, for logs.
    pub fn describe_transport(&self) -> String {
        self.mailer.describe()
    }

    /// New rows were enqueued: look now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends due rows until `shutdown`, or, with `until_done`, until the rows of
    /// `only` (or of every edition) are all final. Rows not yet started when
    /// shutdown comes go back to the queue untouched.
    pub async fn run(
        self: &Arc<Self>,
        only: Option<NaiveDate>,
        until_done: bool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        // A few claimed rows wait per worker, so claims come in batches. They are
        // not in flight: a crash puts them back in the queue unsent.
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>((self.concurrency * 16).max(32));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let in_flight = Arc::new(AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.concurrency {
            let engine = Arc::clone(self);
            let rx = Arc::clone(&rx);
            let shutdown = shutdown.clone();
            let in_flight = Arc::clone(&in_flight);
            workers.spawn(async move {
                let mut sender = engine.mailer.sender();
                // The previous message's outcome while it is being written. The
                // next message waits for it only at its point of no return (the
                // server's 354), so the write overlaps with composing and with
                // MAIL, RCPT and DATA; no worker ever has more than one message
                // delivered but not recorded.
                let mut unrecorded: Option<Unrecorded> = None;
                // The next job and its status re-check, asked for as this one starts.
                let mut next: Option<(Job, StatusReply, Instant)> = None;
                loop {
                    let (job, status) = match next.take() {
                        // A slow server makes an early answer stale: ask again.
                        Some((job, _, asked)) if asked.elapsed() > STATUS_MAX_AGE => {
                            let status = engine.recorder.ask_status(job.subscriber.id);
                            (job, status)
                        }
                        Some((job, status, _)) => (job, status),
                        None => {
                            // Nothing at hand: settle the last outcome before waiting.
                            engine.settle(&mut unrecorded, &in_flight).await;
                            let job = { rx.lock().await.recv().await };
                            let Some(job) = job else { break };
                            let status = engine.recorder.ask_status(job.subscriber.id);
                            (job, status)
                        }
                    };
                    if shutdown.is_cancelled() {
                        engine.settle(&mut unrecorded, &in_flight).await;
                        engine.unclaim(&job).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        engine.wake.notify_one();
                        continue;
                    }
                    let status = status
                        .await
                        .unwrap_or_else(|_| Standing::Unknown("the recorder stopped".into()));
                    let answered = Instant::now();
                    next = rx
                        .try_lock()
                        .ok()
                        .and_then(|mut r| r.try_recv().ok())
                        .map(|j| {
                            let s = engine.recorder.ask_status(j.subscriber.id);
                            (j, s, Instant::now())
                        });
                    let gate: Gate = Box::pin(engine.settle(&mut unrecorded, &in_flight));
                    let checked = (status, answered);
                    let (outcome, tally) = engine.attempt(&mut sender, &job, checked, gate).await;
                    // When nothing was sent the gate was never reached.
                    engine.settle(&mut unrecorded, &in_flight).await;
                    let (outcome, tally) = engine.reconsider(outcome, tally);
                    unrecorded = Some(Unrecorded {
                        id: job.claimed.id,
                        tally,
                        written: engine.recorder.ask_record(outcome),
                    });
                }
                engine.settle(&mut unrecorded, &in_flight).await;
                sender.close().await;
            });
        }

        let result = self
            .claim_loop(&tx, &in_flight, only, until_done, &shutdown)
            .await;
        drop(tx);
        while workers.join_next().await.is_some() {}
        result?;
        self.fence.check()
    }

    async fn claim_loop(
        &self,
        tx: &tokio::sync::mpsc::Sender<Job>,
        in_flight: &AtomicU64,
        only: Option<NaiveDate>,
        until_done: bool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut swept = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let limit = match self.breaker.allowance() {
                Allowance::Full => {
                    // Claim in batches: wait until half the queue is free (or
                    // nothing is left to do) rather than claiming row by row.
                    let half = tx.max_capacity() / 2;
                    while tx.capacity() < half && in_flight.load(Ordering::SeqCst) as usize > half {
                        tokio::select! {
                            _ = self.wake.notified() => {}
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    }
                    tx.capacity().max(1) as u32
                }
                Allowance::Probe => {
                    // Wait for the workers to drain before probing with one message.
                    while in_flight.load(Ordering::SeqCst) > 0 && !shutdown.is_cancelled() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    1
                }
                Allowance::Wait(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
            };
            if !self.fence.held() {
                // The heartbeat has not renewed the lock within its TTL.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            // Wait for room before claiming, so claimed rows do not sit in a queue.
            let permit = tokio::select! {
                p = tx.reserve() => p?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let claimed = async {
                let mut w = self.writer.acquire().await?;
                let lease = LEASE.as_millis() as i64;
                let me = self.fence.me();
                anyhow::Ok(deliveries::claim(&mut w, me, limit, lease, only).await?)
            }
            .await;
            let claimed = match claimed {
                Ok(c) => c,
                // Another process holds the database (a large import): wait it out.
                Err(e) if store::is_busy(&e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the database is locked by another process; claiming later");
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut conn = self.pool.acquire().await?;
            if claimed.is_empty() {
                drop(permit);
                // A probe that found nothing to send says nothing of the server.
                if self.breaker.is_open() {
                    self.breaker.probe_unanswered();
                }
                if swept.elapsed() >= SWEEP_EVERY {
                    swept = Instant::now();
                    self.release_expired().await;
                }
                if until_done && in_flight.load(Ordering::SeqCst) == 0 {
                    let pending = match only {
                        Some(d) => !deliveries::counts(&mut conn, d).await?.finished(),
                        None => deliveries::next_due(&mut conn, None).await?.is_some(),
                    };
                    if !pending {
                        return Ok(());
                    }
                }
                let next = deliveries::next_due(&mut conn, only).await?;
                drop(conn);
                let wait = next
                    .map(|at| Duration::from_millis((at - store::now_ms()).clamp(5, 1000) as u64))
                    .unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            let ids: Vec<i64> = claimed.iter().map(|c| c.subscriber_id).collect();
            let subs = subscribers::get_many(&mut conn, &ids).await?;
            drop(conn);
            self.dispatch(claimed, subs, permit, tx, in_flight).await;
        }
    }

    /// Hands claimed rows to the workers (the first through `permit`). A row
    /// whose subscriber cannot be read fails alone.
    async fn dispatch(
        &self,
        claimed: Vec<Claimed>,
        subs: HashMap<i64, Result<Subscriber, String>>,
        permit: tokio::sync::mpsc::Permit<'_, Job>,
        tx: &tokio::sync::mpsc::Sender<Job>,
        in_flight: &AtomicU64,
    ) {
        let mut permit = Some(permit);
        for c in claimed {
            // One subscriber can have rows of several editions in a batch.
            let subscriber = match subs.get(&c.subscriber_id) {
                Some(Ok(s)) => s.clone(),
                Some(Err(e)) => {
                    let reason = format!("cannot read the subscriber: {e}");
                    tracing::error!(delivery = c.id, %reason, "failed");
                    let failed = Outcome::Failed {
                        id: c.id,
                        reason,
                        bounce: None,
                    };
                    if let Ok(Ok(())) = self.recorder.ask_record(failed).await {
                        self.count(Tally::Failed);
                    }
                    continue;
                }
                // Deleted since the claim (their rows go with them).
                None => continue,
            };
            let job = Job {
                claimed: c,
                subscriber,
            };
            in_flight.fetch_add(1, Ordering::SeqCst);
            match permit.take() {
                Some(p) => p.send(job),
                None => {
                    if let Err(e) = tx.send(job).await {
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        self.unclaim(&e.0).await;
                    }
                }
            }
        }
    }

    /// The edition's prepared papers, prepared once and again only when its
    /// selection changes (compared at most every [`EDITION_RECHECK`]).
    async fn edition(&self, date: NaiveDate) -> anyhow::Result<Option<Arc<Edition>>> {
        let mut cache = self.editions.lock().await;
        if let Some(e) = cache.fresh(date) {
            return Ok(e);
        }
        let mut conn = self.pool.acquire().await?;
        let version = store::papers::selection_version(&mut conn, date).await?;
        if let Some(e) = cache.confirm(date, &version) {
            return Ok(e);
        }
        let papers = store::papers::selection(&mut conn, date).await?;
        let n = papers.len();
        let edition =
            (!papers.is_empty()).then(|| Arc::new(Edition::new(date, papers, self.thumbnails)));
        if cache.put(date, version, edition.clone()) {
            tracing::info!(%date, papers = n, "the edition's selection changed; readers not yet sent get the new one");
        }
        Ok(edition)
    }

    /// Waits for a worker's last outcome to be committed and counts it; `false`
    /// if it could not be recorded. Safe to cancel and call again.
    async fn settle(&self, slot: &mut Option<Unrecorded>, in_flight: &AtomicU64) -> bool {
        let Some(u) = slot.as_mut() else {
            return true;
        };
        let result = (&mut u.written)
            .await
            .map_err(|_| "the recorder stopped".to_string())
            .and_then(|r| r);
        let u = slot.take().expect("checked above");
        in_flight.fetch_sub(1, Ordering::SeqCst);
        self.wake.notify_one();
        match result {
            Ok(()) => {
                self.count(u.tally);
                true
            }
            Err(e) => {
                // The row keeps its lease and is sent again after a restart.
                tracing::error!(delivery = u.id, error = %e, "cannot record a delivery outcome");
                false
            }
        }
    }

    /// Puts rows whose lease ran out back in the queue.
    async fn release_expired(&self) {
        let released = async {
            let mut w = self.writer.acquire().await?;
            anyhow::Ok(deliveries::release_expired(&mut w, self.fence.me()).await?)
        }
        .await;
        match released {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                messages = n,
                "claimed messages whose lease ran out go back to the queue (a recipient may get one twice)"
            ),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot release expired claims"),
        }
    }

    async fn unclaim(&self, job: &Job) {
        let r = async {
            let mut conn = self.writer.acquire().await?;
            anyhow::Ok(deliveries::unclaim(&mut conn, self.fence.me(), job.claimed.id).await?)
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot release a claimed delivery; it is retried when its lease ends");
        }
    }

    /// Decides what happens to one claimed row: `status` is the subscriber's
    /// standing as just re-checked. Sends at most one message.
    async fn attempt(
        &self,
        sender: &mut Sender,
        job: &Job,
        (status, answered): (Standing, Instant),
        gate: Gate<'_>,
    ) -> (Outcome, Tally) {
        let c = &job.claimed;
        let subscriber = &job.subscriber;
        let failed = |reason: String| {
            (
                Outcome::Failed {
                    id: c.id,
                    reason,
                    bounce: None,
                },
                Tally::Failed,
            )
        };
        if !matches!(status, Standing::Active) {
            return self.not_wanted(job, status);
        }
        let Ok(date) = c.edition_date.parse::<NaiveDate>() else {
            return failed(format!("invalid edition date {:?}", c.edition_date));
        };
        let edition = match self.edition(date).await {
            Ok(Some(e)) => e,
            Ok(None) => return failed(format!("no papers are selected for {date}")),
            Err(e) => {
                let reason = format!("cannot load the edition: {e:#}");
                return uncounted(
                    c.id,
                    reason,
                    store::now_ms() + self.retry.base_delay.as_millis() as i64,
                );
            }
        };
        let reader = Reader::from(subscriber);
        let message = match self.composer.compose(&edition, &reader) {
            Ok(m) => m,
            Err(e) => return failed(format!("cannot build the message: {e:#}")),
        };
        // Recorded as the message carries it.
        let message_id = message
            .headers()
            .get_raw("Message-ID")
            .unwrap_or_default()
            .to_string();
        let raw = message.formatted();
        let started = std::time::Instant::now();
        // Connecting, TLS, AUTH and the gate can take seconds: at the point of
        // no return, a status answer older than STATUS_MAX_AGE is asked again.
        let changed: Mutex<Option<Standing>> = Mutex::new(None);
        let gate: Gate = Box::pin(async {
            if !gate.await {
                return false;
            }
            if !self.fence.held() {
                *changed.lock().expect("status lock") = Some(Standing::Fenced);
                return false;
            }
            if answered.elapsed() <= STATUS_MAX_AGE {
                return true;
            }
            let now = self.recorder.ask_status(subscriber.id).await;
            match now.unwrap_or_else(|_| Standing::Unknown("the recorder stopped".into())) {
                Standing::Active => true,
                other => {
                    *changed.lock().expect("status lock") = Some(other);
                    false
                }
            }
        });
        let result = sender.send(message.envelope(), &raw, gate).await;
        self.metrics
            .send_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Some(standing) = changed.into_inner().expect("status lock") {
            return self.not_wanted(job, standing);
        }
        match result {
            Ok(reply) => self.sent(job, date, reply, message_id),
            Err(Failure::Permanent {
                reason,
                hard_bounce,
            }) => self.refused(job, date, reason, hard_bounce),
            Err(Failure::Transient { reason, connection }) => {
                self.transient(job, date, reason, connection)
            }
        }
    }

    /// The subscriber is not (known to be) wanting mail: an ended subscription
    /// cancels the row; an unanswered check retries it soon, uncounted.
    fn not_wanted(&self, job: &Job, standing: Standing) -> (Outcome, Tally) {
        let id = job.claimed.id;
        // A probe that is not sent says nothing of the server.
        if self.breaker.is_open() {
            self.breaker.probe_unanswered();
        }
        match standing {
            Standing::Ended(status) => {
                let reason = format!("subscriber {status}");
                let status = "cancelled";
                (Outcome::Final { id, status, reason }, Tally::Cancelled)
            }
            Standing::Unknown(why) => {
                let reason = format!("cannot check the subscriber's status: {why}");
                let next_at = store::now_ms() + self.retry.base_delay.as_millis() as i64;
                uncounted(id, reason, next_at)
            }
            Standing::Fenced => {
                let reason = "not sent: this process does not hold the sending lock".to_string();
                uncounted(id, reason, store::now_ms())
            }
            // Not reached: only called for a subscriber not known active.
            Standing::Active => {
                let reason = "not sent".to_string();
                let next_at = store::now_ms();
                uncounted(id, reason, next_at)
            }
        }
    }

    fn sent(
        &self,
        job: &Job,
        date: NaiveDate,
        reply: String,
        message_id: String,
    ) -> (Outcome, Tally) {
        self.breaker.success();
        if self.guard.lock().expect("guard lock").accepted() {
            tracing::info!("the mail server accepts recipients again");
        }
        // An alert raised by this process or an earlier one is over.
        if self.alerted.swap(false, Ordering::Relaxed) {
            self.alert(None);
        }
        tracing::debug!(to = %job.subscriber.email, %date, %reply, "sent");
        let id = job.claimed.id;
        (
            Outcome::Sent {
                id,
                reply,
                message_id,
            },
            Tally::Sent,
        )
    }

    /// A permanent refusal: about the recipient, unless the guard finds the
    /// server refusing everyone with the same reply.
    fn refused(
        &self,
        job: &Job,
        date: NaiveDate,
        reason: String,
        bounce: bool,
    ) -> (Outcome, Tally) {
        let (id, subscriber) = (job.claimed.id, &job.subscriber);
        let refusal = guard::Refusal {
            delivery: id,
            subscriber: subscriber.id,
            bounce,
        };
        let key = guard::reply_key(&reason, subscriber.email.as_str());
        let judgement = self.guard.lock().expect("guard lock").refused(key, refusal);
        let guard::Judgement::Server { undo } = judgement else {
            self.breaker.success();
            tracing::warn!(to = %subscriber.email, %date, %reason, "rejected");
            let bounce = bounce.then_some(subscriber.id);
            return (Outcome::Failed { id, reason, bounce }, Tally::Failed);
        };
        if !undo.is_empty() {
            tracing::error!(
                reply = %reason,
                recipients = undo.len() + 1,
                "the mail server refuses every recipient with the same reply: the fault is the \
                 server's (relaying, policy, credentials), not the recipients'; sending pauses, \
                 nobody is suppressed, and the refusals so far are taken back"
            );
            self.alerted.store(true, Ordering::Relaxed);
            self.alert(Some(&reason));
            self.undo(undo);
        }
        self.breaker.trip(&reason);
        let age = store::now_ms() - job.claimed.first_attempt_at;
        if age >= self.retry.max_age.as_millis() as i64 {
            let reason = format!("gave up: older than mail.retry.max_age: {reason}");
            return (
                Outcome::Failed {
                    id,
                    reason,
                    bounce: None,
                },
                Tally::Failed,
            );
        }
        let next_at = store::now_ms();
        uncounted(id, reason, next_at)
    }

    /// Takes back refusals the guard found to be the server's doing: rows
    /// already recorded as failed go back to the queue (and a bounce they
    /// counted is taken back); a row not yet recorded is retried, uncounted,
    /// when its worker records it ([`Engine::reconsider`]).
    fn undo(&self, refusals: Vec<guard::Refusal>) {
        let mut pending = self.undone.lock().expect("undone lock");
        for r in refusals {
            pending.insert(r.delivery);
            let bounce = r.bounce.then_some(r.subscriber);
            drop(self.recorder.ask_record(Outcome::Undo {
                id: r.delivery,
                bounce,
            }));
        }
    }

    /// A worker's outcome just before it is recorded: a refusal taken back by
    /// the guard meanwhile becomes an uncounted retry.
    fn reconsider(&self, outcome: Outcome, tally: Tally) -> (Outcome, Tally) {
        match outcome {
            Outcome::Failed { id, reason, .. }
                if self.undone.lock().expect("undone lock").remove(&id) =>
            {
                let next_at = store::now_ms();
                uncounted(id, reason, next_at)
            }
            other => (other, tally),
        }
    }

    /// Records (or, with `None`, clears) the alert `paperpost status` shows.
    fn alert(&self, reply: Option<&str>) {
        let (writer, message) = (
            self.writer.clone(),
            reply.map(|r| {
                format!("sending paused: the mail server refuses every recipient with \"{r}\"")
            }),
        );
        tokio::spawn(async move {
            let r = async {
                let mut w = writer.acquire().await?;
                anyhow::Ok(deliveries::set_alert(&mut w, message.as_deref()).await?)
            };
            if let Err(e) = r.await {
                tracing::warn!(error = %format!("{e:#}"), "cannot record the alert for `paperpost status`");
            }
        });
    }

    /// A failure worth another try.
    fn transient(
        &self,
        job: &Job,
        date: NaiveDate,
        reason: String,
        connection: bool,
    ) -> (Outcome, Tally) {
        let (c, subscriber) = (&job.claimed, &job.subscriber);
        let age = Duration::from_millis((store::now_ms() - c.first_attempt_at).max(0) as u64);
        if connection {
            self.breaker.connection_failure(&reason);
            // Uncounted, but never past max_age: a stale edition is given up.
            if self.breaker.is_open() && age < self.retry.max_age {
                // The server is down: this says nothing about the
                // message, so the attempt is not counted.
                let next_at = store::now_ms();
                return uncounted(c.id, reason, next_at);
            }
        } else {
            self.breaker.success();
        }
        let attempts = c.attempts.max(1) as u32;
        if attempts >= self.retry.max_attempts || age >= self.retry.max_age {
            let reason = if attempts >= self.retry.max_attempts {
                format!("gave up after {attempts} attempts: {reason}")
            } else {
                format!(
                    "gave up after {attempts} attempts, older than mail.retry.max_age: {reason}"
                )
            };
            tracing::warn!(to = %subscriber.email, %date, %reason, "failed");
            (
                Outcome::Failed {
                    id: c.id,
                    reason,
                    bounce: None,
                },
                Tally::Failed,
            )
        } else {
            let delay = backoff(&self.retry, attempts);
            tracing::info!(to = %subscriber.email, %date, %reason, retry_in = ?delay, attempt = attempts, "will retry");
            let next_at = store::now_ms() + delay.as_millis() as i64;
            (
                Outcome::Retry {
                    id: c.id,
                    reason,
                    next_at,
                    counted: true,
                },
                Tally::Retried,
            )
        }
    }

    fn count(&self, t: Tally) {
        let m = &self.metrics.delivered;
        let (counter, exported) = match t {
            Tally::Sent => (&self.progress.sent, &m.sent),
            Tally::Failed => (&self.progress.failed, &m.failed),
            Tally::Cancelled => (&self.progress.cancelled, &m.cancelled),
            Tally::Retried => (&self.progress.retried, &m.retried),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        exported.inc();
    }
}

/// A retry that does not count as an attempt: the failure said nothing
/// about the message (the server was down, the status could not be checked).
fn uncounted(id: i64, reason: String, next_at: i64) -> (Outcome, Tally) {
    let counted = false;
    (
        Outcome::Retry {
            id,
            reason,
            next_at,
            counted,
        },
        Tally::Retried,
    )
}

/// Which progress counter an outcome moves.
#[derive(Debug, Clone, Copy)]
enum Tally {
    Sent,
    Failed,
    Cancelled,
    Retried,
}

/// What happened to one delivery row.
#[derive(Debug)]
enum Outcome {
    Sent {
        id: i64,
        reply: String,
        message_id: String,
    },
    Retry {
        id: i64,
        reason: String,
        next_at: i64,
        counted: bool,
    },
    /// Failed; `bounce` names a subscriber whose mailbox does not exist.
    Failed {
        id: i64,
        reason: String,
        bounce: Option<i64>,
    },
    Final {
        id: i64,
        status: &'static str,
        reason: String,
    },
    /// A refusal taken back (the server refused everyone): a failed row goes
    /// back to the queue, uncounted, and a bounce it counted is taken back.
    Undo { id: i64, bounce: Option<i64> },
}

/// A subscriber's standing, re-checked just before sending.
#[derive(Debug)]
enum Standing {
    Active,
    /// Unsubscribed, bounced or deleted: never sent.
    Ended(String),
    /// The database could not say: not sent now, tried again.
    Unknown(String),
    /// Not asked: this process may not send now ([`Fence`]).
    Fenced,
}

enum Request {
    /// Is this subscriber still active?
    Status(i64, tokio::sync::oneshot::Sender<Standing>),
    Record(Outcome, tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Group commit for the workers: status checks and outcomes that arrive
/// together are answered with one query and written in one transaction (the
/// sent rows with one statement), the two at once on separate connections. A
/// worker waits for its outcome to be committed before its next message's body
/// goes out, so a crash can lose at most the outcomes of the messages in flight.
struct Recorder {
    tx: tokio::sync::mpsc::UnboundedSender<Request>,
}

impl Recorder {
    fn start(pool: SqlitePool, writer: SqlitePool, me: String, bounce_threshold: i64) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < 1024 {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let mut checks = Vec::new();
                let mut outcomes = Vec::new();
                for r in batch {
                    match r {
                        Request::Status(id, reply) => checks.push((id, reply)),
                        Request::Record(o, reply) => outcomes.push((o, reply)),
                    }
                }
                // The checks read on the pool while the outcomes are written on
                // the writer's connection: two threads, at the same time.
                let check = async {
                    if checks.is_empty() {
                        return;
                    }
                    let ids: Vec<i64> = checks.iter().map(|(id, _)| *id).collect();
                    let statuses = subscriber_statuses(&pool, &ids).await;
                    for (id, reply) in checks {
                        let answer = match &statuses {
                            Ok(m) => match m.get(&id).map(String::as_str) {
                                Some("active") => Standing::Active,
                                Some(other) => Standing::Ended(other.to_string()),
                                None => Standing::Ended("deleted".to_string()),
                            },
                            Err(e) => Standing::Unknown(format!("{e:#}")),
                        };
                        let _ = reply.send(answer);
                    }
                };
                let record = async {
                    if outcomes.is_empty() {
                        return;
                    }
                    let (items, replies): (Vec<_>, Vec<_>) = outcomes.into_iter().unzip();
                    let result = write_patiently(&writer, &me, &items, bounce_threshold)
                        .await
                        .map_err(|e| format!("{e:#}"));
                    for reply in replies {
                        let _ = reply.send(result.clone());
                    }
                };
                tokio::join!(check, record);
            }
        });
        Self { tx }
    }

    /// Asks whether a subscriber is still active.
    fn ask_status(&self, subscriber_id: i64) -> StatusReply {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Request::Status(subscriber_id, tx));
        rx
    }

    /// Asks for an outcome to be written; the answer comes once it is committed.
    fn ask_record(&self, outcome: Outcome) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Request::Record(outcome, tx));
        rx
    }
}

type StatusReply = tokio::sync::oneshot::Receiver<Standing>;

async fn subscriber_statuses(
    pool: &SqlitePool,
    ids: &[i64],
) -> anyhow::Result<HashMap<i64, String>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, status FROM subscribers WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(serde_json::to_string(ids)?)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// How long outcomes wait for a database that another process keeps locked
/// (a large import, a backup) before the error is given up on. Meanwhile the
/// workers hold their next message before its body: an outcome not written
/// means a message sent twice, so not sending is the better wait.
const RECORD_PATIENCE: Duration = Duration::from_secs(600);

async fn write_patiently(
    writer: &SqlitePool,
    me: &str,
    items: &[Outcome],
    bounce_threshold: i64,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut warned = false;
    loop {
        match write_outcomes(writer, me, items, bounce_threshold).await {
            Err(e) if store::is_busy(&e) && start.elapsed() < RECORD_PATIENCE => {
                if !warned {
                    tracing::warn!(error = %format!("{e:#}"), "the database is locked by another process; waiting to record delivery outcomes");
                    warned = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Ok(()) if warned => {
                tracing::info!(waited = ?start.elapsed(), "the database is free again; outcomes recorded");
                return Ok(());
            }
            other => return other,
        }
    }
}

async fn write_outcomes(
    writer: &SqlitePool,
    me: &str,
    items: &[Outcome],
    bounce_threshold: i64,
) -> anyhow::Result<()> {
    let sent: Vec<serde_json::Value> = items
        .iter()
        .filter_map(|o| match o {
            Outcome::Sent {
                id,
                reply,
                message_id,
            } => Some(serde_json::json!({"id": id, "reply": reply, "message_id": message_id})),
            _ => None,
        })
        .collect();
    let sent_n = sent.len() as u64;
    let all_sent = sent_n == items.len() as u64;
    let sent = (!sent.is_empty()).then(|| serde_json::Value::Array(sent).to_string());
    // The common case, a batch of accepted messages: one statement, autocommit.
    if all_sent && let Some(sent) = &sent {
        let mut conn = writer.acquire().await?;
        let written = deliveries::mark_sent_many(&mut conn, me, sent).await?;
        warn_not_ours(sent_n - written);
        return Ok(());
    }
    let mut tx = writer.begin().await?;
    for o in items {
        match o {
            Outcome::Sent { .. } => {}
            Outcome::Retry {
                id,
                reason,
                next_at,
                counted,
            } => {
                deliveries::mark_retry(&mut tx, me, *id, reason, *next_at, *counted).await?;
            }
            Outcome::Final { id, status, reason } => {
                if !deliveries::mark_final(&mut tx, me, *id, status, reason).await? {
                    warn_not_ours(1);
                }
            }
            Outcome::Undo { id, bounce } => {
                let undone = deliveries::undo_refusal(&mut tx, *id).await?;
                if let (true, Some(subscriber_id)) = (undone, bounce) {
                    subscribers::undo_bounce(&mut tx, *subscriber_id, bounce_threshold).await?;
                }
            }
            Outcome::Failed { id, reason, bounce } => {
                if !deliveries::mark_final(&mut tx, me, *id, "failed", reason).await? {
                    warn_not_ours(1);
                    continue;
                }
                if let Some(subscriber_id) = *bounce {
                    let n = deliveries::add_hard_bounce(&mut tx, subscriber_id).await?;
                    if n >= bounce_threshold {
                        subscribers::end_subscription(
                            &mut tx,
                            subscriber_id,
                            SubscriberStatus::Bounced,
                            "bounce",
                        )
                        .await?;
                        tracing::warn!(
                            subscriber = subscriber_id,
                            bounces = n,
                            "marked bounced; no more mail goes to this address"
                        );
                    }
                }
            }
        }
    }
    if let Some(sent) = &sent {
        let written = deliveries::mark_sent_many(&mut tx, me, sent).await?;
        warn_not_ours(sent_n - written);
    }
    tx.commit().await?;
    Ok(())
}

/// Outcomes of rows that are no longer this process's (it lost the sending
/// lock and the next holder took them back) are not written.
fn warn_not_ours(n: u64) {
    if n > 0 {
        tracing::warn!(
            outcomes = n,
            "outcomes not recorded: their messages now belong to the process that took over the              sending lock (a recipient may get one twice)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_edition_cache_rechecks_and_keeps_the_editions_lately_used() {
        let mut cache = EditionCache::default();
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        let edition = |d| Some(Arc::new(Edition::new(day(d), vec![], false)));
        assert!(!cache.put(day(1), "v1".into(), edition(1)));
        assert!(cache.fresh(day(1)).is_some());
        tokio::time::sleep(EDITION_RECHECK).await;
        assert!(
            cache.fresh(day(1)).is_none(),
            "compared again after a while"
        );
        assert!(cache.confirm(day(1), "v2").is_none(), "a changed selection");
        assert!(cache.put(day(1), "v2".into(), edition(1)), "reloaded");
        assert!(cache.confirm(day(1), "v2").is_some());
        for d in 2..=4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cache.put(day(d), "v".into(), edition(d));
        }
        // Day 1 is confirmed again; day 2 is now the least lately checked.
        cache.confirm(day(1), "v2");
        cache.put(day(5), "v".into(), edition(5));
        assert_eq!(cache.0.len(), EDITIONS_CACHED);
        assert!(!cache.0.contains_key(&day(2)), "evicted");
        assert!(cache.0.contains_key(&day(1)));
    }

    fn retry(base: u64, max: u64) -> RetrySettings {
        RetrySettings {
            max_attempts: 8,
            base_delay: Duration::from_secs(base),
            max_delay: Duration::from_secs(max),
            max_age: Duration::from_secs(86_400),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let r = retry(30, 3600);
        for (attempt, full) in [(1, 30), (2, 60), (3, 120), (8, 3600), (40, 3600)] {
            for _ in 0..50 {
                let d = backoff(&r, attempt).as_secs_f64();
                assert!(
                    d >= full as f64 / 2.0 && d <= full as f64,
                    "attempt {attempt}: {d}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_without_a_verdict_does_not_hold_the_breaker_half_open() {
        let b = Breaker::default();
        for _ in 0..Breaker::TRIP_AFTER {
            b.connection_failure("refused");
        }
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(b.allowance(), Allowance::Probe);
        // Its subscriber had left, say: no verdict.
        b.probe_unanswered();
        assert_eq!(b.allowance(), Allowance::Probe, "another probe at once");
        // A probe that never reports at all: another after the patience.
        assert!(matches!(b.allowance(), Allowance::Wait(_)));
        tokio::time::advance(Breaker::PROBE_PATIENCE).await;
        assert_eq!(b.allowance(), Allowance::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_repeated_connection_failures_and_probes() {
        let b = Breaker::default();
        assert_eq!(b.allowance(), Allowance::Full);
        b.connection_failure("refused");
        b.connection_failure("refused");
        assert_eq!(
            b.allowance(),
            Allowance::Full,
            "two failures are not an outage"
        );
        b.connection_failure("refused");
        assert!(matches!(b.allowance(), Allowance::Wait(_)));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(b.allowance(), Allowance::Probe);
        assert!(
            matches!(b.allowance(), Allowance::Wait(_)),
            "one probe at a time"
        );
        b.connection_failure("still refused");
        match b.allowance() {
            Allowance::Wait(d) => {
                assert!(d > Duration::from_millis(1500), "cool-down doubled: {d:?}")
            }
            other => panic!("{other:?}"),
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.allowance(), Allowance::Probe);
        b.success();
        assert_eq!(b.allowance(), Allowance::Full);
        assert!(!b.is_open());
    }
}
