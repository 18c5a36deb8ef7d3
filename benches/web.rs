//! Load on the web endpoint: `cargo bench --bench web`.
//!
//! A Rust load generator on loopback (keep-alive HTTP/1.1 connections, one
//! request in flight per connection) drives `GET /unsubscribe/TOKEN` and
//! one-click `POST /unsubscribe/TOKEN` over many subscribers' tokens, and
//! prints requests/s and latency percentiles:
//!   (a) against `paperpost serve` alone, as fast as it answers
//!       (target: at least 5,000 requests/s with p99 under 50 ms);
//!   (b) at a steady 1,000 requests/s (90% GET, 10% one-click POST, each POST
//!       to a different subscriber) against `paperpost run` while it sends an
//!       edition of 20,000 to smtp-sink, compared with the same edition sent
//!       without the load (targets: p99 under 50 ms, every POST honoured, the
//!       send rate at least 90% of the rate without load). The load starts
//!       once the edition's first message has been accepted.
//!   (c) with a PostgreSQL server (PAPERPOST_TEST_POSTGRES, as `.ci/postgres.sh`
//!       prints): two `run` instances on one database, the load of (b) on the
//!       standby while the other sends the edition, against the same edition
//!       with the standby idle (the same targets, and how long after its
//!       unsubscribe any posted reader's digest was still recorded sent).
//!
//! Every request counts: the rate is of requests answered (any status) and
//! the latency percentiles are over all of them; answers other than 200 and
//! connection errors are reported beside. Each one-click POST goes to a
//! subscriber not posted before (a run stops posting when every token has
//! been used), and "honoured" is checked against every POST the load sent,
//! answered or not.
//!
//! Needs Postfix's smtp-sink for (b) (`bash .ci/postfix.sh` installs it).

mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::TryStreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const SESSIONS: u16 = 4;

fn base_cmd(dir: &Path, smtp_port: u16, web: &str) -> Command {
    let mut c = support::paperpost(dir, smtp_port, SESSIONS);
    c.env("PAPERPOST__SECURITY__SECRET", SECRET)
        .env("PAPERPOST__HTTP__BIND", web)
        .env("PAPERPOST__HTTP__PUBLIC_URL", format!("http://{web}"))
        // Every minute: the fire time just passed is caught up at start, so
        // `run` starts today's edition at once.
        .env("PAPERPOST__SCHEDULE__CRON", "0 * * * * *");
    c
}

/// Every subscriber's link token, by reading the database as the daemon would.
async fn tokens(pool: paperpost::store::Pool) -> Vec<String> {
    let keys = paperpost::security::Keys::from_bytes(SECRET.as_bytes());
    let all: Vec<_> = paperpost::store::subscribers::stream(&pool, None)
        .map_ok(|s| keys.subscriber_token(&s.uuid))
        .try_collect()
        .await
        .unwrap();
    pool.close().await;
    all
}

fn get(token: &str) -> Vec<u8> {
    format!("GET /unsubscribe/{token} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n")
        .into_bytes()
}

fn one_click(token: &str) -> Vec<u8> {
    let body = "List-Unsubscribe=One-Click";
    format!(
        "POST /unsubscribe/{token} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One request on a kept-alive connection; returns the status code.
async fn exchange(conn: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u16> {
    conn.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            return Ok(status);
        }
    }
}

#[derive(Default)]
struct Stats {
    /// Every answered request's latency, whatever its status.
    latencies_us: Vec<u32>,
    /// Answers other than 200.
    not_ok: u64,
    /// Requests that got no answer (the connection failed).
    errors: u64,
    /// The number of every request sent.
    sent: Vec<u64>,
    seconds: f64,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.not_ok += other.not_ok;
        self.errors += other.errors;
        self.sent.extend(other.sent);
    }

    fn pct(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize).max(1) - 1;
        self.latencies_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }

    /// Prints the figures; (answers/s, p99 ms, every answer a 200).
    fn line(&mut self, what: &str) -> (f64, f64, bool) {
        let rps = self.latencies_us.len() as f64 / self.seconds;
        let (p50, p99, max) = (self.pct(0.50), self.pct(0.99), self.pct(1.0));
        println!(
            "{what}: {} requests sent, {} answered in {:.1} s: {rps:.0} answers/s, p50 {p50:.2} ms, \
             p99 {p99:.2} ms, max {max:.1} ms; {} answers not 200, {} without answer",
            self.sent.len(),
            self.latencies_us.len(),
            self.seconds,
            self.not_ok,
            self.errors
        );
        (rps, p99, self.not_ok == 0 && self.errors == 0)
    }
}

