//! `paperpost status` on a database that has run for a while:
//! `cargo bench --bench status`.
//!
//! 20,000 subscribers and 50 finished editions (1,000,000 delivery rows,
//! 1% of them with an error), made directly in SQL; then the release
//! `paperpost status` run 7 times, printing the median and the slowest
//! (target: under 100 ms at 1,000,000 rows).

mod support;

use std::{process::Command, time::Instant};

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let (subscribers, editions) = if quick { (2_000, 5) } else { (20_000, 50) };
    let dir = tempfile::tempdir().unwrap();
    let cmd = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_paperpost"));
        c.current_dir(dir.path())
            .env(
                "PAPERPOST__SECURITY__SECRET",
                "bench-secret-0123456789abcdef0123456789abcdef",
            )
            .env("PAPERPOST__LOG__LEVEL", "warn");
        c
    };
    support::prepare(dir.path(), "2024-03-11", subscribers, cmd);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(fill(&dir.path().join("data/paperpost.db"), editions));
    let rows = subscribers * editions;
    let mut times = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        support::must(cmd().arg("status"));
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "status: {subscribers} subscribers, {editions} editions, {rows} delivery rows: median {:.1} ms, \
         slowest {:.1} ms (target under 100 ms at 1,000,000 rows)",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

/// `editions` finished editions before 2024-03-11, one row per subscriber
/// each, 1% failed with an error.
async fn fill(db: &std::path::Path, editions: usize) {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for e in 0..editions {
        let date = (chrono::NaiveDate::from_ymd_opt(2024, 3, 10).unwrap()
            - chrono::Duration::days(e as i64))
        .to_string();
        let at = 1_700_000_000_000_i64 + e as i64 * 86_400_000;
        sqlx::query(
            "INSERT INTO editions (edition_date, started_at, started_by) VALUES (?, ?, 'schedule')",
        )
        .bind(&date)
        .bind(at)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO deliveries (edition_date, subscriber_id, status, attempts, next_attempt_at, \
               last_error, smtp_reply, message_id, first_attempt_at, created_at, updated_at, sent_at) \
             SELECT ?1, id, CASE WHEN id % 100 = 0 THEN 'failed' ELSE 'sent' END, 1, ?2, \
               CASE WHEN id % 100 = 0 THEN '550 5.1.1 user unknown' END, '250 ok', \
               '<digest.' || ?1 || '.' || uuid || '@example.org>', ?2, ?2, ?2 + id, ?2 + id \
             FROM subscribers",
        )
        .bind(&date)
        .bind(at)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}
