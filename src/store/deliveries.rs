//! Editions, the per-recipient delivery queue, and the scheduler lock.
//!
//! A delivery row goes `queued` → `sending` (claimed with a lease) → `sent`,
//! back to `queued` (a retry), `failed`, or `cancelled` (the subscriber left).
//! Whether an edition is finished is always derived from its rows.

use chrono::NaiveDate;
use futures_util::{StreamExt, stream::BoxStream};
use serde::Serialize;

use super::{Conn, Db, Dialect, Pool, StoreError, now_ms};
use crate::domain::DeliveryStatus;

/// What [`start_edition`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The edition was started now with this many recipients.
    Now(u64),
    /// It had been started before; nothing was added.
    Already,
}

/// Starts an edition: records it and enqueues one row per active subscriber,
/// in one transaction. The audience is frozen: a second call adds nothing.
/// `send_at(tz)` gives the first send time for subscribers in a time zone.
pub async fn start_edition(
    pool: &Pool,
    date: NaiveDate,
    by: &str,
    send_at: impl Fn(&str) -> i64,
) -> Result<Started, StoreError> {
    let now = now_ms();
    let mut t = super::write(pool).await?;
    let tx = &mut t;
    let started = on!(tx => {
    let r = sqlx::query(tx.sql("INSERT INTO editions (edition_date, started_at, started_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"))
        .bind(date.to_string())
        .bind(now)
        .bind(by)
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() == 0 {
        return Ok(Started::Already);
    }
    let zones: Vec<(String,)> =
        sqlx::query_as(tx.sql("SELECT DISTINCT timezone FROM subscribers WHERE status = 'active'"))
            .fetch_all(&mut *tx)
            .await?;
    let mut enqueued = 0;
    for (tz,) in zones {
        enqueued += sqlx::query(tx.sql(
            "INSERT INTO deliveries (edition_date, subscriber_id, status, next_attempt_at, created_at, updated_at) \
             SELECT $1, id, 'queued', $2, $3, $3 FROM subscribers WHERE status = 'active' AND timezone = $4 \
             ON CONFLICT (subscriber_id, edition_date) DO NOTHING",
        ))
        .bind(date.to_string())
        .bind(send_at(&tz))
        .bind(now)
        .bind(&tz)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    Started::Now(enqueued)
    });
    t.commit().await?;
    Ok(started)
}

/// Dates whose edition has started.
pub async fn started_dates(conn: &mut Conn) -> Result<Vec<NaiveDate>, StoreError> {
    on!(conn => {
    let rows: Vec<(String,)> =
        sqlx::query_as(conn.sql("SELECT edition_date FROM editions ORDER BY edition_date"))
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().filter_map(|(d,)| d.parse().ok()).collect())
    })
}

/// A delivery row claimed for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub edition_date: String,
    pub subscriber_id: i64,
    /// Attempts including this one.
    pub attempts: i64,
    pub first_attempt_at: i64,
}

