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

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mail_parser::MessageParser;
use serde_json::{Value, json};
use support::{Sandbox, http};

fn tools() -> Option<(String, u16, PathBuf)> {
    let smtp = std::env::var("PAPERPOST_POSTFIX_SMTP").ok();
    let maildir = std::env::var("PAPERPOST_POSTFIX_MAILDIR").ok();
    let have =
        Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists();
    match (smtp, maildir, have) {
        (Some(smtp), Some(dir), true) => {
            let (host, port) = smtp.rsplit_once(':').expect("HOST:PORT");
            Some((host.into(), port.parse().unwrap(), dir.into()))
        }
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide chromium, chromedriver and Postfix (see .ci/run)"
            );
            eprintln!("SKIPPED: needs chromium, chromedriver and Postfix (.ci/postfix.sh)");
            None
        }
    }
}

/// Polls `f` every 100 ms for up to 30 s.
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The messages delivered to `to`, oldest first.
fn mail_to(maildir: &Path, to: &str) -> Vec<Vec<u8>> {
    let mut found: Vec<(std::time::SystemTime, Vec<u8>)> = Vec::new();
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(maildir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(raw) = std::fs::read(e.path()) else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..raw.len().min(4096)]).to_string();
            if head
                .lines()
                .any(|l| l.trim() == format!("Delivered-To: {to}"))
            {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                found.push((t, raw));
            }
        }
    }
    found.sort_by_key(|(t, _)| *t);
    found.into_iter().map(|(_, m)| m).collect()
}

/// Waits for the `n`th message to `to` and returns it.
fn nth_mail(maildir: &Path, to: &str, n: usize) -> Vec<u8> {
    wait(&format!("message {n} to {to}"), || {
        mail_to(maildir, to).into_iter().nth(n - 1)
    })
}

fn link_in(text: &str, route: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c == '<' || c == '>')
        .find(|w| w.starts_with("http") && w.contains(route))
        .unwrap_or_else(|| panic!("no {route} link in:\n{text}"))
        .to_string()
}

/// One Chromium session over WebDriver.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        let port = http::free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        wait("chromedriver", || {
            http::request(&addr, "GET", "/status", &[], b"")
                .ok()
                .filter(|r| r.status == 200)
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let v = b.call("POST", "/session", caps);
        b.session = v["sessionId"].as_str().expect("a session").to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = http::request(
            &self.addr,
            method,
            path,
            &[("Content-Type", "application/json")][..usize::from(!body.is_empty())],
            body.as_bytes(),
        )
        .expect("chromedriver answers");
        let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        v["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            json!({"url": url}),
        );
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            &format!("/session/{}/element", self.session),
            json!({"using": "css selector", "value": css}),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &format!("/session/{}/element/{e}/click", self.session),
            json!({}),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &format!("/session/{}/element/{e}/clear", self.session),
            json!({}),
        );
        self.call(
            "POST",
            &format!("/session/{}/element/{e}/value", self.session),
            json!({"text": text}),
        );
    }

    fn source(&self) -> String {
        let v = self.call(
            "GET",
            &format!("/session/{}/source", self.session),
            Value::Null,
        );
        v.as_str().unwrap_or_default().to_string()
    }

    /// Waits until the page shows `text`.
    fn shows(&self, text: &str) {
        wait(&format!("a page showing {text:?}"), || {
            self.source().contains(text).then_some(())
        });
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http::request(
                &self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                &[],
                b"",
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_reader_changes_preferences_unsubscribes_and_a_newcomer_subscribes_in_a_browser() {
    let Some((host, port, maildir)) = tools() else {
        return;
    };
    let s = Sandbox::with_sample_papers();
    let id = format!("{:x}", chrono::Utc::now().timestamp_micros());
    let reader = format!("click{id}-reader@example.org");
    let newbie = format!("click{id}-new@example.org");
    s.run(&["subscribers", "add", &reader, "--max-papers", "5"])
        .ok();
    let web = format!("127.0.0.1:{}", http::free_port());
    let env = [
        ("PAPERPOST__MAIL__TRANSPORT", "smtp".to_string()),
        ("PAPERPOST__MAIL__SMTP__HOST", host),
        ("PAPERPOST__MAIL__SMTP__PORT", port.to_string()),
        ("PAPERPOST__MAIL__SMTP__TLS", "none".into()),
        ("PAPERPOST__HTTP__BIND", web.clone()),
        ("PAPERPOST__HTTP__PUBLIC_URL", format!("http://{web}")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
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
    let _server = Server(
        s.command()
            .envs(env.iter().copied())
            .arg("serve")
            .spawn()
            .unwrap(),
    );
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
