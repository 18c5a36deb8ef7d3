//! Headless Chromium over WebDriver (Debian's chromedriver), and reading
//! the Maildir Postfix delivers to: for the click-through and end-to-end tests.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::http;

/// Postfix, chromium and chromedriver, or `None` (see `Postfix::require`).
pub fn tools() -> Option<super::postfix::Postfix> {
    super::postfix::Postfix::require(true)
}

/// Polls `f` every 100 ms for up to 30 s.
pub fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
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
pub fn mail_to(maildir: &Path, to: &str) -> Vec<Vec<u8>> {
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
pub fn nth_mail(maildir: &Path, to: &str, n: usize) -> Vec<u8> {
    wait(&format!("message {n} to {to}"), || {
        mail_to(maildir, to).into_iter().nth(n - 1)
    })
}

pub fn link_in(text: &str, route: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c == '<' || c == '>')
        .find(|w| w.starts_with("http") && w.contains(route))
        .unwrap_or_else(|| panic!("no {route} link in:\n{text}"))
        .to_string()
}

/// One Chromium session over WebDriver.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Self {
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

    pub fn call(&self, method: &str, path: &str, body: Value) -> Value {
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

    pub fn open(&self, url: &str) {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            json!({"url": url}),
        );
    }

    pub fn element(&self, css: &str) -> String {
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

    pub fn click(&self, css: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &format!("/session/{}/element/{e}/click", self.session),
            json!({}),
        );
    }

    pub fn type_into(&self, css: &str, text: &str) {
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

    pub fn source(&self) -> String {
        let v = self.call(
            "GET",
            &format!("/session/{}/source", self.session),
            Value::Null,
        );
        v.as_str().unwrap_or_default().to_string()
    }

    /// Waits until the page shows `text`.
    pub fn shows(&self, text: &str) {
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
