//! The sending lock: one process sends for a database at a time.
//!
//! The holder renews it every third of its TTL. The lock is fenced: a claim
//! checks in the same statement that its process holds the lock, outcomes
//! change only rows their process claimed (`claimed_by`), and a process that
//! has not renewed within the TTL stops claiming and sending ([`Fence`]). A
//! holder on this machine that is gone is taken over at once; its identity
//! ([`Identity`]) tells a dead process from a live one in another container or
//! a process that reused its PID.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{self, deliveries};

/// Who holds the lock: enough to tell, from another process, whether it is
/// still running. Written "host:pid:start:boot:pidns:tag".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    host: String,
    pid: u32,
    /// The process's start time, in clock ticks after boot: a PID reused by
    /// a later process (PID 1 in a restarted container) has another.
    start: u64,
    /// The first 8 hex digits of the kernel's boot id.
    boot: String,
    /// The PID namespace's inode: a PID means nothing in another container.
    pidns: String,
    /// Random, so that two holders never share an identity.
    tag: String,
}

/// What this process can tell of a holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Running here.
    Running,
    /// It ran here and is gone (its PID is free, or now another process's).
    Gone,
    /// On another host, kernel or PID namespace: only its lock's expiry tells.
    Elsewhere,
}

impl Identity {
    pub fn of_this_process() -> Self {
        let pid = std::process::id();
        Identity {
            host: hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
                .replace(':', "_"),
            pid,
            start: start_ticks(pid).unwrap_or(0),
            boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|b| b.trim().replace('-', "").chars().take(8).collect())
                .unwrap_or_else(|_| "-".into()),
            pidns: std::fs::read_link("/proc/self/ns/pid")
                .map(|l| {
                    let l = l.to_string_lossy();
                    l.trim_start_matches("pid:[")
                        .trim_end_matches(']')
                        .to_string()
                })
                .unwrap_or_else(|_| "-".into()),
            tag: format!("{:08x}", fastrand::u32(..)),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let f: Vec<&str> = s.split(':').collect();
        let [host, pid, start, boot, pidns, tag] = f.as_slice() else {
            return None;
        };
        Some(Identity {
            host: host.to_string(),
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
            boot: boot.to_string(),
            pidns: pidns.to_string(),
            tag: tag.to_string(),
        })
    }

    /// Judges `holder` from this process; `probe(pid)` says whether a
    /// process with that PID runs here, and when it started if that can be
    /// read. Only a PID that is free, or whose process provably started at
    /// another time, is gone: one this process may not look at is running.
    pub fn judge(&self, holder: &Identity, probe: impl Fn(u32) -> Probe) -> Seen {
        let comparable = holder.host == self.host
            && holder.boot == self.boot
            && holder.pidns == self.pidns
            && self.boot != "-"
            && self.pidns != "-"
            && holder.pid > 0;
        if !comparable {
            return Seen::Elsewhere;
        }
        match probe(holder.pid) {
            Probe::Absent => Seen::Gone,
            Probe::Present { start: Some(s) } if s != holder.start => Seen::Gone,
            Probe::Present { .. } => Seen::Running,
        }
    }
}

/// What this process can find out about a PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// No such process (ESRCH from `kill(pid, 0)`).
    Absent,
    /// A process has this PID (or may: not allowed to ask); its start time
    /// when /proc/PID can be read (not with hidepid=2, ProtectProc=invisible
    /// or another user's process).
    Present { start: Option<u64> },
}

/// Probes `pid` here: `kill(pid, 0)`, then its start time.
pub fn probe(pid: u32) -> Probe {
    let Ok(raw) = i32::try_from(pid) else {
        return Probe::Present { start: None };
    };
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(raw, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return Probe::Absent;
    }
    Probe::Present {
        start: start_ticks(pid),
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Identity {
            host,
            pid,
            start,
            boot,
            pidns,
            tag,
        } = self;
        write!(f, "{host}:{pid}:{start}:{boot}:{pidns}:{tag}")
    }
}

