//! Bounce and complaint reports (table `bounces`).

use serde::Serialize;

use super::{Conn, Dialect, Pool, StoreError, now_ms};

/// A report to record.
#[derive(Debug, Clone, Default)]
pub struct NewBounce {
    pub subscriber_id: Option<i64>,
    pub delivery_id: Option<i64>,
    pub edition_date: Option<String>,
    pub kind: &'static str,
    pub source: String,
    pub matched_by: &'static str,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
    pub recipient: Option<String>,
    pub domain: Option<String>,
    pub diagnostic_key: Option<String>,
    pub message_id: Option<String>,
    pub event_key: String,
}

/// Records a report; `None` when one with its source and event key was
/// recorded before (a report delivered twice).
pub async fn record(conn: &mut Conn, b: &NewBounce) -> Result<Option<i64>, StoreError> {
    on!(conn => {
    Ok(sqlx::query_scalar(conn.sql(
        "INSERT INTO bounces (subscriber_id, delivery_id, edition_date, kind, source, matched_by, \
           status, diagnostic, recipient, domain, diagnostic_key, message_id, event_key, occurred_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (source, event_key) DO NOTHING RETURNING id",
    ))
    .bind(b.subscriber_id)
    .bind(b.delivery_id)
    .bind(&b.edition_date)
    .bind(b.kind)
    .bind(&b.source)
    .bind(b.matched_by)
    .bind(&b.status)
    .bind(&b.diagnostic)
    .bind(&b.recipient)
    .bind(&b.domain)
    .bind(&b.diagnostic_key)
    .bind(&b.message_id)
    .bind(&b.event_key)
    .bind(now_ms())
    .fetch_optional(conn)
    .await?)
    })
}

