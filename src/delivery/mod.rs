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
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{RetrySettings, Settings},
    digest::{Composer, Edition, Reader},
    domain::SubscriberStatus,
    lock::Fence,
    mailer::{Failure, Gate, Headers, Mailer, Sender},
    store::{
        self,
        deliveries::{self, Claimed},
        subscribers::{self, Subscriber},
    },
};

/// A subscriber's status is asked for while the message before theirs is
/// sent; when that took longer than this, it is asked again before sending.
const STATUS_MAX_AGE: Duration = Duration::from_millis(50);

mod breaker;
mod cache;
mod claim;
mod guard;
mod recorder;
mod retry;
mod worker;

pub use breaker::{Allowance, Breaker};
use cache::EditionCache;
use recorder::{Outcome, Recorder, Standing, StatusReply, Tally, uncounted};
pub use retry::backoff;

/// How often an idle claimer looks for rows whose lease ran out.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How long the claimer may go without going round its loop before the
/// engine counts as stuck (it goes round at least every second while it
/// runs, waiting included).
pub const CLAIMER_STALL: Duration = Duration::from_secs(120);

/// What the watchdog needs to know of the engine: its workers are there and
/// its claimer goes round. A wait on another process's database lock is
/// neither (the claimer goes round while it waits).
#[derive(Debug, Default)]
pub struct EngineHealth {
    running: std::sync::atomic::AtomicBool,
    workers: std::sync::atomic::AtomicUsize,
    claimer_at: std::sync::atomic::AtomicI64,
}

impl EngineHealth {
    /// The claimer went round its loop.
    fn claimer_alive(&self) {
        self.claimer_at.store(store::now_ms(), Ordering::Relaxed);
    }

    /// Why the engine is stuck at `now` (Unix ms), or `None`: every worker
    /// gone (a panic), or a claimer that has not gone round for
    /// [`CLAIMER_STALL`]. A restart is what helps either.
    pub fn problem(&self, now: i64) -> Option<&'static str> {
        if !self.running.load(Ordering::Relaxed) {
            return None;
        }
        if self.workers.load(Ordering::Relaxed) == 0 {
            return Some("every delivery worker has stopped");
        }
        let stalled = now - self.claimer_at.load(Ordering::Relaxed);
        (stalled > CLAIMER_STALL.as_millis() as i64).then_some("the delivery claimer is stuck")
    }
}

/// A worker counted as present until it ends, by return or by panic.
struct WorkerPresence<'a>(&'a EngineHealth);

impl<'a> WorkerPresence<'a> {
    fn new(health: &'a EngineHealth) -> Self {
        health.workers.fetch_add(1, Ordering::SeqCst);
        WorkerPresence(health)
    }
}

