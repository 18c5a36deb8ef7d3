//! Several instances on one PostgreSQL database: the sending lock on the
//! database's clock, and a clean stop handed over at once through NOTIFY.
//! SQLite has one host and no NOTIFY; these say so there and return.

use std::time::{Duration, Instant};

use crate::support::{
    WriteLock,
    child::{DATE, never_fires, queue_edition, setup, smtp_env, wait_for, with},
    daemon::TestDaemon,
    smtp::SmtpServer,
};

/// True (after saying why) when this run is not on PostgreSQL.
fn not_on_postgres() -> bool {
    let sqlite = std::env::var_os("PAPERPOST_TEST_POSTGRES").is_none();
    if sqlite {
        eprintln!("PostgreSQL only (set PAPERPOST_TEST_POSTGRES, as .ci/run does)");
    }
    sqlite
}

/// A holder on another host renews its lock; a process whose own clock runs
/// 10 s ahead (libfaketime) would read that lock as expired by its clock,
/// but the expiry is compared with the database's clock: it does not send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_clock_runs_ahead_does_not_take_a_live_lock() {
    if not_on_postgres() {
        return;
    }
    let server = SmtpServer::start().await;
    let s = setup(2);
    queue_edition(&s, DATE).await;
    let pool = s.pool().await;
    // Held by another host, expiring 5 s from now on the database's clock.
    crate::on_db!(&pool, |p| sqlx::query(
        "INSERT INTO scheduler_lock (id, holder, expires_at) VALUES (1, $1, \
         CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT) + 5000)"
    )
    .bind("elsewhere:1:1:deadbeef:1:cafe0001")
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let mut cmd = s.command();
    for (k, v) in smtp_env(server.port(), 1) {
        cmd.env(k, v);
    }
    let mut skewed = std::process::Command::new("faketime");
    skewed.current_dir(cmd.get_current_dir().unwrap());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => skewed.env(k, v),
            None => skewed.env_remove(k),
        };
    }
    skewed
        .args(["-f", "+10s", env!("CARGO_BIN_EXE_paperpost")])
        .args(["send", "--date", DATE]);
    let out = crate::support::output_within(&mut skewed, crate::support::RUN_LIMIT);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("another paperpost process"),
        "{}",
        out.stderr
    );
    assert!(server.accepted().is_empty(), "sent under a live lock");
}

/// SIGTERM to the sender: it releases the lock and NOTIFYs, and the standby
/// takes over at once, long before its next poll (every TTL/3 = 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_hands_sending_over_at_once() {
    if not_on_postgres() {
        return;
    }
    let server = SmtpServer::start().await;
    let s = setup(3);
    let env = never_fires(smtp_env(server.port(), 1));
    let env = with(env, "PAPERPOST__DATABASE__LOCK_TTL", "30s");
    let env = with(env, "PAPERPOST__LOG__LEVEL", "info");
    let mut first = TestDaemon::spawn(&s, &env, &["run"]);
    first.wait_log("paperpost is running").await;
    let mut second = TestDaemon::spawn(&s, &env, &["run"]);
    second.wait_log("serving the web endpoint only").await;
    // The standby has listened and polled once; the next poll is 10 s away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = Instant::now();
    assert_eq!(first.stop().await.code, 0);
    second.wait_log("this one sends from now on").await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "taken over after {took:?}: at a poll, not at the NOTIFY"
    );
    queue_edition(&s, DATE).await;
    wait_for("the edition", || server.accepted().len() == 3).await;
    assert_eq!(second.stop().await.code, 0);
}

