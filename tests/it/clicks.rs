//! A subscriber's clicks in a real browser, on links from mail that went
//! through Postfix: headless Chromium, driven over WebDriver by Debian's
//! chromedriver, against `paperpost serve` on loopback while editions are sent
//! with `paperpost send`.
//!
//! - a preferences change (max papers) that the next digest reflects;
//! - the unsubscribe link, after which the next edition skips the reader;
//! - subscribe on the form → confirmation mail → confirm click → the next
//!   edition reaches the new subscriber.
//!
//! Needs chromium, chromedriver and Postfix (installed by .ci/run); without
//! them the test is skipped with a message, except under CI, where it fails.

use crate::support;

use crate::support::{
    Sandbox,
    browser::{Browser, link_in, nth_mail, tools},
    daemon::TestDaemon,
    http,
};
use mail_parser::MessageParser;
use serde_json::Value;

#[test]
fn a_reader_changes_preferences_unsubscribes_and_a_newcomer_subscribes_in_a_browser() {
    let Some(postfix) = tools() else {
        return;
    };
    let maildir = postfix.maildir.clone();
    let s = Sandbox::with_sample_papers();
    let id = format!("{:x}", chrono::Utc::now().timestamp_micros());
    let reader = format!("click{id}-reader@example.org");
    let newbie = format!("click{id}-new@example.org");
    s.run(&["subscribers", "add", &reader, "--max-papers", "5"])
        .ok();
    let web = format!("127.0.0.1:{}", http::free_port());
    let mut env = postfix.env();
    env.push(("PAPERPOST__HTTP__BIND".into(), web.clone()));
    env.push((
        "PAPERPOST__HTTP__PUBLIC_URL".into(),
        format!("http://{web}"),
    ));
    let sample = support::fixture("daily_papers-2024-03-11.json");
    let edition = |date: &str| {
        s.run(&["papers", "import", sample.to_str().unwrap(), "--date", date])
            .ok();
        s.run_env(&env, &["send", "--date", date]).ok().to_string()
    };
    let papers_in = |raw: &[u8]| {
        let m = MessageParser::default().parse(raw).unwrap();
        m.body_text(0)
            .unwrap()
            .matches("https://huggingface.co/papers/")
            .count()
    };

    assert!(edition("2024-03-11").contains("1 sent"));
    let first = nth_mail(&maildir, &reader, 1);
    assert_eq!(papers_in(&first), 5);
    let _server = TestDaemon::spawn(&s, &env, &["serve"]);
    http::wait_healthy(&web);
    let browser = Browser::start();

    // Preferences: 2 papers from now on.
    let text = MessageParser::default()
        .parse(&first)
        .unwrap()
        .body_text(0)
        .unwrap()
        .to_string();
    browser.open(&link_in(&text, "/preferences/"));
    browser.type_into("#max_papers", "2");
    browser.click("form button[type=submit]");
    browser.shows("Saved");
    assert_eq!(s.subscriber(&reader).unwrap()["max_papers"], 2);
    assert!(edition("2024-03-12").contains("1 sent"));
    let second = nth_mail(&maildir, &reader, 2);
    assert_eq!(papers_in(&second), 2, "the next digest reflects the change");

    // Unsubscribe with the link in that mail's List-Unsubscribe header.
    let m = MessageParser::default().parse(&second).unwrap();
    browser.open(&link_in(
        m.header_raw("List-Unsubscribe").unwrap(),
        "/unsubscribe/",
    ));
    browser.shows("Stop sending");
    browser.click("button[type=submit]");
    browser.shows("You are unsubscribed");
    assert_eq!(s.subscriber(&reader).unwrap()["status"], "unsubscribed");

    // A newcomer subscribes on the form and confirms from the mail.
    browser.open(&format!("http://{web}/subscribe"));
    browser.type_into("#email", &newbie);
    browser.type_into("#topics", "llm");
    browser.click("form button[type=submit]");
    browser.shows("Check your inbox");
    let confirmation = nth_mail(&maildir, &newbie, 1);
    let body = MessageParser::default()
        .parse(&confirmation)
        .unwrap()
        .body_text(0)
        .unwrap()
        .to_string();
    browser.open(&link_in(&body, "/confirm/"));
    browser.click("button[type=submit]");
    browser.shows("You are subscribed");
    assert_eq!(s.subscriber(&newbie).unwrap()["status"], "active");

    // The next edition: the newcomer gets it, the reader who left does not.
    assert!(edition("2024-03-13").contains("1 sent"));
    nth_mail(&maildir, &newbie, 2);
    let rows: Vec<Value> = serde_json::from_str(
        s.run(&["deliveries", "--date", "2024-03-13", "--json"])
            .ok(),
    )
    .unwrap();
    let to: Vec<&str> = rows.iter().map(|r| r["email"].as_str().unwrap()).collect();
    assert_eq!(to, vec![newbie.as_str()], "the edition's audience");
}
