//! Papers on autopilot (`papers.source_url`): `papers fetch` and the daemon
//! against a local HTTP server that serves the sample daily_papers JSON and
//! each kind of failure.

use crate::support;

use crate::support::{
    Sandbox,
    child::{never_fires, wait_for, with},
    daemon::TestDaemon,
    source::PapersSource,
};

const DATE: &str = "2024-03-11";

fn fetch(s: &Sandbox, url: &str, extra: &[(&str, &str)]) -> support::Run {
    let mut env = vec![("PAPERPOST__PAPERS__SOURCE_URL", url)];
    env.extend_from_slice(extra);
    s.run_env(&env, &["papers", "fetch", "--date", DATE])
}

fn selected(s: &Sandbox) -> Vec<String> {
    s.papers(Some(DATE)).into_iter().map(|(id, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_selects_the_days_papers_as_an_import_would() {
    let source = PapersSource::start();
    let s = Sandbox::new();
    let url = source.sample_url();
    let out = fetch(&s, &url, &[]);
    assert!(
        out.ok().contains("2024-03-11: 5 papers selected"),
        "{}",
        out.stdout
    );
    assert_eq!(selected(&s).len(), 5);
    let status = s.run(&["status"]);
    assert!(status.ok().contains("Last fetch"), "{}", status.stdout);
    assert!(status.stdout.contains(": ok: "), "{}", status.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_select_keeps_the_top_papers_by_upvotes() {
    let source = PapersSource::start();
    let s = Sandbox::new();
    let url = source.sample_url();
    fetch(&s, &url, &[("PAPERPOST__PAPERS__AUTO_SELECT", "3")]).ok();
    assert_eq!(selected(&s), ["2406.05981", "2310.01728", "2406.11944"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_never_replaces_the_editors_selection() {
    let source = PapersSource::start();
    let s = Sandbox::with_sample_papers();
    s.run(&["papers", "select", "--date", DATE, "2403.06410"])
        .ok();
    let url = source.sample_url();
    let out = fetch(&s, &url, &[]);
    assert!(
        out.ok().contains("the editor's selection is kept"),
        "{}",
        out.stdout
    );
    assert_eq!(selected(&s), ["2403.06410"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fetches_say_why_change_nothing_and_show_in_status() {
    let source = PapersSource::start();
    let s = Sandbox::new();
    // A selection an earlier fetch made, which a failure must not touch.
    fetch(
        &s,
        &source.sample_url(),
        &[("PAPERPOST__PAPERS__AUTO_SELECT", "2")],
    )
    .ok();
    let before = selected(&s);
    let closed = support::http::free_port();
    // (url, why, requests made, "trying again" warnings): what may pass
    // (5xx, 429, no answer, nobody listening) is tried three times.
    let cases = [
        (source.url("/error"), "answered HTTP 500", 3, 2),
        (source.url("/busy"), "answered HTTP 429", 3, 2),
        (source.url("/stall"), "timed out", 3, 2),
        (source.url("/bad"), "did not send daily_papers JSON", 1, 0),
        (source.url("/huge"), "more than 16 MB", 1, 0),
        (format!("http://127.0.0.1:{closed}/x"), "cannot reach", 0, 2),
    ];
    for (url, why, requests, retries) in cases {
        let hits = source.hits();
        let out = fetch(&s, &url, &[("PAPERPOST__PAPERS__FETCH_TIMEOUT", "1s")]);
        assert!(out.fails().contains(why), "{url}: {}", out.stderr);
        assert!(out.first_error_line().contains(&url), "{}", out.stderr);
        assert_eq!(source.hits() - hits, requests, "{url}: requests");
        assert_eq!(
            out.stderr.matches("trying again").count(),
            retries,
            "{url}: {}",
            out.stderr
        );
        assert_eq!(selected(&s), before, "{url} changed the selection");
        let status = s.run(&["status"]);
        assert!(
            status.ok().contains("FAILED") && status.stdout.contains(why),
            "{}",
            status.stdout
        );
    }
}

/// Once an edition has started, its selection is what its readers get: a
/// later fetch for that date changes nothing.
#[test]
fn a_fetch_never_replaces_a_started_edition() {
    let source = PapersSource::start();
    let s = Sandbox::new();
    s.run(&["subscribers", "add", "ada@example.org"]).ok();
    let top2 = [("PAPERPOST__PAPERS__AUTO_SELECT", "2")];
    fetch(&s, &source.sample_url(), &top2).ok();
    let before = selected(&s);
    assert_eq!(before.len(), 2);
    s.run(&["send", "--date", DATE]).ok();
    let out = fetch(&s, &source.sample_url(), &[]);
    assert!(out.ok().contains("nothing changed"), "{}", out.stdout);
    assert_eq!(
        selected(&s),
        before,
        "a started edition's selection changed"
    );
}

/// `papers.fetch_cron` fetches again while the daemon runs, not only at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_fetches_at_each_fetch_time() {
    let source = PapersSource::start();
    let s = Sandbox::new();
    let env = with(
        vec![],
        "PAPERPOST__PAPERS__SOURCE_URL",
        &source.sample_url(),
    );
    let env = with(env, "PAPERPOST__PAPERS__FETCH_DAYS_AGO", "0");
    let env = with(env, "PAPERPOST__PAPERS__FETCH_CRON", "*/2 * * * * *");
    let env = never_fires(with(env, "PAPERPOST__LOG__LEVEL", "info"));
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    // Once at start, then at fetch times: two more.
    for _ in 0..3 {
        daemon.wait_log("fetched the day's papers").await;
    }
    assert_eq!(daemon.stop().await.code, 0);
    assert!(source.hits() >= 3, "{} requests", source.hits());
}

/// The daemon fetches by itself at start (nothing is selected for the day
/// yet), and the edition goes out at the next fire with no import by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_fetches_the_days_papers_and_sends_them() {
    let source = PapersSource::start();
    let s = Sandbox::new();
    for who in ["ada@example.org", "bob@example.org"] {
        s.run(&["subscribers", "add", who]).ok();
    }
    let url = source.sample_url();
    let env = with(vec![], "PAPERPOST__PAPERS__SOURCE_URL", &url);
    let env = with(env, "PAPERPOST__PAPERS__FETCH_DAYS_AGO", "0");
    let env = with(env, "PAPERPOST__SCHEDULE__CRON", "*/2 * * * * *");
    let env = with(env, "PAPERPOST__LOG__LEVEL", "info");
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    let seen = daemon.wait_log("fetched the day's papers").await;
    assert!(seen.contains("5 papers selected"), "{seen}");
    // /metrics counts it.
    let log = daemon.logged("metrics endpoint listening").await;
    let addr = log
        .split("metrics endpoint listening addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the metrics address is logged")
        .to_string();
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("paperpost_paper_fetches_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    let outbox = s.path("data/outbox");
    wait_for("two digests", || {
        std::fs::read_dir(&outbox).is_ok_and(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))
            })
            .count()
                == 2
        })
    })
    .await;
    assert_eq!(daemon.stop().await.code, 0);
    assert_eq!(source.hits(), 1, "fetched once");
}

/// A fetch that fails at start is tried again after papers.fetch_retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_tries_a_failed_fetch_again() {
    let source = PapersSource::start();
    let s = Sandbox::new();
    let env = with(
        vec![],
        "PAPERPOST__PAPERS__SOURCE_URL",
        &source.url("/flaky?date={date}"),
    );
    let env = with(env, "PAPERPOST__PAPERS__FETCH_RETRY", "1s");
    let env = never_fires(env);
    let env = with(env, "PAPERPOST__LOG__LEVEL", "info");
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    let seen = daemon.wait_log("fetched the day's papers").await;
    assert!(seen.contains("answered HTTP 502"), "{seen}");
    assert!(
        seen.contains("cannot fetch the day's papers; nothing changed"),
        "{seen}"
    );
    assert_eq!(daemon.stop().await.code, 0);
    assert_eq!(source.hits(), 4);
}

/// A source that answers every date with the same (old) list: the records'
/// own dates give it away, and a selection identical to the edition that
/// went out last is refused too. Both fail the fetch (retried, and shown in
/// `status`) and change nothing.
#[test]
fn a_stale_source_is_refused() {
    let source = PapersSource::start();
    let s = Sandbox::new();
    s.run(&["subscribers", "add", "ada@example.org"]).ok();
    let url = source.url("/stale?date={date}");
    let fetch_for = |date: &str| {
        s.run_env(
            &[("PAPERPOST__PAPERS__SOURCE_URL", url.as_str())],
            &["papers", "fetch", "--date", date],
        )
    };
    // Records published 2024-03-11, asked for 2026-11-28.
    let out = fetch_for("2026-11-28");
    assert!(out.fails().contains("stale"), "{}", out.stderr);
    assert!(out.stderr.contains("2024-03-11"), "{}", out.stderr);
    assert!(s.papers(Some("2026-11-28")).is_empty());
    let status = s.run(&["status"]);
    assert!(
        status.ok().contains("FAILED") && status.stdout.contains("stale"),
        "{}",
        status.stdout
    );

    // The right day works; the next day, within the records' window, gets
    // the very list that went out: refused.
    fetch_for(DATE).ok();
    s.run(&["send", "--date", DATE]).ok();
    let out = fetch_for("2024-03-12");
    assert!(
        out.fails()
            .contains("as the 2024-03-11 edition, which has gone out: stale"),
        "{}",
        out.stderr
    );
    assert!(s.papers(Some("2024-03-12")).is_empty());
}

/// An empty list is not a success: the day would be skipped silently. It
/// fails (and the daemon tries again at papers.fetch_retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_list_is_a_failure_tried_again() {
    let source = PapersSource::start();
    let s = Sandbox::new();
    let out = fetch(&s, &source.url("/empty"), &[]);
    assert!(out.fails().contains("no papers"), "{}", out.stderr);
    let env = with(
        vec![],
        "PAPERPOST__PAPERS__SOURCE_URL",
        &source.url("/empty"),
    );
    let env = with(env, "PAPERPOST__PAPERS__FETCH_RETRY", "1s");
    let env = never_fires(with(env, "PAPERPOST__LOG__LEVEL", "info"));
    let before = source.hits();
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    for _ in 0..2 {
        let seen = daemon.wait_log("cannot fetch the day's papers").await;
        assert!(seen.contains("no papers"), "{seen}");
    }
    assert_eq!(daemon.stop().await.code, 0);
    assert!(source.hits() - before >= 2);
}
