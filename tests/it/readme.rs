//! What the README promises about running the daemon that no test checked
//! before (issue 14, item 13): when READY=1 is sent, what reaches the logs
//! (addresses, level, JSON) and what a reload changes, the upgrade's log
//! line, the warning about a public URL without https, and a sender that
//! cannot renew its lock stopping its claims.

use std::time::Duration;

use crate::support::{
    Sandbox,
    child::{DATE, deliveries, never_fires, queue_edition, setup, smtp_env, wait_for, with},
    daemon::{TestDaemon, UNSET},
    database_at_version, http, migrations,
    notify::NotifySocket,
    smtp::{Action, Plan, SmtpServer},
};

/// READY=1 comes once the migrations are made, the lock is held and the
/// listener answers, not before: while another process holds the
/// database's write lock, an upgrading daemon waits, and says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_comes_only_after_the_migrations_the_lock_and_the_listener() {
    if crate::support::on_postgres("migrations waiting for SQLite's write lock") {
        return;
    }
    let s = Sandbox::new();
    database_at_version(&s, 3).await;
    let mut notify = NotifySocket::new();
    let bind = format!("127.0.0.1:{}", http::free_port());
    let env = with(vec![], "NOTIFY_SOCKET", notify.path.to_str().unwrap());
    let env = with(env, "PAPERPOST__HTTP__BIND", &bind);
    let env = with(env, "PAPERPOST__DATABASE__BUSY_TIMEOUT", "60s");
    let env = never_fires(with(env, "PAPERPOST__LOG__LEVEL", "info"));

    let pool = s.pool_unmigrated().await;
    let conn = crate::support::WriteLock::take(&pool).await;
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!notify.has("READY=1"), "READY=1 before the migrations");
    conn.release().await;

    wait_for("READY=1", || notify.has("READY=1")).await;
    // At READY=1: every migration made, the lock this process's, the
    // listener up.
    let version: i64 = crate::on_db!(&pool, |p| sqlx::query_scalar(
        p.sql("SELECT max(version) FROM _sqlx_migrations")
    )
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(version as usize, migrations());
    let holder: String = crate::on_db!(&pool, |p| sqlx::query_scalar(
        p.sql("SELECT holder FROM scheduler_lock WHERE id = 1")
    )
    .fetch_one(p)
    .await)
    .unwrap();
    assert!(holder.contains(&format!(":{}:", daemon.pid())), "{holder}");
    assert!(std::net::TcpStream::connect(&bind).is_ok(), "no listener");
    let seen = daemon.wait_log("paperpost is running").await;
    assert!(
        seen.contains(&format!(
            "applied database migrations from=3 to={}",
            migrations()
        )),
        "{seen}"
    );
    assert_eq!(daemon.stop().await.code, 0);
}

/// A listener that cannot start (the port is taken) is a failed start:
/// exit non-zero, naming the address, and never READY=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_the_start_without_ready() {
    let s = setup(1);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = taken.local_addr().unwrap().to_string();
    let mut notify = NotifySocket::new();
    let env = with(vec![], "NOTIFY_SOCKET", notify.path.to_str().unwrap());
    let env = never_fires(with(env, "PAPERPOST__HTTP__BIND", &bind));
    let out = TestDaemon::spawn(&s, &env, &["run"]).finish().await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains(&bind), "{}", out.stderr);
    assert!(!notify.has("READY=1"), "{:?}", notify.seen);
}

const LISTED: &str = "[[subscriber]]\nemail = \"ada@example.org\"\n";

