//! The whole machine on autopilot, end to end: `paperpost run` with
//! `papers.source_url` pointing at a local HTTP server that serves the sample
//! daily_papers JSON, and a schedule a few seconds ahead. The daemon fetches
//! the papers, the edition goes through Postfix into a Maildir (each reader
//! once, with the right headers and parts), an unsubscribe link from a
//! delivered mail is clicked in headless Chromium, SIGTERM ends the daemon
//! with exit 0 within the grace period, and a restart sends nothing again.
//!
//! Needs Postfix, chromium and chromedriver (installed by .ci/run); skipped
//! without them, except under CI, where it fails.

use crate::support::{
    Sandbox,
    browser::{Browser, link_in, mail_to, tools, wait},
    daemon::TestDaemon,
    http,
    source::PapersSource,
};
use chrono::Timelike;
use mail_parser::{MessageParser, MimeHeaders};

#[test]
fn on_autopilot_the_days_papers_reach_every_reader_once_through_postfix() {
    let Some(postfix) = tools() else {
        return;
    };
    let maildir = postfix.maildir.clone();
    let source = PapersSource::start();
    let s = Sandbox::new();
    let id = format!("{:x}", chrono::Utc::now().timestamp_micros());
    let readers: Vec<String> = (0..5).map(|i| format!("e2e{id}-{i}@example.org")).collect();
    for r in &readers {
        s.run(&["subscribers", "add", r]).ok();
    }
    let web = format!("127.0.0.1:{}", http::free_port());
    // The edition fires once, a few seconds from now.
    let at = chrono::Utc::now() + chrono::Duration::seconds(8);
    let cron = format!("{} {} {} * * *", at.second(), at.minute(), at.hour());
    let mut env = postfix.env();
    env.extend(
        [
            (
                "PAPERPOST__MAIL__FROM",
                "Paperpost <digest@paperpost-ci.localdomain>".into(),
            ),
            ("PAPERPOST__PAPERS__SOURCE_URL", source.sample_url()),
            ("PAPERPOST__PAPERS__FETCH_DAYS_AGO", "0".into()),
            ("PAPERPOST__SCHEDULE__CRON", cron),
            ("PAPERPOST__HTTP__BIND", web.clone()),
            ("PAPERPOST__HTTP__PUBLIC_URL", format!("http://{web}")),
            ("PAPERPOST__LOG__LEVEL", "info".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );

    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log_blocking("fetched the day's papers");
    daemon.wait_log_blocking("edition started");
    for r in &readers {
        wait(&format!("the digest to {r}"), || {
            (mail_to(&maildir, r).len() == 1).then_some(())
        });
    }
    for r in &readers {
        let raw = mail_to(&maildir, r).remove(0);
        let m = MessageParser::default().parse(&raw).unwrap();
        assert!(
            m.subject().unwrap().contains("ShiftAddLLM"),
            "{:?}",
            m.subject()
        );
        for header in [
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "List-Id",
            "Message-ID",
        ] {
            assert!(m.header_raw(header).is_some(), "{header} missing for {r}");
        }
        let types: Vec<String> = m
            .parts
            .iter()
            .filter_map(|p| p.content_type())
            .map(|c| format!("{}/{}", c.c_type, c.subtype().unwrap_or("")))
            .collect();
        assert!(types.contains(&"text/plain".to_string()), "{types:?}");
        assert!(types.contains(&"text/html".to_string()), "{types:?}");
    }

    // The first reader unsubscribes with the link from their mail.
    let first = MessageParser::default()
        .parse(&mail_to(&maildir, &readers[0]).remove(0))
        .unwrap()
        .header_raw("List-Unsubscribe")
        .unwrap()
        .to_string();
    let browser = Browser::start();
    browser.open(&link_in(&first, "/unsubscribe/"));
    browser.shows("Stop sending");
    browser.click("button[type=submit]");
    browser.shows("You are unsubscribed");
    assert_eq!(s.subscriber(&readers[0]).unwrap()["status"], "unsubscribed");

    assert_eq!(daemon.stop_blocking().code, 0, "SIGTERM is a clean exit");

    // A restart finds the fire time handled and the papers in: nothing again.
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    daemon.wait_log_blocking("paperpost is running");
    daemon.wait_log_blocking("fire time already handled");
    assert_eq!(daemon.stop_blocking().code, 0);
    // The restart left nothing to send (every row is still sent), and
    // whatever it handed Postfix has been delivered by now.
    let today = chrono::Utc::now().date_naive().to_string();
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(s.run(&["deliveries", "--date", &today, "--json"]).ok()).unwrap();
    assert_eq!(rows.len(), readers.len());
    assert!(
        rows.iter().all(|r| r["status"] == "sent"),
        "after the restart: {rows:?}"
    );
    postfix.wait_drained("the queue", || true);
    for r in &readers {
        assert_eq!(mail_to(&maildir, r).len(), 1, "{r} got another message");
    }
}