/// How each connection paces its requests.
#[derive(Clone, Copy)]
enum Pace {
    /// The next request as soon as the answer is in.
    Closed,
    /// One request every `interval`; latency counts from when it was due, so
    /// a slow answer is not hidden by the requests it delayed.
    Every(Duration),
}

/// Runs `conns` connections for `length` (or until `stop`, or until `make`
/// has no more requests); request number `i` (across all connections) is
/// `make(i)`.
async fn drive(
    addr: &str,
    conns: usize,
    length: Duration,
    pace: Pace,
    stop: Arc<tokio::sync::Notify>,
    make: Arc<dyn Fn(u64) -> Option<Vec<u8>> + Send + Sync>,
) -> Stats {
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, make, counter, stop) = (
            addr.to_string(),
            make.clone(),
            counter.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut conn = TcpStream::connect(&addr).await.unwrap();
            conn.set_nodelay(true).unwrap();
            let mut buf = Vec::with_capacity(16 * 1024);
            // Spread paced connections over the interval.
            let mut due = match pace {
                Pace::Every(d) => Instant::now() + d.mul_f64(c as f64 / conns as f64),
                Pace::Closed => Instant::now(),
            };
            let stopped = stop.notified();
            tokio::pin!(stopped);
            while start.elapsed() < length {
                // When this request is due: latency counts from then.
                let at = match pace {
                    Pace::Every(d) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(due.into()) => {}
                            _ = &mut stopped => break,
                        }
                        due += d;
                        due - d
                    }
                    Pace::Closed => Instant::now(),
                };
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(req) = make(i) else { break };
                stats.sent.push(i);
                match exchange(&mut conn, &req, &mut buf).await {
                    Ok(status) => {
                        stats.latencies_us.push(at.elapsed().as_micros() as u32);
                        stats.not_ok += u64::from(status != 200);
                    }
                    Err(_) => {
                        stats.errors += 1;
                        conn = TcpStream::connect(&addr).await.unwrap();
                        conn.set_nodelay(true).unwrap();
                    }
                }
            }
            stats
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        all.merge(t.await.unwrap());
    }
    all.seconds = start.elapsed().as_secs_f64();
    all
}

fn wait_healthy(addr: &str) {
    for _ in 0..600 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{addr} did not become healthy");
}