/// The subscriber and edition of delivery `id`, and when it was sent.
pub async fn delivery(
    conn: &mut Conn,
    id: i64,
) -> Result<Option<(i64, String, Option<i64>)>, StoreError> {
    on!(conn => {
    Ok(
        sqlx::query_as(conn.sql("SELECT subscriber_id, edition_date, sent_at FROM deliveries WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
    })
}

/// Whether another counted hard bounce names delivery `delivery_id` (each
/// message counts once, however many reports say it bounced).
pub async fn delivery_counted(
    conn: &mut Conn,
    delivery_id: i64,
    except: i64,
) -> Result<bool, StoreError> {
    on!(conn => {
    Ok(sqlx::query_scalar(conn.sql(
        "SELECT EXISTS (SELECT 1 FROM bounces WHERE delivery_id = $1 AND id != $2 \
         AND kind = 'hard' AND counted = 1)",
    ))
    .bind(delivery_id)
    .bind(except)
    .fetch_one(conn)
    .await?)
    })
}

/// Distinct editions with a counted soft bounce for the subscriber since `since`.
pub async fn soft_editions(
    conn: &mut Conn,
    subscriber_id: i64,
    since: i64,
) -> Result<i64, StoreError> {
    on!(conn => {
    Ok(sqlx::query_scalar(conn.sql(
        "SELECT count(DISTINCT edition_date) FROM bounces WHERE subscriber_id = $1 \
         AND kind = 'soft' AND counted = 1 AND occurred_at >= $2",
    ))
    .bind(subscriber_id)
    .bind(since)
    .fetch_one(conn)
    .await?)
    })
}

/// Distinct recipient domains whose hard bounces since `since` carry the
/// diagnostic `key`.
pub async fn domains_with(conn: &mut Conn, key: &str, since: i64) -> Result<i64, StoreError> {
    on!(conn => {
    Ok(sqlx::query_scalar(conn.sql(
        "SELECT count(DISTINCT domain) FROM bounces INDEXED BY bounces_recent \
         WHERE occurred_at >= $1 AND kind = 'hard' AND diagnostic_key = $2",
    ))
    .bind(since)
    .bind(key)
    .fetch_one(conn)
    .await?)
    })
}

/// Which hard reports the guard takes back.
#[derive(Debug, Clone, Copy)]
pub enum Window<'a> {
    /// Those with this normalized diagnostic.
    Diagnostic(&'a str),
    /// Those for this edition.
    Edition(&'a str),
}

/// Takes back the counted hard reports of `window` since `since`: they no
/// longer count. Returns the subscribers each named (once per report).
pub async fn take_back(
    conn: &mut Conn,
    window: Window<'_>,
    since: i64,
) -> Result<Vec<i64>, StoreError> {
    on!(conn => {
    let (column, value) = match window {
        Window::Diagnostic(key) => ("diagnostic_key", key),
        Window::Edition(date) => ("edition_date", date),
    };
    let sql = format!(
        "UPDATE bounces SET counted = 0 WHERE occurred_at >= $1 AND kind = 'hard' \
         AND {column} = $2 AND counted = 1 AND subscriber_id IS NOT NULL \
         RETURNING subscriber_id"
    );
    Ok(sqlx::query_scalar(conn.sql(&sql))
        .bind(since)
        .bind(value)
        .fetch_all(conn)
        .await?)
    })
}

/// Counted hard reports since `since` for `edition`, and the messages it sent.
pub async fn hard_share(
    conn: &mut Conn,
    edition: &str,
    since: i64,
) -> Result<(i64, i64), StoreError> {
    on!(conn => {
    Ok(sqlx::query_as(conn.sql(
        "SELECT (SELECT count(*) FROM bounces INDEXED BY bounces_recent WHERE occurred_at >= $1 \
                 AND kind = 'hard' AND counted = 1 AND edition_date = $2), \
                (SELECT count(*) FROM deliveries INDEXED BY deliveries_edition \
                 WHERE edition_date = $2 AND status = 'sent')",
    ))
    .bind(since)
    .bind(edition)
    .fetch_one(conn)
    .await?)
    })
}

/// Stops the soft bounces of `subscribers` counting (their suppression was
/// lifted by the operator: the same bounces must not suppress them again).
pub async fn uncount(conn: &mut Conn, subscribers: &[i64]) -> Result<(), StoreError> {
    on!(conn => {
    let ids = serde_json::to_string(subscribers).expect("integers serialize");
    sqlx::query(conn.sql(
        "UPDATE bounces SET counted = 0 WHERE counted = 1 \
         AND subscriber_id IN (SELECT CAST(value AS BIGINT) FROM json_each($1))",
    ))
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
    })
}

/// One recorded report, as `bounces list` shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Listed {
    pub at: i64,
    pub kind: String,
    pub source: String,
    pub matched_by: String,
    pub email: Option<String>,
    pub recipient: Option<String>,
    pub edition_date: Option<String>,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
    pub counted: bool,
}

/// Reports since `since` (Unix ms), of `kind` if given, newest first.
pub async fn list(pool: &Pool, since: i64, kind: Option<&str>) -> Result<Vec<Listed>, StoreError> {
    on_pool!(pool => {
    Ok(sqlx::query_as(pool.sql(
        "SELECT b.occurred_at AS at, b.kind, b.source, b.matched_by, s.email, b.recipient, \
           b.edition_date, b.status, b.diagnostic, b.counted = 1 AS counted \
         FROM bounces b LEFT JOIN subscribers s ON s.id = b.subscriber_id \
         WHERE b.occurred_at >= $1 AND (CAST($2 AS TEXT) IS NULL OR b.kind = $3) ORDER BY b.occurred_at DESC, b.id DESC",
    ))
    .bind(since)
    .bind(kind)
    .bind(kind)
    .fetch_all(pool)
    .await?)
    })
}

/// Reports per source and kind (for /metrics).
pub async fn counts(pool: &Pool) -> Result<Vec<(String, String, i64)>, StoreError> {
    on_pool!(pool => {
    Ok(
        sqlx::query_as(pool.sql("SELECT source, kind, count(*) FROM bounces GROUP BY source, kind"))
            .fetch_all(pool)
            .await?,
    )
    })
}

/// Matched reports per edition and kind, for the newest `n` editions that
/// have any, with the messages each edition sent.
pub async fn by_edition(
    pool: &Pool,
    n: i64,
) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
    on_pool!(pool => {
    Ok(sqlx::query_as(pool.sql(
        "WITH e AS (SELECT DISTINCT edition_date FROM bounces WHERE edition_date IS NOT NULL \
                    ORDER BY edition_date DESC LIMIT $1) \
         SELECT b.edition_date, b.kind, count(*), \
           (SELECT count(*) FROM deliveries d INDEXED BY deliveries_edition \
            WHERE d.edition_date = b.edition_date AND d.status = 'sent') \
         FROM bounces b JOIN e ON e.edition_date = b.edition_date \
         GROUP BY b.edition_date, b.kind ORDER BY b.edition_date DESC, b.kind",
    ))
    .bind(n)
    .fetch_all(pool)
    .await?)
    })
}

/// Takes a webhook's one-time token; false when it was used before (a
/// replay). Tokens older than a day are forgotten on the way.
pub async fn take_token(conn: &mut Conn, provider: &str, token: &str) -> Result<bool, StoreError> {
    on!(conn => {
    sqlx::query(conn.sql("DELETE FROM webhook_tokens WHERE at < $1"))
        .bind(now_ms() - 86_400_000)
        .execute(&mut *conn)
        .await?;
    let r =
        sqlx::query(conn.sql("INSERT OR IGNORE INTO webhook_tokens (provider, token, at) VALUES ($1, $2, $3)"))
            .bind(provider)
            .bind(token)
            .bind(now_ms())
            .execute(conn)
            .await?;
    Ok(r.rows_affected() == 1)
    })
}