/// Info logs name only an address's domain unless `log.addresses = true`;
/// `log.addresses` and `log.level` change on SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_reach_info_logs_only_when_asked_and_log_settings_reload() {
    let s = setup(0);
    s.write("config/subscribers.toml", LISTED);
    // Listed in the file, but removed by the operator: each application of
    // the file says so, naming them.
    s.run(&["subscribers", "sync"]).ok();
    s.run(&["subscribers", "remove", "ada@example.org"]).ok();
    let conf = s.write("paperpost.toml", "[log]\nlevel = \"info\"\n");
    // The file's log level rules, not the sandbox's.
    let env = never_fires(with(vec![], "PAPERPOST__LOG__LEVEL", UNSET));
    let args = ["run", "--config", conf.to_str().unwrap()];
    let mut daemon = TestDaemon::spawn(&s, &env, &args);
    let seen = daemon.wait_log("left unsubscribed").await;
    assert!(seen.contains("who=…@example.org"), "{seen}");
    assert!(!seen.contains("ada@example.org"), "{seen}");

    s.write(
        "paperpost.toml",
        "[log]\nlevel = \"info\"\naddresses = true\n",
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("configuration applied").await;
    daemon.signal(libc::SIGHUP);
    let seen = daemon.wait_log("left unsubscribed").await;
    assert!(seen.contains("who=ada@example.org"), "{seen}");

    // At warn, the info lines stop; a warning (a setting that needs a
    // restart) still shows and marks where the reload got to.
    let warn = "[log]\nlevel = \"warn\"\naddresses = true\n[http]\nsubscribe_per_minute = 3\n";
    s.write("paperpost.toml", warn);
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("take effect at the next start").await;
    s.write("paperpost.toml", warn.replace("= 3", "= 4"));
    daemon.signal(libc::SIGHUP);
    let seen = daemon.wait_log("take effect at the next start").await;
    assert!(!seen.contains(" INFO "), "info lines at warn: {seen}");
    assert_eq!(daemon.stop().await.code, 0);
}

/// `mail.retry.*` changes on SIGHUP: a reader the server keeps deferring is
/// retried under the old policy, and given up under the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_policy_changes_on_reload() {
    let server = SmtpServer::start().await;
    server.script(|_, _| Plan::at_rcpt(Action::Reply(451, "4.3.0 try again later")));
    let s = setup(1);
    let conf = s.write(
        "paperpost.toml",
        "[mail.retry]\nmax_attempts = 1000\nbase_delay = \"200ms\"\nmax_delay = \"200ms\"\n",
    );
    let env = smtp_env(server.port(), 1);
    let env: Vec<_> = never_fires(env)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("PAPERPOST__MAIL__RETRY__"))
        .collect();
    queue_edition(&s, DATE).await;
    let args = ["run", "--config", conf.to_str().unwrap()];
    let mut daemon = TestDaemon::spawn(&s, &env, &args);
    let reader = crate::support::child::email(0);
    wait_for("three attempts", || server.attempts(&reader) >= 3).await;
    assert_eq!(deliveries(&s)[&reader]["status"], "queued");

    s.write(
        "paperpost.toml",
        "[mail.retry]\nmax_attempts = 2\nbase_delay = \"200ms\"\nmax_delay = \"200ms\"\n",
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("configuration applied").await;
    wait_for("given up", || deliveries(&s)[&reader]["status"] == "failed").await;
    assert_eq!(daemon.stop().await.code, 0);
}

/// `log.format = "json"`: every line on standard error is one JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let s = setup(1);
    let env = with(vec![], "PAPERPOST__LOG__FORMAT", "json");
    let env = never_fires(with(env, "PAPERPOST__LOG__LEVEL", "info"));
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log("paperpost is running").await;
    let out = daemon.stop().await;
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "paperpost is running" && l["level"] == "INFO"),
        "{}",
        out.stderr
    );
}

/// With SMTP, `run` warns about a public URL without https (one-click
/// unsubscribe needs it); with https, or on loopback, it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_warns_about_a_public_url_without_https() {
    let server = SmtpServer::start().await;
    let s = setup(1);
    let cases = [
        ("http://news.example.org/pp", true),
        ("https://news.example.org/pp", false),
        ("http://127.0.0.1:8080", false),
    ];
    for (url, warns) in cases {
        let env = never_fires(with(
            smtp_env(server.port(), 1),
            "PAPERPOST__HTTP__PUBLIC_URL",
            url,
        ));
        let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
        daemon.wait_log("paperpost is running").await;
        let out = daemon.stop().await;
        assert_eq!(
            out.stderr.contains("http.public_url is not https"),
            warns,
            "{url}: {}",
            out.stderr
        );
    }
}