/// Milliseconds of CLOCK_BOOTTIME: monotonic, and going on while the
/// machine is suspended.
pub fn boot_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), if it runs.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether this process may claim and send: it holds the lock and renewed it
/// within the TTL. Shared by the heartbeat and the engine.
#[derive(Clone, Debug)]
pub struct Fence(Arc<FenceState>);

#[derive(Debug)]
struct FenceState {
    me: String,
    /// This process's claim token: `claimed_by` on the rows it claims.
    token: i64,
    ttl: Duration,
    /// Held until then, unless renewed: on the runtime's monotonic clock,
    /// and in milliseconds of [`boot_ms`] (which goes on while the machine
    /// is suspended, when the monotonic clock stands still).
    until: Mutex<(Instant, i64)>,
    /// Another process took the lock: for good.
    lost: AtomicBool,
}

impl Fence {
    /// A fence taken at `at` for `ttl`.
    pub fn new(me: String, ttl: Duration, at: Instant) -> Self {
        let fence = Fence(Arc::new(FenceState {
            me,
            token: fastrand::i64(1..),
            ttl,
            until: Mutex::new((at, 0)),
            lost: AtomicBool::new(false),
        }));
        fence.renewed(at);
        fence
    }

    /// The holder's identity, as claims and outcomes carry it.
    pub fn me(&self) -> &str {
        &self.0.me
    }

    /// The claim token the rows this process claims carry.
    pub fn token(&self) -> i64 {
        self.0.token
    }

    /// The lock was renewed by a statement sent at `at`: held until `at` plus
    /// the TTL, less a tenth to spare for a message being sent then.
    pub fn renewed(&self, at: Instant) {
        let ttl = self.0.ttl;
        let keep = ttl - ttl / 10;
        let boot_at = boot_ms() - Instant::now().saturating_duration_since(at).as_millis() as i64;
        *self.0.until.lock().expect("fence lock") = (at + keep, boot_at + keep.as_millis() as i64);
    }

    pub fn held(&self) -> bool {
        self.held_at(Instant::now(), boot_ms())
    }

    /// Held at `now` and `boot` ([`boot_ms`]): not lost, and within the
    /// TTL on both clocks, so that a suspend (which stops the monotonic
    /// clock, not the lock's expiry for others) or a wall-clock step never
    /// leaves this process sending with a lock another may have taken.
    pub fn held_at(&self, now: Instant, boot: i64) -> bool {
        let (until, boot_until) = *self.0.until.lock().expect("fence lock");
        !self.is_lost() && now < until && boot < boot_until
    }

    pub fn lose(&self) {
        self.0.lost.store(true, Ordering::SeqCst);
    }

    pub fn is_lost(&self) -> bool {
        self.0.lost.load(Ordering::SeqCst)
    }

    /// An error if another process took the lock from this one.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.is_lost() {
            anyhow::bail!(
                "lost the sending lock to another process; stopped sending (messages not yet \
                 sent are left to it)"
            );
        }
        Ok(())
    }
}

/// Another process holds the lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "another paperpost process ({holder}) is sending for this database; only one may at a time \
     (its lock expires {left} s after it stops)"
)]
pub struct Held {
    pub holder: String,
    pub left: i64,
}

/// What a standby saw of the lock: the row (holder, expiry) and when it
/// first saw it so, on its own monotonic clock.
#[derive(Debug)]
pub struct Watch {
    row: Option<(String, i64)>,
    since: Instant,
}

impl Watch {
    /// Records `holder`'s row as seen at `at`; how long it has been seen
    /// unchanged.
    fn unchanged_for(&mut self, holder: &deliveries::Holder, at: Instant) -> Duration {
        let row = (holder.holder.clone(), holder.expires_at);
        if self.row.as_ref() != Some(&row) {
            *self = Watch {
                row: Some(row),
                since: at,
            };
        }
        at.duration_since(self.since)
    }
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            row: None,
            since: Instant::now(),
        }
    }
}

