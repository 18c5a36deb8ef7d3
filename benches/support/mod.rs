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
