//! Issue 18: what comes back after the relay accepted a message. Mail goes
//! out from a signed VERP address over real SMTP (the test server records
//! each MAIL FROM); reports are piped to `paperpost bounces ingest` as
//! Postfix's `pipe` transport would, and what they did is read back through
//! the command line.

use std::{io::Write, process::Stdio};

use crate::support::{
    Run, Sandbox, WriteLock,
    child::{DATE, smtp_env},
    fixture,
    smtp::SmtpServer,
};

const VERP: &str = "bounces.example.org";

/// The environment for SMTP to `server` with VERP on.
fn env(server: &SmtpServer) -> Vec<(String, String)> {
    let mut env = smtp_env(server.port(), 2);
    env.push(("PAPERPOST__MAIL__BOUNCE__VERP_DOMAIN".into(), VERP.into()));
    env.push((
        "PAPERPOST__MAIL__FROM".into(),
        "Paperpost <digest@news.example.org>".into(),
    ));
    env
}

/// A sandbox with `emails` subscribed and the sample papers selected for
/// `dates`, each sent through `server`.
async fn sent(server: &SmtpServer, emails: &[&str], dates: &[&str]) -> Sandbox {
    let s = Sandbox::new();
    for e in emails {
        s.run(&["subscribers", "add", e]).ok();
    }
    let papers = fixture("daily_papers-2024-03-11.json");
    for d in dates {
        s.run(&["papers", "import", papers.to_str().unwrap(), "--date", d])
            .ok();
    }
    let env = env(server);
    let dates: Vec<String> = dates.iter().map(|d| d.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        for d in &dates {
            s.run_env(&env, &["send", "--date", d]).ok();
        }
        s
    })
    .await
    .unwrap()
}

