//! Telling systemd how the daemon is (`Type=notify`, sd_notify(3)): READY=1
//! once it is up, STATUS= lines saying what it does, WATCHDOG=1 pings while
//! the scheduler loop is alive, STOPPING=1 when it stops. Without systemd
//! (no NOTIFY_SOCKET) every call does nothing.

use std::{sync::Arc, time::Duration};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::{store, web::health::Liveness};

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// Start-up is done: migrations, the subscriber file, the lock, the listener.
pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// Up, serving the web endpoint, while another process sends.
pub fn standing_by() {
    notify(&[
        NotifyState::Ready,
        NotifyState::Status("standing by: another process sends; serving the web endpoint"),
    ]);
}

/// Shutdown has begun: the messages in flight are finishing.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing the messages in flight"),
    ]);
}

/// Until `shutdown`: pings the watchdog (if systemd set one) every half of
/// its period while the scheduler is alive, and updates STATUS= with what the
/// daemon is doing, at least every 5 s.
pub async fn watch(
    pool: crate::store::Pool,
    liveness: Arc<Liveness>,
    engine: Option<Arc<crate::delivery::Engine>>,
    shutdown: CancellationToken,
) {
    // Not under systemd: no status to keep current, no query every 5 s.
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog
        .map(|d| d / 2)
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut last_status = String::new();
    let mut last_problem = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = store::now_ms();
        let problem = liveness
            .watchdog_problem(now)
            .or_else(|| engine.as_ref().and_then(|e| e.health.problem(now)));
        match problem {
            None if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            None => {}
            // No ping: systemd restarts a daemon whose scheduler or engine is stuck.
            Some(p) if last_problem != problem => {
                tracing::warn!(problem = p, "unhealthy; not pinging the watchdog")
            }
            Some(_) => {}
        }
        last_problem = problem;
        if liveness.standby {
            // Its STATUS= stays "standing by"; the sender's is not its own.
            continue;
        }
        let status = describe(&pool).await;
        if status != last_status {
            notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
    }
}

/// "sending 2026-11-28: 1,204/20,000", or "idle" with the last edition.
async fn describe(pool: &crate::store::Pool) -> String {
    let result = async {
        let mut conn = pool.acquire().await?;
        let editions = store::deliveries::editions(&mut conn).await?;
        let Some((date, _, _)) = editions.first() else {
            return anyhow::Ok("idle: no edition has started yet".to_string());
        };
        let c = store::deliveries::counts(&mut conn, *date).await?;
        let done = c.sent + c.failed + c.cancelled;
        Ok(if c.finished() {
            format!("idle: edition {date} finished ({} sent)", thousands(c.sent))
        } else {
            format!(
                "sending {date}: {}/{}",
                thousands(done),
                thousands(c.total())
            )
        })
    }
    .await;
    result.unwrap_or_else(|e| format!("cannot read the database: {}", crate::telemetry::causes(&e)))
}

/// 20000 as "20,000".
fn thousands(n: impl Into<i64>) -> String {
    let s = n.into().to_string();
    let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1204, "1,204"),
            (20000, "20,000"),
            (1234567, "1,234,567"),
        ] {
            assert_eq!(super::thousands(n), s);
        }
    }
}
