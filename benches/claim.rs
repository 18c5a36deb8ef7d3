//! Claiming queued rows: `cargo bench --bench claim`.
//!
//! 100,000 queued deliveries (`--test`: 2,000), claimed in batches of 100 by
//! 1, 2 and 4 claimers at once, each on its own connection, as one sender's
//! workers would, until the queue is empty: rows claimed per second, the
//! 99th percentile of one claim, and rows claimed twice (must be 0). On
//! SQLite and, when `.ci/postgres.sh` has printed PAPERPOST_TEST_POSTGRES
//! (or PAPERPOST_BENCH_POSTGRES is set), on PostgreSQL, where claims take
//! rows FOR UPDATE SKIP LOCKED.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use paperpost::store::{self, Pool, deliveries};

mod support;

const BATCH: u32 = 100;
const ME: &str = "bench-claimer";
const DATE: &str = "2024-03-11";

fn settings(dir: &Path, url: Option<&str>) -> paperpost::config::Settings {
    let mut env: std::collections::HashMap<String, String> = [(
        "PAPERPOST__DATABASE__PATH".to_string(),
        dir.join("data/paperpost.db").display().to_string(),
    )]
    .into();
    env.insert("PAPERPOST__DATABASE__MAX_CONNECTIONS".into(), "8".into());
    if let Some(url) = url {
        env.insert("PAPERPOST__DATABASE__URL".into(), url.into());
    }
    paperpost::config::Settings::load_from(None, Some(env)).unwrap()
}

/// `n` subscribers and an edition queued for each, due now.
fn prepare(dir: &Path, url: Option<&str>, n: usize) {
    support::prepare(dir, DATE, n, || {
        let mut c = support::paperpost(dir, 25, 1);
        if let Some(url) = url {
            c.env("PAPERPOST__DATABASE__URL", url);
        }
        c
    });
}

/// Every row back to queued and unclaimed, the lock ours.
async fn reset(pool: &Pool) {
    let sql = "UPDATE deliveries SET status = 'queued', claimed_by = NULL, lease_until = NULL, \
               attempts = 0, next_attempt_at = 0";
    match pool {
        Pool::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Pool::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    assert!(
        deliveries::try_lock(&mut conn, ME, 600_000, None)
            .await
            .unwrap()
            .is_none()
    );
}

/// One claimer: claims until nothing is left; its ids and claim latencies.
async fn claimer(pool: Pool, token: i64) -> (Vec<i64>, Vec<Duration>) {
    let mut conn = pool.acquire().await.unwrap();
    let (mut ids, mut took) = (Vec::new(), Vec::new());
    loop {
        let t = Instant::now();
        let rows = loop {
            match deliveries::claim(&mut conn, ME, token, BATCH, 300_000, None).await {
                Ok(rows) => break rows,
                Err(e) if e.is_busy() => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => panic!("claim: {e}"),
            }
        };
        took.push(t.elapsed());
        if rows.is_empty() {
            return (ids, took);
        }
        ids.extend(rows.iter().map(|r| r.id));
    }
}

async fn run(label: &str, pool: &Pool, n: usize) {
    for claimers in [1, 2, 4] {
        reset(pool).await;
        let start = Instant::now();
        let tasks: Vec<_> = (0..claimers)
            .map(|i| tokio::spawn(claimer(pool.clone(), 1 + i as i64)))
            .collect();
        let (mut ids, mut took) = (Vec::new(), Vec::new());
        for t in tasks {
            let (i, d) = t.await.unwrap();
            ids.extend(i);
            took.extend(d);
        }
        let secs = start.elapsed().as_secs_f64();
        let unique: HashSet<i64> = ids.iter().copied().collect();
        took.sort_unstable();
        let p99 = took[(took.len() * 99 / 100).min(took.len() - 1)];
        assert_eq!(unique.len(), n, "{label}: rows left unclaimed");
        println!(
            "claim, {label}, {claimers} claimer(s): {n} rows in {secs:.2} s: {:.0} rows/s, \
             p99 of one claim of {BATCH} {:.2} ms, double claims {}",
            n as f64 / secs,
            p99.as_secs_f64() * 1000.0,
            ids.len() - unique.len()
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let n = if quick { 2_000 } else { 100_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), None, n);
    rt.block_on(async {
        let pool = store::connect(&settings(dir.path(), None).database)
            .await
            .unwrap();
        deliveries::start_edition(&pool, DATE.parse().unwrap(), "bench", |_| 0)
            .await
            .unwrap();
        run("SQLite", &pool, n).await;
    });
    let Some(db) = support::PgDb::create() else {
        println!(
            "claim, PostgreSQL: SKIPPED: set PAPERPOST_TEST_POSTGRES (bash .ci/postgres.sh prints it)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), Some(&db.url), n);
    rt.block_on(async {
        let pool = store::connect(&settings(dir.path(), Some(&db.url)).database)
            .await
            .unwrap();
        deliveries::start_edition(&pool, DATE.parse().unwrap(), "bench", |_| 0)
            .await
            .unwrap();
        run("PostgreSQL", &pool, n).await;
        pool.close().await;
    });
}
