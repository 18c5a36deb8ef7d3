//! What an operator does around the daemon: back up while it runs, restore,
//! upgrade (and refuse a database from a newer paperpost), and ask whether it
//! is healthy as a container health check does.

use crate::support;

use std::time::Duration;

use crate::support::{
    Sandbox,
    child::{DATE, deliveries, never_fires, queue_edition, run, setup, smtp_env, wait_for, with},
    daemon::TestDaemon,
    smtp::SmtpServer,
};

/// The readers whose delivery of DATE is recorded as sent.
fn sent(s: &Sandbox) -> std::collections::BTreeSet<String> {
    deliveries(s)
        .into_iter()
        .filter(|(_, d)| d["status"] == "sent")
        .map(|(email, _)| email)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_an_edition_sends_restores_to_a_working_database() {
    if crate::support::on_postgres("backup copies SQLite's file (PostgreSQL: pg_dump)") {
        return;
    }
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(50));
    let s = setup(30);
    let env = never_fires(smtp_env(server.port(), 1));
    queue_edition(&s, DATE).await;
    let daemon = TestDaemon::spawn(&s, &env, &["run"]);
    wait_for("the edition under way", || sent(&s).len() >= 5).await;
    // What is committed when the backup starts must be in it (a copy of
    // the database file alone would miss what is still in the WAL), and a
    // writer in the middle of a transaction must neither block it nor
    // show in it.
    let committed = sent(&s);
    let pool = s.pool().await;
    let mut writer = crate::support::sqlite(&pool).acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *writer)
        .await
        .unwrap();
    sqlx::query("UPDATE subscribers SET name = 'uncommitted'")
        .execute(&mut *writer)
        .await
        .unwrap();
    let copy = s.path("backup.db");
    let out = s.run(&["backup", copy.to_str().unwrap()]);
    assert!(out.ok().contains("Backed up"), "{}", out.stdout);
    sqlx::query("ROLLBACK").execute(&mut *writer).await.unwrap();
    drop(writer);
    pool.close().await;
    let again = s.run(&["backup", copy.to_str().unwrap()]);
    assert!(again.fails().contains("exists already"), "{}", again.stderr);
    assert_eq!(daemon.stop().await.code, 0);

    // Restore: the copy replaces the database (the WAL files go with it).
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", s.db_path().display()));
    }
    std::fs::copy(&copy, s.db_path()).unwrap();
    assert_eq!(s.subscribers().len(), 30);
    assert!(s.subscribers().iter().all(|x| x["name"] != "uncommitted"));
    let in_copy = sent(&s);
    assert!(
        in_copy.is_superset(&committed),
        "the backup lost sent rows: {committed:?} not all in {in_copy:?}"
    );
    // Sending from the restored copy reaches everyone it has not recorded
    // as sent, and nobody it has.
    let before = server.counts();
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    out.ok();
    let after = server.counts();
    assert_eq!(after.len(), 30, "every reader has their digest");
    for email in &in_copy {
        assert_eq!(after[email], before[email], "{email} sent again");
    }
    assert_eq!(sent(&s).len(), 30);
}

#[test]
fn a_database_from_a_newer_paperpost_is_refused_untouched() {
    let s = Sandbox::with_sample_papers();
    s.run(&["subscribers", "add", "ada@example.org"]).ok();
    let sqlite = s.db.url().is_empty();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = s.pool().await;
        crate::on_db!(&pool, |p| sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', $1, $2, 0)"
        )
        .bind(true)
        .bind(vec![0u8])
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        if sqlite {
            // Everything into the database file, so that its bytes say it all.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(crate::support::sqlite(&pool))
                .await
                .unwrap();
        }
        pool.close().await;
    });
    let before = sqlite.then(|| std::fs::read(s.db_path()).unwrap());
    let out = s.run(&["subscribers", "list"]);
    assert!(
        out.fails()
            .contains("migrated by a newer paperpost (schema version 9999"),
        "{}",
        out.stderr
    );
    if let Some(before) = before {
        assert_eq!(std::fs::read(s.db_path()).unwrap(), before, "changed");
        // Nor written to its log, waiting for a checkpoint.
        let wal = std::fs::metadata(format!("{}-wal", s.db_path().display()));
        assert!(wal.map_or(true, |m| m.len() == 0), "written to the WAL");
    } else {
        let version = rt
            .block_on(async { paperpost::store::schema_version(&s.pool_unmigrated().await).await });
        assert_eq!(version.unwrap(), 9999, "the newer schema is left as it was");
    }
}

/// A command that finds the database busy says so once: each cause in its
/// error appears once (the database's own words were printed three times,
/// "…: database is locked: database is locked", as each wrapper repeated its
/// source), and nothing is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_is_named_once_in_the_error() {
    let s = Sandbox::new();
    let pool = s.pool().await;
    let lock = support::WriteLock::take(&pool).await;
    let out = s.run_env(
        &[("PAPERPOST__DATABASE__BUSY_TIMEOUT", "200ms")],
        &["subscribers", "add", "ada@example.org"],
    );
    lock.release().await;
    let stderr = out.fails();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or(stderr);
    let words = ["database is locked", "lock timeout"];
    assert!(words.iter().any(|w| line.contains(w)), "{line}");
    let mut parts: Vec<&str> = line.split(": ").collect();
    parts.sort();
    assert!(
        parts.windows(2).all(|w| w[0] != w[1]),
        "a cause repeated in: {line}"
    );
    assert!(s.subscribers().is_empty(), "{:?}", s.subscribers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_while_the_daemon_is_healthy_and_1_when_it_is_gone() {
    let s = Sandbox::with_sample_papers();
    let bind = format!("0.0.0.0:{}", support::http::free_port());
    let env = with(vec![], "PAPERPOST__HTTP__BIND", &bind);
    let env = with(env, "PAPERPOST__LOG__LEVEL", "info");
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log("paperpost is running").await;
    let check = |env: &[(&str, &str)]| s.run_env(env, &["healthcheck"]);
    let out = check(&[("PAPERPOST__HTTP__BIND", &bind)]);
    assert!(out.ok().contains("/healthz: ok"), "{}", out.stdout);
    assert_eq!(daemon.stop().await.code, 0);
    let out = check(&[("PAPERPOST__HTTP__BIND", &bind)]);
    assert!(out.fails().contains("does not answer"), "{}", out.stderr);
}