/// A 20,000-reader edition half sent from SQLite, moved with `db copy-to`,
/// finishes on PostgreSQL: every reader gets exactly one message, and the
/// SQLite file refuses to send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edition_moved_halfway_finishes_on_postgres_once_per_reader() {
    if not_on_postgres() {
        return;
    }
    const READERS: usize = 20_000;
    let server = SmtpServer::start().await;
    let s = crate::support::Sandbox::new();
    let target = s.db.url().to_string();
    let on_sqlite = |env: Vec<(String, String)>| with(env, "PAPERPOST__DATABASE__URL", "");
    let sample = crate::support::fixture("daily_papers-2024-03-11.json");
    let mut csv = String::from("email\n");
    for i in 0..READERS {
        csv.push_str(&format!("{}\n", crate::support::child::email(i)));
    }
    let subs = s.write("subs.csv", csv);
    for args in [
        ["papers", "import", sample.to_str().unwrap()],
        ["subscribers", "import", subs.to_str().unwrap()],
    ] {
        s.run_env(&on_sqlite(vec![]), &args).ok();
    }
    // Text that COPY's formats treat specially: quotes, a comma, a backslash.
    let name = r#"Zoë "Q", back\slash \N"#;
    let odd = ["subscribers", "add", "odd@example.org", "--name", name];
    s.run_env(&on_sqlite(vec![]), &odd).ok();
    // Half the edition from SQLite, then a clean stop.
    server.hold_at(READERS / 2);
    let env = on_sqlite(smtp_env(server.port(), 8));
    let sender = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    wait_for("half the edition", || {
        server.accepted().len() == READERS / 2
    })
    .await;
    sender.signal(libc::SIGTERM);
    sender.finish().await;
    server.release();
    let out = s.run_env(&on_sqlite(vec![]), &["db", "copy-to", &target]);
    let text = out.ok();
    assert!(text.contains("every table verified"), "{text}");
    assert!(!text.contains("paperpost@"), "a password printed: {text}");
    // The rest from PostgreSQL.
    let out =
        crate::support::child::run(&s, &smtp_env(server.port(), 2), &["send", "--date", DATE])
            .await;
    assert!(out.ok().contains("sent"), "{}", out.stdout);
    let counts = server.counts();
    assert_eq!(
        counts.len(),
        READERS + 1,
        "lost: {}",
        READERS + 1 - counts.len()
    );
    let listed = s.run(&["subscribers", "list"]);
    let listed = listed.ok();
    assert!(listed.contains(name), "{listed}");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    // Nothing sends from the SQLite file any more.
    let again = s.run_env(&on_sqlite(vec![]), &["send", "--date", DATE]);
    assert!(again.fails().contains("db copy-to"), "{}", again.stderr);
}

/// The sandbox's installation made on each store, migrated: (SQLite, PostgreSQL).
async fn both_stores(
    s: &crate::support::Sandbox,
) -> (paperpost::store::Pool, paperpost::store::Pool) {
    let pg = s.pool().await;
    let sqlite = crate::support::settings(&[(
        "PAPERPOST__DATABASE__PATH",
        &s.db_path().display().to_string(),
    )]);
    let lite = paperpost::store::connect(&sqlite.database).await.unwrap();
    (lite, pg)
}

