//! Sending throughput and memory: `cargo bench --bench send`.
//!
//! Needs Postfix's `smtp-sink` and `smtp-source` (Debian's postfix package;
//! `.ci/postfix.sh` installs it). Starts smtp-sink on a loopback port, counting
//! the messages it accepts, then in the same run:
//!   1. two ceilings over the same number of connections (4), with messages
//!      of a digest's size: smtp-source, which does not pipeline, and a
//!      replay of pre-rendered digests with PIPELINING as paperpost sends
//!      (MAIL, RCPT and DATA in one write);
//!   2. the release `paperpost send` of a 20-paper edition to 20,000
//!      subscribers into the same sink: messages the sink accepted per
//!      second (not rows `send` finished: a failed message is not
//!      throughput), as a share of each ceiling, and its peak resident memory;
//!   3. with a PostgreSQL server (PAPERPOST_TEST_POSTGRES, as `.ci/postgres.sh`
//!      prints), the send on PostgreSQL alternated twice with SQLite, and
//!      once with mail.concurrency 16;
//!   4. the send again for 10,000 and 100,000 subscribers (and 1,000,000 with
//!      PAPERPOST_BENCH_FULL=1) to show memory does not grow with the list
//!      (targets: under 64 MB at 100,000; less than 1.5x from 10,000 to 1,000,000).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

const SESSIONS: u16 = 4;

mod support;

use support::{Sink, must, replay_pipelined, wait_rss, which};

fn paperpost(dir: &Path, port: u16) -> Command {
    support::paperpost(dir, port, SESSIONS)
}

/// A database with a 20-paper edition for 2024-03-11 and `n` subscribers.
fn prepare(dir: &Path, port: u16, n: usize) {
    support::prepare(dir, "2024-03-11", n, || paperpost(dir, port));
}

/// Runs `paperpost send`; returns (messages the sink accepted per second,
/// peak RSS MiB). Fails unless the sink accepted exactly `n` messages.
fn send(dir: &Path, sink: &Sink, n: usize) -> (f64, f64) {
    send_with(dir, sink, n, &[])
}

/// `send` with `env` set (the DKIM keys).
fn send_with(dir: &Path, sink: &Sink, n: usize, env: &[(String, String)]) -> (f64, f64) {
    let before = sink.accepted();
    let start = Instant::now();
    let child = paperpost(dir, sink.port)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["send", "--date", "2024-03-11"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (ok, rss) = wait_rss(child);
    let secs = start.elapsed().as_secs_f64();
    let accepted = sink.accepted() - before;
    assert!(ok, "paperpost send failed");
    assert_eq!(
        accepted, n as u64,
        "the sink accepted {accepted} of {n} messages"
    );
    (accepted as f64 / secs, rss as f64 / 1024.0)
}

/// `k` personalized digests as `send` would write them, for the replay.
fn rendered(dir: &Path, port: u16, k: usize) -> Vec<Vec<u8>> {
    (0..k)
        .map(|i| {
            must(paperpost(dir, port).args([
                "preview",
                "--date",
                "2024-03-11",
                "--subscriber",
                &format!("reader{i}@example.org"),
                "--format",
                "eml",
            ]))
            .into_bytes()
        })
        .collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let (Some(sink), Some(source)) = (which("smtp-sink"), which("smtp-source")) else {
        println!(
            "send: SKIPPED: needs Postfix's smtp-sink and smtp-source (bash .ci/postfix.sh installs them)"
        );
        return;
    };
    let sink = Sink::start(&sink);
    let port = sink.port;

    let n = if quick { 500 } else { 20_000 };
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), port, n);
    let digests = rendered(dir.path(), port, 8);
    let size = digests.iter().map(Vec::len).sum::<usize>() / digests.len();

    let before = sink.accepted();
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
    let plain = n as f64 / start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sink.accepted() - before, n as u64, "smtp-source's messages");
    println!(
        "ceiling, smtp-source (no pipelining): {n} messages of {:.1} KB over {SESSIONS} sessions: {plain:.0} messages/s",
        size as f64 / 1024.0
    );
    let before = sink.accepted();
    let piped = replay_pipelined(port, SESSIONS, n, &digests);
    assert_eq!(sink.accepted() - before, n as u64, "the replay's messages");
    println!(
        "ceiling, pipelined replay of {} rendered digests: {n} messages over {SESSIONS} sessions: {piped:.0} messages/s",
        digests.len()
    );

    let (rate, rss) = send(dir.path(), &sink, n);
    println!(
        "paperpost send: {n} personalized 20-paper digests accepted by the sink over {SESSIONS} connections: \
         {rate:.0} messages/s ({:.0}% of smtp-source, {:.0}% of the pipelined replay), peak RSS {rss:.1} MiB",
        100.0 * rate / plain,
        100.0 * rate / piped
    );

    signing(port, &sink, n, quick);
    postgres(port, &sink, n);

    if !quick {
        let mut sizes = vec![10_000, 100_000];
        if std::env::var_os("PAPERPOST_BENCH_FULL").is_some() {
            sizes.push(1_000_000);
        }
        let mut first = None;
        for n in sizes {
            let dir = tempfile::tempdir().unwrap();
            prepare(dir.path(), port, n);
            let (rate, rss) = send(dir.path(), &sink, n);
            let base = *first.get_or_insert(rss);
            println!(
                "memory: {n:>9} subscribers: peak RSS {rss:.1} MiB ({:.2}x of 10,000), {rate:.0} messages/s",
                rss / base
            );
        }
    }
}

