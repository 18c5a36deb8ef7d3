//! The CI Postfix (`.ci/postfix.sh`): where it listens, the Maildir it
//! delivers example.org into, and whether its queue has drained.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// A Postfix on loopback, from PAPERPOST_POSTFIX_SMTP and
/// PAPERPOST_POSTFIX_MAILDIR.
pub struct Postfix {
    pub host: String,
    pub port: u16,
    pub maildir: PathBuf,
}

impl Postfix {
    /// The Postfix `.ci/postfix.sh` started (with chromium and chromedriver
    /// too when `browser`); `None` with a message when something is
    /// missing, except under CI, where that fails the test.
    pub fn require(browser: bool) -> Option<Self> {
        let smtp = std::env::var("PAPERPOST_POSTFIX_SMTP").ok();
        let maildir = std::env::var("PAPERPOST_POSTFIX_MAILDIR").ok();
        let browser_ok = !browser
            || (Path::new("/usr/bin/chromium").exists()
                && Path::new("/usr/bin/chromedriver").exists());
        match (smtp, maildir, browser_ok) {
            (Some(smtp), Some(dir), true) => {
                let (host, port) = smtp.rsplit_once(':').expect("HOST:PORT");
                Some(Postfix {
                    host: host.into(),
                    port: port.parse().expect("a port"),
                    maildir: dir.into(),
                })
            }
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must provide Postfix{} (see .ci/run and .ci/postfix.sh)",
                    if browser {
                        ", chromium and chromedriver"
                    } else {
                        ""
                    }
                );
                eprintln!("SKIPPED: needs Postfix (.ci/postfix.sh) and, for clicks, chromium");
                None
            }
        }
    }

    /// The settings that send through it, without TLS.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("PAPERPOST__MAIL__TRANSPORT", "smtp".to_string()),
            ("PAPERPOST__MAIL__SMTP__HOST", self.host.clone()),
            ("PAPERPOST__MAIL__SMTP__PORT", self.port.to_string()),
            ("PAPERPOST__MAIL__SMTP__TLS", "none".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// True when Postfix holds no mail (everything delivered or bounced).
    pub fn queue_empty() -> bool {
        std::process::Command::new("postqueue")
            .arg("-j")
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
    }

    /// Waits (30 s at most) until `done` holds and the queue is empty, so
    /// that a duplicate in flight would have landed too.
    pub fn wait_drained(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(done() && Self::queue_empty()) {
            assert!(Instant::now() < deadline, "Postfix: {what} not within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