/// Pipes `report` to `bounces ingest --recipient TO`, as Postfix's pipe does.
fn ingest(s: &Sandbox, env: &[(String, String)], to: &str, report: &str) -> Run {
    let mut c = s.command();
    c.envs(env.iter().map(|(k, v)| (k, v)));
    c.args(["bounces", "ingest", "--recipient", to]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(report.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap().into()
}

/// A delivery status notification (RFC 3464) for `rcpt`, sent to `to`.
fn dsn(to: &str, rcpt: &str, action: &str, status: &str, diagnostic: &str, id: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <{id}@mx.example.net>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThis is the mail system at host mx.example.net.\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
         Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n\
         Diagnostic-Code: smtp; {diagnostic}\r\n\r\n\
         --b1\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: Paperpost <digest@news.example.org>\r\n\
         Subject: Paperpost Daily\r\n--b1--\r\n"
    )
}

/// The VERP address each recipient's message went out from.
fn verp_of(server: &SmtpServer, rcpt: &str) -> Vec<String> {
    server
        .accepted()
        .into_iter()
        .filter(|m| m.to == rcpt)
        .map(|m| m.from)
        .collect()
}

fn status(s: &Sandbox, email: &str) -> (String, String) {
    let v = s.subscriber(email).unwrap();
    let by = v["unsubscribed_by"].as_str().unwrap_or("").to_string();
    (v["status"].as_str().unwrap().to_string(), by)
}

/// `paperpost status` shows an ALERT line saying `text`.
fn assert_alert(s: &Sandbox, text: &str) {
    let out = s.run(&["status"]);
    let shown = out
        .ok()
        .lines()
        .any(|l| l.starts_with("ALERT") && l.contains(text));
    assert!(shown, "no ALERT saying {text:?}:\n{}", out.stdout);
}

fn reports(s: &Sandbox) -> Vec<serde_json::Value> {
    let out = s.run(&["bounces", "list", "--json"]);
    serde_json::from_str(out.ok()).unwrap()
}

/// Every message goes out from its own signed VERP address (the From header
/// unchanged); a hard bounce to it suppresses exactly its subscriber, once,
/// however often it is delivered; a forged tag changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_bounce_to_the_verp_address_suppresses_its_subscriber_once() {
    let server = SmtpServer::start().await;
    let s = sent(&server, &["ada@example.org", "bob@example.net"], &[DATE]).await;
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 2);
    for m in &accepted {
        assert!(
            m.from.starts_with("bounces+") && m.from.ends_with(&format!("@{VERP}")),
            "{}",
            m.from
        );
        let text = String::from_utf8_lossy(&m.data);
        assert!(text.contains("From: Paperpost <digest@news.example.org>"));
    }
    assert_ne!(accepted[0].from, accepted[1].from);
    let env = env(&server);
    let to = verp_of(&server, "ada@example.org").remove(0);
    let report = dsn(
        &to,
        "ada@example.org",
        "failed",
        "5.1.1",
        "550 5.1.1 <ada@example.org>: User unknown",
        "r1",
    );
    for _ in 0..2 {
        let out = ingest(&s, &env, &to, &report);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert_eq!(
        status(&s, "ada@example.org"),
        ("bounced".into(), "bounce".into())
    );
    assert_eq!(status(&s, "bob@example.net").0, "active");
    let r = reports(&s);
    assert_eq!(
        r.len(),
        1,
        "a report delivered twice is recorded once: {r:?}"
    );
    assert_eq!(r[0]["matched_by"], "verp");

    // A forged tag: recorded, unmatched, nobody changes; exit 0.
    let bob = verp_of(&server, "bob@example.net").remove(0);
    let at = bob.find('@').unwrap();
    let other = if bob.as_bytes()[at - 1] == b'0' {
        '1'
    } else {
        '0'
    };
    let forged = format!("{}{other}{}", &bob[..at - 1], &bob[at..]);
    let out = ingest(
        &s,
        &env,
        &forged,
        &dsn(
            &forged,
            "bob@example.net",
            "failed",
            "5.1.1",
            "550 5.1.1 unknown",
            "r2",
        ),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(status(&s, "bob@example.net").0, "active");
    assert!(reports(&s).iter().any(|r| r["matched_by"] == "none"));
}

/// A database another process holds past the busy timeout: exit 75 (the
/// mail system keeps the report and tries again), and nothing half-done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_defers_the_report() {
    let server = SmtpServer::start().await;
    let s = sent(&server, &["ada@example.org"], &[DATE]).await;
    let mut env = env(&server);
    env.push(("PAPERPOST__DATABASE__BUSY_TIMEOUT".into(), "500ms".into()));
    let to = verp_of(&server, "ada@example.org").remove(0);
    let report = dsn(
        &to,
        "ada@example.org",
        "failed",
        "5.1.1",
        "550 5.1.1 unknown",
        "r1",
    );
    let pool = s.pool().await;
    let lock = WriteLock::take(&pool).await;
    let out = ingest(&s, &env, &to, &report);
    assert_eq!(out.code, 75, "{}", out.stderr);
    lock.release().await;
    assert_eq!(status(&s, "ada@example.org").0, "active");
    let out = ingest(&s, &env, &to, &report);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(status(&s, "ada@example.org").0, "bounced");
}

/// Soft bounces (full mailbox) suppress only after three editions; a block
/// (DMARC, 5.7.26) never suppresses and raises an alert; a delay and an
/// auto-reply do nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_bounces_count_by_edition_and_blocks_only_alert() {
    let server = SmtpServer::start().await;
    let dates = ["2024-03-11", "2024-03-12", "2024-03-13"];
    let s = sent(&server, &["full@example.org", "dmarc@example.net"], &dates).await;
    let env = env(&server);
    let full = verp_of(&server, "full@example.org");
    assert_eq!(full.len(), 3);
    for (i, to) in full.iter().enumerate() {
        let report = dsn(
            to,
            "full@example.org",
            "failed",
            "5.2.2",
            "552 5.2.2 Mailbox full",
            &format!("s{i}"),
        );
        assert_eq!(ingest(&s, &env, to, &report).code, 0);
        let want = if i < 2 { "active" } else { "bounced" };
        assert_eq!(
            status(&s, "full@example.org").0,
            want,
            "after {} editions",
            i + 1
        );
    }
    let to = verp_of(&server, "dmarc@example.net").remove(0);
    let report = dsn(
        &to,
        "dmarc@example.net",
        "failed",
        "5.7.26",
        "550 5.7.26 Unauthenticated email is not accepted due to DMARC policy",
        "b1",
    );
    assert_eq!(ingest(&s, &env, &to, &report).code, 0);
    let delayed = dsn(
        &to,
        "dmarc@example.net",
        "delayed",
        "4.4.7",
        "451 4.4.7 Delivery time expired",
        "d1",
    );
    assert_eq!(ingest(&s, &env, &to, &delayed).code, 0);
    let auto = format!(
        "From: dmarc@example.net\r\nTo: {to}\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nBack Monday.\r\n"
    );
    let out = ingest(&s, &env, &to, &auto);
    assert!(out.ok().contains("auto-reply"), "{}", out.stdout);
    assert_eq!(status(&s, "dmarc@example.net").0, "active");
    assert_alert(&s, "5.7.26");
}

