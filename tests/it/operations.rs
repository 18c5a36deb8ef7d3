//! What real operations break (issue 15): a slow rate-limited relay, a
//! truncated subscriber file, a stale source, a lost secret, a live holder
//! that cannot be seen... each reproduced with the release binary.

use std::time::Duration;

use crate::support::{
    child::{DATE, run, setup, smtp_env, with},
    smtp::SmtpServer,
};

/// A slow, rate-limited relay: messages wait in this process's own queue
/// for longer than their lease. They are still this process's, so they must
/// not be swept back and claimed again (each reader got two copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_for_the_rate_limit_are_never_sent_twice() {
    let server = SmtpServer::start().await;
    let s = setup(40);
    let env = with(
        smtp_env(server.port(), 8),
        "PAPERPOST__MAIL__RATE_LIMIT",
        "3",
    );
    let env = with(env, "PAPERPOST__MAIL__LEASE", "1s");
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(out.ok().contains("40 sent, 0 failed"), "{}", out.stdout);
    let counts = server.counts();
    assert_eq!(counts.len(), 40);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}\n{}", out.stderr);
    assert!(!out.stderr.contains("lease ran out"), "{}", out.stderr);
}

/// The sweep puts back rows whose lease ran out, unless their process still
/// holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_spares_the_rows_their_process_still_holds() {
    use paperpost::store::deliveries;
    let s = setup(3);
    crate::support::child::queue_edition(&s, DATE).await;
    let pool = s.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    assert!(
        deliveries::try_lock(&mut conn, "me", 60_000, None)
            .await
            .unwrap()
            .is_none()
    );
    let claimed = deliveries::claim(&mut conn, "me", 1, 10, 1, None)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let held = [claimed[0].id, claimed[1].id];
    let released = deliveries::release_expired(&mut conn, "me", &held, None)
        .await
        .unwrap();
    assert_eq!(released, 1, "only the row nobody holds goes back");
    let queued: Vec<i64> = crate::on_db!(&pool, |p| sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE status = 'queued'"
    )
    .fetch_all(p)
    .await
    .unwrap());
    assert_eq!(queued, vec![claimed[2].id]);
}

const THREE: &str = "[[subscriber]]\nemail = \"ada@example.org\"\n\n\
[[subscriber]]\nemail = \"bob@example.org\"\n\n[[subscriber]]\nemail = \"cy@example.org\"\n";

/// An empty or truncated subscriber file applied on SIGHUP must not
/// unsubscribe everyone it listed (and cancel their queued edition): a sync
/// that would remove all, or more than a tenth, of those the file manages
/// is refused, and only `sync --force` applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_subscriber_file_unsubscribes_nobody_unless_forced() {
    use crate::support::{child::never_fires, daemon::TestDaemon};
    let s = setup(0);
    s.write("config/subscribers.toml", THREE);
    let env = never_fires(with(vec![], "PAPERPOST__LOG__LEVEL", "info"));
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log("applied the subscriber file").await;
    // The edition is queued for later (so nothing is sent meanwhile).
    crate::support::child::queue_edition_later(&s, DATE).await;

    for truncated in ["", "[[subscriber]]\nemail = \"ada@example.org\"\n"] {
        s.write("config/subscribers.toml", truncated);
        daemon.signal(libc::SIGHUP);
        daemon.wait_log("SIGHUP received").await;
        // The next line on the file: applied, or not.
        let seen = daemon.wait_log("subscriber file").await;
        assert!(seen.contains("refused"), "{seen}");
        assert!(seen.contains("--force"), "{seen}");
        for who in ["ada@example.org", "bob@example.org", "cy@example.org"] {
            assert_eq!(s.subscriber(who).unwrap()["status"], "active", "{who}");
        }
        let rows = crate::support::child::deliveries(&s);
        assert!(rows.values().all(|r| r["status"] == "queued"), "{rows:?}");
    }
    assert_eq!(daemon.stop().await.code, 0);

    // By hand: refused the same way, then forced.
    let out = s.run(&["subscribers", "sync"]);
    assert!(out.fails().contains("--force"), "{}", out.stderr);
    assert_eq!(s.subscriber("bob@example.org").unwrap()["status"], "active");
    s.run(&["subscribers", "sync", "--force"]).ok();
    assert_eq!(
        s.subscriber("bob@example.org").unwrap()["status"],
        "unsubscribed"
    );
    assert_eq!(s.subscriber("ada@example.org").unwrap()["status"], "active");
}