/// The sending lock, taken by `run` and `send`.
pub struct Lock {
    pool: crate::store::Pool,
    fence: Fence,
}

impl Lock {
    /// Takes the lock, or fails naming the process that holds it. A holder on
    /// this machine that is no longer running is taken over at once.
    pub async fn acquire(pool: &crate::store::Pool, ttl: Duration) -> anyhow::Result<Self> {
        Self::take(pool, ttl, None).await
    }

    /// For a standby: takes the lock when it is free (a clean stop releases
    /// it), when its holder on this machine is gone, or when `watch` has
    /// seen the same lock row, unrenewed, for a whole TTL on this process's
    /// monotonic clock; never because its expiry is past by this host's
    /// wall clock (a clock step, a suspend, another host's clock).
    pub async fn acquire_watching(
        pool: &crate::store::Pool,
        ttl: Duration,
        watch: &mut Watch,
    ) -> anyhow::Result<Self> {
        Self::take(pool, ttl, Some(watch)).await
    }

    /// [`Lock::acquire`] (an expired lock is taken by its expiry) or, with
    /// `watch`, [`Lock::acquire_watching`].
    async fn take(
        pool: &crate::store::Pool,
        ttl: Duration,
        watch: Option<&mut Watch>,
    ) -> anyhow::Result<Self> {
        if let Some((url, at)) = store::copy::moved(pool).await? {
            anyhow::bail!(
                "this database was copied to {url} by `paperpost db copy-to` at {}; nothing is \
                 sent from it any more (that would send twice): set database.url to the new \
                 database",
                store::format_ms(at)
            );
        }
        let here = Identity::of_this_process();
        let me = here.to_string();
        let ttl_ms = ttl.as_millis() as i64;
        let at = Instant::now();
        let by_expiry = watch.is_none();
        let mut conn = pool.acquire().await?;
        let taken = |pool: &crate::store::Pool| Lock {
            pool: pool.clone(),
            fence: Fence::new(me.clone(), ttl, at),
        };
        let Some(other) =
            deliveries::try_lock_with(&mut conn, &me, ttl_ms, None, by_expiry).await?
        else {
            return Ok(taken(pool));
        };
        let gone =
            Identity::parse(&other.holder).map(|h| here.judge(&h, probe)) == Some(Seen::Gone);
        let stale = gone || watch.is_some_and(|w| w.unchanged_for(&other, at) >= ttl);
        if stale
            && deliveries::try_lock_with(&mut conn, &me, ttl_ms, Some(&other.holder), by_expiry)
                .await?
                .is_none()
        {
            if gone {
                tracing::warn!(previous = %other.holder, "took over the lock of a paperpost process that is no longer running");
            }
            return Ok(taken(pool));
        }
        let left = ((other.expires_at - store::now_ms()) / 1000).max(0);
        Err(Held {
            holder: other.holder,
            left,
        }
        .into())
    }

    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Renews the lock every third of its TTL until `shutdown`, calling
    /// `renewed` after each renewal. Renewals that fail are tried again
    /// every second; past the TTL the fence is down (nothing is claimed or
    /// sent) until one succeeds. Losing the lock to another process cancels
    /// `shutdown`.
    pub fn heartbeat(
        &self,
        shutdown: CancellationToken,
        renewed: impl Fn() + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let pool = self.pool.clone();
        let fence = self.fence.clone();
        async move {
            let every = fence.0.ttl / 3;
            let mut wait = every;
            let mut stalled = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
                let at = Instant::now();
                match renew(&pool, &fence).await {
                    Ok(true) => {
                        if stalled {
                            tracing::info!("the sending lock is renewed again; sending resumes");
                        }
                        (stalled, wait) = (false, every);
                        fence.renewed(at);
                        renewed();
                    }
                    Ok(false) => {
                        tracing::error!("lost the sending lock to another process; stopping");
                        fence.lose();
                        shutdown.cancel();
                        return;
                    }
                    Err(e) => {
                        wait = Duration::from_secs(1).min(every);
                        if !fence.held() && !stalled {
                            stalled = true;
                            tracing::error!(error = %crate::telemetry::causes(&e), "cannot renew the sending lock within its TTL; sending stops until it can");
                        } else if !stalled {
                            tracing::warn!(error = %crate::telemetry::causes(&e), "cannot renew the sending lock; retrying");
                        }
                    }
                }
            }
        }
    }

    pub async fn release(self) {
        if let Ok(mut conn) = self.pool.acquire().await {
            let _ = deliveries::release_lock(&mut conn, self.fence.me()).await;
        }
    }
}