/// A complaint (an ARF report quoting our List-Unsubscribe) unsubscribes at
/// once; `unbounce` does not bring a complainer back (nor does a sign-up:
/// web::signup::removed_and_bounced_addresses_get_no_confirmation_mail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_unsubscribes_and_stays() {
    let server = SmtpServer::start().await;
    let s = sent(&server, &["ada@example.org"], &[DATE]).await;
    let env = env(&server);
    let mail = server.accepted().remove(0);
    let text = String::from_utf8_lossy(&mail.data).into_owned();
    let unsubscribe = text
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe:"))
        .unwrap()
        .to_string();
    let message_id = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .unwrap()
        .to_string();
    let arf = format!(
        "From: fbl@isp.example\r\nTo: abuse@news.example.org\r\nSubject: complaint\r\nMessage-ID: <arf1@isp.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n\
         --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp/1.0\r\nVersion: 1\r\n\r\n\
         --b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: Paperpost <digest@news.example.org>\r\n{message_id}\r\n{unsubscribe}\r\n--b--\r\n"
    );
    let out = ingest(&s, &env, "abuse@news.example.org", &arf);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        status(&s, "ada@example.org"),
        ("unsubscribed".into(), "complaint".into())
    );
    assert_eq!(reports(&s)[0]["matched_by"], "link-token");
    s.run(&["subscribers", "unbounce", "ada@example.org"]).ok();
    assert_eq!(status(&s, "ada@example.org").1, "complaint");
    let st = s.run(&["status"]);
    assert!(
        st.ok()
            .contains("Reports for 2024-03-11: complaint 1 (1 sent; complaint rate 100.00%)"),
        "{}",
        st.stdout
    );
    // /metrics (on its own listener) counts the reports and the rate.
    let serve_env = [
        ("PAPERPOST__LOG__LEVEL".to_string(), "info".to_string()),
        (
            "PAPERPOST__HTTP__BIND".to_string(),
            "127.0.0.1:0".to_string(),
        ),
    ];
    let mut web = crate::support::daemon::TestDaemon::spawn(&s, &serve_env, &["serve"]);
    let line = web.wait_log("metrics endpoint listening addr=").await;
    let addr = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let metrics = tokio::task::spawn_blocking(move || {
        crate::support::http::request(&addr, "GET", "/metrics", &[], b"").unwrap()
    })
    .await
    .unwrap()
    .body;
    web.stop().await;
    assert!(
        metrics.contains("paperpost_bounce_reports{source=\"mail\",kind=\"complaint\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("paperpost_last_edition_complaint_rate 1.0"),
        "{metrics}"
    );
}

