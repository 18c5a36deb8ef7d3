//! The alerts `paperpost status` shows: at most one per kind, the latest.

use super::{Conn, Dialect, StoreError, now_ms};

/// What an alert is about; each kind has one row at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// The delivery engine paused sending (its guard).
    Delivery,
    /// Confirmation mails reached `subscribers.confirmations_per_hour`.
    SignUps,
    /// Bounce reports: a policy block, or the guard found the relay at fault.
    /// Stays until an operator clears it (`bounces clear-alert`).
    Bounces,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivery => "delivery",
            Self::SignUps => "signups",
            Self::Bounces => "bounces",
        }
    }
}

/// One alert: what happened, and when it was raised (Unix ms).
#[derive(Debug, Clone)]
pub struct Alert {
    pub kind: String,
    pub message: String,
    pub at: i64,
}

/// Sets (or with `None` clears) the alert of `kind`.
pub async fn set(
    conn: &mut Conn,
    kind: AlertKind,
    message: Option<&str>,
) -> Result<(), StoreError> {
    on!(conn => {
    match message {
        Some(m) => {
            sqlx::query(conn.sql(
                "INSERT INTO alerts (kind, message, at) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind) DO UPDATE SET message = $2, at = $3",
            ))
            .bind(kind.as_str())
            .bind(m)
            .bind(now_ms())
            .execute(conn)
            .await?
        }
        None => {
            sqlx::query(conn.sql("DELETE FROM alerts WHERE kind = $1"))
                .bind(kind.as_str())
                .execute(conn)
                .await?
        }
    };
    Ok(())
    })
}

/// Raises the alert of `kind` unless it is up already (keeping when it was
/// first raised); returns whether it was raised now.
pub async fn raise(conn: &mut Conn, kind: AlertKind, message: &str) -> Result<bool, StoreError> {
    on!(conn => {
    let r = sqlx::query(conn.sql("INSERT OR IGNORE INTO alerts (kind, message, at) VALUES ($1, $2, $3)"))
        .bind(kind.as_str())
        .bind(message)
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
    })
}

/// Clears the alert of `kind` if it was raised before `before` (Unix ms).
pub async fn clear_older(conn: &mut Conn, kind: AlertKind, before: i64) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql("DELETE FROM alerts WHERE kind = $1 AND at < $2"))
        .bind(kind.as_str())
        .bind(before)
        .execute(conn)
        .await?;
    Ok(())
    })
}

/// Every alert up now, oldest first.
pub async fn current(conn: &mut Conn) -> Result<Vec<Alert>, StoreError> {
    on!(conn => {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as(conn.sql("SELECT kind, message, at FROM alerts ORDER BY at, kind"))
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, message, at)| Alert { kind, message, at })
        .collect())
    })
}