/// `paperpost ARGS` using the secret file (not the sandbox's secret).
fn with_secret_file(s: &crate::support::Sandbox, args: &[&str]) -> crate::support::Run {
    let mut c = s.command();
    c.env_remove("PAPERPOST__SECURITY__SECRET").args(args);
    crate::support::output_within(&mut c, crate::support::RUN_LIMIT)
}

/// A lost link secret (a restored backup without it, a container without a
/// persistent volume) must not silently make a new one: every link in mail
/// already sent, and in the next edition's, would answer 404. The database
/// knows the secret's fingerprint; a mismatch stops every command, saying
/// how to fix it, until the secret is restored or rotated on purpose.
#[test]
fn a_lost_secret_stops_paperpost_until_it_is_restored_or_rotated() {
    let s = crate::support::Sandbox::new();
    let sample = crate::support::fixture("daily_papers-2024-03-11.json");
    with_secret_file(&s, &["papers", "import", sample.to_str().unwrap()]).ok();
    with_secret_file(&s, &["subscribers", "add", "ada@example.org"]).ok();
    let secret = s.path("data/secret.key");
    let kept = std::fs::read(&secret).unwrap();
    std::fs::remove_file(&secret).unwrap();

    let out = with_secret_file(&s, &["send", "--date", DATE]);
    let err = out.fails();
    assert!(err.contains("secret"), "{err}");
    assert!(err.contains("data/secret.key"), "{err}");
    assert!(err.contains("paperpost secret rotate"), "{err}");
    assert!(!s.path("data/outbox").exists(), "sent with a new secret");
    assert!(!secret.exists(), "a new secret was left in place");
    // Every command refuses, not only sending.
    with_secret_file(&s, &["subscribers", "add", "bob@example.org"]).fails();

    // Restored: everything works, and the links are the old ones.
    std::fs::write(&secret, &kept).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    with_secret_file(&s, &["send", "--date", DATE]).ok();
    let keys =
        paperpost::security::Keys::from_bytes(String::from_utf8(kept).unwrap().trim().as_bytes());
    let token_ok = |keys: &paperpost::security::Keys| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let pool = s.pool().await;
            let (uuid, hash): (String, String) = crate::on_db!(&pool, |p| sqlx::query_as(
                p.sql("SELECT uuid, token_hash FROM subscribers")
            )
            .fetch_one(p)
            .await)
            .unwrap();
            keys.subscriber_token_hash(&uuid) == hash
        })
    };
    assert!(token_ok(&keys));

    // Rotated on purpose: a new secret, the links made from it, and the
    // commands work again.
    let out = with_secret_file(&s, &["secret", "rotate"]);
    assert!(out.ok().contains("rotated"), "{}", out.stdout);
    let new = std::fs::read_to_string(&secret).unwrap();
    assert!(!token_ok(&keys), "the old links still work");
    assert!(token_ok(&paperpost::security::Keys::from_bytes(
        new.trim().as_bytes()
    )));
    with_secret_file(&s, &["subscribers", "add", "bob@example.org"]).ok();
}