async fn renew(pool: &crate::store::Pool, fence: &Fence) -> anyhow::Result<bool> {
    let mut conn = pool.acquire().await?;
    let ttl = fence.0.ttl.as_millis() as i64;
    Ok(deliveries::renew_lock(&mut conn, fence.me(), ttl).await?)
}

/// After taking the lock: rows that were being sent when the last holder
/// stopped go back to the queue.
pub async fn recover(pool: &crate::store::Pool) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> Identity {
        Identity::parse("box:100:5000:0a1b2c3d:4026531836:00000001").unwrap()
    }

    #[test]
    fn identities_round_trip() {
        let me = Identity::of_this_process();
        assert_eq!(Identity::parse(&me.to_string()), Some(me.clone()));
        assert!(me.start > 0, "{me}");
        assert_eq!(Identity::parse("host:123:tag"), None, "the old form");
    }

    #[test]
    fn a_holder_is_judged_only_where_its_pid_means_something() {
        let me = here();
        let other = |s: &str| Identity::parse(s).unwrap();
        let running = |pid| match pid {
            200 => Probe::Present { start: Some(7000) },
            // Alive, but its /proc entry cannot be read (hidepid=2).
            300 => Probe::Present { start: None },
            _ => Probe::Absent,
        };
        let judge = |s: &str| me.judge(&other(s), running);
        assert_eq!(judge("box:200:7000:0a1b2c3d:4026531836:x"), Seen::Running);
        assert_eq!(judge("box:300:7000:0a1b2c3d:4026531836:x"), Seen::Running);
        // Its PID is free, or belongs to a process started at another time.
        assert_eq!(judge("box:201:7000:0a1b2c3d:4026531836:x"), Seen::Gone);
        assert_eq!(judge("box:200:6999:0a1b2c3d:4026531836:x"), Seen::Gone);
        // Another host, another boot, another container: unknown.
        assert_eq!(judge("cat:201:7000:0a1b2c3d:4026531836:x"), Seen::Elsewhere);
        assert_eq!(judge("box:201:7000:ffffffff:4026531836:x"), Seen::Elsewhere);
        assert_eq!(judge("box:201:7000:0a1b2c3d:4026531999:x"), Seen::Elsewhere);
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_falls_without_renewal_and_rises_with_one() {
        let ttl = Duration::from_secs(30);
        let fence = Fence::new("me".into(), ttl, Instant::now());
        assert!(fence.held());
        tokio::time::sleep(Duration::from_secs(26)).await;
        assert!(fence.held());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!fence.held(), "past the TTL less a tenth");
        fence.renewed(Instant::now());
        assert!(fence.held());
        fence.lose();
        assert!(!fence.held());
        assert!(fence.check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspend_longer_than_the_ttl_takes_the_fence_down() {
        let ttl = Duration::from_secs(30);
        let fence = Fence::new("me".into(), ttl, Instant::now());
        let (now, boot) = (Instant::now(), boot_ms());
        assert!(fence.held_at(now, boot));
        // Suspended for a TTL: the monotonic clock stood still, the boot
        // clock (and the lock's expiry, for every other process) went on.
        assert!(!fence.held_at(now, boot + ttl.as_millis() as i64));
        assert!(fence.held_at(now, boot + 20_000));
    }
}