/// Claims up to `limit` due queued rows in one statement, leasing them until
/// `now + lease_ms`. The subquery walks the (status, next_attempt_at) index and
/// stops at `limit`, so a claim costs the same with 100 or 1,000,000 rows queued.
/// Rows left `sending` by a process that died are put back by
/// [`release_in_flight`] when the next process takes the scheduler lock.
/// Nothing is claimed unless `me` holds the lock now: the statement checks it,
/// so a process that lost the lock cannot claim however late it learns so.
pub async fn claim(
    conn: &mut Conn,
    me: &str,
    token: i64,
    limit: u32,
    lease_ms: i64,
    only: Option<NaiveDate>,
) -> Result<Vec<Claimed>, StoreError> {
    on!(conn => {
    let now = now_ms();
    let date_filter = if only.is_some() {
        "AND edition_date = $6"
    } else {
        ""
    };
    let sql = if conn.postgres() {
        // SKIP LOCKED: a row another transaction is changing (a cancel) is
        // passed over, not waited for; MATERIALIZED keeps the LIMIT exact.
        format!(
            "WITH due AS MATERIALIZED (SELECT id FROM deliveries \
                WHERE status = 'queued' AND next_attempt_at <= $1 {date_filter} \
                ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE deliveries d SET status = 'sending', lease_until = $1 + $2, attempts = d.attempts + 1, \
               first_attempt_at = coalesce(d.first_attempt_at, $1), updated_at = $1, claimed_by = $5 \
             FROM due WHERE d.id = due.id AND {} \
             RETURNING d.id, d.edition_date, d.subscriber_id, d.attempts, d.first_attempt_at",
            holds_lock(true)
        )
    } else {
        format!(
            "UPDATE deliveries SET status = 'sending', lease_until = $1 + $2, attempts = attempts + 1, \
               first_attempt_at = coalesce(first_attempt_at, $1), updated_at = $1, claimed_by = $5 \
             WHERE id IN (SELECT id FROM deliveries INDEXED BY deliveries_queued \
                          WHERE status = 'queued' AND next_attempt_at <= $1 {date_filter} \
                          ORDER BY next_attempt_at LIMIT $3) \
               AND {HOLDS_LOCK} \
             RETURNING id, edition_date, subscriber_id, attempts, first_attempt_at"
        )
    };
    let mut q = sqlx::query_as(conn.sql(&sql))
        .bind(now)
        .bind(lease_ms)
        .bind(i64::from(limit))
        .bind(me)
        .bind(token);
    if let Some(d) = only {
        q = q.bind(d.to_string());
    }
    Ok(q.fetch_all(conn).await?)
    })
}

/// True when the process `$4` holds the sending lock at `$1`.
const HOLDS_LOCK: &str =
    "EXISTS (SELECT 1 FROM scheduler_lock WHERE id = 1 AND holder = $4 AND expires_at > $1)";

/// The time locks are compared with, in SQL: on PostgreSQL the database
/// server's own clock, so that instances on hosts whose clocks differ agree
/// on when a lock expires; SQLite has one host, whose clock is `$1`.
const DB_NOW: &str = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)";

/// [`HOLDS_LOCK`] for the database at hand.
fn holds_lock(postgres: bool) -> String {
    if postgres {
        HOLDS_LOCK.replace("expires_at > $1", &format!("expires_at > {DB_NOW}"))
    } else {
        HOLDS_LOCK.to_string()
    }
}

/// An accepted message, as [`mark_sent_many`] records it.
#[derive(Debug, Clone, Serialize)]
pub struct SentRow<'a> {
    pub id: i64,
    pub reply: &'a str,
    pub message_id: &'a str,
}

