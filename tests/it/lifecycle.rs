//! The daemon as a system service: what it tells systemd (through a fake
//! NOTIFY_SOCKET), a second daemon on the same database standing by, and
//! SIGTERM in the middle of an edition.

use crate::support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::support::{
    child::{DATE, deliveries, never_fires, queue_edition, setup, smtp_env, wait_for, with},
    daemon::TestDaemon,
    http,
    notify::NotifySocket,
    smtp::SmtpServer,
};

/// Connects to `addr` over and over while `on`; (connections accepted,
/// connections refused).
async fn knock(addr: String, on: Arc<AtomicBool>) -> (u32, u32) {
    let (mut answered, mut refused) = (0, 0);
    while on.load(Ordering::SeqCst) {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(_) => answered += 1,
            Err(_) => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (answered, refused)
}

/// `GET /healthz` on `addr`: the status and the body.
async fn health(addr: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls `/healthz` (30 s at most) until it answers `status`.
async fn wait_health(addr: &str, status: u16) -> String {
    for _ in 0..300 {
        let (got, body) = health(addr).await;
        if got == status {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/healthz never answered {status}");
}

/// A sending daemon that cannot renew its lock (another process holds the
/// database's write lock for longer than the lock's TTL) is unhealthy over
/// HTTP (503, with the reason) and to `paperpost healthcheck` (exit 1), and
/// recovers when the database frees up; the watchdog is pinged all along
/// (a restart would not help, and the README allows such a wait for long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_cannot_renew_its_lock_is_unhealthy_until_it_can() {
    let s = setup(1);
    let mut notify = NotifySocket::new();
    let bind = format!("127.0.0.1:{}", http::free_port());
    let env = with(vec![], "PAPERPOST__HTTP__BIND", &bind);
    let env = with(env, "PAPERPOST__DATABASE__LOCK_TTL", "3s");
    let env = with(env, "PAPERPOST__DATABASE__BUSY_TIMEOUT", "200ms");
    let env = with(env, "NOTIFY_SOCKET", notify.path.to_str().unwrap());
    let env = with(env, "WATCHDOG_USEC", "1000000");
    let env = never_fires(with(env, "PAPERPOST__LOG__LEVEL", "info"));
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log("paperpost is running").await;
    assert_eq!(health(&bind).await, (200, "ok\n".to_string()));
    // Pinged again and again (every half second), not once.
    wait_for("three watchdog pings", || notify.count("WATCHDOG=1") >= 3).await;

    let pool = s.pool().await;
    let conn = crate::support::WriteLock::take(&pool).await;
    daemon
        .wait_log("cannot renew the sending lock within its TTL")
        .await;
    let body = wait_health(&bind, 503).await;
    assert_eq!(body, "unhealthy: the scheduler lock is not held\n");
    let check = s.run_env(&[("PAPERPOST__HTTP__BIND", &bind)], &["healthcheck"]);
    assert!(check.fails().contains("503"), "{}", check.stderr);
    let pings = notify.count("WATCHDOG=1");
    wait_for("pings while another process holds the database", || {
        notify.count("WATCHDOG=1") >= pings + 3
    })
    .await;

    conn.release().await;
    daemon.wait_log("sending resumes").await;
    wait_health(&bind, 200).await;
    let check = s.run_env(&[("PAPERPOST__HTTP__BIND", &bind)], &["healthcheck"]);
    check.ok();
    assert_eq!(daemon.stop().await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_tells_systemd_it_is_ready_alive_busy_and_stopping() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(100));
    let s = setup(20);
    let mut notify = NotifySocket::new();
    let env = smtp_env(server.port(), 1);
    let env = with(env, "NOTIFY_SOCKET", notify.path.to_str().unwrap());
    // A watchdog of 2 s: pinged every second while the scheduler is alive.
    let env = with(env, "WATCHDOG_USEC", "2000000");
    let env = never_fires(env);
    // The edition is queued before the daemon starts; it resumes it.
    queue_edition(&s, DATE).await;
    let daemon = TestDaemon::spawn(&s, &env, &["run"]);
    wait_for("READY=1", || notify.has("READY=1")).await;
    wait_for("a watchdog ping", || notify.has("WATCHDOG=1")).await;
    wait_for("the sending status", || {
        notify
            .drain()
            .iter()
            .any(|l| l.starts_with("STATUS=sending 2024-03-11: ") && l.ends_with("/20"))
    })
    .await;
    wait_for("the edition sent", || server.accepted().len() == 20).await;
    assert_eq!(daemon.stop().await.code, 0);
    assert!(notify.has("STOPPING=1"), "{:?}", notify.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_serves_the_web_endpoint_and_takes_over_sending_when_the_first_stops() {
    let server = SmtpServer::start().await;
    let s = setup(3);
    let env = smtp_env(server.port(), 1);
    let env = never_fires(env);
    let env = with(env, "PAPERPOST__DATABASE__LOCK_TTL", "3s");
    let mut first = TestDaemon::spawn(&s, &env, &["run"]);
    first.wait_log("paperpost is running").await;
    // The standby listens on a fixed address, the same after the takeover.
    let web = format!("127.0.0.1:{}", http::free_port());
    let standby_env = with(env.clone(), "PAPERPOST__HTTP__BIND", &web);
    let mut second = TestDaemon::spawn(&s, &standby_env, &["run"]);
    let seen = second.wait_log("web endpoint listening").await;
    assert!(seen.contains("serving the web endpoint only"), "{seen}");
    // A standby is healthy (a container orchestrator must not restart it),
    // and says what it is doing.
    let health = reqwest::get(format!("http://{web}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok: standing by to send\n");
    // The first one sends; the second does not (one edition, three readers).
    queue_edition(&s, DATE).await;
    wait_for("the edition", || server.accepted().len() == 3).await;

    // Across the takeover the standby's socket stays open: clients knocking
    // all the while are never refused (they wait in its backlog).
    let knocking = Arc::new(AtomicBool::new(true));
    let knocker = tokio::spawn(knock(web.clone(), Arc::clone(&knocking)));
    assert_eq!(first.stop().await.code, 0);
    let seen = second.wait_log("paperpost is running").await;
    assert!(seen.contains("this one sends from now on"), "{seen}");
    knocking.store(false, Ordering::SeqCst);
    let (answered, refused) = knocker.await.unwrap();
    assert!(answered > 0, "no request was made");
    assert_eq!(
        refused, 0,
        "connections refused during the takeover ({answered} answered)"
    );
    // The next edition is the standby's to send, and it does.
    s.run(&["papers", "select", "--date", "2024-03-12", "2403.06410"])
        .ok();
    queue_edition(&s, "2024-03-12").await;
    wait_for("the next edition", || server.accepted().len() == 6).await;
    let health = reqwest::get(format!("http://{web}/healthz")).await.unwrap();
    assert_eq!(
        health.status(),
        200,
        "the web endpoint answers after the takeover"
    );
    assert_eq!(health.text().await.unwrap(), "ok\n");
    assert_eq!(second.stop().await.code, 0);
    assert!(
        server.counts().values().all(|&n| n == 2),
        "each reader gets each edition once: {:?}",
        server.counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_edition_loses_nothing_and_the_restart_finishes_it() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(50));
    let s = setup(40);
    let env = smtp_env(server.port(), 2);
    let env = never_fires(env);
    queue_edition(&s, DATE).await;
    // Ten messages, then the next transactions wait at MAIL FROM: the
    // SIGTERM comes with exactly two messages in flight (the concurrency).
    server.hold_at(10);
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    wait_for("some messages", || server.accepted().len() >= 10).await;
    daemon.signal(libc::SIGTERM);
    daemon.wait_log("SIGTERM received").await;
    server.release();
    let out = daemon.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = server.accepted().len();
    assert!(
        before <= 10 + 2,
        "{before} sent: more than the messages in flight were started after SIGTERM"
    );
    // A graceful stop finishes what is in flight and records it: nothing
    // is left `sending`, and the restart sends each of the rest once.
    let rows = deliveries(&s);
    assert!(
        rows.values().all(|r| r["status"] != "sending"),
        "left sending: {rows:?}"
    );
    let recorded = rows.values().filter(|r| r["status"] == "sent").count();
    assert_eq!(recorded, before, "every accepted message recorded as sent");
    let daemon = TestDaemon::spawn(&s, &env, &["run"]);
    wait_for("every reader", || server.counts().len() == 40).await;
    assert_eq!(daemon.stop().await.code, 0);
    assert!(
        server.counts().values().all(|&n| n == 1),
        "a graceful stop duplicated: {:?}",
        server.counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_live_settings_names_the_rest_and_survives_a_broken_file() {
    let server = SmtpServer::start().await;
    let s = setup(2);
    let file = s.write(
        "paperpost.toml",
        "[newsletter]\ntitle = \"Morning Papers\"\n",
    );
    let env = never_fires(smtp_env(server.port(), 1));
    let mut daemon = TestDaemon::spawn(&s, &env, &["run", "--config", file.to_str().unwrap()]);
    daemon.wait_log("paperpost is running").await;

    s.write(
        "paperpost.toml",
        "[newsletter]\ntitle = \"Evening Papers\"\n[mail]\nrate_limit = 50\n[http]\nsubscribe_per_minute = 3\n",
    );
    daemon.signal(libc::SIGHUP);
    let seen = daemon.wait_log("take effect at the next start").await;
    assert!(
        seen.contains("configuration applied keys=mail.rate_limit, newsletter"),
        "{seen}"
    );
    assert!(seen.contains("keys=http"), "{seen}");
    let subject = |m: &support::smtp::Accepted| {
        mail_parser::MessageParser::default()
            .parse(&m.data)
            .unwrap()
            .subject()
            .unwrap()
            .to_string()
    };
    queue_edition(&s, DATE).await;
    wait_for("the edition", || server.accepted().len() == 2).await;
    assert!(subject(&server.accepted()[0]).starts_with("Evening Papers"));

    s.write("paperpost.toml", "[newsletter\ntitle = ");
    daemon.signal(libc::SIGHUP);
    let seen = daemon.wait_log("cannot read the configuration again").await;
    assert!(seen.contains("paperpost.toml"), "{seen}");
    s.run(&["papers", "select", "--date", "2024-03-12", "2403.06410"])
        .ok();
    queue_edition(&s, "2024-03-12").await;
    wait_for("the next edition", || server.accepted().len() == 4).await;
    assert!(subject(&server.accepted()[3]).starts_with("Evening Papers"));
    assert_eq!(daemon.stop().await.code, 0);
}
