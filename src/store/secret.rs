//! The link secret's fingerprint, and re-deriving every token from a new
//! secret.

use super::{Conn, Dialect, StoreError, now_ms};
use crate::security::Keys;

/// The fingerprint recorded, if any.
pub async fn fingerprint(conn: &mut Conn) -> Result<Option<String>, StoreError> {
    on!(conn => {
    Ok(
        sqlx::query_scalar(conn.sql("SELECT fingerprint FROM secret_fingerprint WHERE id = 1"))
            .fetch_optional(conn)
            .await?,
    )
    })
}

/// Records `fingerprint` as the secret's.
pub async fn record(conn: &mut Conn, fingerprint: &str) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql(
        "INSERT INTO secret_fingerprint (id, fingerprint, at) VALUES (1, $1, $2) \
         ON CONFLICT (id) DO UPDATE SET fingerprint = $1, at = $2",
    ))
    .bind(fingerprint)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
    })
}

/// One subscriber's uuid and stored token hash, to tell which secret made
/// the tokens of a database that has no fingerprint yet (made by an older
/// release).
pub async fn sample_token(conn: &mut Conn) -> Result<Option<(String, String)>, StoreError> {
    on!(conn => {
    Ok(
        sqlx::query_as(conn.sql("SELECT uuid, token_hash FROM subscribers ORDER BY id LIMIT 1"))
            .fetch_optional(conn)
            .await?,
    )
    })
}

/// Re-derives every subscriber's token from `keys` and records its
/// fingerprint; returns how many subscribers. Run in one transaction.
pub async fn rekey(conn: &mut Conn, keys: &Keys) -> Result<u64, StoreError> {
    on!(conn => {
    let subscribers: Vec<(i64, String)> = sqlx::query_as(conn.sql("SELECT id, uuid FROM subscribers"))
        .fetch_all(&mut *conn)
        .await?;
    for chunk in subscribers.chunks(500) {
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .map(|(id, uuid)| serde_json::json!([id, keys.subscriber_token_hash(uuid)]))
            .collect();
        sqlx::query(conn.sql(
            "UPDATE subscribers SET token_hash = (SELECT value ->> 1 FROM json_each($1) \
               WHERE CAST(value ->> 0 AS BIGINT) = subscribers.id) \
             WHERE id IN (SELECT CAST(value ->> 0 AS BIGINT) FROM json_each($1))",
        ))
        .bind(serde_json::Value::Array(rows).to_string())
        .execute(&mut *conn)
        .await?;
    }
    record(conn, &keys.fingerprint()).await?;
    Ok(subscribers.len() as u64)
    })
}