/// A relay that accepts everything and bounces it later with one diagnostic
/// suppresses nobody: from the tenth recipient domain the guard takes the
/// window's suppressions back, and its alert outlives accepted messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_bouncing_everyone_later_suppresses_nobody() {
    let server = SmtpServer::start().await;
    let emails: Vec<String> = (0..10).map(|i| format!("r{i}@d{i}.example.org")).collect();
    let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
    let s = sent(&server, &refs, &[DATE]).await;
    let env = env(&server);
    for (i, e) in emails.iter().enumerate() {
        let to = verp_of(&server, e).remove(0);
        let diag = format!("550 5.1.1 <{e}>: Recipient address rejected: relay q{i}77 says no");
        let out = ingest(
            &s,
            &env,
            &to,
            &dsn(&to, e, "failed", "5.1.1", &diag, &format!("g{i}")),
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    for e in &emails {
        assert_eq!(status(&s, e).0, "active", "{e}");
    }
    assert_alert(&s, "relay");
    // Another edition goes out and is accepted: the alert stays.
    let papers = fixture("daily_papers-2024-03-11.json");
    s.run(&[
        "papers",
        "import",
        papers.to_str().unwrap(),
        "--date",
        "2024-03-12",
    ])
    .ok();
    let s = tokio::task::spawn_blocking(move || {
        s.run_env(&env, &["send", "--date", "2024-03-12"]).ok();
        s
    })
    .await
    .unwrap();
    assert_alert(&s, "relay");
}

/// A relay that refuses the VERP sender (5xx to MAIL FROM) pauses sending
/// with an alert and spends no attempt: once it accepts, everyone is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refusing_the_verp_sender_spends_no_attempts() {
    let server = SmtpServer::start().await;
    server.refuse_mail(6, 553, "5.7.1 Sender address rejected: not owned by user");
    let mut env = env(&server);
    env.push(("PAPERPOST__MAIL__RETRY__MAX_ATTEMPTS".into(), "2".into()));
    let s = Sandbox::with_sample_papers();
    for i in 0..3 {
        s.run(&["subscribers", "add", &format!("r{i}@example.org")])
            .ok();
    }
    let out = tokio::task::spawn_blocking(move || {
        let out = s.run_env(&env, &["send", "--date", DATE]);
        (out, s)
    })
    .await
    .unwrap();
    let (out, s) = out;
    out.ok();
    assert!(
        out.stderr.contains("refuses our envelope sender"),
        "{}",
        out.stderr
    );
    assert_eq!(server.accepted().len(), 3, "everyone sent once it accepts");
    let rows = crate::support::child::deliveries(&s);
    assert!(rows.values().all(|r| r["status"] == "sent"), "{rows:?}");
}