/// A sender that cannot renew its lock within the TTL (another process holds
/// the database) stops starting messages until it can, then finishes the
/// edition, each reader once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_cannot_renew_its_lock_starts_no_message_until_it_can() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(100));
    let s = setup(40);
    let env = with(
        smtp_env(server.port(), 2),
        "PAPERPOST__DATABASE__LOCK_TTL",
        "3s",
    );
    let env = never_fires(with(env, "PAPERPOST__DATABASE__BUSY_TIMEOUT", "200ms"));
    queue_edition(&s, DATE).await;
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    wait_for("the edition under way", || server.accepted().len() >= 4).await;

    let pool = s.pool().await;
    let conn = crate::support::WriteLock::take(&pool).await;
    daemon
        .wait_log("cannot renew the sending lock within its TTL")
        .await;
    // What was in flight has had its time; from now on nothing starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = server.received().len();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        server.received().len(),
        bodies,
        "messages started without the lock"
    );
    conn.release().await;
    daemon.wait_log("sending resumes").await;
    wait_for("every reader", || server.counts().len() == 40).await;
    assert_eq!(daemon.stop().await.code, 0);
    assert!(
        server.counts().values().all(|&n| n == 1),
        "{:?}",
        server.counts()
    );
}

/// Unsubscribes that arrive together are written together: twenty one-click
/// POSTs that wait for the database are written in (at most) two
/// transactions once it frees up, and every one is answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribes_that_arrive_together_are_written_together() {
    let s = setup(20);
    let bind = format!("127.0.0.1:{}", http::free_port());
    let env = with(vec![], "PAPERPOST__HTTP__BIND", &bind);
    let env = with(
        env,
        "PAPERPOST__HTTP__PUBLIC_URL",
        &format!("http://{bind}"),
    );
    let env = with(env, "PAPERPOST__DATABASE__BUSY_TIMEOUT", "60s");
    let env = with(env, "PAPERPOST__HTTP__REQUEST_TIMEOUT", "60s");
    let env = with(env, "PAPERPOST__LOG__LEVEL", "debug");
    let mut server = TestDaemon::spawn(&s, &env, &["serve"]);
    server.wait_log("web endpoint listening").await;
    let keys = paperpost::security::Keys::from_bytes(crate::support::SECRET.as_bytes());
    let pool = s.pool().await;
    let uuids: Vec<String> = crate::on_db!(&pool, |p| sqlx::query_scalar(
        p.sql("SELECT uuid FROM subscribers")
    )
    .fetch_all(p)
    .await)
    .unwrap();
    let conn = crate::support::WriteLock::take(&pool).await;
    let posts: Vec<_> = uuids
        .iter()
        .map(|u| {
            let token = keys.subscriber_token(u);
            let bind = bind.clone();
            std::thread::spawn(move || {
                http::request(
                    &bind,
                    "POST",
                    &format!("/unsubscribe/{token}"),
                    &[("Content-Type", "application/x-www-form-urlencoded")],
                    b"List-Unsubscribe=One-Click",
                )
                .unwrap()
                .status
            })
        })
        .collect();
    // Every request has reached the endpoint (and waits for the database).
    for _ in 0..20 {
        server.wait_log("started processing request").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.release().await;
    for p in posts {
        assert_eq!(p.join().unwrap(), 200);
    }
    let mut batches = Vec::new();
    let mut written = 0;
    while written < 20 {
        let line = server.wait_log("wrote a batch of unsubscribes").await;
        let n: usize = line
            .rsplit("uses=")
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        written += n;
        batches.push(n);
    }
    assert!(batches.len() <= 2, "twenty unsubscribes in {batches:?}");
    assert_eq!(server.stop().await.code, 0);
}

/// Issue 16 item 11: the README said a link token was HMAC(secret, uuid),
/// security.rs said "unsubscribe:" + uuid, and the code did neither. The
/// README's recipe, followed by hand, makes the token the code makes.
#[test]
fn the_readme_says_how_a_link_token_is_made() {
    use hmac::{Hmac, Mac};
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let para = readme
        .split("\n\n")
        .find(|p| p.starts_with("**Tokens.**"))
        .expect("the README's Tokens paragraph");
    // The recipe names the text the uuid follows, in backticks, and says
    // the key is the secret's text as written.
    let recipe = para.split_once("HMAC-SHA256(").expect("the recipe").1;
    let prefix = recipe.split('`').nth(1).expect("a quoted prefix");
    assert!(para.contains("the secret's text"), "{para}");
    let secret = crate::support::SECRET;
    let uuid = "0b5f8c1e-4a4f-4f7e-9d1e-2f3a4b5c6d7e";
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(prefix.as_bytes());
    mac.update(uuid.as_bytes());
    let by_hand = hex::encode(mac.finalize().into_bytes());
    let keys = paperpost::security::Keys::from_bytes(secret.as_bytes());
    assert_eq!(by_hand, keys.subscriber_token(uuid), "prefix {prefix:?}");
}