/// A database from before fingerprints (the previous release) is checked
/// against its subscribers' tokens: another secret is refused there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_the_previous_release_is_checked_against_its_tokens() {
    let s = crate::support::Sandbox::new();
    crate::support::database_at_version(&s, 6).await;
    // A subscriber as the previous release made them, with the sandbox's secret.
    s.run(&["subscribers", "add", "ada@example.org"]).ok();
    let pool = s.pool().await;
    crate::on_db!(&pool, |p| sqlx::query(
        p.sql("DELETE FROM secret_fingerprint")
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    pool.close().await;
    let other = "another-secret-0123456789abcdef0123456789abcdef";
    let out = s.run_env(&[("PAPERPOST__SECURITY__SECRET", other)], &["status"]);
    assert!(
        out.fails().contains("paperpost secret rotate"),
        "{}",
        out.stderr
    );
    s.run(&["status"]).ok();
}

/// `backup` copies; it never migrates the live database (a newer binary's
/// backup would upgrade the schema under the older daemon still running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_never_migrates_the_live_database() {
    if crate::support::on_postgres("backup copies SQLite's file (PostgreSQL: pg_dump)") {
        return;
    }
    let s = crate::support::Sandbox::new();
    crate::support::database_at_version(&s, 3).await;
    let copy = s.path("copy.db");
    let out = s.run(&["backup", copy.to_str().unwrap()]);
    assert!(out.ok().contains("Backed up"), "{}", out.stdout);
    let version = |path: std::path::PathBuf| async move {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let v: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        v
    };
    assert_eq!(
        version(s.db_path()).await,
        3,
        "the live database was migrated"
    );
    assert_eq!(version(copy).await, 3);
}

/// The sweep looks at the newest editions only, through their index; `send
/// --date` of an older one must have its stuck rows swept too, or it waits
/// for ever (found by reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_reaches_an_old_edition_being_sent() {
    use paperpost::store::deliveries;
    let s = setup(1);
    let old: chrono::NaiveDate = "2024-01-01".parse().unwrap();
    // The old edition, then fifteen newer ones.
    for d in 0..16 {
        let date = (old + chrono::Duration::days(d * 7)).to_string();
        s.run(&["papers", "select", "--date", &date, "2403.06410"])
            .ok();
        crate::support::child::queue_edition(&s, &date).await;
    }
    let pool = s.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    assert!(
        deliveries::try_lock(&mut conn, "me", 60_000, None)
            .await
            .unwrap()
            .is_none()
    );
    let claimed = deliveries::claim(&mut conn, "me", 1, 1, 1, Some(old))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let released = deliveries::release_expired(&mut conn, "me", &[], Some(old))
        .await
        .unwrap();
    assert_eq!(released, 1, "the old edition's stuck row stays sending");
}

/// A standby `run` (another process sends) pings the watchdog too: the
/// shipped unit's WatchdogSec killed it every two minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_pings_the_watchdog() {
    use crate::support::{child::never_fires, daemon::TestDaemon, notify::NotifySocket};
    let s = setup(1);
    let env = never_fires(with(vec![], "PAPERPOST__LOG__LEVEL", "info"));
    let mut first = TestDaemon::spawn(&s, &env, &["run"]);
    first.wait_log("paperpost is running").await;
    let mut notify = NotifySocket::new();
    let env = with(env, "NOTIFY_SOCKET", notify.path.to_str().unwrap());
    let env = with(env, "WATCHDOG_USEC", "1000000");
    let mut standby = TestDaemon::spawn(&s, &env, &["run"]);
    standby.wait_log("serving the web endpoint only").await;
    crate::support::child::wait_for("three pings", || notify.count("WATCHDOG=1") >= 3).await;
    assert!(
        notify
            .drain()
            .iter()
            .filter(|l| l.starts_with("STATUS="))
            .all(|l| l.starts_with("STATUS=standing by")),
        "{:?}",
        notify.seen
    );
    assert_eq!(standby.stop().await.code, 0);
    assert_eq!(first.stop().await.code, 0);
}

/// A live holder whose /proc entry cannot be read (hidepid=2, systemd's
/// ProtectProc=invisible, another user) is alive: only "no such process"
/// from kill(pid, 0) means gone. A standby that could not see the sending
/// process took the lock over and both sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_this_process_cannot_see_is_not_taken_for_dead() {
    use crate::support::{child::never_fires, daemon::TestDaemon};
    use std::os::unix::fs::PermissionsExt;
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(100));
    let s = setup(30);
    let env = smtp_env(server.port(), 1);
    let send = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    crate::support::child::wait_for("the edition under way", || server.accepted().len() >= 2).await;
    // The standby runs as another user, with a /proc that hides the sender.
    for entry in walk(s.dir.path()) {
        let mode = if entry.is_dir() { 0o777 } else { 0o666 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let c = s.command();
    let bin = c.get_program().to_owned();
    let mut wrapped = std::process::Command::new("unshare");
    wrapped
        .current_dir(c.get_current_dir().unwrap())
        .env_clear()
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .envs(never_fires(env.clone()).into_iter())
        .env("PAPERPOST__HTTP__BIND", "127.0.0.1:0")
        .args(["--mount", "sh", "-c"])
        .arg(
            "mount -t proc -o hidepid=2 proc /proc && \
             exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$0\" run",
        )
        .arg(bin);
    let mut standby = TestDaemon::spawn_command(wrapped);
    let seen = standby.wait_log("web endpoint listening").await;
    assert!(seen.contains("serving the web endpoint only"), "{seen}");
    assert!(!seen.contains("took over the lock"), "{seen}");
    let out = send.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("30 sent"), "{}", out.stdout);
    let counts = server.counts();
    assert_eq!(counts.len(), 30);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert_eq!(standby.stop().await.code, 0);
}