impl Drop for WorkerPresence<'_> {
    fn drop(&mut self) {
        self.0.workers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long [`Engine::run`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Until shutdown, sending whatever is due (the daemon).
    Shutdown,
    /// Until every row of this edition is final, or shutdown (`send`).
    EditionDone(NaiveDate),
}

impl Until {
    /// The edition whose rows alone are claimed, if any.
    fn edition(self) -> Option<NaiveDate> {
        match self {
            Until::Shutdown => None,
            Until::EditionDone(d) => Some(d),
        }
    }
}

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
    pool: crate::store::Pool,
    /// The process's one writing connection ([`store::writer`]).
    writer: crate::store::Pool,
    /// Swapped when the newsletter texts change (SIGHUP).
    composer: std::sync::RwLock<Arc<Composer>>,
    mailer: Arc<Mailer>,
    /// Swapped when the retry policy changes (SIGHUP).
    retry: std::sync::RwLock<RetrySettings>,
    concurrency: usize,
    /// How long a claimed row stays leased to this process (`mail.lease`).
    lease: Duration,
    thumbnails: bool,
    /// The domain of the signed VERP envelope sender (`mail.bounce.verp_domain`).
    verp_domain: Option<String>,
    editions: tokio::sync::Mutex<EditionCache>,
    pub breaker: Breaker,
    pub progress: Progress,
    metrics: Arc<crate::metrics::Metrics>,
    /// Whether the server is refusing everyone ([`guard`]).
    guard: Mutex<guard::Guard>,
    /// Refusals the guard took back before their outcome was recorded.
    undone: Mutex<std::collections::HashSet<i64>>,
    /// Rows this process has claimed and still tracks (waiting for a worker,
    /// being sent, or their outcome on its way): never swept back to the
    /// queue, however long they wait (a slow, rate-limited relay) or however
    /// the wall clock moves.
    held: Mutex<std::collections::HashSet<i64>>,
    /// Why sending stopped for good in this process: an outcome could not be
    /// recorded (a full disk, an I/O error), so no further message may
    /// leave. Set once.
    fault: std::sync::OnceLock<String>,
    /// For the watchdog: workers present, the claimer going round.
    pub health: EngineHealth,
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
        pool: crate::store::Pool,
        writer: crate::store::Pool,
        composer: Composer,
        mailer: Arc<Mailer>,
        metrics: Arc<crate::metrics::Metrics>,
        fence: Fence,
    ) -> Arc<Self> {
        let recorder = Recorder::start(
            pool.clone(),
            writer.clone(),
            fence.token(),
            i64::from(settings.mail.bounce.threshold),
        );
        Arc::new(Self {
            recorder,
            fence,
            pool,
            writer,
            composer: std::sync::RwLock::new(Arc::new(composer)),
            mailer,
            retry: std::sync::RwLock::new(settings.mail.retry.clone()),
            concurrency: usize::from(settings.mail.concurrency),
            lease: settings.mail.lease,
            thumbnails: settings.newsletter.thumbnails,
            verp_domain: settings.mail.bounce.verp_domain.clone(),
            editions: Default::default(),
            breaker: Breaker::default(),
            progress: Progress::default(),
            metrics,
            guard: Mutex::default(),
            undone: Mutex::default(),
            held: Mutex::default(),
            fault: std::sync::OnceLock::new(),
            health: EngineHealth::default(),
            alerted: std::sync::atomic::AtomicBool::new(true),
            wake: Notify::new(),
        })
    }

    /// Why this process stopped sending for good, if it did.
    pub fn fault(&self) -> Option<&str> {
        self.fault.get().map(String::as_str)
    }

    /// Stops all sending for good: no message leaves whose outcome, or whose
    /// predecessor's, cannot be recorded.
    fn stop_for_good(&self, why: String) {
        if self.fault.set(why.clone()).is_ok() {
            tracing::error!(
                reason = %why,
                "sending stopped: the database cannot record what is sent (a full disk, a dropped or \
                 read-only database?); \
                 messages not yet sent are left queued; paperpost exits so that it can be restarted \
                 once the database can be written"
            );
        }
        self.wake.notify_waiters();
    }

    /// This process tracks row `id` from now on.
    fn hold(&self, id: i64) {
        self.held.lock().expect("held lock").insert(id);
    }

    /// This process no longer tracks row `id` (recorded, unclaimed, or lost).
    fn let_go(&self, id: i64) {
        self.held.lock().expect("held lock").remove(&id);
    }

    /// The rows this process tracks.
    fn held(&self) -> Vec<i64> {
        self.held
            .lock()
            .expect("held lock")
            .iter()
            .copied()
            .collect()
    }

    /// The retry policy now.
    fn retry(&self) -> RetrySettings {
        self.retry.read().expect("retry lock").clone()
    }

    /// The composer now.
    fn composer(&self) -> Arc<Composer> {
        Arc::clone(&self.composer.read().expect("composer lock"))
    }

    /// Applies the live parts of reloaded settings: the retry policy, the
    /// newsletter texts and the rate limit.
    pub fn reload(&self, settings: &Settings, composer: Composer) {
        *self.retry.write().expect("retry lock") = settings.mail.retry.clone();
        *self.composer.write().expect("composer lock") = Arc::new(composer);
        self.mailer.set_rate_limit(settings.mail.rate_limit);
    }

    /// Where messages go, for logs.
    pub fn describe_transport(&self) -> String {
        self.mailer.describe()
    }

    /// New rows were enqueued: look now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends due rows until `shutdown` or `until` says. Rows not yet started
    /// when shutdown comes go back to the queue untouched.
    pub async fn run(
        self: &Arc<Self>,
        until: Until,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        // A few claimed rows wait per worker, so claims come in batches. They are
        // not in flight: a crash puts them back in the queue unsent.
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>((self.concurrency * 16).max(32));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let in_flight = Arc::new(AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.concurrency {
            let (rx, in_flight) = (Arc::clone(&rx), Arc::clone(&in_flight));
            workers.spawn(Arc::clone(self).work(rx, in_flight, shutdown.clone()));
        }

        self.health.claimer_alive();
        self.health.running.store(true, Ordering::SeqCst);
        let claimer = claim::Claimer {
            tx: &tx,
            in_flight: &in_flight,
            until,
            shutdown: &shutdown,
        };
        let result = self.claim_loop(claimer).await;
        if let Err(e) = &result {
            // Workers must not send what is already claimed either.
            self.stop_for_good(crate::telemetry::causes(e));
        }
        drop(tx);
        while workers.join_next().await.is_some() {}
        self.health.running.store(false, Ordering::SeqCst);
        result?;
        if let Some(why) = self.fault() {
            anyhow::bail!("stopped sending: a delivery outcome could not be recorded: {why}");
        }
        self.fence.check()
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

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn an_engine_is_stuck_without_workers_or_with_a_claimer_that_stopped() {
        let h = EngineHealth::default();
        let now = store::now_ms();
        assert_eq!(h.problem(now), None, "not running: nothing to say");
        h.running.store(true, Ordering::SeqCst);
        h.claimer_alive();
        let worker = WorkerPresence::new(&h);
        assert_eq!(h.problem(now), None);
        let stall = CLAIMER_STALL.as_millis() as i64;
        assert_eq!(h.problem(now + stall - 1_000), None);
        assert_eq!(
            h.problem(now + stall + 1_000),
            Some("the delivery claimer is stuck")
        );
        drop(worker);
        assert_eq!(h.problem(now), Some("every delivery worker has stopped"));
        // A worker that panics is gone too.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _present = WorkerPresence::new(&h);
            assert_eq!(h.problem(now), None);
            panic!("a worker's bug");
        }));
        assert!(panicked.is_err());
        assert_eq!(h.problem(now), Some("every delivery worker has stopped"));
    }
}