fn stop(mut child: Child) {
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// (a): `paperpost serve` alone, 50,000 subscribers.
async fn alone(quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let web = format!("127.0.0.1:{}", support::free_port());
    let n = if quick { 2_000 } else { 50_000 };
    support::prepare(dir.path(), "2024-03-11", n, || {
        base_cmd(dir.path(), 1, &web)
    });
    let tokens = Arc::new(tokens(open(&dir.path().join("data/paperpost.db"), None).await).await);
    let server = base_cmd(dir.path(), 1, &web)
        .arg("serve")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(&web);
    let length = Duration::from_secs(if quick { 1 } else { 8 });
    let never = Arc::new(tokio::sync::Notify::new());
    let t = tokens.clone();
    let mut gets = drive(
        &web,
        32,
        length,
        Pace::Closed,
        never.clone(),
        Arc::new(move |i| Some(get(&t[(i.wrapping_mul(7919) % t.len() as u64) as usize]))),
    )
    .await;
    let (rps, p99, all_ok) = gets.line("(a) GET /unsubscribe/TOKEN, 32 connections");
    println!(
        "    target 5,000 requests/s with p99 < 50 ms, every answer 200: {}",
        verdict(rps >= 5000.0 && p99 < 50.0 && all_ok)
    );
    let t = tokens.clone();
    let mut posts = drive(
        &web,
        32,
        length,
        Pace::Closed,
        never,
        // Each token once: a repeat would only find them unsubscribed.
        Arc::new(move |i| t.get(i as usize).map(|t| one_click(t))),
    )
    .await;
    let (rps, p99, all_ok) =
        posts.line("(a) one-click POST /unsubscribe/TOKEN, 32 connections, each token once");
    println!(
        "    target 5,000 requests/s with p99 < 50 ms, every answer 200: {}",
        verdict(rps >= 5000.0 && p99 < 50.0 && all_ok)
    );
    stop(server);
}

/// What one edition run measured.
struct EditionRun {
    rate: f64,
    load: Option<Stats>,
    db: paperpost::store::Pool,
    _dir: tempfile::TempDir,
    _pg: Option<support::PgDb>,
}

/// The SQLite file at `path`, or the PostgreSQL database at `url`.
async fn open(path: &Path, url: Option<&str>) -> paperpost::store::Pool {
    let mut env = vec![(
        "PAPERPOST__DATABASE__PATH".to_string(),
        path.display().to_string(),
    )];
    if let Some(url) = url {
        env.push(("PAPERPOST__DATABASE__URL".to_string(), url.to_string()));
    }
    let settings =
        paperpost::config::Settings::load_from(None, Some(env.into_iter().collect())).unwrap();
    paperpost::store::open(&settings.database).await.unwrap()
}

/// Runs `$body` with `$p` the driver's pool of `$pool`, whichever store.
macro_rules! on_db {
    ($pool:expr, |$p:ident| $body:expr) => {{
        #[allow(unused_imports)]
        use paperpost::store::Dialect as _;
        match $pool {
            paperpost::store::Pool::Sqlite($p) => $body,
            paperpost::store::Pool::Postgres($p) => $body,
        }
    }};
}

/// Two counts (or values) one statement returns, on either store.
async fn pair(db: &paperpost::store::Pool, sql: &str) -> (i64, i64) {
    on_db!(db, |p| sqlx::query_as(p.sql(sql)).fetch_one(p).await).unwrap()
}

/// The count one statement returns, on either store.
async fn count(db: &paperpost::store::Pool, sql: &str) -> i64 {
    on_db!(db, |p| sqlx::query_scalar(p.sql(sql)).fetch_one(p).await).unwrap()
}

/// Where an edition runs: a copy of a prepared database, on SQLite one `run`
/// takes the load; on PostgreSQL a second `run`, standing by, takes it.
#[derive(Clone, Copy)]
enum Template<'a> {
    Sqlite(&'a Path),
    Postgres(&'a support::PgDb),
}

/// `paperpost run` on a copy of `template` until today's edition is
/// finished, with `load` (the tokens) driven at 1,000 requests/s.
async fn edition(template: Template<'_>, smtp: u16, load: Option<Arc<Vec<String>>>) -> EditionRun {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let db_path = dir.path().join("data/paperpost.db");
    let pg = match template {
        Template::Sqlite(t) => {
            std::fs::copy(t.join("data/paperpost.db"), &db_path).unwrap();
            None
        }
        Template::Postgres(t) => Some(t.copy()),
    };
    let url = pg.as_ref().map(|db| db.url.clone());
    let daemon = |web: &str| {
        let mut c = base_cmd(dir.path(), smtp, web);
        c.envs(url.iter().map(|u| ("PAPERPOST__DATABASE__URL", u)));
        // Each its own metrics port: two on one host.
        let metrics = format!("127.0.0.1:{}", support::free_port());
        c.env("PAPERPOST__HTTP__METRICS_BIND", metrics);
        c.arg("run").stderr(Stdio::null()).spawn().unwrap()
    };
    let web = format!("127.0.0.1:{}", support::free_port());
    let sender = daemon(&web);
    wait_healthy(&web);
    let standby = url.is_some().then(|| {
        let web = format!("127.0.0.1:{}", support::free_port());
        let child = daemon(&web);
        wait_healthy(&web);
        (child, web)
    });
    let db = open(&db_path, url.as_deref()).await;
    // The load starts with the edition: once its first message is accepted.
    let sent = "SELECT count(*) FROM deliveries WHERE status = 'sent'";
    while count(&db, sent).await == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let target = standby.as_ref().map_or(&web, |(_, web)| web);
    let stats = drive_until_sent(&db, target, load).await;
    if let Some((child, _)) = standby {
        stop(child);
    }
    stop(sender);
    let (first, last) = pair(
        &db,
        "SELECT min(sent_at), max(sent_at) FROM deliveries WHERE status = 'sent'",
    )
    .await;
    let sent = count(&db, sent).await;
    EditionRun {
        rate: sent as f64 / ((last - first).max(1) as f64 / 1000.0),
        load: stats,
        db,
        _dir: dir,
        _pg: pg,
    }
}

/// Drives `load` at `web` (if any) until every delivery of the edition in
/// `db` is finished.
async fn drive_until_sent(
    db: &paperpost::store::Pool,
    web: &str,
    load: Option<Arc<Vec<String>>>,
) -> Option<Stats> {
    let stop_load = Arc::new(tokio::sync::Notify::new());
    let load_task = load.map(|t| {
        // 20 connections, one request each every 20 ms: 1,000 requests/s.
        // Every tenth is a one-click POST to a subscriber not posted before.
        let make = Arc::new(move |i: u64| {
            if i % 10 == 9 {
                t.get((i / 10) as usize).map(|t| one_click(t))
            } else {
                Some(get(&t[(i.wrapping_mul(7919) % t.len() as u64) as usize]))
            }
        });
        let (web, stop) = (web.to_string(), stop_load.clone());
        tokio::spawn(async move {
            let pace = Pace::Every(Duration::from_millis(20));
            drive(&web, 20, Duration::from_secs(600), pace, stop, make).await
        })
    });
    let open_rows = "SELECT count(*), count(*) FILTER (WHERE status IN ('queued', 'sending')) \
                     FROM deliveries";
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (total, open_rows) = pair(db, open_rows).await;
        if total > 0 && open_rows == 0 {
            break;
        }
    }
    stop_load.notify_waiters();
    match load_task {
        Some(t) => Some(t.await.unwrap()),
        None => None,
    }
}

/// (b) and (c): the load during an edition, against the same edition
/// without it, on SQLite and then on PostgreSQL.
async fn during_an_edition(quick: bool) {
    let Some(bin) = support::which("smtp-sink") else {
        println!("(b) SKIPPED: needs Postfix's smtp-sink (bash .ci/postfix.sh installs it)");
        return;
    };
    // Stopped when dropped, even by a panic.
    let sink = support::Sink::start(&bin);
    let smtp = sink.port;
    let n = if quick { 2_000 } else { 20_000 };
    let today = chrono::Utc::now().date_naive().to_string();
    let template = tempfile::tempdir().unwrap();
    support::prepare(template.path(), &today, n, || {
        base_cmd(template.path(), smtp, "127.0.0.1:0")
    });
    let db = template.path().join("data/paperpost.db");
    let links = Arc::new(tokens(open(&db, None).await).await);
    compare("(b)", Template::Sqlite(template.path()), smtp, links).await;
    match support::PgDb::create() {
        Some(pg) => {
            let dir = tempfile::tempdir().unwrap();
            support::prepare(dir.path(), &today, n, || {
                let mut c = base_cmd(dir.path(), smtp, "127.0.0.1:0");
                c.env("PAPERPOST__DATABASE__URL", &pg.url);
                c
            });
            let links = Arc::new(tokens(open(&db, Some(&pg.url)).await).await);
            compare("(c)", Template::Postgres(&pg), smtp, links).await;
        }
        None => {
            println!("(c) SKIPPED: set PAPERPOST_TEST_POSTGRES (bash .ci/postgres.sh prints it)")
        }
    }
    drop(sink);
}

/// The edition of `template` without load and with it; prints both rates,
/// the requests' figures and whether every one-click POST was honoured.
async fn compare(what: &str, template: Template<'_>, smtp: u16, tokens: Arc<Vec<String>>) {
    let quiet = edition(template, smtp, None).await;
    let n = count(&quiet.db, "SELECT count(*) FROM deliveries").await;
    let at = match template {
        Template::Sqlite(_) => "the sender",
        Template::Postgres(_) => "the standby, beside the sender on one PostgreSQL database",
    };
    println!(
        "{what} an edition of {n} to smtp-sink without load: {:.0} messages/s",
        quiet.rate
    );
    let loaded = edition(template, smtp, Some(Arc::clone(&tokens))).await;
    let mut stats = loaded.load.unwrap();
    let share = 100.0 * loaded.rate / quiet.rate;
    println!(
        "{what} the same edition during the load: {:.0} messages/s ({share:.0}% of without)",
        loaded.rate
    );
    let (_, p99, _) = stats.line(&format!(
        "{what} requests to {at} during the edition (1,000/s planned; 90% GET, 10% one-click POST)"
    ));
    let posted: Vec<&str> = stats
        .sent
        .iter()
        .filter(|i| *i % 10 == 9)
        .map(|i| tokens[(i / 10) as usize].as_str())
        .collect();
    let late = honoured(what, &loaded.db, &posted).await;
    match template {
        Template::Sqlite(_) => println!(
            "    targets: p99 < 50 ms: {}; send rate at least 90% of without: {}",
            verdict(p99 < 50.0),
            verdict(share >= 90.0)
        ),
        // Two instances and the database server on one machine share its
        // cores: the send rate says what the standby's requests cost there,
        // which instances on hosts of their own do not pay.
        Template::Postgres(_) => println!(
            "    targets: p99 < 50 ms: {}; no posted reader's digest recorded sent more than \
             50 ms after their unsubscribe: {}; the send rate ({share:.0}%) is of one machine \
             running both instances and PostgreSQL",
            verdict(p99 < 50.0),
            verdict(late <= 50)
        ),
    }
}

/// Every one-click POST the load sent (answered or not) is honoured: its
/// subscriber is unsubscribed and their digest was either cancelled or had
/// gone out before the unsubscribe (or was already past its send-time check:
/// the in-flight window, whose length is printed: `sent_at` is recorded once
/// the message is accepted, so its body began earlier still).
/// Returns that length in ms.
async fn honoured(what: &str, db: &paperpost::store::Pool, posted: &[&str]) -> i64 {
    let hashes: Vec<String> = posted
        .iter()
        .map(|t| paperpost::security::token_hash(t))
        .collect();
    let sql = "SELECT count(*), \
           count(*) FILTER (WHERE s.status = 'unsubscribed'), \
           count(*) FILTER (WHERE d.status = 'cancelled'), \
           count(*) FILTER (WHERE d.status = 'sent' AND d.sent_at <= s.unsubscribed_at), \
           count(*) FILTER (WHERE d.status = 'sent' AND d.sent_at > s.unsubscribed_at), \
           max(d.sent_at - s.unsubscribed_at) FILTER \
             (WHERE d.status = 'sent' AND d.sent_at > s.unsubscribed_at) \
         FROM subscribers s LEFT JOIN deliveries d ON d.subscriber_id = s.id \
         WHERE s.token_hash IN (SELECT value FROM json_each($1))";
    let hashes = serde_json::to_string(&hashes).unwrap();
    let (found, unsubscribed, cancelled, before, after, late): (
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<i64>,
    ) = on_db!(db, |p| sqlx::query_as(p.sql(sql))
        .bind(&hashes)
        .fetch_one(p)
        .await)
    .unwrap();
    let all = !posted.is_empty() && found == posted.len() as i64 && unsubscribed == found;
    println!(
        "{what} one-click POSTs sent: {}, {unsubscribed} of their subscribers unsubscribed ({}); \
         their digests: {cancelled} cancelled, {before} sent before the unsubscribe, {after} \
         already in flight (recorded sent at most {} ms after the unsubscribe)",
        posted.len(),
        verdict(all),
        late.unwrap_or(0)
    );
    late.unwrap_or(0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        alone(quick).await;
        during_an_edition(quick).await;
    });
}
