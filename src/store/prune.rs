//! Deleting old history (`paperpost prune`, daily in the daemon), in short
//! transactions so that sending and the web endpoint are never held up long.

use std::time::Duration;

use super::{Dialect, Pool, StoreError, now_ms};
use crate::config::RetentionSettings;

/// Rows deleted per transaction.
const CHUNK: i64 = 5_000;

/// What a prune deleted (or, for a dry run, would delete).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub editions: u64,
    pub deliveries: u64,
    pub link_events: u64,
    pub fires: u64,
    pub papers: u64,
}

/// The editions whose history may go: started before `cutoff`, finished
/// (nothing queued or being sent), and not the newest.
async fn old_editions(pool: &Pool, cutoff: i64) -> Result<Vec<String>, StoreError> {
    on_pool!(pool => {
    Ok(sqlx::query_scalar(pool.sql(
        "SELECT edition_date FROM editions e WHERE started_at < $1 \
           AND edition_date < (SELECT max(edition_date) FROM editions) \
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.edition_date = e.edition_date \
                             AND d.status IN ('queued', 'sending')) \
         ORDER BY edition_date",
    ))
    .bind(cutoff)
    .fetch_all(pool)
    .await?)
    })
}

fn cutoff(keep: Duration) -> i64 {
    now_ms() - keep.as_millis() as i64
}

/// What a prune statement's `$1` is: an edition date or a stored time.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Date(&'a str),
    Time(i64),
}

/// Binds `$1` to `value`, typed as its column is.
macro_rules! bind_value {
    ($q:expr, $value:expr) => {
        match $value {
            Value::Date(d) => $q.bind(d),
            Value::Time(t) => $q.bind(t),
        }
    };
}

/// Deletes `sql` (a DELETE whose `$1` is `value`, `$2` the chunk size,
/// choosing rows with `rowid IN (SELECT ... LIMIT $2)`) until nothing is
/// left; returns the rows deleted.
async fn in_chunks(writer: &Pool, sql: &str, value: Value<'_>) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let mut t = super::write(writer).await?;
        let tx = &mut t;
        let n = on!(tx => bind_value!(sqlx::query(tx.sql(sql)), value)
            .bind(CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected());
        t.commit().await?;
        total += n;
        if n < CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// Counts (dry run) or deletes what `keep` says is old.
pub async fn prune(
    pool: &Pool,
    writer: &Pool,
    keep: &RetentionSettings,
    dry_run: bool,
) -> Result<Pruned, StoreError> {
    let mut p = Pruned::default();
    let editions = old_editions(pool, cutoff(keep.deliveries)).await?;
    let events_before = Value::Time(cutoff(keep.link_events));
    let fires_before = Value::Time(cutoff(keep.fires));
    if dry_run {
        for date in &editions {
            p.deliveries += count(
                pool,
                "SELECT count(*) FROM deliveries WHERE edition_date = $1",
                Value::Date(date),
            )
            .await?;
        }
        p.editions = editions.len() as u64;
        p.link_events = count(
            pool,
            "SELECT count(*) FROM token_events WHERE at < $1",
            events_before,
        )
        .await?;
        p.fires = count(
            pool,
            "SELECT count(*) FROM fires WHERE handled_at < $1",
            fires_before,
        )
        .await?;
        return Ok(p);
    }
    for date in &editions {
        p.deliveries += in_chunks(
            writer,
            "DELETE FROM deliveries WHERE rowid IN \
             (SELECT rowid FROM deliveries WHERE edition_date = $1 LIMIT $2)",
            Value::Date(date),
        )
        .await?;
        let mut t = super::write(writer).await?;
        let tx = &mut t;
        for table in ["selections", "selection_origins", "editions"] {
            let sql = format!("DELETE FROM {table} WHERE edition_date = $1");
            on!(tx => {
                sqlx::query(&sql).bind(date).execute(&mut *tx).await?;
            });
        }
        t.commit().await?;
        p.editions += 1;
    }
    p.link_events = in_chunks(
        writer,
        "DELETE FROM token_events WHERE rowid IN (SELECT rowid FROM token_events WHERE at < $1 LIMIT $2)",
        events_before,
    )
    .await?;
    p.fires = in_chunks(
        writer,
        "DELETE FROM fires WHERE rowid IN (SELECT rowid FROM fires WHERE handled_at < $1 LIMIT $2)",
        fires_before,
    )
    .await?;
    // Papers no selection uses any more, and not new (an editor's import
    // waiting to be selected is kept).
    p.papers = in_chunks(
        writer,
        "DELETE FROM papers WHERE rowid IN (SELECT rowid FROM papers WHERE created_at < $1 \
           AND id NOT IN (SELECT paper_id FROM selections) LIMIT $2)",
        Value::Time(cutoff(keep.deliveries)),
    )
    .await?;
    Ok(p)
}

async fn count(pool: &Pool, sql: &str, value: Value<'_>) -> Result<u64, StoreError> {
    let n: i64 = on_pool!(pool => bind_value!(sqlx::query_scalar(pool.sql(sql)), value)
        .fetch_one(pool)
        .await?);
    Ok(n as u64)
}