/// Every file and folder under `dir`, `dir` included.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A standby takes over only after it has seen the lock row unchanged for a
/// whole TTL on its own monotonic clock: a holder that keeps renewing is
/// alive, whatever the wall clocks say (here the holder's expiry reads as
/// past on the standby's clock, as after a forward clock step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_never_takes_over_a_lock_that_is_being_renewed() {
    use crate::support::{child::never_fires, daemon::TestDaemon};
    let s = setup(1);
    let pool = s.pool().await;
    let set = |expires_at: i64| {
        let pool = pool.clone();
        async move {
            crate::on_db!(&pool, |p| sqlx::query(p.sql(
                "INSERT INTO scheduler_lock (id, holder, expires_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET holder = $1, expires_at = $2"
            ))
            .bind("elsewhere:1:1:deadbeef:1:cafe0001")
            .bind(expires_at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
        }
    };
    set(paperpost::store::now_ms() + 30_000).await;
    let env = with(vec![], "PAPERPOST__DATABASE__LOCK_TTL", "3s");
    let env = never_fires(with(env, "PAPERPOST__LOG__LEVEL", "info"));
    let mut standby = TestDaemon::spawn(&s, &env, &["run"]);
    standby.wait_log("serving the web endpoint only").await;
    // The holder renews every half second, but its expiry reads 5 minutes
    // in the past on the standby's clock.
    for i in 0..16 {
        set(paperpost::store::now_ms() - 300_000 + i).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = standby.drain_log();
    assert!(
        !log.contains("this one sends"),
        "taken over from a live holder:\n{log}"
    );
    // It stops renewing: taken over a TTL later.
    standby.wait_log("this one sends from now on").await;
    assert_eq!(standby.stop().await.code, 0);
}

/// A tmpfs of `size` mounted on `dir` for a test (root only), unmounted
/// when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and can mount a tmpfs"
            );
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    /// Writes a file until the file system is full.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join(name)).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk under the database: the sender stops at once (it used to go
/// on sending while nothing it wrote was committed), no message leaves
/// whose outcome cannot be recorded, it exits non-zero saying why, and once
/// space is freed the edition finishes with at most the messages in flight
/// sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_sending_at_once_and_loses_nothing() {
    if crate::support::on_postgres("SQLite's file on a full tmpfs") {
        return;
    }
    let s = crate::support::Sandbox::new();
    let Some(disk) = Tmpfs::mount(&s.path("data"), "8m") else {
        return;
    };
    let sample = crate::support::fixture("daily_papers-2024-03-11.json");
    s.run(&["papers", "import", sample.to_str().unwrap()]).ok();
    let mut csv = String::from("email\n");
    for i in 0..400 {
        csv.push_str(&format!("{}\n", crate::support::child::email(i)));
    }
    let f = s.write("subs.csv", csv);
    s.run(&["subscribers", "import", f.to_str().unwrap()]).ok();
    let server = SmtpServer::start().await;
    let env = with(
        smtp_env(server.port(), 4),
        "PAPERPOST__MAIL__RATE_LIMIT",
        "20",
    );
    let send = crate::support::daemon::TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    crate::support::child::wait_for("the edition under way", || server.accepted().len() >= 20)
        .await;
    disk.fill("filler");
    let at_full = server.accepted().len();
    let out = send.finish().await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("full"), "{}", out.stderr);
    let after = server.accepted().len() - at_full;
    assert!(
        after <= 8,
        "{after} messages accepted after the disk filled:\n{}",
        out.stderr
    );

    std::fs::remove_file(s.path("data/filler")).unwrap();
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let counts = server.counts();
    assert_eq!(counts.len(), 400, "nobody is missing");
    let twice: usize = counts.values().map(|n| n - 1).sum();
    assert!(twice <= 4, "{twice} sent twice (more than the concurrency)");
}

