//! Papers on autopilot (`papers.source_url`): `papers fetch` and the daemon
//! against a local HTTP server that serves the sample daily_papers JSON and
//! each kind of failure.

use crate::support;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use crate::support::{
    Sandbox,
    child::{listening_addr, never_fires, wait_for, with},
    daemon::TestDaemon,
};
use axum::{Router, body::Body, extract::State, http::StatusCode, routing::get};

const DATE: &str = "2024-03-11";

/// The local source: every route counts its requests.
struct Source {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Source {
    async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let sample = std::fs::read(support::fixture("daily_papers-2024-03-11.json")).unwrap();
        let app = Router::new()
            .route(
                "/api/daily_papers",
                get({
                    let sample = sample.clone();
                    move || async move { sample }
                }),
            )
            .route(
                "/flaky",
                get({
                    let calls = Arc::new(AtomicUsize::new(0));
                    move || async move {
                        // One fetch (three requests) fails, the next works.
                        if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                            Err(StatusCode::BAD_GATEWAY)
                        } else {
                            Ok(sample)
                        }
                    }
                }),
            )
            .route(
                "/error",
                get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route("/bad", get(|| async { "<html>this is not JSON</html>" }))
            .route(
                "/huge",
                get(|| async {
                    // 100 MB, streamed without a length.
                    let chunk = axum::body::Bytes::from(vec![b' '; 1024 * 1024]);
                    let chunks = futures_util::stream::iter(
                        (0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                    );
                    Body::from_stream(chunks)
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&hits),
                count,
            ))
            .with_state(());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Source { port, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn count(
    State(hits): State<Arc<AtomicUsize>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    hits.fetch_add(1, Ordering::SeqCst);
    next.run(req).await
}

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
    let source = Source::start().await;
    let s = Sandbox::new();
    let url = source.url("/api/daily_papers?date={date}");
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
    let source = Source::start().await;
    let s = Sandbox::new();
    let url = source.url("/api/daily_papers?date={date}");
    fetch(&s, &url, &[("PAPERPOST__PAPERS__AUTO_SELECT", "3")]).ok();
    assert_eq!(selected(&s), ["2406.05981", "2310.01728", "2406.11944"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_never_replaces_the_editors_selection() {
    let source = Source::start().await;
    let s = Sandbox::with_sample_papers();
    s.run(&["papers", "select", "--date", DATE, "2403.06410"])
        .ok();
    let url = source.url("/api/daily_papers?date={date}");
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
    let source = Source::start().await;
    let s = Sandbox::new();
    // A selection an earlier fetch made, which a failure must not touch.
    fetch(
        &s,
        &source.url("/api/daily_papers?date={date}"),
        &[("PAPERPOST__PAPERS__AUTO_SELECT", "2")],
    )
    .ok();
    let before = selected(&s);
    let closed = support::http::free_port();
    let cases = [
        (source.url("/error"), "answered HTTP 500", 3),
        (source.url("/bad"), "did not send daily_papers JSON", 1),
        (source.url("/huge"), "more than 16 MB", 1),
        (format!("http://127.0.0.1:{closed}/x"), "cannot reach", 0),
    ];
    for (url, why, requests) in cases {
        let hits = source.hits();
        let out = fetch(&s, &url, &[]);
        assert!(out.fails().contains(why), "{url}: {}", out.stderr);
        assert!(out.first_error_line().contains(&url), "{}", out.stderr);
        assert_eq!(source.hits() - hits, requests, "{url}: requests");
        assert_eq!(selected(&s), before, "{url} changed the selection");
        let status = s.run(&["status"]);
        assert!(
            status.ok().contains("FAILED") && status.stdout.contains(why),
            "{}",
            status.stdout
        );
    }
}

/// The daemon fetches by itself at start (nothing is selected for the day
/// yet), and the edition goes out at the next fire with no import by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_fetches_the_days_papers_and_sends_them() {
    let source = Source::start().await;
    let s = Sandbox::new();
    for who in ["ada@example.org", "bob@example.org"] {
        s.run(&["subscribers", "add", who]).ok();
    }
    let url = source.url("/api/daily_papers?date={date}");
    let env = with(vec![], "PAPERPOST__PAPERS__SOURCE_URL", &url);
    let env = with(env, "PAPERPOST__PAPERS__FETCH_DAYS_AGO", "0");
    let env = with(env, "PAPERPOST__SCHEDULE__CRON", "*/2 * * * * *");
    let env = with(env, "PAPERPOST__LOG__LEVEL", "info");
    let mut daemon = TestDaemon::spawn(&s, &env, &["run"]);
    let seen = daemon.wait_log("fetched the day's papers").await;
    assert!(seen.contains("5 papers selected"), "{seen}");
    // /metrics counts it.
    let addr = listening_addr(&seen);
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
    let source = Source::start().await;
    let s = Sandbox::new();
    let env = with(
        vec![],
        "PAPERPOST__PAPERS__SOURCE_URL",
        &source.url("/flaky"),
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
