//! The circuit breaker: pauses sending while the mail server cannot be reached.

use super::*;

/// Pauses sending while the mail server cannot be reached: after
/// [`Breaker::TRIP_AFTER`] connection failures in a row it opens for a cool-down
/// (1 s, doubling to 60 s), then lets one message probe the server.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug)]
pub(super) struct BreakerState {
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

    pub(super) fn open(s: &mut BreakerState) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