/// Records many accepted messages in one statement (on SQLite the rows go
/// as a JSON array, on PostgreSQL as three arrays). Only rows the claim
/// `token` is sending are changed; returns how many were.
pub async fn mark_sent_many(
    conn: &mut Conn,
    token: i64,
    rows: &[SentRow<'_>],
) -> Result<u64, StoreError> {
    Ok(mark_sent_many_checking(conn, token, rows, &[]).await?.0)
}

/// [`mark_sent_many`], and the status of each of `check` (subscriber ids)
/// read after it: the delivery workers' checks before their next bodies ride
/// on the commit of their last messages. On PostgreSQL one statement, so one
/// round trip for both.
pub async fn mark_sent_many_checking(
    conn: &mut Conn,
    token: i64,
    rows: &[SentRow<'_>],
    check: &[i64],
) -> Result<(u64, std::collections::HashMap<i64, String>), StoreError> {
    let now = now_ms();
    let (written, statuses) = match conn.kind() {
        super::Kind::Sqlite(c) => {
            let r = sqlx::query(
                "UPDATE deliveries SET status = 'sent', smtp_reply = j.value ->> 'reply', \
                   message_id = j.value ->> 'message_id', sent_at = $1, lease_until = NULL, \
                   last_error = NULL, updated_at = $1 \
                 FROM json_each($2) AS j WHERE deliveries.id = j.value ->> 'id' \
                   AND deliveries.status = 'sending' AND deliveries.claimed_by = $3",
            )
            .bind(now)
            .bind(serde_json::to_string(rows).expect("rows serialize"))
            .bind(token)
            .execute(c)
            .await?;
            (r.rows_affected(), None)
        }
        super::Kind::Postgres(c) => {
            let found: Vec<(i64, Option<i64>, Option<String>)> = sqlx::query_as(
                "WITH sent AS (UPDATE deliveries SET status = 'sent', smtp_reply = j.reply, \
                   message_id = j.message_id, sent_at = $1, lease_until = NULL, \
                   last_error = NULL, updated_at = $1 \
                   FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS j(id, reply, message_id) \
                   WHERE deliveries.id = j.id AND deliveries.status = 'sending' \
                     AND deliveries.claimed_by = $5 \
                   RETURNING 1), \
                 n AS (SELECT count(*) AS n FROM sent) \
                 SELECT n.n, s.id, s.status FROM n LEFT JOIN subscribers s ON s.id = ANY($6)",
            )
            .bind(now)
            .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.reply).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
            .bind(token)
            .bind(check)
            .fetch_all(c)
            .await?;
            let written = found.first().map_or(0, |r| r.0) as u64;
            let statuses = found
                .into_iter()
                .filter_map(|(_, id, status)| Some((id?, status?)))
                .collect();
            (written, Some(statuses))
        }
    };
    let statuses = match statuses {
        Some(s) => s,
        None if check.is_empty() => Default::default(),
        None => super::subscribers::statuses(conn, check).await?,
    };
    Ok((written, statuses))
}

/// Puts a row back in the queue to be tried at `next_at`. With `counted`
/// false the attempt is given back (it never reached a live server).
pub async fn mark_retry(
    conn: &mut Conn,
    token: i64,
    id: i64,
    error: &str,
    next_at: i64,
    counted: bool,
) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql(
        "UPDATE deliveries SET status = 'queued', attempts = max(attempts - $1, 0), last_error = $2, \
         next_attempt_at = $3, lease_until = NULL, updated_at = $4 \
         WHERE id = $5 AND status = 'sending' AND claimed_by = $6",
    ))
    .bind(if counted { 0 } else { 1 })
    .bind(error)
    .bind(next_at)
    .bind(now_ms())
    .bind(id)
    .bind(token)
    .execute(conn)
    .await?;
    Ok(())
    })
}

/// Ends a row the claim `token` is sending as failed or cancelled, with the
/// reason; false if the row is not (or no longer) that claim's.
pub async fn mark_final(
    conn: &mut Conn,
    token: i64,
    id: i64,
    status: DeliveryStatus,
    reason: &str,
) -> Result<bool, StoreError> {
    on!(conn => {
    debug_assert!(matches!(
        status,
        DeliveryStatus::Failed | DeliveryStatus::Cancelled
    ));
    let r = sqlx::query(conn.sql(
        "UPDATE deliveries SET status = $1, last_error = $2, lease_until = NULL, updated_at = $3 \
         WHERE id = $4 AND status = 'sending' AND claimed_by = $5",
    ))
    .bind(status.as_str())
    .bind(reason)
    .bind(now_ms())
    .bind(id)
    .bind(token)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
    })
}

/// Counts a hard bounce; returns the subscriber's total.
pub async fn add_hard_bounce(conn: &mut Conn, subscriber_id: i64) -> Result<i64, StoreError> {
    on!(conn => {
    let (n,): (i64,) = sqlx::query_as(conn.sql(
        "UPDATE subscribers SET hard_bounces = hard_bounces + 1, updated_at = $1 WHERE id = $2 RETURNING hard_bounces",
    ))
    .bind(now_ms())
    .bind(subscriber_id)
    .fetch_one(conn)
    .await?;
    Ok(n)
    })
}

/// Gives a row the claim `token` took back untouched (the attempt is not counted).
pub async fn unclaim(conn: &mut Conn, token: i64, id: i64) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql(
        "UPDATE deliveries SET status = 'queued', attempts = max(attempts - 1, 0), lease_until = NULL \
         WHERE id = $1 AND status = 'sending' AND claimed_by = $2",
    ))
    .bind(id)
    .bind(token)
    .execute(conn)
    .await?;
    Ok(())
    })
}

