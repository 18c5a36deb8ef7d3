//! The delivery engine against a scriptable SMTP server over real TCP, driving
//! the real binary: retries, bounces, outages, crashes, unsubscribes, locks.

use crate::support;

use std::time::Duration;

use crate::support::{
    Sandbox,
    child::{DATE, deliveries, email, never_fires, run, setup, smtp_env, wait_for},
    daemon::TestDaemon,
    smtp::{Action, Plan, SmtpServer},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_exactly_one_message() {
    let server = SmtpServer::start().await;
    let s = setup(20);
    let env = smtp_env(server.port(), 4);
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    let text = out.ok();
    assert!(
        text.contains("sending to 20 subscribers via smtp://127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("20 sent, 0 failed, 0 skipped"), "{text}");

    let counts = server.counts();
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let msg = server
        .accepted()
        .into_iter()
        .find(|a| a.to == email(7))
        .unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(&msg.data)
        .unwrap();
    assert_eq!(
        parsed.to().unwrap().first().unwrap().address(),
        Some(email(7).as_str())
    );
    assert_eq!(
        parsed.to().unwrap().first().unwrap().name(),
        Some("Reader 7")
    );
    assert!(
        parsed
            .header_raw("List-Unsubscribe")
            .unwrap()
            .contains("/unsubscribe/")
    );
    assert_eq!(msg.from, "digest@paperpost.example.org");

    let d = deliveries(&s);
    assert!(
        d.values()
            .all(|r| r["status"] == "sent" && r["attempts"] == 1),
        "{d:?}"
    );
    assert!(
        d[&email(7)]["smtp_reply"]
            .as_str()
            .unwrap()
            .starts_with("250 2.0.0 Ok: queued as T")
    );
    let msgid = d[&email(7)]["message_id"].as_str().unwrap();
    assert_eq!(parsed.message_id(), Some(msgid.trim_matches(['<', '>'])));

    // Sending the same edition again sends nothing.
    let again = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        again.ok().contains("was started before"),
        "{}",
        again.stdout
    );
    assert_eq!(server.accepted().len(), 20);
    let status = s.run(&["status"]);
    assert!(status.ok().contains("finished"), "{}", status.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_accepted() {
    // With MAIL/RCPT/DATA pipelined (RFC 2920), and one step at a time.
    for pipelining in [true, false] {
        transient_failures(pipelining).await;
    }
}

async fn transient_failures(pipelining: bool) {
    let server = SmtpServer::start().await;
    server.set_pipelining(pipelining);
    let (a, b, c, d) = (email(3), email(5), email(7), email(9));
    let (a2, b2, c2, d2) = (a.clone(), b.clone(), c.clone(), d.clone());
    server.script(move |to, attempt| {
        if to == a2 && attempt == 1 {
            Plan::at_rcpt(Action::Reply(451, "4.3.0 try again later"))
        } else if to == b2 && attempt <= 2 {
            Plan::at_data(Action::Reply(421, "4.7.0 throttled, slow down"))
        } else if to == c2 && attempt == 1 {
            Plan::at_data(Action::Drop)
        } else if to == d2 && attempt == 1 {
            Plan::at_rcpt(Action::Reply(454, "4.7.1 relay temporarily unavailable"))
        } else {
            Plan::accept()
        }
    });
    let s = setup(12);
    let out = run(&s, &smtp_env(server.port(), 3), &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("12 sent, 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let counts = server.counts();
    assert_eq!(counts.len(), 12);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let rows = deliveries(&s);
    assert_eq!(rows[&a]["attempts"], 2, "{:?}", rows[&a]);
    assert_eq!(rows[&b]["attempts"], 3);
    assert_eq!(rows[&c]["attempts"], 2);
    assert_eq!(rows[&d]["attempts"], 2);
    assert!(out.stderr.contains("will retry"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_fail_at_once_and_bounce_the_mailbox() {
    let server = SmtpServer::start().await;
    // Step by step here; the other tests pipeline.
    server.set_pipelining(false);
    let (gone, spam) = (email(2), email(4));
    let (g2, s2) = (gone.clone(), spam.clone());
    server.script(move |to, _| {
        if to == g2 {
            Plan::at_rcpt(Action::Reply(550, "5.1.1 no such user"))
        } else if to == s2 {
            Plan::at_data(Action::Reply(554, "5.7.1 message rejected as spam"))
        } else {
            Plan::accept()
        }
    });
    let s = setup(6);
    let env = smtp_env(server.port(), 2);
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(out.ok().contains("4 sent, 2 failed"), "{}", out.stdout);
    assert_eq!(server.attempts(&gone), 1, "no retry after 5xx");
    assert_eq!(server.attempts(&spam), 1);
    let rows = deliveries(&s);
    assert_eq!(rows[&gone]["status"], "failed");
    assert!(
        rows[&gone]["last_error"].as_str().unwrap().contains("550"),
        "{:?}",
        rows[&gone]
    );
    assert_eq!(s.subscriber(&gone).unwrap()["status"], "bounced");
    assert_eq!(rows[&spam]["status"], "failed");
    assert_eq!(
        s.subscriber(&spam).unwrap()["status"],
        "active",
        "a rejected message is not a bounce"
    );

    // The next edition leaves the bounced address out.
    s.run(&["papers", "select", "--date", "2024-03-12", "2403.06410"])
        .ok();
    let out = run(&s, &env, &["send", "--date", "2024-03-12"]).await;
    assert!(
        out.ok().contains("sending to 5 subscribers"),
        "{}",
        out.stdout
    );
    assert_eq!(server.attempts(&gone), 1);

    let failed = s.run(&["deliveries", "--date", DATE, "--status", "failed"]);
    assert!(failed.ok().contains(&spam), "{}", failed.stdout);
    let resend = s.run(&["resend", "--date", DATE, "--failed"]);
    assert!(
        resend.ok().contains("Re-queued 1 failed deliveries"),
        "{}",
        resend.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_times_out_and_the_message_is_retried() {
    // Before the body (no answer to RCPT) and after it (no answer to the final dot).
    for stall in [Plan::at_rcpt(Action::Stall), Plan::at_data(Action::Stall)] {
        let server = SmtpServer::start().await;
        let slow = email(1);
        let s2 = slow.clone();
        let plan = stall.clone();
        server.script(move |to, attempt| {
            if to == s2 && attempt == 1 {
                plan.clone()
            } else {
                Plan::accept()
            }
        });
        let s = setup(4);
        let mut env = smtp_env(server.port(), 2);
        env.push(("PAPERPOST__MAIL__SMTP__TIMEOUT".into(), "1500ms".into()));
        let out = run(&s, &env, &["send", "--date", DATE]).await;
        assert!(
            out.ok().contains("4 sent, 0 failed"),
            "{stall:?}\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert_eq!(server.counts()[&slow], 1, "{stall:?}");
        assert!(
            out.stderr
                .contains("no answer from the mail server within 1s 500ms"),
            "{stall:?}\n{}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_pauses_sending_instead_of_failing_everyone() {
    // Find a free port, then leave it closed.
    let probe = SmtpServer::start().await;
    let addr = probe.addr;
    probe.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = setup(30);
    let mut child = TestDaemon::spawn(&s, &smtp_env(addr.port(), 4), &["send", "--date", DATE]);
    let seen = child.wait_log("pausing sending").await;
    let server = SmtpServer::start_on(addr).await;
    let mut out = child.finish().await;
    out.stderr.insert_str(0, &seen);
    assert!(
        out.ok().contains("30 sent, 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains("pausing sending"), "{}", out.stderr);
    assert!(out.stderr.contains("sending resumes"), "{}", out.stderr);
    assert!(server.counts().values().all(|&n| n == 1));
    let rows = deliveries(&s);
    let burned = rows
        .values()
        .filter(|r| r["attempts"].as_i64().unwrap() > 1)
        .count();
    // Only the failures before the breaker opened count as attempts.
    assert!(
        burned <= 3,
        "the outage consumed attempts of {burned} rows: {rows:?}"
    );
    assert!(rows.values().all(|r| r["attempts"].as_i64().unwrap() < 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_edition_loses_nothing_and_duplicates_at_most_the_concurrency() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(60));
    let s = setup(60);
    let concurrency = 4;
    let env = smtp_env(server.port(), concurrency);
    // Three crashes at different points of the edition (and so of the
    // pipeline: composing, mid-transaction, recording).
    let kill_points = [8, 25, 45];
    for point in kill_points {
        // The server takes `point` messages in all, then holds the next
        // transactions at MAIL FROM: the kill comes at exactly that point.
        server.hold_at(point);
        let child = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
        wait_for("some messages", || server.accepted().len() >= point).await;
        child.kill();
        assert_eq!(server.accepted().len(), point, "killed at {point}");
    }
    server.release();

    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("60 sent, 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // The killed process's lock is taken over at once, not after its TTL.
    assert!(out.stderr.contains("took over the lock"), "{}", out.stderr);
    let counts = server.counts();
    assert_eq!(counts.len(), 60, "nobody is missing");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= kill_points.len() * usize::from(concurrency),
        "{duplicates} duplicates: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_during_an_edition_cancels_the_unsent_message() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(80));
    let s = setup(30);
    let child = TestDaemon::spawn(&s, &smtp_env(server.port(), 2), &["send", "--date", DATE]);
    wait_for("the first messages", || server.accepted().len() >= 3).await;
    let last = email(29);
    s.run(&["subscribers", "remove", &last]).ok();
    let out = child.finish().await;
    assert!(
        out.ok().contains("29 sent, 0 failed, 1 skipped"),
        "{}",
        out.stdout
    );
    assert!(
        !server.counts().contains_key(&last),
        "mail sent after an unsubscribe"
    );
    assert_eq!(deliveries(&s)[&last]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_while_the_previous_message_is_slow_is_still_honoured() {
    // One connection and a server that takes a second to accept each message:
    // the next reader unsubscribes while the first message waits for its reply.
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_secs(1));
    let s = setup(2);
    let child = TestDaemon::spawn(&s, &smtp_env(server.port(), 1), &["send", "--date", DATE]);
    wait_for("the first message's body", || !server.received().is_empty()).await;
    let first = server.received()[0].clone();
    let other = [email(0), email(1)]
        .into_iter()
        .find(|e| *e != first)
        .unwrap();
    s.run(&["subscribers", "remove", &other]).ok();
    let out = child.finish().await;
    assert!(
        out.ok().contains("1 sent, 0 failed, 1 skipped"),
        "{}",
        out.stdout
    );
    assert_eq!(
        server.received(),
        vec![first],
        "mail sent after an unsubscribe"
    );
    assert_eq!(deliveries(&s)[&other]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_delays_sending_but_loses_nothing() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(300));
    let s = setup(4);
    let mut env = smtp_env(server.port(), 1);
    env.push(("PAPERPOST__DATABASE__BUSY_TIMEOUT".into(), "100ms".into()));
    let child = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    wait_for("the first message's body", || !server.received().is_empty()).await;
    // Another process takes the write lock for far longer than the busy timeout
    // (as a large import would), while the first outcome waits to be written.
    let other = crate::support::WriteLock::take(&s.pool().await).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    other.release().await;
    let out = child.finish().await;
    assert!(
        out.ok().contains("4 sent, 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let counts = server.counts();
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert!(
        out.stderr.contains("locked by another process"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_process_sends_for_a_database() {
    let server = SmtpServer::start().await;
    let s = setup(3);
    // A schedule that does not fire during the test.
    let env = never_fires(smtp_env(server.port(), 2));
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    let pid = daemon.pid();
    // "running" is logged once the lock is held (a probing `send` could
    // take the lock first).
    daemon.wait_log("paperpost is running").await;
    let send = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        send.fails().contains("another paperpost process"),
        "{}",
        send.stderr
    );
    assert!(
        send.stderr.contains(&format!(":{pid}:")),
        "names the holder: {}",
        send.stderr
    );
    assert!(server.accepted().is_empty());

    // SIGTERM: a graceful stop that releases the lock.
    let out = daemon.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("paperpost stopped"), "{}", out.stderr);
    let send = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(send.ok().contains("3 sent"), "{}", send.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sends_todays_edition_on_schedule_once() {
    let server = SmtpServer::start().await;
    let s = setup(5);
    let today = chrono::Utc::now().date_naive().to_string();
    s.run(&[
        "papers",
        "select",
        "--date",
        &today,
        "2403.06410",
        "2406.05981",
    ])
    .ok();
    let mut env = smtp_env(server.port(), 2);
    env.push(("PAPERPOST__SCHEDULE__CRON".into(), "* * * * * *".into()));
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    wait_for("today's edition", || server.accepted().len() >= 5).await;
    // The schedule fires again (every second) and finds the edition sent.
    let seen = daemon.wait_log("has been sent already").await;
    assert!(seen.contains("edition started"), "{seen}");
    assert_eq!(
        server.accepted().len(),
        5,
        "sent once although the schedule fired again"
    );
    let out = daemon.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // A restart resumes nothing and sends nothing twice: it too finds the
    // edition sent when the schedule fires.
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    let seen = daemon.wait_log("has been sent already").await;
    let out = daemon.stop().await;
    assert_eq!(out.code, 0, "{seen}{}", out.stderr);
    assert!(!seen.contains("edition started"), "{seen}");
    assert_eq!(server.accepted().len(), 5);
    let counts = server.counts();
    assert!(counts.values().all(|&n| n == 1));
    let subjects: Vec<String> = server
        .accepted()
        .iter()
        .map(|a| {
            mail_parser::MessageParser::default()
                .parse(&a.data)
                .unwrap()
                .subject()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        subjects.iter().all(|s| s.contains("ShiftAddLLM")),
        "{subjects:?}"
    );
}

/// Issue 8, reproduction 3: two editions queued for the same subscribers (after
/// an outage, say). A claim batch then holds two rows of one subscriber; both
/// must be sent, not one left `sending` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_queued_editions_for_the_same_subscribers_are_both_sent() {
    let server = SmtpServer::start().await;
    let s = setup(20);
    s.run(&[
        "papers",
        "select",
        "--date",
        "2024-03-12",
        "2403.06410",
        "2406.05981",
    ])
    .ok();
    let pool = s.pool().await;
    for date in ["2024-03-11", "2024-03-12"] {
        let date = date.parse().unwrap();
        paperpost::store::deliveries::start_edition(&pool, date, "send", |_| {
            paperpost::store::now_ms()
        })
        .await
        .unwrap();
    }
    pool.close().await;
    // Never fires: the daemon only sends what is queued.
    let env = never_fires(smtp_env(server.port(), 2));
    let daemon = TestDaemon::spawn(&s, &env, &["run"]);
    wait_for("both editions", || server.accepted().len() >= 40).await;
    assert_eq!(daemon.stop().await.code, 0);
    for date in ["2024-03-11", "2024-03-12"] {
        let status = s.run(&["status", "--date", date]);
        assert!(
            status.ok().contains("finished"),
            "{date}: {}",
            status.stdout
        );
    }
    assert!(
        server.counts().values().all(|&n| n == 2),
        "each reader got both"
    );
}

/// Issue 8, reproduction 3: rows left `sending` with an expired lease (an
/// outcome that could not be written) are sent by the running daemon, not only
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_daemon_sends_rows_whose_lease_ran_out() {
    let server = SmtpServer::start().await;
    let s = setup(3);
    let env = never_fires(smtp_env(server.port(), 2));
    let daemon = TestDaemon::spawn(&s, &env, &["run"]);
    // Running, with nothing to do; then three rows appear stranded.
    let pool = s.pool().await;
    for _ in 0..600 {
        let held: i64 = crate::on_db!(&pool, |p| sqlx::query_scalar(
            p.sql("SELECT count(*) FROM scheduler_lock")
        )
        .fetch_one(p)
        .await)
        .unwrap();
        if held > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = paperpost::store::now_ms() + 3_600_000;
    paperpost::store::deliveries::start_edition(&pool, DATE.parse().unwrap(), "send", |_| later)
        .await
        .unwrap();
    crate::on_db!(&pool, |p| sqlx::query(
        p.sql("UPDATE deliveries SET status = 'sending', lease_until = $1")
    )
    .bind(paperpost::store::now_ms() - 1)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    wait_for("the stranded rows", || server.accepted().len() >= 3).await;
    let out = daemon.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("lease ran out"), "{}", out.stderr);
    assert_eq!(server.accepted().len(), 3);
}

/// Issue 8, reproduction 1: a relay that refuses to relay answers every RCPT
/// with the same 5.7.1. Nobody is marked bounced: the refusals are not about
/// mailboxes, and once many recipients in a row get the same reply, sending
/// pauses with an alert instead of failing the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_refuses_everyone_bounces_nobody_and_pauses() {
    let server = SmtpServer::start().await;
    server.script(|to, _| {
        let _ = to;
        Plan::at_rcpt(Action::Reply(550, "5.7.1 Relaying denied"))
    });
    let s = setup(20);
    let env = smtp_env(server.port(), 2);
    let send = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    wait_for("the alert", || s.run(&["status"]).ok().contains("ALERT")).await;
    let status = s.run(&["status"]);
    assert!(status.ok().contains("Relaying denied"), "{}", status.stdout);
    send.kill();
    let subscribers = s.subscribers();
    assert!(
        subscribers.iter().all(|x| x["status"] == "active"),
        "{subscribers:?}"
    );
    let rows = deliveries(&s);
    assert!(
        rows.values().all(|r| r["status"] != "failed"),
        "nothing failed for good: {rows:?}"
    );

    // The relay is fixed: the same edition goes out to everyone.
    server.script(|_, _| Plan::accept());
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(out.ok().contains("20 sent, 0 failed"), "{}", out.stdout);
    assert!(!s.run(&["status"]).ok().contains("ALERT"));
}

/// Without an enhanced status code a 550 to RCPT is still a bounce, but the
/// same reply to many recipients in a row is the server's: the ones already
/// bounced are taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_plain_550_to_everyone_takes_back_the_bounces() {
    let server = SmtpServer::start().await;
    server.script(|_, _| Plan::at_rcpt(Action::Reply(550, "Relay access denied")));
    let s = setup(12);
    let env = smtp_env(server.port(), 1);
    let send = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    wait_for("the alert", || s.run(&["status"]).ok().contains("ALERT")).await;
    // The undo is written by the recorder just after the alert.
    wait_for("the bounces taken back", || {
        s.subscribers().iter().all(|x| x["status"] == "active")
    })
    .await;
    send.kill();
    assert!(deliveries(&s).values().all(|r| r["status"] != "failed"));
}

/// Issue 8, reproduction 2: a restart after a caught-up fire time must not
/// fire it again and send the papers meant for the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_fire_a_handled_fire_time_again() {
    let server = SmtpServer::start().await;
    let s = setup(3);
    let now = chrono::Utc::now();
    let yesterday = (now - chrono::Duration::days(1)).date_naive().to_string();
    let today = now.date_naive().to_string();
    s.run(&["papers", "select", "--date", &yesterday, "2403.06410"])
        .ok();
    // Daily, an hour ago: caught up at start.
    let fire = now - chrono::Duration::hours(1);
    let cron = format!("0 {} {} * * *", fire.format("%M"), fire.format("%H"));
    let mut env = smtp_env(server.port(), 2);
    env.push(("PAPERPOST__SCHEDULE__CRON".into(), cron));

    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log("edition started").await;
    wait_for("yesterday's edition", || server.accepted().len() >= 3).await;
    assert_eq!(daemon.stop().await.code, 0);

    // Today's papers arrive, meant for the next fire time; then a restart.
    s.run(&["papers", "select", "--date", &today, "2406.05981"])
        .ok();
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log("fire time already handled").await;
    assert_eq!(daemon.stop().await.code, 0);
    assert_eq!(server.accepted().len(), 3);
    let status = s.run(&["status", "--date", &today]);
    assert!(status.ok().contains("has not started"), "{}", status.stdout);
}

/// Issue 8, reproduction 2, per-subscriber time zones: a caught-up fire time
/// sends now to zones whose hour has passed since it, and at their hour to
/// zones still before it, not tomorrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_fire_time_reaches_zones_whose_hour_has_passed_today() {
    let server = SmtpServer::start().await;
    let s = Sandbox::with_sample_papers();
    // UTC-2 all year: their hour was an hour ago. UTC-5 all year: two hours ahead.
    s.run(&[
        "subscribers",
        "add",
        "passed@example.org",
        "--timezone",
        "America/Noronha",
    ])
    .ok();
    s.run(&[
        "subscribers",
        "add",
        "ahead@example.org",
        "--timezone",
        "America/Bogota",
    ])
    .ok();
    let fire = chrono::Utc::now() - chrono::Duration::hours(3);
    let date = fire.date_naive().to_string();
    s.run(&["papers", "select", "--date", &date, "2403.06410"])
        .ok();
    let cron = format!("0 {} {} * * *", fire.format("%M"), fire.format("%H"));
    let mut env = smtp_env(server.port(), 2);
    env.push(("PAPERPOST__SCHEDULE__CRON".into(), cron));
    env.push((
        "PAPERPOST__SCHEDULE__PER_SUBSCRIBER_TIMEZONE".into(),
        "true".into(),
    ));
    let daemon = TestDaemon::spawn(&s, &env, &["run"]);
    wait_for("the zone whose hour has passed", || {
        !server.accepted().is_empty()
    })
    .await;
    assert_eq!(daemon.stop().await.code, 0);
    assert_eq!(
        server.counts().keys().collect::<Vec<_>>(),
        vec!["passed@example.org"]
    );
    let pool = s.pool().await;
    let (due,): (i64,) = crate::on_db!(&pool, |p| {
        sqlx::query_as(p.sql(
        "SELECT d.next_attempt_at FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id \
         WHERE s.email = 'ahead@example.org'"
    ))
    .fetch_one(p)
    .await
    })
    .unwrap();
    let in_two_hours = (fire + chrono::Duration::hours(5)).timestamp_millis();
    assert!(
        (due - in_two_hours).abs() < 60_000,
        "at their hour today: {due} vs {in_two_hours}"
    );
}

/// Issue 8, item 9: the file transport names each message by its Message-ID,
/// so sending a message again (an outcome lost in a crash) replaces its file
/// instead of adding a second one; no temporary file is left behind.
#[tokio::test]
async fn the_file_transport_replaces_a_resent_message() {
    let s = setup(3);
    s.run(&["send", "--date", DATE]).ok();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(s.path("data/outbox"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = files();
    assert_eq!(before.len(), 3);
    assert!(
        before
            .iter()
            .all(|n| n.starts_with("digest.2024-03-11.") && n.ends_with(".eml")),
        "{before:?}"
    );
    let pool = s.pool().await;
    crate::on_db!(&pool, |p| sqlx::query(p.sql(
        "UPDATE deliveries SET status = 'queued' WHERE id = (SELECT min(id) FROM deliveries)"
    ))
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    pool.close().await;
    let modified = || {
        std::fs::read_dir(s.path("data/outbox"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().modified().unwrap())
            .max()
            .unwrap()
    };
    let last = modified();
    std::thread::sleep(Duration::from_millis(20));
    let again = s.run(&["send", "--date", DATE]);
    assert!(again.ok().contains("3 sent, 0 failed"), "{}", again.stdout);
    assert!(modified() > last, "the message was written again");
    assert_eq!(files(), before, "in place of the first");
}

/// Issue 8, item 6: a row whose subscriber does not decode (a value edited by
/// hand) fails alone; the rest of the edition goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_that_does_not_decode_fails_that_row_only() {
    let server = SmtpServer::start().await;
    let s = setup(3);
    let pool = s.pool().await;
    crate::on_db!(&pool, |p| sqlx::query(p.sql(
        "UPDATE subscribers SET timezone = 'Mars/Base' WHERE email = $1"
    ))
    .bind(email(1))
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    pool.close().await;
    let out = run(&s, &smtp_env(server.port(), 2), &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("2 sent, 1 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let rows = deliveries(&s);
    let bad = &rows[&email(1)];
    assert!(
        bad["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot read the subscriber"),
        "{bad}"
    );
}

/// Issue 8, item 6: when the engine stops on an error the daemon exits
/// non-zero, so systemd's Restart=on-failure restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_exits_non_zero_when_the_engine_fails() {
    let server = SmtpServer::start().await;
    let s = setup(1);
    let env = never_fires(smtp_env(server.port(), 1));
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log("paperpost is running").await;
    let pool = s.pool().await;
    crate::on_db!(&pool, |p| sqlx::query(
        p.sql("ALTER TABLE deliveries RENAME TO deliveries_gone")
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let out = daemon.finish().await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("the delivery engine stopped"),
        "{}",
        out.stderr
    );
}

/// Issue 8, item 8: a large import while an edition sends. Its transaction
/// reads before it writes; in WAL mode that upgrade fails at once
/// (SQLITE_BUSY_SNAPSHOT) when the sender committed meanwhile, unless the
/// transaction takes the write lock first (BEGIN IMMEDIATE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_import_during_an_edition_succeeds_and_the_edition_finishes() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(2));
    let s = setup(1500);
    let mut csv = String::from("email,name\n");
    for i in 0..100_000 {
        csv.push_str(&format!("bulk{i}@example.org,Bulk {i}\n"));
    }
    let f = s.write("bulk.csv", csv);
    let env = smtp_env(server.port(), 4);
    // The edition cannot finish before the import has: the server holds
    // its last message until then.
    server.hold_at(1499);
    let send = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    wait_for("the edition under way", || server.accepted().len() >= 20).await;
    let import = s.run(&["subscribers", "import", f.to_str().unwrap()]);
    assert!(
        import.ok().contains("100000 rows: 100000 added"),
        "{}\n{}",
        import.stdout,
        import.stderr
    );
    server.release();
    let out = send.finish().await;
    assert!(
        out.stdout.contains("1500 sent, 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// Issue 8, item 12: while the breaker is open attempts are not counted, but
/// `mail.retry.max_age` still holds: after a long outage a stale edition is
/// given up rather than piling up for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_holds_while_the_breaker_is_open() {
    let probe = SmtpServer::start().await;
    let addr = probe.addr;
    probe.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = setup(3);
    let mut env = smtp_env(addr.port(), 1);
    env.push(("PAPERPOST__MAIL__RETRY__MAX_AGE".into(), "1s".into()));
    env.push(("PAPERPOST__MAIL__RETRY__MAX_ATTEMPTS".into(), "1000".into()));
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("0 sent, 3 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        deliveries(&s)
            .values()
            .all(|r| r["last_error"].as_str().unwrap().contains("gave up")),
        "{:?}",
        deliveries(&s)
    );
}

/// Issue 8, item 10: the status check can be seconds old when the body goes
/// out (a slow connect, TLS, AUTH): it is asked again at the point of no
/// return when older than 50 ms. Here the connection takes a second; the
/// reader unsubscribes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_during_a_slow_connect_is_honoured_before_the_body() {
    let server = SmtpServer::start().await;
    server.set_greeting_delay(Duration::from_secs(1));
    let s = setup(1);
    let child = TestDaemon::spawn(&s, &smtp_env(server.port(), 1), &["send", "--date", DATE]);
    wait_for("the connection", || server.connections() >= 1).await;
    s.run(&["subscribers", "remove", &email(0)]).ok();
    let out = child.finish().await;
    assert!(
        out.ok().contains("0 sent, 0 failed, 1 skipped"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        server.received().is_empty(),
        "mail sent after an unsubscribe"
    );
    assert_eq!(deliveries(&s)[&email(0)]["status"], "cancelled");
}

/// A SIGTERM during start-up (here, as soon as the web endpoint listens,
/// before the scheduler runs) is a graceful stop, not the default kill: the
/// handlers are installed before any work starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_start_up_stops_gracefully() {
    let server = SmtpServer::start().await;
    let s = setup(1);
    let mut daemon = TestDaemon::spawn(&s, &smtp_env(server.port(), 1), &["run"]);
    daemon.wait_log("web endpoint listening").await;
    let out = daemon.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("SIGTERM received"), "{}", out.stderr);
}

/// Issue 8 item 12: an editor who changes the selection while an edition is
/// being sent reaches the readers not yet sent (the engine's per-edition
/// cache notices).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_changed_mid_edition_reaches_the_readers_not_yet_sent() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(300));
    let s = setup(10);
    let env = smtp_env(server.port(), 1);
    let child = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    wait_for("two messages", || server.received().len() >= 2).await;
    let ids: Vec<String> = s.papers(Some(DATE)).into_iter().map(|(id, _)| id).collect();
    let dropped = ids[0].clone();
    let mut args = vec!["papers", "select", "--date", DATE];
    args.extend(ids[1..].iter().map(String::as_str));
    s.run(&args).ok();
    child.finish().await.ok();
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 10);
    let carries = |m: &support::smtp::Accepted| {
        String::from_utf8_lossy(&m.data).contains(&format!("/papers/{dropped}"))
    };
    assert!(
        carries(&accepted[0]),
        "the first reader got the old selection"
    );
    assert!(
        !carries(&accepted[9]),
        "the last reader got a paper no longer selected"
    );
}

/// A relay refusing everyone with a reply that carries a per-message id
/// ("Proxy ID <hex>") is still one reply: the guard trips (it never did,
/// and an edition of 40 failed at once with no alert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_with_a_per_message_id_is_still_the_servers() {
    let server = SmtpServer::start().await;
    server.script(|to, attempt| {
        // A different id for every message, as Gmail's relay gives.
        let id = to.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) ^ u64::from(attempt);
        let id = format!("{id:016x}");
        let reply: &'static str =
            Box::leak(format!("5.7.1 Relaying denied. Proxy ID {id} - gsmtp").into_boxed_str());
        Plan::at_rcpt(Action::Reply(550, reply))
    });
    let s = setup(20);
    let env = smtp_env(server.port(), 2);
    let send = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    wait_for("the alert", || s.run(&["status"]).ok().contains("ALERT")).await;
    send.kill();
    assert!(s.subscribers().iter().all(|x| x["status"] == "active"));
    let rows = deliveries(&s);
    assert!(rows.values().all(|r| r["status"] != "failed"), "{rows:?}");
}

/// Dead mailboxes next to each other at one domain, whose replies echo the
/// address, are the recipients' own: they bounce, no alert, and the others
/// get their digest (the guard called it the server's and retried them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjacent_dead_mailboxes_at_one_domain_bounce_without_an_alert() {
    let server = SmtpServer::start().await;
    server.script(|to, _| {
        if to.starts_with("dead") {
            let reply: &'static str = Box::leak(
                format!("5.1.1 <{to}>: Recipient address rejected: User unknown").into_boxed_str(),
            );
            Plan::at_rcpt(Action::Reply(550, reply))
        } else {
            Plan::accept()
        }
    });
    let s = Sandbox::with_sample_papers();
    let mut csv = String::from("email\n");
    for i in 0..6 {
        csv.push_str(&format!("dead{i}@example.org\n"));
    }
    for i in 0..6 {
        csv.push_str(&format!("{}\n", email(i)));
    }
    let f = s.write("subs.csv", csv);
    s.run(&["subscribers", "import", f.to_str().unwrap()]).ok();
    let out = run(&s, &smtp_env(server.port(), 1), &["send", "--date", DATE]).await;
    assert!(
        out.ok().contains("6 sent, 6 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(!s.run(&["status"]).ok().contains("ALERT"));
    for i in 0..6 {
        let who = format!("dead{i}@example.org");
        assert_eq!(s.subscriber(&who).unwrap()["status"], "bounced", "{who}");
    }
}
