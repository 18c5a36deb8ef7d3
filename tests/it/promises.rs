//! What the README promises about retries, bounces, the rate limit,
//! connections, Message-IDs and the daemon's start and reload, each shown
//! against the scriptable SMTP server and the real binary.

use std::time::Duration;

use crate::support::{
    child::{DATE, deliveries, email, never_fires, run, setup, smtp_env, wait_for, with},
    daemon::TestDaemon,
    smtp::{Action, Plan, SmtpServer},
};

/// A server that answers every attempt for `who` with `plan`.
fn refusing(server: &SmtpServer, who: String, plan: Plan) {
    server.script(move |to, _| {
        if to == who {
            plan.clone()
        } else {
            Plan::accept()
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_gives_up_at_max_attempts() {
    let server = SmtpServer::start().await;
    let stuck = email(1);
    refusing(
        &server,
        stuck.clone(),
        Plan::at_rcpt(Action::Reply(451, "4.3.0 try later")),
    );
    let s = setup(3);
    let env = with(
        smtp_env(server.port(), 1),
        "PAPERPOST__MAIL__RETRY__MAX_ATTEMPTS",
        "3",
    );
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("2 sent, 1 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(server.attempts(&stuck), 3);
    let row = &deliveries(&s)[&stuck];
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{row}"
    );
    assert_eq!(s.subscriber(&stuck).unwrap()["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_gives_up_at_max_age() {
    let server = SmtpServer::start().await;
    let stuck = email(0);
    refusing(
        &server,
        stuck.clone(),
        Plan::at_rcpt(Action::Reply(451, "4.3.0 try later")),
    );
    let s = setup(2);
    let env = with(
        smtp_env(server.port(), 1),
        "PAPERPOST__MAIL__RETRY__MAX_ATTEMPTS",
        "1000",
    );
    let env = with(env, "PAPERPOST__MAIL__RETRY__MAX_AGE", "1s");
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("1 sent, 1 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let row = &deliveries(&s)[&stuck];
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .contains("mail.retry.max_age"),
        "{row}"
    );
    assert!(server.attempts(&stuck) < 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_to_mail_from_is_retried_spends_no_attempt_and_bounces_nobody() {
    let server = SmtpServer::start().await;
    server.refuse_mail(2, 553, "5.1.8 sender address rejected");
    let s = setup(3);
    let out = run(&s, &smtp_env(server.port(), 1), &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("3 sent, 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        server.counts().values().all(|&n| n == 1),
        "{:?}\n{}",
        server.counts(),
        out.stderr
    );
    for sub in s.subscribers() {
        assert_eq!(sub["status"], "active", "{sub}");
    }
    // Retried, but our sender's refusal spent nobody's attempts (issue 18:
    // a relay refusing the VERP sender must not use up every row's).
    let rows = deliveries(&s);
    assert!(rows.values().all(|r| r["attempts"] == 1), "{rows:?}");
    assert!(
        out.stderr.contains("refuses our envelope sender"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_threshold_of_two_suppresses_at_the_second_bounce() {
    let server = SmtpServer::start().await;
    let gone = email(2);
    refusing(
        &server,
        gone.clone(),
        Plan::at_rcpt(Action::Reply(550, "5.1.1 no such user")),
    );
    let s = setup(3);
    s.run(&["papers", "select", "--date", "2024-03-12", "2403.06410"])
        .ok();
    let env = with(
        smtp_env(server.port(), 1),
        "PAPERPOST__MAIL__BOUNCE__THRESHOLD",
        "2",
    );
    run(&s, &env, &["send", "--date", DATE]).await.ok();
    let first = s.subscriber(&gone).unwrap();
    assert_eq!(first["status"], "active", "one bounce of two: {first}");
    run(&s, &env, &["send", "--date", "2024-03-12"]).await.ok();
    assert_eq!(s.subscriber(&gone).unwrap()["status"], "bounced");
    assert_eq!(server.attempts(&gone), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_over_an_edition() {
    let server = SmtpServer::start().await;
    let s = setup(30);
    let env = with(
        smtp_env(server.port(), 4),
        "PAPERPOST__MAIL__RATE_LIMIT",
        "10",
    );
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(out.ok().contains("30 sent"), "{}", out.stdout);
    // Measured at the server, from the first message to the last (process
    // start-up and connecting are not in it): a burst of 10, then 10 a
    // second, so the last of 30 comes 2 s after the first; a limiter that
    // does nothing takes milliseconds, one that is too strict much longer.
    let accepted = server.accepted();
    let span = accepted.last().unwrap().at - accepted[0].at;
    assert!(
        span >= Duration::from_millis(1800),
        "30 messages within {span:?}: the limit did not hold"
    );
    assert!(
        span <= Duration::from_secs(5),
        "30 messages over {span:?}: slower than 10 a second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reuses_its_connection() {
    let server = SmtpServer::start().await;
    let s = setup(20);
    let out = run(&s, &smtp_env(server.port(), 2), &["send", "--date", DATE]).await;
    assert!(out.ok().contains("20 sent"), "{}", out.stdout);
    assert!(
        server.connections() <= 2,
        "{} connections",
        server.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_timed_out_is_never_reused() {
    let server = SmtpServer::start().await;
    let slow = email(2);
    let s2 = slow.clone();
    server.script(move |to, attempt| {
        if to == s2 && attempt == 1 {
            Plan::at_data(Action::Stall)
        } else {
            Plan::accept()
        }
    });
    let s = setup(6);
    let env = with(
        smtp_env(server.port(), 1),
        "PAPERPOST__MAIL__SMTP__TIMEOUT",
        "1500ms",
    );
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("6 sent, 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // One connection before the stall and one after: the stalled one (whose
    // server may still answer the old message) was dropped, not reused.
    assert_eq!(server.connections(), 2);
    for i in (0..6).filter(|&i| email(i) != slow) {
        assert_eq!(server.attempts(&email(i)), 1, "{}", email(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_message_carries_the_same_message_id() {
    let server = SmtpServer::start().await;
    let again = email(0);
    let a2 = again.clone();
    server.script(move |to, attempt| {
        if to == a2 && attempt == 1 {
            Plan::at_data(Action::Reply(451, "4.3.0 try later"))
        } else {
            Plan::accept()
        }
    });
    let s = setup(2);
    run(&s, &smtp_env(server.port(), 1), &["send", "--date", DATE])
        .await
        .ok();
    let ids: Vec<String> = server
        .bodies()
        .iter()
        .filter(|b| b.to == again)
        .map(|b| {
            let m = mail_parser::MessageParser::default()
                .parse(&b.data)
                .unwrap();
            m.message_id().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 2, "two attempts");
    assert_eq!(ids[0], ids[1]);
    let recorded = deliveries(&s)[&again]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(recorded.trim_matches(['<', '>']), ids[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_finishes_an_unfinished_edition_at_start() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(40));
    let s = setup(25);
    let env = smtp_env(server.port(), 2);
    let send = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    wait_for("some messages", || server.accepted().len() >= 5).await;
    send.kill();
    // A schedule that does not fire: the daemon only resumes.
    let env = never_fires(env);
    let daemon = TestDaemon::spawn(&s, &env, &["run"]);
    wait_for("every reader", || server.counts().len() == 25).await;
    wait_for("the edition recorded as finished", || {
        deliveries(&s).values().all(|r| r["status"] == "sent")
    })
    .await;
    let out = daemon.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let duplicates: usize = server.counts().values().map(|n| n - 1).sum();
    assert!(duplicates <= 2, "{:?}", server.counts());
}

const FILE: &str = r#"
[[subscriber]]
email = "ada@example.org"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_subscriber_file_and_a_broken_one_changes_nothing() {
    let server = SmtpServer::start().await;
    let s = setup(0);
    s.write("config/subscribers.toml", FILE);
    let env = never_fires(smtp_env(server.port(), 1));
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log("applied the subscriber file").await;
    assert!(s.subscriber("ada@example.org").is_some());

    s.write(
        "config/subscribers.toml",
        format!("{FILE}\n[[subscriber]]\nemail = \"bob@example.org\"\n"),
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("applied the subscriber file").await;
    assert_eq!(s.subscriber("bob@example.org").unwrap()["status"], "active");

    s.write("config/subscribers.toml", "[[subscriber]\nemail = ");
    daemon.signal(libc::SIGHUP);
    let seen = daemon.wait_log("cannot apply the subscriber file").await;
    assert!(seen.contains("subscribers.toml"), "{seen}");
    for who in ["ada@example.org", "bob@example.org"] {
        assert_eq!(s.subscriber(who).unwrap()["status"], "active", "{who}");
    }
    assert_eq!(daemon.stop().await.code, 0);
}