/// After a crash: rows that were being sent go back to the queue at once.
/// Only called by the holder of the scheduler lock, so nobody else is sending.
pub async fn release_in_flight(conn: &mut Conn) -> Result<u64, StoreError> {
    on!(conn => {
    Ok(sqlx::query(conn.sql(
        "UPDATE deliveries SET status = 'queued', lease_until = NULL, next_attempt_at = min(next_attempt_at, $1), \
         updated_at = $1, claimed_by = NULL WHERE status = 'sending'",
    ))
    .bind(now_ms())
    .execute(conn)
    .await?
    .rows_affected())
    })
}

/// Rows whose lease ran out while `sending` (an outcome that could not be
/// written, an unclaim that failed) go back to the queue, for the running
/// sender to send again, except the rows `held` (the ids the running sender
/// still tracks, however long they have waited). Only the newest editions
/// are looked at, through their index (older ones have nothing in flight),
/// and `sending`, the edition a `send --date` sends, however old. Only the
/// lock's holder `me` may.
pub async fn release_expired(
    conn: &mut Conn,
    me: &str,
    held: &[i64],
    sending: Option<NaiveDate>,
) -> Result<u64, StoreError> {
    on!(conn => {
    let sql = format!(
        "UPDATE deliveries SET status = 'queued', lease_until = NULL, \
           next_attempt_at = min(next_attempt_at, $1), updated_at = $1, claimed_by = NULL \
         WHERE (edition_date IN (SELECT edition_date FROM editions ORDER BY edition_date DESC LIMIT 14) \
                OR edition_date = $4) \
           AND status = 'sending' AND lease_until < $1 AND {} \
           AND id NOT IN (SELECT CAST(value AS BIGINT) FROM json_each($3))",
        holds_lock(conn.postgres()).replace("$4", "$2")
    );
    Ok(sqlx::query(conn.sql(&sql))
        .bind(now_ms())
        .bind(me)
        .bind(serde_json::to_string(held).expect("ids serialize"))
        .bind(sending.map(|d| d.to_string()))
        .execute(conn)
        .await?
        .rows_affected())
    })
}

/// A failed row goes back to the queue, the attempt uncounted: its refusal
/// was the server's doing. False if the row was not failed.
pub async fn undo_refusal(conn: &mut Conn, id: i64) -> Result<bool, StoreError> {
    on!(conn => {
    let r = sqlx::query(conn.sql(
        "UPDATE deliveries SET status = 'queued', attempts = max(attempts - 1, 0), \
           next_attempt_at = $1, lease_until = NULL, updated_at = $1, \
           last_error = 'the mail server refused every recipient; not counted' \
         WHERE id = $2 AND status = 'failed'",
    ))
    .bind(now_ms())
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
    })
}

/// True if the fire time `at` (Unix ms) was handled already.
pub async fn fire_handled(conn: &mut Conn, at: i64) -> Result<bool, StoreError> {
    on!(conn => {
    Ok(
        sqlx::query_scalar(conn.sql("SELECT count(*) > 0 FROM fires WHERE fire_time = $1"))
            .bind(at)
            .fetch_one(conn)
            .await?,
    )
    })
}

/// Records that the fire time `at` was handled (`by`: schedule or catch-up).
pub async fn record_fire(conn: &mut Conn, at: i64, by: &str) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql("INSERT OR IGNORE INTO fires (fire_time, handled_at, handled_by) VALUES ($1, $2, $3)"))
        .bind(at)
        .bind(now_ms())
        .bind(by)
        .execute(conn)
        .await?;
    Ok(())
    })
}

/// Failed rows of an edition go back to the queue with fresh attempts.
pub async fn requeue_failed(conn: &mut Conn, date: NaiveDate) -> Result<u64, StoreError> {
    on!(conn => {
    let now = now_ms();
    Ok(sqlx::query(conn.sql(
        "UPDATE deliveries SET status = 'queued', attempts = 0, first_attempt_at = NULL, next_attempt_at = $1, \
         updated_at = $1 WHERE edition_date = $2 AND status = 'failed' \
         AND subscriber_id IN (SELECT id FROM subscribers WHERE status = 'active')",
    ))
    .bind(now)
    .bind(date.to_string())
    .execute(conn)
    .await?
    .rows_affected())
    })
}