/// The upgrade to reports: a database of the previous release, with
/// subscribers, deliveries and link uses, keeps every row, passes SQLite's
/// integrity check, and takes 'complaint' as who ended a subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_keeps_every_row_and_allows_complaints() {
    if crate::support::on_postgres("SQLite's schema edit for a database made by release 9") {
        return;
    }
    let s = Sandbox::new();
    crate::support::database_at_version(&s, 9).await;
    let pool = s.pool_unmigrated().await;
    let now = 1_700_000_000_000i64;
    let keys = paperpost::security::Keys::from_bytes(crate::support::SECRET.as_bytes());
    crate::on_db!(&pool, |p| sqlx::query(p.sql("INSERT INTO editions (edition_date, started_at, started_by) VALUES ('2024-03-11', $1, 'send')"))
        .bind(now)
        .execute(p)
        .await.map(|r| r.rows_affected()))
        .unwrap();
    for i in 0..50 {
        crate::on_db!(&pool, |p| sqlx::query(p.sql("INSERT INTO subscribers (uuid, email, status, source, token_hash, created_at, updated_at) \
             VALUES ($1, $2, 'active', 'cli', $3, $4, $5)"))
        .bind(format!("u{i}"))
        .bind(format!("r{i}@example.org"))
        .bind(keys.subscriber_token_hash(&format!("u{i}")))
        .bind(now)
        .bind(now)
        .execute(p)
        .await.map(|r| r.rows_affected()))
        .unwrap();
        crate::on_db!(&pool, |p| sqlx::query(p.sql("INSERT INTO deliveries (subscriber_id, edition_date, status, attempts, next_attempt_at, created_at, updated_at) \
             VALUES ($1, '2024-03-11', 'sent', 1, $2, $3, $4)"))
        .bind(i + 1)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(p)
        .await.map(|r| r.rows_affected()))
        .unwrap();
        crate::on_db!(&pool, |p| sqlx::query(p.sql(
            "INSERT INTO token_events (subscriber_id, kind, at) VALUES ($1, 'unsubscribe', $2)"
        ))
        .bind(i + 1)
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
    }
    pool.close().await;
    s.run(&["status"]).ok();
    let pool = s.pool_unmigrated().await;
    for table in ["subscribers", "deliveries", "token_events"] {
        let n: i64 = crate::on_db!(&pool, |p| sqlx::query_scalar(
            p.sql(&format!("SELECT count(*) FROM {table}"))
        )
        .fetch_one(p)
        .await)
        .unwrap();
        assert_eq!(n, 50, "{table}");
    }
    let check: String = crate::on_db!(&pool, |p| sqlx::query_scalar(
        p.sql("PRAGMA integrity_check")
    )
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(check, "ok");
    crate::on_db!(&pool, |p| sqlx::query(p.sql(
        "UPDATE subscribers SET status = 'unsubscribed', unsubscribed_by = 'complaint' WHERE id = 1"
    ))
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let refused = crate::on_db!(&pool, |p| sqlx::query(
        p.sql("UPDATE subscribers SET unsubscribed_by = 'nonsense' WHERE id = 2")
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected()));
    assert!(refused.is_err(), "the CHECK still holds for anything else");
}

/// The guard's second rule: hard reports for more than `guard_share` of an
/// edition's messages (20 at least) are the relay's doing, even from one
/// domain with diagnostics that all differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hard_bounces_for_one_edition_is_taken_back() {
    let server = SmtpServer::start().await;
    let emails: Vec<String> = (0..25).map(|i| format!("r{i}@example.org")).collect();
    let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
    let s = sent(&server, &refs, &[DATE]).await;
    let env = env(&server);
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
    ];
    for (i, e) in emails.iter().take(20).enumerate() {
        let to = verp_of(&server, e).remove(0);
        let diag = format!(
            "550 5.1.1 mailbox {} {} unknown",
            words[i % 7],
            words[i / 7]
        );
        let out = ingest(
            &s,
            &env,
            &to,
            &dsn(&to, e, "failed", "5.1.1", &diag, &format!("f{i}")),
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        if i == 18 {
            assert_eq!(status(&s, &emails[0]).0, "bounced", "19 of 25: not yet");
        }
    }
    for e in &emails {
        assert_eq!(status(&s, e).0, "active", "{e}");
    }
    assert_alert(&s, "edition's messages");
}

/// Soft bounces older than `soft_window` do not count; after `unbounce`,
/// the reports that suppressed someone do not suppress them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_bounces_age_out_and_unbounce_starts_afresh() {
    let server = SmtpServer::start().await;
    let dates = ["2024-03-11", "2024-03-12", "2024-03-13", "2024-03-14"];
    let s = sent(&server, &["old@example.org", "back@example.org"], &dates).await;
    let env = env(&server);
    let soft = |who: &str, i: usize, to: &str| {
        dsn(
            to,
            who,
            "failed",
            "4.2.2",
            "452 4.2.2 Mailbox full",
            &format!("{who}{i}"),
        )
    };
    let old = verp_of(&server, "old@example.org");
    for (i, to) in old.iter().take(2).enumerate() {
        assert_eq!(
            ingest(&s, &env, to, &soft("old@example.org", i, to)).code,
            0
        );
    }
    // Twenty days pass for those two.
    let pool = s.pool().await;
    crate::on_db!(&pool, |p| sqlx::query(
        p.sql("UPDATE bounces SET occurred_at = occurred_at - 20 * 86400000")
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    assert_eq!(
        ingest(&s, &env, &old[2], &soft("old@example.org", 2, &old[2])).code,
        0
    );
    assert_eq!(
        status(&s, "old@example.org").0,
        "active",
        "two of three are too old"
    );

    let back = verp_of(&server, "back@example.org");
    for (i, to) in back.iter().take(3).enumerate() {
        assert_eq!(
            ingest(&s, &env, to, &soft("back@example.org", i, to)).code,
            0
        );
    }
    assert_eq!(status(&s, "back@example.org").0, "bounced");
    s.run(&["subscribers", "unbounce", "back@example.org"]).ok();
    assert_eq!(
        ingest(&s, &env, &back[3], &soft("back@example.org", 3, &back[3])).code,
        0
    );
    assert_eq!(
        status(&s, "back@example.org").0,
        "active",
        "one new soft bounce after unbounce"
    );
}
