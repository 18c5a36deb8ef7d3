//! Sending throughput and memory: `cargo bench --bench send`.
//!
//! Needs Postfix's `smtp-sink` and `smtp-source` (Debian's postfix package;
//! `.ci/postfix.sh` installs it). Starts smtp-sink on a loopback port, then in
//! the same run:
//!   1. measures smtp-source pushing messages of the same size as a digest over
//!      the same number of connections (4): the ceiling for any sender here;
//!   2. runs the release `paperpost send` of a 20-paper edition to 20,000
//!      subscribers into the same sink and prints its rate as a share of that
//!      ceiling (target: at least 60%) and its peak resident memory;
//!   3. repeats the send for 10,000 and 100,000 subscribers (and 1,000,000 with
//!      PAPERPOST_BENCH_FULL=1) to show memory does not grow with the list
//!      (targets: under 64 MB at 100,000; less than 1.5x from 10,000 to 1,000,000).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const SESSIONS: u16 = 4;

mod support;

use support::{free_port, must, wait_rss, which};

fn paperpost(dir: &Path, port: u16) -> Command {
    support::paperpost(dir, port, SESSIONS)
}

/// A database with a 20-paper edition for 2024-03-11 and `n` subscribers.
fn prepare(dir: &Path, port: u16, n: usize) {
    support::prepare(dir, "2024-03-11", n, || paperpost(dir, port));
}

/// Runs `paperpost send`; returns (messages/s, peak RSS MiB).
fn send(dir: &Path, port: u16, n: usize) -> (f64, f64) {
    let start = Instant::now();
    let child = paperpost(dir, port)
        .args(["send", "--date", "2024-03-11"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (ok, rss) = wait_rss(child);
    let secs = start.elapsed().as_secs_f64();
    assert!(ok, "paperpost send failed");
    let status = must(paperpost(dir, port).args(["status", "--date", "2024-03-11"]));
    assert!(
        status.contains(&format!("{n:>8}")),
        "not all sent: {status}"
    );
    (n as f64 / secs, rss as f64 / 1024.0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let (Some(sink), Some(source)) = (which("smtp-sink"), which("smtp-source")) else {
        println!(
            "send: SKIPPED: needs Postfix's smtp-sink and smtp-source (bash .ci/postfix.sh installs them)"
        );
        return;
    };
    let port = free_port();
    let mut sink = Command::new(sink)
        .args(["-u", "nobody", &format!("127.0.0.1:{port}"), "1024"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let n = if quick { 500 } else { 20_000 };
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), port, n);
    // The size of a typical digest, for smtp-source.
    let eml = must(paperpost(dir.path(), port).args([
        "preview",
        "--date",
        "2024-03-11",
        "--subscriber",
        "reader1@example.org",
        "--format",
        "eml",
    ]));
    let size = eml.len();

    let start = Instant::now();
    let out = Command::new(source)
        .args([
            "-d",
            "-s",
            &SESSIONS.to_string(),
            "-l",
            &size.to_string(),
            "-m",
            &n.to_string(),
        ])
        .args([
            "-f",
            "digest@example.org",
            "-t",
            "reader@example.org",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    let baseline = n as f64 / start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "smtp-source: {n} messages of {:.1} KB over {SESSIONS} sessions: {baseline:.0} messages/s",
        size as f64 / 1024.0
    );

    let (rate, rss) = send(dir.path(), port, n);
    println!(
        "paperpost send: {n} personalized 20-paper digests over {SESSIONS} connections: {rate:.0} messages/s \
         ({:.0}% of smtp-source), peak RSS {rss:.1} MiB",
        100.0 * rate / baseline
    );

    if !quick {
        let mut sizes = vec![10_000, 100_000];
        if std::env::var_os("PAPERPOST_BENCH_FULL").is_some() {
            sizes.push(1_000_000);
        }
        let mut first = None;
        for n in sizes {
            let dir = tempfile::tempdir().unwrap();
            prepare(dir.path(), port, n);
            let (rate, rss) = send(dir.path(), port, n);
            let base = *first.get_or_insert(rss);
            println!(
                "memory: {n:>9} subscribers: peak RSS {rss:.1} MiB ({:.2}x of 10,000), {rate:.0} messages/s",
                rss / base
            );
        }
    }
    let _ = sink.kill();
    let _ = sink.wait();
}