/// Both stores are built by their migrations to the same schema: the same
/// versions, tables and columns, each column of a matching type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_have_the_same_schema() {
    if not_on_postgres() {
        return;
    }
    let s = crate::support::Sandbox::new();
    let (lite, pg) = both_stores(&s).await;
    let versions = |pool: paperpost::store::Pool| async move {
        crate::on_db!(&pool, |p| sqlx::query_scalar::<_, i64>(
            "SELECT version FROM _sqlx_migrations ORDER BY version"
        )
        .fetch_all(p)
        .await
        .unwrap())
    };
    assert_eq!(versions(lite.clone()).await, versions(pg.clone()).await);
    let lite_columns = {
        let p = crate::support::sqlite(&lite);
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name != '_sqlx_migrations' ORDER BY name",
        )
        .fetch_all(p)
        .await
        .unwrap();
        let mut all = Vec::new();
        for t in tables {
            let cols: Vec<(String, String)> =
                sqlx::query_as(&format!("SELECT name, type FROM pragma_table_info('{t}')"))
                    .fetch_all(p)
                    .await
                    .unwrap();
            all.extend(cols.into_iter().map(|(c, ty)| (t.clone(), c, ty)));
        }
        all.sort();
        all
    };
    let paperpost::store::Pool::Postgres(p) = &pg else {
        unreachable!()
    };
    let mut pg_columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT), CAST(data_type AS TEXT) \
         FROM information_schema.columns WHERE table_schema = current_schema() \
         AND table_name != '_sqlx_migrations'",
    )
    .fetch_all(p)
    .await
    .unwrap();
    pg_columns.sort();
    let names = |v: &[(String, String, String)]| {
        v.iter()
            .map(|(t, c, _)| format!("{t}.{c}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&lite_columns), names(&pg_columns));
    for (l, g) in lite_columns.iter().zip(&pg_columns) {
        let matching = matches!(
            (l.2.as_str(), g.2.as_str()),
            ("INTEGER", "bigint") | ("INTEGER", "boolean") | ("TEXT", "text")
        );
        assert!(matching, "{}.{}: {} and {}", l.0, l.1, l.2, g.2);
    }
}

/// The statements written once for both stores (every `conn.sql("…")` in
/// `src/store/`, read from the source) prepare on SQLite as written and on
/// PostgreSQL as rewritten: a table, column, function or type one of them
/// lacks is found here, not when the statement first runs on that store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_statement_prepares_on_both_stores() {
    use sqlx::Executor;
    if not_on_postgres() {
        return;
    }
    let statements = shared_statements();
    assert!(
        statements.len() > 60,
        "found {} statements",
        statements.len()
    );
    let s = crate::support::Sandbox::new();
    let (lite, pg) = both_stores(&s).await;
    let mut lite = crate::support::sqlite(&lite).acquire().await.unwrap();
    let paperpost::store::Pool::Postgres(pg) = &pg else {
        unreachable!()
    };
    let mut pg = pg.acquire().await.unwrap();
    let mut failed = Vec::new();
    // The import's session table first: later statements name it.
    let (temp, rest): (Vec<_>, Vec<_>) = statements
        .iter()
        .partition(|(_, sql)| sql.starts_with("CREATE TEMP TABLE"));
    for (at, sql) in temp {
        lite.execute(sql.as_str())
            .await
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        let text = paperpost::store::postgres::text(sql);
        pg.execute(text)
            .await
            .unwrap_or_else(|e| panic!("{at}: {e}"));
    }
    for (at, sql) in rest {
        if let Err(e) = lite.prepare(sql.as_str()).await {
            failed.push(format!("{at} on SQLite: {e}\n  {sql}"));
        }
        let text = paperpost::store::postgres::text(sql);
        if let Err(e) = pg.prepare(text).await {
            failed.push(format!("{at} on PostgreSQL: {e}\n  {text}"));
        }
    }
    lite.close().await.ok();
    eprintln!("{} statements prepared on both stores", statements.len());
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Each string literal passed to `.sql(` in `src/store/` (file:line, text),
/// its escapes and line continuations read as the compiler reads them.
fn shared_statements() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut files = vec![];
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut found = vec![];
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for (i, _) in src.match_indices(".sql(") {
            let line_start = src[..i].rfind('\n').map_or(0, |n| n + 1);
            if src[line_start..i].trim_start().starts_with("//") {
                continue;
            }
            let after = src[i + 5..].trim_start();
            let Some(lit) = after.strip_prefix('"') else {
                continue; // built with format!: covered by the suite
            };
            let line = src[..i].lines().count();
            found.push((format!("{name}:{line}"), unescape(lit)));
        }
    }
    found
}