/// `n` daily editions from 2024-01-01, each selecting one paper: all sent
/// but number `queued`, which stays queued.
async fn daily_editions(s: &crate::support::Sandbox, n: i64, queued: usize) -> Vec<String> {
    let first: chrono::NaiveDate = "2024-01-01".parse().unwrap();
    let dates: Vec<String> = (0..n)
        .map(|d| (first + chrono::Duration::days(d)).to_string())
        .collect();
    for (i, date) in dates.iter().enumerate() {
        s.run(&["papers", "select", "--date", date, "2403.06410"])
            .ok();
        if i == queued {
            crate::support::child::queue_edition_later(s, date).await;
        } else {
            s.run(&["send", "--date", date]).ok();
        }
    }
    dates
}

/// `status` shows the newest editions (and any older one still queued), not
/// every edition ever started: counting those read every delivery row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_newest_editions_and_any_still_queued() {
    let s = setup(2);
    let dates = daily_editions(&s, 8, 0).await;
    let out = s.run(&["status"]);
    let text = out.ok();
    for date in &dates[3..] {
        assert!(text.contains(date.as_str()), "{date}: {text}");
    }
    assert!(
        text.contains(&format!("{}  ", dates[0])),
        "the queued one: {text}"
    );
    for date in &dates[1..3] {
        assert!(!text.contains(date.as_str()), "{date}: {text}");
    }
    assert!(text.contains("and 2 older finished editions"), "{text}");
    let all = s.run(&["status", "--all"]);
    assert!(
        dates.iter().all(|d| all.stdout.contains(d.as_str())),
        "{}",
        all.stdout
    );
}

/// `prune` deletes finished history older than [retention], never a queued
/// edition, the newest edition, or a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_old_finished_history_and_nothing_else() {
    let s = setup(3);
    let dates = daily_editions(&s, 4, 1).await;
    // Every edition started two years ago; an old link use and fire record.
    let pool = s.pool().await;
    let old = paperpost::store::now_ms() - 2 * 365 * 86_400_000;
    for sql in [
        "UPDATE editions SET started_at = $1",
        "INSERT INTO token_events (subscriber_id, kind, at) SELECT id, 'unsubscribe', $1 FROM subscribers",
        "INSERT INTO fires (fire_time, handled_at, handled_by) VALUES ($1, $1, 'schedule')",
    ] {
        crate::on_db!(&pool, |p| sqlx::query(p.sql(sql))
            .bind(old)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .unwrap();
    }
    let dry = s.run(&["prune", "--dry-run"]);
    assert!(
        dry.ok()
            .contains("Would delete 6 deliveries of 2 old editions, 3 link uses, 1 fire records"),
        "{}",
        dry.stdout
    );
    let out = s.run(&["prune"]);
    assert!(
        out.ok().contains("Deleted 6 deliveries of 2 old editions"),
        "{}",
        out.stdout
    );
    let left: Vec<(String, i64)> = crate::on_db!(&pool, |p| sqlx::query_as(
        p.sql("SELECT edition_date, count(*) FROM deliveries GROUP BY edition_date ORDER BY 1")
    )
    .fetch_all(p)
    .await)
    .unwrap();
    // The queued one and the newest stay; the two finished older ones go.
    assert_eq!(left, vec![(dates[1].clone(), 3), (dates[3].clone(), 3)]);
    assert_eq!(s.subscribers().len(), 3);
    let again = s.run(&["prune"]);
    assert!(
        again
            .ok()
            .contains("Deleted 0 deliveries of 0 old editions, 0 link uses"),
        "{}",
        again.stdout
    );
}