/// When the next queued row falls due (Unix ms).
pub async fn next_due(conn: &mut Conn, only: Option<NaiveDate>) -> Result<Option<i64>, StoreError> {
    on!(conn => {
    let date_filter = if only.is_some() {
        "AND edition_date = $1"
    } else {
        ""
    };
    let sql = format!(
        "SELECT min(next_attempt_at) FROM deliveries INDEXED BY deliveries_queued \
         WHERE status = 'queued' {date_filter}"
    );
    let mut q = sqlx::query_as::<_, (Option<i64>,)>(conn.sql(&sql));
    if let Some(d) = only {
        q = q.bind(d.to_string());
    }
    Ok(q.fetch_one(conn).await?.0)
    })
}

/// How many rows wait to be sent (read through the queue's partial index).
pub async fn queue_depth(pool: &Pool) -> Result<i64, StoreError> {
    on_pool!(pool => {
    Ok(sqlx::query_scalar(pool.sql(
        "SELECT count(*) FROM deliveries INDEXED BY deliveries_queued WHERE status = 'queued'",
    ))
    .fetch_one(pool)
    .await?)
    })
}

/// Rows per status for one edition (or all).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl Counts {
    pub fn total(&self) -> i64 {
        self.queued + self.sending + self.sent + self.failed + self.cancelled
    }

    /// Nothing left to send.
    pub fn finished(&self) -> bool {
        self.queued + self.sending == 0
    }
}

pub async fn counts(conn: &mut Conn, date: NaiveDate) -> Result<Counts, StoreError> {
    on!(conn => {
    let rows: Vec<(String, i64)> = sqlx::query_as(conn.sql(
        "SELECT status, count(*) FROM deliveries WHERE edition_date = $1 GROUP BY status",
    ))
    .bind(date.to_string())
    .fetch_all(conn)
    .await?;
    let mut c = Counts::default();
    for (status, n) in rows {
        match status.as_str() {
            "queued" => c.queued = n,
            "sending" => c.sending = n,
            "sent" => c.sent = n,
            "failed" => c.failed = n,
            "cancelled" => c.cancelled = n,
            _ => {}
        }
    }
    Ok(c)
    })
}

/// Every started edition, newest first: (date, started at, started by).
/// The editions with rows still queued (through the queued rows' index).
pub async fn queued_dates(conn: &mut Conn) -> Result<Vec<NaiveDate>, StoreError> {
    on!(conn => {
    let rows: Vec<(String,)> = sqlx::query_as(conn.sql(
        "SELECT DISTINCT edition_date FROM deliveries INDEXED BY deliveries_queued \
             WHERE status = 'queued'",
    ))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().filter_map(|(d,)| d.parse().ok()).collect())
    })
}

pub async fn editions(conn: &mut Conn) -> Result<Vec<(NaiveDate, i64, String)>, StoreError> {
    on!(conn => {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(conn.sql(
        "SELECT edition_date, started_at, started_by FROM editions ORDER BY edition_date DESC",
    ))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(d, at, by)| d.parse().ok().map(|d| (d, at, by)))
        .collect())
    })
}

/// One delivery as `paperpost deliveries` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeliveryView {
    pub edition_date: String,
    pub email: String,
    pub status: String,
    pub attempts: i64,
    pub updated_at: i64,
    pub sent_at: Option<i64>,
    pub message_id: Option<String>,
    pub smtp_reply: Option<String>,
    pub last_error: Option<String>,
}

macro_rules! view {
    () => {
        "SELECT d.edition_date, s.email, d.status, d.attempts, d.updated_at, d.sent_at, d.message_id, \
         d.smtp_reply, d.last_error FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
    };
}
const VIEW: &str = view!();

/// The deliveries of an edition (optionally of one status), by address, streamed.
pub fn list<'a>(
    pool: &'a Pool,
    date: NaiveDate,
    status: Option<&'a str>,
) -> BoxStream<'a, Result<DeliveryView, StoreError>> {
    on_pool!(pool => {
    sqlx::query_as::<_, DeliveryView>(pool.sql(concat!(
        view!(),
        " WHERE d.edition_date = $1 AND ($2 IS NULL OR d.status = $2) ORDER BY s.email"
    )))
    .bind(date.to_string())
    .bind(status)
    .fetch(pool)
    .map(|r| r.map_err(StoreError::from))
    .boxed()
    })
}