/// A Rust string literal's text up to its closing quote.
fn unescape(lit: &str) -> String {
    let mut out = String::new();
    let mut chars = lit.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('\n') => {
                    while chars.peek().is_some_and(|c| c.is_whitespace()) {
                        chars.next();
                    }
                }
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// The password in `database.url` shows nowhere: not in `paperpost config`,
/// not in the error when the server cannot be reached.
#[test]
fn the_database_password_never_shows() {
    let s = crate::support::Sandbox::new();
    let url = [(
        "PAPERPOST__DATABASE__URL",
        "postgres://mailer:hunter2-secret@127.0.0.1:1/paperpost",
    )];
    let config = s.run_env(&url, &["config"]);
    let text = config.ok();
    assert!(
        text.contains("postgres://mailer:***@127.0.0.1:1/paperpost"),
        "{text}"
    );
    let down = s.run_env(&url, &["subscribers", "list"]);
    let err = down.fails();
    assert!(err.contains("mailer:***@127.0.0.1:1"), "{err}");
    for out in [&config.stdout, &config.stderr, &down.stdout, &down.stderr] {
        assert!(!out.contains("hunter2"), "the password shows: {out}");
    }
}

/// With `database.auto_migrate = false` (a role without DDL rights) a
/// schema behind the binary is refused with what to run, and runs once
/// `paperpost migrate` brought it up to date.
#[test]
fn without_auto_migrate_the_schema_waits_for_paperpost_migrate() {
    if not_on_postgres() {
        return;
    }
    let s = crate::support::Sandbox::new();
    let off = [("PAPERPOST__DATABASE__AUTO_MIGRATE", "false")];
    let refused = s.run_env(&off, &["subscribers", "list"]);
    assert!(
        refused.fails().contains("run `paperpost migrate`"),
        "{}",
        refused.stderr
    );
    assert!(s.run_env(&off, &["migrate"]).ok().contains("up to date"));
    s.run_env(&off, &["subscribers", "add", "ada@example.org"])
        .ok();
    assert!(
        s.run_env(&off, &["subscribers", "list"])
            .ok()
            .contains("ada@example.org")
    );
}

/// kill -9 of the sender mid-edition: the standby takes over within
/// TTL + TTL/3, its web endpoint answering all the while, and finishes the
/// edition: nobody lost, at most `mail.concurrency` sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sender_is_replaced_and_nothing_is_lost() {
    const READERS: usize = 60;
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(20));
    let s = setup(READERS);
    let env = never_fires(smtp_env(server.port(), 2));
    let env = with(env, "PAPERPOST__DATABASE__LOCK_TTL", "3s");
    let mut first = TestDaemon::spawn(&s, &env, &["run"]);
    first.wait_log("paperpost is running").await;
    let web = format!("127.0.0.1:{}", crate::support::http::free_port());
    let mut second = TestDaemon::spawn(&s, &with(env, "PAPERPOST__HTTP__BIND", &web), &["run"]);
    second.wait_log("serving the web endpoint only").await;
    queue_edition(&s, DATE).await;
    wait_for("a third of the edition", || {
        server.accepted().len() >= READERS / 3
    })
    .await;
    let asking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let health = tokio::spawn(healthz_all_along(web, std::sync::Arc::clone(&asking)));
    first.signal(libc::SIGKILL);
    let killed = Instant::now();
    second.wait_log("this one sends from now on").await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(4), "taken over after {took:?}");
    wait_for("the whole edition", || server.counts().len() == READERS).await;
    asking.store(false, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = health.await.unwrap();
    assert!(
        ok > 0 && failed.is_empty(),
        "{ok} answered, failed: {failed:?}"
    );
    let twice = server.counts().values().filter(|&&n| n > 1).count();
    assert!(twice <= 2, "{twice} readers got the digest twice");
    assert_eq!(second.stop().await.code, 0);
}

/// `GET /healthz` on `addr` every 10 ms while `on`: (200s, anything else).
async fn healthz_all_along(
    addr: String,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u32, Vec<String>) {
    let client = reqwest::Client::new();
    let (mut ok, mut failed) = (0, Vec::new());
    while on.load(std::sync::atomic::Ordering::SeqCst) {
        match client.get(format!("http://{addr}/healthz")).send().await {
            Ok(r) if r.status() == 200 => ok += 1,
            Ok(r) => failed.push(r.status().to_string()),
            Err(e) => failed.push(format!("{:?}", anyhow::Error::from(e))),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ok, failed)
}

/// A connection kept open (HTTP keep-alive) to a standby's web endpoint is
/// answered by it after it takes over sending, as the sender now: one
/// server all along, its role changed. (The standby's server was stopped
/// and another started at the takeover, closing idle connections: a
/// client's next request on one could fail, as a /healthz poll did in CI.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_answered_across_a_takeover() {
    let server = SmtpServer::start().await;
    let s = setup(1);
    let env = never_fires(smtp_env(server.port(), 1));
    let env = with(env, "PAPERPOST__DATABASE__LOCK_TTL", "3s");
    let mut first = TestDaemon::spawn(&s, &env, &["run"]);
    first.wait_log("paperpost is running").await;
    let web = format!("127.0.0.1:{}", crate::support::http::free_port());
    let mut second = TestDaemon::spawn(&s, &with(env, "PAPERPOST__HTTP__BIND", &web), &["run"]);
    second.wait_log("serving the web endpoint only").await;
    let healthz = |conn: &mut std::net::TcpStream| {
        let r = crate::support::http::get_on(conn, "/healthz").expect("an answer");
        (r.status, r.body)
    };
    let mut conn = std::net::TcpStream::connect(&web).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let standing_by = (200, "ok: standing by to send\n".to_string());
    assert_eq!(healthz(&mut conn), standing_by);
    assert_eq!(web_thread_nice(second.pid()), 0, "a standby's requests");
    assert_eq!(first.stop().await.code, 0);
    second.wait_log("paperpost is running").await;
    // Past any moment's grace a stopping server gives an idle connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(healthz(&mut conn), (200, "ok\n".to_string()));
    // The sender's requests yield to its engine, as when it sends from start.
    assert_eq!(web_thread_nice(second.pid()), 10, "the sender's requests");
    assert_eq!(second.stop().await.code, 0);
}

