//! `GET /healthz` and `GET /metrics`.

use std::sync::atomic::{AtomicI64, Ordering};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::WebState;
use crate::{metrics::StatusLabel, store};

/// What the sending side of this process last reported, for /healthz.
#[derive(Debug, Default)]
pub struct Liveness {
    /// This process sends (`run`); `serve` does not.
    pub sends: bool,
    /// A `run` waiting for another process's sending lock.
    pub standby: bool,
    /// When the scheduler loop last went round (epoch ms; 0 = never).
    scheduler_at: AtomicI64,
    /// When the scheduler lock was last taken or renewed (epoch ms; 0 = never).
    lock_at: AtomicI64,
    /// How long the lock lasts without renewal (`database.lock_ttl`).
    lock_ttl_ms: i64,
}

/// The scheduler loop wakes at least this often.
pub const SCHEDULER_TICK: std::time::Duration = std::time::Duration::from_secs(30);

impl Liveness {
    pub fn sending(lock_ttl: std::time::Duration) -> Self {
        Liveness {
            sends: true,
            lock_ttl_ms: lock_ttl.as_millis() as i64,
            ..Default::default()
        }
    }

    /// A `run` that serves the web endpoint while another process sends.
    pub fn standby() -> Self {
        Liveness {
            standby: true,
            ..Default::default()
        }
    }

    pub fn scheduler_alive(&self) {
        self.scheduler_at.store(store::now_ms(), Ordering::Relaxed);
    }

    pub fn lock_held(&self) {
        self.lock_at.store(store::now_ms(), Ordering::Relaxed);
    }

    /// What stops the watchdog's pings (a restart is what helps): a
    /// scheduler loop that stopped going round. Not a lock this process
    /// cannot renew while another holds the database (a large import, a
    /// backup, for up to database.busy_timeout and then some): restarting
    /// would not help, and /healthz says it.
    pub fn watchdog_problem(&self, now: i64) -> Option<&'static str> {
        if !self.sends {
            return None;
        }
        let age = now - self.scheduler_at.load(Ordering::Relaxed);
        (age > 3 * SCHEDULER_TICK.as_millis() as i64).then_some("the scheduler is not running")
    }

    /// Why this process is unhealthy, or `None`.
    pub fn problem(&self, now: i64) -> Option<&'static str> {
        if !self.sends {
            return None;
        }
        let age = |a: &AtomicI64| now - a.load(Ordering::Relaxed);
        if age(&self.lock_at) > self.lock_ttl_ms {
            return Some("the scheduler lock is not held");
        }
        if age(&self.scheduler_at) > 3 * SCHEDULER_TICK.as_millis() as i64 {
            return Some("the scheduler is not running");
        }
        None
    }
}

/// 200 "ok" when the database answers and, in a sending process, the scheduler
/// runs and holds the lock; 503 with a short reason otherwise. A standby
/// (a `run` waiting for the sending lock) is healthy: 200, saying so.
pub async fn healthz(State(state): State<WebState>) -> Response {
    let db = store::ping(&state.app.pool).await;
    let role = state.role();
    let problem = match db {
        Err(e) => {
            tracing::warn!(error = %e, "health check: the database does not answer");
            Some("the database does not answer")
        }
        Ok(_) if role.engine.as_ref().is_some_and(|e| e.fault().is_some()) => {
            Some("sending stopped: the database cannot record what is sent")
        }
        Ok(_) => role.liveness.problem(store::now_ms()),
    };
    let (status, body) = match problem {
        None if role.liveness.standby => (StatusCode::OK, "ok: standing by to send\n".into()),
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The Prometheus text format; gauges about the database are read now.
/// The bounce report gauges, from the database.
async fn bounce_metrics(state: &WebState) {
    let m = &state.app.metrics;
    if let Ok(counts) = store::bounces::counts(&state.app.pool).await {
        for (source, kind, n) in counts {
            let labels = crate::metrics::BounceLabels { source, kind };
            m.bounce_reports.get_or_create(&labels).set(n);
        }
    }
    if let Ok(rows) = store::bounces::by_edition(&state.app.pool, 1).await {
        let sent = rows.first().map_or(0, |r| r.3);
        let complaints: i64 = rows
            .iter()
            .filter(|r| r.1 == "complaint")
            .map(|r| r.2)
            .sum();
        let rate = if sent > 0 {
            complaints as f64 / sent as f64
        } else {
            0.0
        };
        m.complaint_rate.set(rate);
    }
}

pub async fn metrics(State(state): State<WebState>) -> Response {
    let m = &state.app.metrics;
    if let Ok(n) = store::deliveries::queue_depth(&state.app.pool).await {
        m.queue_depth.set(n);
    }
    if let Ok(counts) = store::subscribers::count_by_status(&state.app.pool).await {
        for status in ["pending", "active", "unsubscribed", "bounced"] {
            let status = status.to_string();
            m.subscribers.get_or_create(&StatusLabel { status }).set(0);
        }
        for (status, n) in counts {
            m.subscribers.get_or_create(&StatusLabel { status }).set(n);
        }
    }
    if let Some(engine) = &state.role().engine {
        m.breaker_open.set(i64::from(engine.breaker.is_open()));
    }
    bounce_metrics(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}
