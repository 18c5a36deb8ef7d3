//! Subscriber import throughput and memory: `cargo bench --bench import`.
//!
//! Generates CSV files of 100,000 and 1,000,000 rows, imports each with the
//! release `paperpost subscribers import` into a fresh database, and prints
//! rows per second and the process's peak resident memory. Target: at least
//! 50,000 rows/s for the 1,000,000-row file, and memory that does not grow with
//! the file (the import streams).

use std::{io::Write, process::Command, time::Instant};

fn peak_rss_kib_of_children() -> i64 {
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    }
}

fn write_csv(path: &std::path::Path, rows: usize) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(w, "email,name,topics,timezone,format,max_papers").unwrap();
    let zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"];
    for i in 0..rows {
        writeln!(
            w,
            "reader{i}@example{}.org,Reader Number {i},llm;time series;robotics,{},{},{}",
            i % 97,
            zones[i % zones.len()],
            if i % 3 == 0 { "text" } else { "html" },
            1 + i % 50
        )
        .unwrap();
    }
    w.flush().unwrap();
}

fn run(rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("subscribers.csv");
    write_csv(&csv, rows);
    let size = std::fs::metadata(&csv).unwrap().len();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_paperpost"))
        .current_dir(dir.path())
        .env("PAPERPOST__LOG__LEVEL", "warn")
        .args(["subscribers", "import", csv.to_str().unwrap()])
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(&format!("{rows} added")), "{summary}");
    // RUSAGE_CHILDREN reports the largest child so far; sizes run in increasing order.
    let rss_mib = peak_rss_kib_of_children() as f64 / 1024.0;
    println!(
        "import {rows:>9} rows ({:>5.1} MB CSV): {secs:>6.2} s, {:>9.0} rows/s, peak RSS {rss_mib:.1} MiB",
        size as f64 / 1e6,
        rows as f64 / secs
    );
}

fn main() {
    // `cargo test --benches` runs benches once in test mode; keep that quick.
    let quick = std::env::args().any(|a| a == "--test")
        || std::env::var_os("PAPERPOST_BENCH_QUICK").is_some();
    if quick {
        run(10_000);
        return;
    }
    run(100_000);
    run(1_000_000);
}