/// The nice value of process `pid`'s web thread.
fn web_thread_nice(pid: i32) -> i64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for task in tasks {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "paperpost-web" {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // After the command's ")": state is field 3, nice field 19.
            let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
            return fields[16].parse().unwrap();
        }
    }
    panic!("no paperpost-web thread in {pid}");
}

/// 500 one-click unsubscribes posted to a standby while the sender sends:
/// each is honoured, and no message's body to them starts more than 50 ms after
/// their 200 (the sender checks each reader's status before the body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribes_taken_by_another_instance_stop_the_senders_mail() {
    const READERS: usize = 600;
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(5));
    let s = setup(READERS);
    let env = never_fires(smtp_env(server.port(), 2));
    let env = with(env, "PAPERPOST__SECURITY__SECRET", crate::support::SECRET);
    let mut sender = TestDaemon::spawn(&s, &env, &["run"]);
    sender.wait_log("paperpost is running").await;
    let web = format!("127.0.0.1:{}", crate::support::http::free_port());
    let mut other = TestDaemon::spawn(&s, &with(env, "PAPERPOST__HTTP__BIND", &web), &["run"]);
    other.wait_log("serving the web endpoint only").await;
    // Readers the sender has claimed, and holds, when their POSTs come.
    let pool = s.pool().await;
    let keys = paperpost::security::Keys::from_bytes(crate::support::SECRET.as_bytes());
    let mut targets = Vec::new();
    for i in 20..520 {
        let email = crate::support::child::email(i);
        let mut conn = pool.acquire().await.unwrap();
        let sub = paperpost::store::subscribers::get_by_email(&mut conn, &email)
            .await
            .unwrap();
        targets.push((email, keys.subscriber_token(&sub.uuid)));
    }
    // Ten messages, then the next transactions wait at MAIL FROM.
    server.hold_at(10);
    queue_edition(&s, DATE).await;
    wait_for("the edition under way", || server.accepted().len() == 10).await;
    let client = reqwest::Client::new();
    let mut answered = Vec::new();
    for (email, token) in &targets {
        let r = client
            .post(format!("http://{web}/unsubscribe/{token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{email}");
        answered.push((email.clone(), Instant::now()));
    }
    server.release();
    wait_for("the edition's end", || {
        crate::support::child::deliveries(&s)
            .values()
            .all(|d| d["status"] != "queued" && d["status"] != "sending")
    })
    .await;
    let bodies = server.accepted();
    let statuses: std::collections::HashMap<String, String> = s
        .subscribers()
        .into_iter()
        .map(|v| {
            (
                v["email"].as_str().unwrap().to_string(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (email, at) in &answered {
        for m in bodies.iter().filter(|m| &m.to == email) {
            assert!(
                m.at <= *at + Duration::from_millis(50),
                "{email}: a body {:?} after the unsubscribe was answered",
                m.at - *at
            );
        }
        assert_eq!(statuses[email], "unsubscribed", "{email}");
    }
    assert_eq!(other.stop().await.code, 0);
    assert_eq!(sender.stop().await.code, 0);
}

/// A sender frozen (SIGSTOP) for twice the lock's TTL: the standby takes
/// over and sends the rest; the old sender, resumed, starts no message body
/// (its fence fell while it was stopped). Each sends to its own server.
///
/// It is frozen between transactions: SQLite's write lock is the file's, and
/// a process stopped inside a write holds it until it resumes (the README
/// says so; nothing can end it). On PostgreSQL the server ends such a
/// transaction (`a_transaction_left_open_is_ended_by_the_server`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_frozen_past_its_lock_sends_nothing_when_it_wakes() {
    const READERS: usize = 200;
    let (a, b) = (SmtpServer::start().await, SmtpServer::start().await);
    a.set_delay(Duration::from_millis(20));
    let s = setup(READERS);
    let env = |server: &SmtpServer| {
        let env = never_fires(smtp_env(server.port(), 2));
        with(env, "PAPERPOST__DATABASE__LOCK_TTL", "3s")
    };
    let mut first = TestDaemon::spawn(&s, &env(&a), &["run"]);
    first.wait_log("paperpost is running").await;
    let mut second = TestDaemon::spawn(&s, &env(&b), &["run"]);
    second.wait_log("serving the web endpoint only").await;
    queue_edition(&s, DATE).await;
    wait_for("some messages", || a.received().len() >= 10).await;
    let frozen = freeze_between_transactions(&first, &s.pool().await).await;
    let at_stop = a.received().len();
    second.wait_log("this one sends from now on").await;
    let takeover = frozen.elapsed();
    assert!(
        takeover < Duration::from_secs(5),
        "the standby took over {takeover:?} after the freeze"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    first.signal(libc::SIGCONT);
    wait_for("the whole edition", || {
        let mut all = a.counts();
        all.extend(b.counts());
        all.len() == READERS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Bodies half written when it froze may end; no new one starts.
    let after = a.received().len() - at_stop;
    assert!(after <= 2, "{after} bodies from the resumed sender");
    first.stop().await;
    let second = second.stop().await;
    assert_eq!(second.code, 0, "{}", second.stderr);
}

/// A paperpost process stopped inside a write transaction (here a session
/// opened as paperpost opens them, holding the write lock and every table)
/// would stop every instance's writes for as long as it stays stopped. The
/// server ends that transaction after TTL/3: a daemon started beside it
/// sends the whole edition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_is_ended_by_the_server() {
    if not_on_postgres() {
        return;
    }
    let server = SmtpServer::start().await;
    let s = setup(3);
    queue_edition(&s, DATE).await;
    let ttl = [("PAPERPOST__DATABASE__LOCK_TTL", "3s")];
    let stopped = WriteLock::take_and_stop(&s.pool_with(&ttl).await).await;
    let held = Instant::now();
    let env = with(never_fires(smtp_env(server.port(), 1)), ttl[0].0, ttl[0].1);
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log("paperpost is running").await;
    wait_for("the edition", || server.counts().len() == 3).await;
    let sent = held.elapsed();
    assert!(sent < Duration::from_secs(10), "sent {sent:?} after");
    assert!(
        stopped.release_fails().await,
        "its transaction is still open"
    );
    assert_eq!(daemon.stop().await.code, 0);
}

/// Stops `daemon` (SIGSTOP) at a moment when it has no database transaction
/// open, resuming it and trying again a few milliseconds later while it has;
/// returns when it was stopped.
async fn freeze_between_transactions(
    daemon: &TestDaemon,
    pool: &paperpost::store::Pool,
) -> Instant {
    for _ in 0..100 {
        daemon.signal(libc::SIGSTOP);
        let at = Instant::now();
        wait_for("the stop", || process_state(daemon.pid()) == Some('T')).await;
        if !holds_a_transaction(pool).await {
            return at;
        }
        daemon.signal(libc::SIGCONT);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1..8))).await;
    }
    panic!("always stopped with a transaction open");
}

/// The state letter of process `pid` (`T` when stopped).
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// True if another connection has had a transaction open for over 100 ms:
/// on SQLite one holding the write lock (a write cannot begin); on
/// PostgreSQL any client's transaction (no paperpost transaction lasts that
/// long unless its process is stopped; autovacuum's are not clients').
async fn holds_a_transaction(pool: &paperpost::store::Pool) -> bool {
    tokio::time::sleep(Duration::from_millis(100)).await;
    match pool {
        paperpost::store::Pool::Sqlite(p) => {
            use sqlx::{ConnectOptions, Connection};
            let options = (*p.connect_options()).clone().busy_timeout(Duration::ZERO);
            let mut conn = options.connect().await.unwrap();
            let began = sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await;
            conn.close().await.ok();
            began.is_err()
        }
        paperpost::store::Pool::Postgres(p) => sqlx::query_scalar(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
             AND xact_start < clock_timestamp() - interval '100 ms'",
        )
        .fetch_one(p)
        .await
        .unwrap(),
    }
}

/// `request` is answered 503 with Retry-After within 5 s.
async fn unavailable_at_once(
    what: &str,
    request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
) {
    let asked = Instant::now();
    let r = request.await.unwrap();
    let waited = asked.elapsed();
    assert_eq!(r.status(), 503, "{what} during the outage");
    assert!(
        r.headers().contains_key("retry-after"),
        "{what}: {:?}",
        r.headers()
    );
    assert!(
        waited < Duration::from_secs(5),
        "{what}: the 503 took {waited:?}"
    );
}

/// `scripts/failover-drill.sh`, the drill the README gives operators, passes
/// here after a crash (the sender as if on another host: the standby waits
/// out the lock) and after a clean stop.
#[test]
fn the_failover_drill_passes() {
    if not_on_postgres() {
        return;
    }
    if !std::path::Path::new("/usr/sbin/smtp-sink").exists() {
        eprintln!("needs Postfix's smtp-sink (bash .ci/postfix.sh installs it)");
        return;
    }
    let server = std::env::var("PAPERPOST_TEST_POSTGRES").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/failover-drill.sh");
    for how in ["KILL", "TERM"] {
        let out = std::process::Command::new("bash")
            .args([script, &server, how])
            .env("PAPERPOST", env!("CARGO_BIN_EXE_paperpost"))
            .envs([("READERS", "600"), ("RATE", "100"), ("TTL", "3")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("drill: passed"),
            "SIG{how}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!("{text}");
    }
}

/// The database goes away for 2.5 s while the daemon waits for work, then for
/// 3 s in the middle of an edition (every connection dropped, new ones
/// closed: a server restart, a lost network).
/// Sending pauses and resumes by itself, nobody is lost or sent twice beyond
/// the messages in flight, the web endpoint answers 503 with Retry-After
/// promptly rather than hanging, and the daemon never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_gone_for_a_while_pauses_sending_and_loses_nothing() {
    const READERS: usize = 300;
    const CONCURRENCY: usize = 2;
    if not_on_postgres() {
        return;
    }
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(10));
    let s = setup(READERS);
    let (proxy, through) = crate::support::proxy::Proxy::before(s.db.url()).await;
    let env = never_fires(smtp_env(server.port(), CONCURRENCY as u16));
    let mut daemon = TestDaemon::spawn(
        &s,
        &with(env, "PAPERPOST__DATABASE__URL", &through),
        &["run"],
    );
    daemon.wait_log("paperpost is running").await;
    let web = daemon.addr().await;
    // The last reader: not yet claimed when the database goes.
    let last = crate::support::child::email(READERS - 1);
    let token = {
        let pool = s.pool().await;
        let mut conn = pool.acquire().await.unwrap();
        let sub = paperpost::store::subscribers::get_by_email(&mut conn, &last)
            .await
            .unwrap();
        paperpost::security::Keys::from_bytes(crate::support::SECRET.as_bytes())
            .subscriber_token(&sub.uuid)
    };
    // Gone while the daemon waits for work, too.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.restore();
    queue_edition(&s, DATE).await;
    wait_for("a quarter of the edition", || {
        server.accepted().len() >= READERS / 4
    })
    .await;
    proxy.cut();
    let before = server.accepted().len();
    let client = reqwest::Client::new();
    let unsubscribe = || {
        client
            .post(format!("http://{web}/unsubscribe/{token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .timeout(Duration::from_secs(20))
            .send()
    };
    let asked = Instant::now();
    unavailable_at_once("the one-click POST", unsubscribe()).await;
    // A page that reads, on a connection that must be made anew.
    let page = client
        .get(format!("http://{web}/unsubscribe/{token}"))
        .timeout(Duration::from_secs(20))
        .send();
    unavailable_at_once("the page", page).await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(asked.elapsed())).await;
    let during = server.accepted().len() - before;
    assert!(
        during <= CONCURRENCY,
        "{during} messages accepted while the database was gone"
    );
    proxy.restore();
    let r = unsubscribe().await.unwrap();
    assert_eq!(r.status(), 200, "after the outage");
    let finished = tokio::time::timeout(Duration::from_secs(30), async {
        while server.counts().len() < READERS - 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "{} of {} sent; log:\n{}",
        server.counts().len(),
        READERS - 1,
        daemon.drain_log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = server.counts();
    assert!(
        !counts.contains_key(&last),
        "the reader who unsubscribed was sent the digest"
    );
    let twice = counts.values().filter(|&&n| n > 1).count();
    assert!(twice <= CONCURRENCY, "{twice} readers got it twice");
    let log = daemon.drain_log();
    assert!(log.contains("out of reach; waiting to record"), "{log}");
    assert_eq!(daemon.stop().await.code, 0, "{log}");
}