/// The same send on PostgreSQL (the server `.ci/postgres.sh` starts, or
/// PAPERPOST_BENCH_POSTGRES), alternated twice with SQLite, each on a fresh
/// database: messages/s of each and the ratio.
fn postgres(port: u16, sink: &Sink, n: usize) {
    if support::PgDb::create().is_none() {
        println!("postgres: SKIPPED: set PAPERPOST_TEST_POSTGRES (bash .ci/postgres.sh prints it)");
        return;
    }
    for round in 1..=2 {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), port, n);
        let (sqlite, _) = send(dir.path(), sink, n);
        let db = support::PgDb::create().unwrap();
        let env = [("PAPERPOST__DATABASE__URL".to_string(), db.url.clone())];
        let dir = tempfile::tempdir().unwrap();
        support::prepare(dir.path(), "2024-03-11", n, || {
            let mut c = paperpost(dir.path(), port);
            c.envs(env.iter().map(|(k, v)| (k, v)));
            c
        });
        let wal = db.value("SELECT pg_current_wal_lsn()");
        let (pg, rss) = send_with(dir.path(), sink, n, &env);
        let wal = db.value(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal}')"
        ));
        println!(
            "postgres, round {round}: {n} digests: SQLite {sqlite:.0} messages/s, PostgreSQL \
             {pg:.0} messages/s ({:.2}x), peak RSS {rss:.1} MiB",
            pg / sqlite
        );
        if round == 1 {
            bloat(&db, n, wal.parse::<f64>().unwrap_or(0.0));
        }
    }
    // Each worker waits a round trip for its last outcome before the next
    // body: on a database server, more workers make up for it.
    let db = support::PgDb::create().unwrap();
    let env = [
        ("PAPERPOST__DATABASE__URL".to_string(), db.url.clone()),
        ("PAPERPOST__MAIL__CONCURRENCY".to_string(), "16".to_string()),
    ];
    let dir = tempfile::tempdir().unwrap();
    support::prepare(dir.path(), "2024-03-11", n, || {
        let mut c = paperpost(dir.path(), port);
        c.envs(env.iter().map(|(k, v)| (k, v)));
        c
    });
    let (pg, _) = send_with(dir.path(), sink, n, &env);
    println!("postgres, mail.concurrency 16: {pg:.0} messages/s");
}

/// What the send left behind on PostgreSQL: WAL written per message (the
/// whole server's, idle but for the send), and the `deliveries` table's dead
/// row versions and size before a vacuum and after one.
fn bloat(db: &support::PgDb, n: usize, wal: f64) {
    let dead = || {
        db.value(
            "SELECT n_dead_tup || ' dead, ' || n_live_tup || ' live row versions, ' || \
             pg_size_pretty(pg_total_relation_size('deliveries')) || ' with its indexes' \
             FROM pg_stat_user_tables WHERE relname = 'deliveries'",
        )
    };
    println!(
        "postgres: WAL {:.0} bytes per message; deliveries after the send: {}",
        wal / n as f64,
        dead()
    );
    db.value("VACUUM deliveries");
    println!("postgres: deliveries after VACUUM: {}", dead());
}

