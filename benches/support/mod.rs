//! Helpers shared by the benchmarks that drive the release binary.
#![allow(dead_code)]

use std::{
    io::Write,
    path::Path,
    process::{Child, Command},
};

/// A Postfix tool (smtp-sink, smtp-source), if installed.
pub fn which(cmd: &str) -> Option<String> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{cmd}"))
        .find(|p| Path::new(p).exists())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for a child and returns (success, peak RSS in KiB) from wait4.
pub fn wait_rss(child: Child) -> (bool, i64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    std::mem::forget(child);
    (
        r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        usage.ru_maxrss,
    )
}

/// The release binary in `dir`, sending over SMTP to smtp-sink on `port`
/// with `sessions` connections.
pub fn paperpost(dir: &Path, port: u16, sessions: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paperpost"));
    c.current_dir(dir)
        .env("PAPERPOST__LOG__LEVEL", "warn")
        .env("PAPERPOST__MAIL__TRANSPORT", "smtp")
        .env("PAPERPOST__MAIL__SMTP__HOST", "127.0.0.1")
        .env("PAPERPOST__MAIL__SMTP__PORT", port.to_string())
        .env("PAPERPOST__MAIL__SMTP__TLS", "none")
        .env("PAPERPOST__MAIL__CONCURRENCY", sessions.to_string());
    c
}

pub fn must(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Imports a 20-paper edition for `date` and `n` subscribers
/// (reader0@example.org, ...) into the database `cmd` opens in `dir`.
pub fn prepare(dir: &Path, date: &str, n: usize, mut cmd: impl FnMut() -> Command) {
    let papers: Vec<serde_json::Value> = (0..20)
        .map(|i| {
            serde_json::json!({
                "id": format!("2403.{:05}", 10_000 + i),
                "title": format!("Paper {i}: Scaling laws for sparse mixture-of-experts language models"),
                "abstract": "We study how model quality scales with data, parameters and compute in sparse models. ".repeat(8),
                "authors": ["Ada Lovelace", "Zoë Ñúñez-Øster", "Grace Hopper", "Alan Turing"],
                "upvotes": (i * 37) % 150,
                "keywords": ["LLM", "scaling"],
                "github_repo": format!("https://github.com/example/repo{i}"),
            })
        })
        .collect();
    let file = dir.join("papers.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&serde_json::json!({"date": date, "papers": papers})).unwrap(),
    )
    .unwrap();
    must(cmd().args(["papers", "import", file.to_str().unwrap()]));
    let csv = dir.join("subs.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
    writeln!(w, "email,name,topics,format").unwrap();
    for i in 0..n {
        let topics = ["llm", "robotics;vision", "", "scaling;agents"][i % 4];
        writeln!(
            w,
            "reader{i}@example.org,Reader {i},{topics},{}",
            if i % 5 == 0 { "text" } else { "html" }
        )
        .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    must(cmd().args(["subscribers", "import", csv.to_str().unwrap()]));
}

/// Postfix's smtp-sink on a loopback port, counting the messages it
/// accepted (`-c`: DATA completed), read from its running counter.
pub struct Sink {
    child: Child,
    pub port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Sink {
    pub fn start(bin: &str) -> Self {
        use std::io::Read;
        let port = free_port();
        let mut child = Command::new(bin)
            .args(["-c", "-u", "nobody", &format!("127.0.0.1:{port}"), "1024"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut out = child.stdout.take().unwrap();
        let seen = std::sync::Arc::clone(&accepted);
        // "sess=N quit=N mesg=N\r", rewritten on every change.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut line = Vec::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b != b'\r' && b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line);
                    if let Some(m) = text
                        .rsplit("mesg=")
                        .next()
                        .and_then(|v| v.trim().parse().ok())
                    {
                        seen.store(m, std::sync::atomic::Ordering::SeqCst);
                    }
                    line.clear();
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        Sink {
            child,
            port,
            accepted,
        }
    }

    /// Messages accepted so far, once the counter has settled.
    pub fn accepted(&self) -> u64 {
        let mut last = self.accepted.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let now = self.accepted.load(std::sync::atomic::Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replays `messages` (whole RFC 5322 messages, cycled) `n` times over
/// `sessions` connections to `port` with PIPELINING as paperpost uses it
/// (MAIL, RCPT and DATA in one write, then the body): the ceiling for a
/// pipelining sender here. Returns messages per second.
pub fn replay_pipelined(port: u16, sessions: u16, n: usize, messages: &[Vec<u8>]) -> f64 {
    use std::io::{BufRead, BufReader};
    let bodies: Vec<Vec<u8>> = messages.iter().map(|m| dot_stuffed(m)).collect();
    let bodies = std::sync::Arc::new(bodies);
    let start = std::time::Instant::now();
    let workers: Vec<_> = (0..sessions as usize)
        .map(|w| {
            let bodies = std::sync::Arc::clone(&bodies);
            let count = n / sessions as usize + usize::from(w < n % sessions as usize);
            std::thread::spawn(move || {
                let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w_ = s;
                let reply = |r: &mut BufReader<std::net::TcpStream>| {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        if line.as_bytes().get(3) != Some(&b'-') {
                            return line.clone();
                        }
                    }
                };
                reply(&mut r);
                w_.write_all(b"EHLO bench.example.org\r\n").unwrap();
                reply(&mut r);
                for i in 0..count {
                    let body = &bodies[(w + i) % bodies.len()];
                    w_.write_all(
                        format!(
                            "MAIL FROM:<digest@example.org>\r\nRCPT TO:<reader{i}@example.org>\r\nDATA\r\n"
                        )
                        .as_bytes(),
                    )
                    .unwrap();
                    for _ in 0..3 {
                        reply(&mut r);
                    }
                    w_.write_all(body).unwrap();
                    let done = reply(&mut r);
                    assert!(done.starts_with("250"), "{done}");
                }
                w_.write_all(b"QUIT\r\n").unwrap();
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A message as sent after DATA: CRLF lines, leading dots doubled, the
/// final dot.
fn dot_stuffed(m: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(m);
    let mut out = Vec::with_capacity(m.len() + 64);
    for line in text.lines() {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A fresh PostgreSQL database on the server `PAPERPOST_BENCH_POSTGRES` (or
/// `PAPERPOST_TEST_POSTGRES`, as `.ci/postgres.sh` prints) names, dropped
/// with it; `None` when neither is set.
pub struct PgDb {
    pub url: String,
    name: String,
    server: String,
}

impl PgDb {
    pub fn create() -> Option<Self> {
        let server = std::env::var("PAPERPOST_BENCH_POSTGRES")
            .or_else(|_| std::env::var("PAPERPOST_TEST_POSTGRES"))
            .ok()?;
        let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
        psql(&server, &format!("CREATE DATABASE {name}"));
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        Some(PgDb {
            url: format!("{base}/{name}"),
            name,
            server,
        })
    }
}

impl PgDb {
    /// A new database made from this one (`CREATE DATABASE ... TEMPLATE`),
    /// dropped with it. Nobody may be connected to this one meanwhile.
    pub fn copy(&self) -> PgDb {
        let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
        psql(
            &self.server,
            &format!("CREATE DATABASE {name} TEMPLATE {}", self.name),
        );
        let base = self
            .url
            .rsplit_once('/')
            .map_or(self.url.as_str(), |(b, _)| b);
        PgDb {
            url: format!("{base}/{name}"),
            name,
            server: self.server.clone(),
        }
    }

    /// The one value `sql` returns, run in this database.
    pub fn value(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        psql(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Runs `sql` on the database at `url`; what it printed, unaligned.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-q",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
