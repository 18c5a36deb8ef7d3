//! A daily_papers source on loopback, on a runtime of its own (so that
//! tests with or without one can use it): the sample file, and each kind of
//! failure a real source shows. Every request is counted.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Router, body::Body, extract::State, http::StatusCode, routing::get};

pub struct PapersSource {
    port: u16,
    hits: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl PapersSource {
    /// Routes: `/api/daily_papers?date=D` (the sample's papers, dated D as
    /// a live source dates them), `/stale` (the sample as it is, dated
    /// 2024-03-11, whatever the date asked for), `/flaky` (three 502s, then
    /// the sample), `/error` (500), `/busy` (429), `/bad` (not JSON),
    /// `/huge` (100 MB), `/stall` (never answers), `/empty` (an empty list).
    pub fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = routes().layer(axum::middleware::from_fn_with_state(
            Arc::clone(&hits),
            count,
        ));
        // Its own thread and runtime, which end when this is dropped (a
        // runtime may not be dropped inside another one).
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                let serve = axum::serve(listener, app);
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        PapersSource {
            port: rx.recv().expect("the source listens"),
            hits,
            _stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The URL template of the sample, as `papers.source_url` takes it.
    pub fn sample_url(&self) -> String {
        self.url("/api/daily_papers?date={date}")
    }

    /// Requests so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn routes() -> Router {
    let sample = std::fs::read(super::fixture("daily_papers-2024-03-11.json")).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let flaky = {
        let sample = sample.clone();
        move |q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
            // One fetch (three requests) fails, the next works.
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(StatusCode::BAD_GATEWAY)
            } else {
                Ok(on_date(&sample, q.get("date").map(String::as_str)))
            }
        }
    };
    let dated = {
        let sample = sample.clone();
        move |q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
            on_date(&sample, q.get("date").map(String::as_str))
        }
    };
    Router::new()
        .route("/api/daily_papers", get(dated))
        .route("/stale", get(move || async move { sample }))
        .route("/flaky", get(flaky))
        .route(
            "/error",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/busy", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .route("/bad", get(|| async { "<html>this is not JSON</html>" }))
        .route("/empty", get(|| async { "[]" }))
        .route("/stall", get(std::future::pending::<String>))
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
}

/// The sample's records with their dates moved to `date` (when given).
fn on_date(sample: &[u8], date: Option<&str>) -> Vec<u8> {
    let Some(date) = date else {
        return sample.to_vec();
    };
    let text = String::from_utf8_lossy(sample);
    text.replace("2024-03-11T", &format!("{date}T"))
        .replace("2024-03-12T", &format!("{date}T"))
        .into_bytes()
}

async fn count(
    State(hits): State<Arc<AtomicUsize>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    hits.fetch_add(1, Ordering::SeqCst);
    next.run(req).await
}
