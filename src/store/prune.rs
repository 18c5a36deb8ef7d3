//! Deleting old history (`paperpost prune`, daily in the daemon), in short
//! transactions so that sending and the web endpoint are never held up long.

use std::time::Duration;

use sqlx::SqlitePool;

use super::{StoreError, now_ms};
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
async fn old_editions(pool: &SqlitePool, cutoff: i64) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT edition_date FROM editions e WHERE started_at < ?1 \
           AND edition_date < (SELECT max(edition_date) FROM editions) \
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.edition_date = e.edition_date \
                             AND d.status IN ('queued', 'sending')) \
         ORDER BY edition_date",
    )
    .bind(cutoff)
    .fetch_all(pool)
    .await?)
}

fn cutoff(keep: Duration) -> i64 {
    now_ms() - keep.as_millis() as i64
}

/// Deletes `sql` (a DELETE whose `?1` is a bound value, `?2` the chunk size,
/// choosing rows with `rowid IN (SELECT ... LIMIT ?2)`) until nothing is
/// left; returns the rows deleted.
async fn in_chunks(writer: &SqlitePool, sql: &str, value: &str) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let mut tx = super::write(writer).await?;
        let n = sqlx::query(sql)
            .bind(value)
            .bind(CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        total += n;
        if n < CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// Counts (dry run) or deletes what `keep` says is old.
pub async fn prune(
    pool: &SqlitePool,
    writer: &SqlitePool,
    keep: &RetentionSettings,
    dry_run: bool,
) -> Result<Pruned, StoreError> {
    let mut p = Pruned::default();
    let editions = old_editions(pool, cutoff(keep.deliveries)).await?;
    let events_before = cutoff(keep.link_events).to_string();
    let fires_before = cutoff(keep.fires).to_string();
    if dry_run {
        for date in &editions {
            p.deliveries += count(
                pool,
                "SELECT count(*) FROM deliveries WHERE edition_date = ?",
                date,
            )
            .await?;
        }
        p.editions = editions.len() as u64;
        p.link_events = count(
            pool,
            "SELECT count(*) FROM token_events WHERE at < ?",
            &events_before,
        )
        .await?;
        p.fires = count(
            pool,
            "SELECT count(*) FROM fires WHERE handled_at < ?",
            &fires_before,
        )
        .await?;
        return Ok(p);
    }
    for date in &editions {
        p.deliveries += in_chunks(
            writer,
            "DELETE FROM deliveries WHERE rowid IN \
             (SELECT rowid FROM deliveries WHERE edition_date = ?1 LIMIT ?2)",
            date,
        )
        .await?;
        let mut tx = super::write(writer).await?;
        for table in ["selections", "selection_origins", "editions"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE edition_date = ?"))
                .bind(date)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        p.editions += 1;
    }
    p.link_events = in_chunks(
        writer,
        "DELETE FROM token_events WHERE rowid IN (SELECT rowid FROM token_events WHERE at < ?1 LIMIT ?2)",
        &events_before,
    )
    .await?;
    p.fires = in_chunks(
        writer,
        "DELETE FROM fires WHERE rowid IN (SELECT rowid FROM fires WHERE handled_at < ?1 LIMIT ?2)",
        &fires_before,
    )
    .await?;
    // Papers no selection uses any more, and not new (an editor's import
    // waiting to be selected is kept).
    p.papers = in_chunks(
        writer,
        "DELETE FROM papers WHERE rowid IN (SELECT rowid FROM papers WHERE created_at < ?1 \
           AND id NOT IN (SELECT paper_id FROM selections) LIMIT ?2)",
        &cutoff(keep.deliveries).to_string(),
    )
    .await?;
    Ok(p)
}

async fn count(pool: &SqlitePool, sql: &str, value: &str) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(sql).bind(value).fetch_one(pool).await?;
    Ok(n as u64)
}
