//! When a failed message is tried again.

use super::*;

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

/// What becomes of a message whose attempt failed in a way worth another try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// At once, the attempt not counted: the server is down (the breaker is
    /// open), which says nothing about the message.
    Uncounted,
    /// After this delay, the attempt counted.
    After(Duration),
    /// Failed for good, for this reason.
    GiveUp(String),
}

/// Decides after failed attempt number `attempt` (1-based) of a message first
/// tried `age` ago; `server_down` when the breaker is open. Never retries
/// past `max_attempts` counted attempts or past `max_age`, server down or not.
pub fn decide(attempt: u32, age: Duration, server_down: bool, policy: &RetrySettings) -> Decision {
    if server_down && age < policy.max_age {
        Decision::Uncounted
    } else if attempt >= policy.max_attempts {
        Decision::GiveUp(format!("gave up after {attempt} attempts"))
    } else if age >= policy.max_age {
        Decision::GiveUp(format!(
            "gave up after {attempt} attempts, older than mail.retry.max_age"
        ))
    } else {
        Decision::After(backoff(policy, attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(base: u64, max: u64) -> RetrySettings {
        RetrySettings {
            max_attempts: 8,
            base_delay: Duration::from_secs(base),
            max_delay: Duration::from_secs(max),
            max_age: Duration::from_secs(86_400),
        }
    }

    #[test]
    fn decisions() {
        let p = RetrySettings {
            max_attempts: 3,
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            max_age: Duration::from_secs(3600),
        };
        let hour = Duration::from_secs(3600);
        let minute = Duration::from_secs(60);
        let give_up = |s: &str| Decision::GiveUp(s.to_string());
        let by_attempts = give_up("gave up after 3 attempts");
        let by_age = |n| {
            give_up(&format!(
                "gave up after {n} attempts, older than mail.retry.max_age"
            ))
        };
        // (attempt, age, server down) -> decision; `After` is checked apart
        // (its delay has jitter).
        let table = [
            (1, minute, true, Decision::Uncounted),
            (9, minute, true, Decision::Uncounted),
            (1, hour, true, by_age(1)),
            (3, minute, false, by_attempts.clone()),
            (3, hour, false, by_attempts),
            (2, hour, false, by_age(2)),
        ];
        for (attempt, age, down, want) in table {
            assert_eq!(
                decide(attempt, age, down, &p),
                want,
                "{attempt} {age:?} {down}"
            );
        }
        for attempt in [1, 2] {
            let Decision::After(d) = decide(attempt, minute, false, &p) else {
                panic!("attempt {attempt} is retried");
            };
            let full = 30 * 2u64.pow(attempt - 1);
            assert!(
                d.as_secs_f64() >= full as f64 / 2.0 && d.as_secs() <= full,
                "{d:?}"
            );
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
}