/// The most recent errors (optionally of one edition).
pub async fn recent_errors(
    conn: &mut Conn,
    date: Option<NaiveDate>,
    limit: u32,
) -> Result<Vec<DeliveryView>, StoreError> {
    on!(conn => {
    let sql = format!(
        "{VIEW} WHERE d.last_error IS NOT NULL AND ($1 IS NULL OR d.edition_date = $1) ORDER BY d.updated_at DESC LIMIT $2"
    );
    Ok(sqlx::query_as(conn.sql(&sql))
        .bind(date.map(|d| d.to_string()))
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?)
    })
}

// ------------------------------------------------------------ the scheduler lock

/// Who holds the lock now, if someone other than the caller does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub holder: String,
    pub expires_at: i64,
}

/// Takes the lock for `ttl_ms` if it is free, expired, already ours, or held by
/// `stale` (a holder known to be dead). Returns the other holder otherwise.
pub async fn try_lock(
    conn: &mut Conn,
    me: &str,
    ttl_ms: i64,
    stale: Option<&str>,
) -> Result<Option<Holder>, StoreError> {
    on!(conn => {
    try_lock_with(conn, me, ttl_ms, stale, true).await
    })
}

/// [`try_lock`], where `by_expiry` false takes a lock held by another only
/// when it is `stale` (the caller watched it go stale on its own clock),
/// never because its expiry is past by this host's wall clock.
pub async fn try_lock_with(
    conn: &mut Conn,
    me: &str,
    ttl_ms: i64,
    stale: Option<&str>,
    by_expiry: bool,
) -> Result<Option<Holder>, StoreError> {
    on!(conn => {
    // $2 is now: this host's clock on SQLite, the server's on PostgreSQL.
    let now = if conn.postgres() { DB_NOW.to_string() } else { "$2".to_string() };
    let sql = format!(
        "INSERT INTO scheduler_lock (id, holder, expires_at) VALUES (1, $1, {now} + $3) \
         ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         WHERE ($5 AND scheduler_lock.expires_at < {now}) OR scheduler_lock.holder = $1 \
            OR scheduler_lock.holder IS $4 OR $2 IS NULL"
    );
    let r = sqlx::query(conn.sql(&sql))
        .bind(me)
        .bind(now_ms())
        .bind(ttl_ms)
        .bind(stale)
        .bind(by_expiry)
        .execute(&mut *conn)
        .await?;
    if r.rows_affected() > 0 {
        return Ok(None);
    }
    let row: Option<(String, i64)> =
        sqlx::query_as(conn.sql("SELECT holder, expires_at FROM scheduler_lock WHERE id = 1"))
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(holder, expires_at)| Holder { holder, expires_at }))
    })
}

/// Extends our lock; false if we lost it.
pub async fn renew_lock(conn: &mut Conn, me: &str, ttl_ms: i64) -> Result<bool, StoreError> {
    on!(conn => {
    let sql = if conn.postgres() {
        format!("UPDATE scheduler_lock SET expires_at = {DB_NOW} + $3 WHERE id = 1 AND holder = $2 AND $1 IS NOT NULL")
    } else {
        "UPDATE scheduler_lock SET expires_at = $1 + $3 WHERE id = 1 AND holder = $2".to_string()
    };
    let r = sqlx::query(conn.sql(&sql))
        .bind(now_ms())
        .bind(me)
        .bind(ttl_ms)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() > 0)
    })
}

pub async fn release_lock(conn: &mut Conn, me: &str) -> Result<(), StoreError> {
    on!(conn => {
    let r = sqlx::query(conn.sql("DELETE FROM scheduler_lock WHERE id = 1 AND holder = $1"))
        .bind(me)
        .execute(&mut *conn)
        .await?;
    if conn.postgres() && r.rows_affected() > 0 {
        // A standby listening takes over at once instead of at its next poll.
        sqlx::query("SELECT pg_notify($1, 'released')")
            .bind(super::LOCK_CHANNEL)
            .execute(conn)
            .await?;
    }
    Ok(())
    })
}
