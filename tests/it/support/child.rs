//! Running the real binary as a child process, as the delivery and lock
//! tests do.

use std::{collections::HashMap, process::Stdio, time::Duration};

use tokio::process::Command;

use super::{Run, Sandbox};

/// The date of the sample papers.
pub const DATE: &str = "2024-03-11";

pub fn smtp_env(port: u16, concurrency: u16) -> Vec<(String, String)> {
    [
        ("PAPERPOST__MAIL__TRANSPORT", "smtp".to_string()),
        ("PAPERPOST__MAIL__SMTP__HOST", "127.0.0.1".into()),
        ("PAPERPOST__MAIL__SMTP__PORT", port.to_string()),
        ("PAPERPOST__MAIL__SMTP__TLS", "none".into()),
        // Long enough that a loaded machine never times out a live server;
        // tests of stalls set their own.
        ("PAPERPOST__MAIL__SMTP__TIMEOUT", "10s".into()),
        ("PAPERPOST__MAIL__RETRY__BASE_DELAY", "100ms".into()),
        ("PAPERPOST__MAIL__RETRY__MAX_DELAY", "300ms".into()),
        ("PAPERPOST__MAIL__RETRY__MAX_ATTEMPTS", "5".into()),
        ("PAPERPOST__MAIL__CONCURRENCY", concurrency.to_string()),
        ("PAPERPOST__LOG__LEVEL", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Reader `i`'s address, at one of three domains in turn (as on a real
/// list, where a relay refusing everyone refuses many domains).
pub fn email(i: usize) -> String {
    let domain = ["example.org", "example.net", "example.com"][i % 3];
    format!("r{i:03}@{domain}")
}

/// A sandbox with the sample papers for DATE and `n` subscribers r000..
pub fn setup(n: usize) -> Sandbox {
    let s = Sandbox::with_sample_papers();
    let mut csv = String::from("email,name\n");
    for i in 0..n {
        csv.push_str(&format!("{},Reader {i}\n", email(i)));
    }
    let f = s.write("subs.csv", csv);
    s.run(&["subscribers", "import", f.to_str().unwrap()]).ok();
    s
}

fn command(s: &Sandbox, env: &[(String, String)], args: &[&str]) -> Command {
    let mut c = Command::from(s.command());
    c.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args);
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

pub async fn run(s: &Sandbox, env: &[(String, String)], args: &[&str]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), command(s, env, args).output())
        .await
        .expect("paperpost finished within 60 s")
        .expect("run paperpost");
    out.into()
}

pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Each delivery row of DATE, by email.
pub fn deliveries(s: &Sandbox) -> HashMap<String, serde_json::Value> {
    let out = s.run(&["deliveries", "--date", DATE, "--json"]);
    let v: Vec<serde_json::Value> = serde_json::from_str(out.ok()).unwrap();
    v.into_iter()
        .map(|d| (d["email"].as_str().unwrap().to_string(), d))
        .collect()
}

/// `env` with `key` set to `value` (replacing an earlier value).
pub fn with(mut env: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
    env
}

/// Queues `date`'s edition for every active subscriber, due now, as a fire
/// time would.
pub async fn queue_edition(s: &Sandbox, date: &str) {
    let pool = s.pool().await;
    paperpost::store::deliveries::start_edition(&pool, date.parse().unwrap(), "test", |_| 0)
        .await
        .unwrap();
    pool.close().await;
}

/// Queues `date`'s edition due in an hour: it stays queued during a test.
pub async fn queue_edition_later(s: &Sandbox, date: &str) {
    let pool = s.pool().await;
    let later = paperpost::store::now_ms() + 3_600_000;
    paperpost::store::deliveries::start_edition(&pool, date.parse().unwrap(), "test", |_| later)
        .await
        .unwrap();
    pool.close().await;
}

/// `env` with a schedule that does not fire during a test.
pub fn never_fires(env: Vec<(String, String)>) -> Vec<(String, String)> {
    with(env, "PAPERPOST__SCHEDULE__CRON", "0 0 0 1 1 * 2099")
}

/// The address a daemon logged its web endpoint listening on.
pub fn listening_addr(log: &str) -> String {
    log.split("web endpoint listening addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the listening address is logged")
        .to_string()
}