/// The DKIM settings for `keys` (selector, algorithm, fixture file).
fn dkim_env(keys: &[(&str, &str, &str)]) -> Vec<(String, String)> {
    let fixture = |f: &str| format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"));
    let join = |f: &dyn Fn(&(&str, &str, &str)) -> String| {
        keys.iter().map(f).collect::<Vec<_>>().join(", ")
    };
    vec![
        (
            "PAPERPOST__MAIL__FROM".into(),
            "Paperpost <digest@news.example.org>".into(),
        ),
        (
            "PAPERPOST__MAIL__DKIM__SELECTOR".into(),
            join(&|k| k.0.to_string()),
        ),
        (
            "PAPERPOST__MAIL__DKIM__ALGORITHM".into(),
            join(&|k| k.1.to_string()),
        ),
        (
            "PAPERPOST__MAIL__DKIM__KEY_FILE".into(),
            join(&|k| fixture(k.2)),
        ),
    ]
}

/// Unsigned (without and with a signed VERP envelope sender), RSA-2048-signed
/// and dual-signed (RSA and Ed25519) sends of the same edition, alternated twice, then the signer's own rate on one core
/// beside `openssl speed`'s.
fn signing(port: u16, sink: &Sink, n: usize, quick: bool) {
    let rsa = [("pp2026r", "rsa", "dkim-rsa.pem")];
    let dual = [
        ("pp2026r", "rsa", "dkim-rsa.pem"),
        ("pp2026e", "ed25519", "dkim-ed25519.key"),
    ];
    let verp = vec![(
        "PAPERPOST__MAIL__BOUNCE__VERP_DOMAIN".to_string(),
        "bounces.example.org".to_string(),
    )];
    let runs: [(&str, Vec<(String, String)>); 4] = [
        ("unsigned", vec![]),
        ("unsigned, VERP", verp),
        ("RSA-2048", dkim_env(&rsa)),
        ("RSA + Ed25519", dkim_env(&dual)),
    ];
    let mut rates = vec![Vec::new(); runs.len()];
    for _ in 0..2 {
        for (i, (_, env)) in runs.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            prepare(dir.path(), port, n);
            rates[i].push(send_with(dir.path(), sink, n, env));
        }
    }
    let unsigned: f64 = rates[0].iter().map(|r| r.0).sum::<f64>() / 2.0;
    for ((name, _), r) in runs.iter().zip(&rates) {
        let mean = r.iter().map(|r| r.0).sum::<f64>() / 2.0;
        let rss = r.iter().map(|r| r.1).fold(0.0, f64::max);
        println!(
            "signing: {name:<14} {n} messages: {:.0} and {:.0} messages/s ({:.2}x unsigned), peak RSS {rss:.1} MiB",
            r[0].0,
            r[1].0,
            mean / unsigned
        );
    }
    signer_rate(quick);
}

/// Signatures per second on one core: paperpost's RSA-2048 signer over a
/// digest-sized message, and `openssl speed rsa2048` when installed.
fn signer_rate(quick: bool) {
    let fixture = |f: &str| format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"));
    let settings = paperpost::config::DkimSettings {
        selector: "pp2026r".into(),
        domain: None,
        key_file: fixture("dkim-rsa.pem").into(),
        algorithm: "rsa".into(),
    };
    let dkim = paperpost::digest::dkim::Dkim::from_settings(&settings, "news.example.org")
        .unwrap()
        .unwrap();
    let body = "x".repeat(60) + "\r\n";
    let message = format!(
        "From: a@news.example.org\r\nTo: b@example.org\r\nSubject: s\r\n\r\n{}",
        body.repeat(500)
    );
    let k = if quick { 50 } else { 2_000 };
    let start = Instant::now();
    for _ in 0..k {
        dkim.sign(message.as_bytes()).unwrap();
    }
    let ours = k as f64 / start.elapsed().as_secs_f64();
    let openssl = Command::new("openssl")
        .args(["speed", "-seconds", "2", "rsa2048"])
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text
                .lines()
                .find(|l| l.starts_with("rsa 2048") || l.contains("rsa  2048"))?
                .to_string();
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields
                .get(fields.len().checked_sub(2)?)
                .map(|s| s.to_string())
        });
    println!(
        "signer: RSA-2048 over a 30 KB message on one core: {ours:.0} signatures/s; openssl speed rsa2048: {} sign/s",
        openssl.as_deref().unwrap_or("(openssl not installed)")
    );
}
