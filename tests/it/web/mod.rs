//! The web endpoint in-process (`tower::ServiceExt::oneshot` on the router) on
//! a temporary database: every route and its status paths, what the pages
//! show, the security headers, and random requests that must never get a 5xx.

mod connections;
mod signup;
mod webhooks;

use crate::support;

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use paperpost::{
    app::App,
    config::Settings,
    domain::{SubscriberEmail, SubscriberSource, SubscriberStatus},
    store::{self, subscribers as subs},
    web::{Liveness, SignUps, Unsubscriber, WebState, router},
};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

const BASE: &str = "https://news.example.org";

struct Site {
    dir: tempfile::TempDir,
    db: support::TestDb,
    app: App,
    router: Router,
    /// `/metrics`, on its own listener in the daemon.
    metrics: Router,
    state: WebState,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

fn settings(dir: &std::path::Path, url: &str, extra: &[(&str, &str)]) -> Settings {
    let db = dir.join("pp.db").display().to_string();
    let outbox = dir.join("outbox").display().to_string();
    let mut env = vec![
        ("PAPERPOST__DATABASE__PATH", db.as_str()),
        ("PAPERPOST__DATABASE__URL", url),
        ("PAPERPOST__SECURITY__SECRET", support::SECRET),
        ("PAPERPOST__MAIL__OUTBOX_DIR", outbox.as_str()),
        ("PAPERPOST__HTTP__PUBLIC_URL", BASE),
    ];
    // Later pairs win, as the map they replace did.
    env.extend_from_slice(extra);
    support::settings(&env)
}

/// One request through `router`, its answer read in full.
async fn call(router: &Router, req: Request<Body>) -> Reply {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

impl Site {
    async fn new() -> Self {
        Self::with(&[]).await
    }

    async fn with(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = support::TestDb::new();
        let settings = settings(dir.path(), db.url(), extra);
        Self::start(dir, db, settings).await
    }

    /// A second instance on this site's database, with its own outbox.
    async fn beside(&self) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shared = self.dir.path().join("pp.db").display().to_string();
        let extra = [
            ("PAPERPOST__DATABASE__PATH", shared.as_str()),
            ("PAPERPOST__HTTP__SUBSCRIBE_PER_MINUTE", "1000"),
        ];
        let settings = settings(dir.path(), self.db.url(), &extra);
        Self::start(dir, support::TestDb::none(), settings).await
    }

    /// The web endpoint of an installation in `dir` on `db`, in-process.
    async fn start(dir: tempfile::TempDir, db: support::TestDb, settings: Settings) -> Self {
        let app = App::open(settings).await.unwrap();
        let tracker = TaskTracker::new();
        let mailer = SignUps::start(&app, &tracker).unwrap();
        let unsubscriber = Unsubscriber::start(&app, &tracker);
        let role = paperpost::web::Role {
            liveness: Arc::new(Liveness::default()),
            engine: None,
        };
        let state = WebState::new(app.clone(), mailer, unsubscriber, role);
        Site {
            dir,
            db,
            router: router(state.clone()),
            metrics: paperpost::web::metrics_router(state.clone()),
            state,
            app,
        }
    }

    /// Adds an active subscriber; returns their link token.
    async fn subscriber(&self, email: &str) -> String {
        let mut conn = self.app.pool.acquire().await.unwrap();
        let s = subs::insert(
            &mut conn,
            &self.app.keys,
            &SubscriberEmail::parse(email).unwrap(),
            &self.app.defaults(),
            SubscriberStatus::Active,
            SubscriberSource::Cli,
        )
        .await
        .unwrap();
        self.app.keys.subscriber_token(&s.uuid)
    }

    async fn get_subscriber(&self, email: &str) -> subs::Subscriber {
        let mut conn = self.app.pool.acquire().await.unwrap();
        subs::get_by_email(&mut conn, email).await.unwrap()
    }

    async fn request(&self, req: Request<Body>) -> Reply {
        call(&self.router, req).await
    }

    /// `GET /metrics` on the metrics listener's router.
    async fn metrics(&self) -> Reply {
        call(
            &self.metrics,
            Request::get("/metrics").body(Body::empty()).unwrap(),
        )
        .await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.request(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn post_form(&self, uri: &str, form: &str) -> Reply {
        self.request(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::USER_AGENT, "test-agent/1.0")
                .body(Body::from(form.to_string()))
                .unwrap(),
        )
        .await
    }

    /// Waits up to 10 s for `line` in /metrics.
    async fn wait_metric(&self, line: &str) {
        for _ in 0..200 {
            if self.metrics().await.body.lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no {line} in\n{}", self.metrics().await.body);
    }

    /// A form POST from the client at `peer`, with `headers`.
    async fn post_from(
        &self,
        peer: std::net::IpAddr,
        uri: &str,
        form: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req =
            Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(Body::from(form.to_string())).unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(
                peer, 5000,
            )));
        self.request(req).await
    }

    /// The confirmation mails written to the outbox, waiting up to 10 s for `n`.
    async fn outbox(&self, n: usize) -> Vec<String> {
        let dir = self.dir.path().join("outbox");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mails: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    // Finished messages only: one being written is a
                    // hidden temporary file until it is renamed.
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default();
            if mails.len() >= n || std::time::Instant::now() > deadline {
                return mails;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn events(&self) -> Vec<(String, String, Option<String>)> {
        crate::on_db!(&self.app.pool, |p| sqlx::query_as(p.sql(
            "SELECT kind, channel, user_agent FROM token_events ORDER BY id"
        ))
        .fetch_all(p)
        .await)
        .unwrap()
    }
}

fn text_of(html: &str) -> String {
    let doc = scraper::Html::parse_document(html);
    doc.root_element().text().collect::<Vec<_>>().join(" ")
}

/// The action URLs of a page's forms.
fn form_actions(html: &str) -> Vec<String> {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse("form").unwrap();
    doc.select(&sel)
        .filter_map(|f| f.value().attr("action").map(str::to_string))
        .collect()
}

fn path_of(url: &str) -> &str {
    url.strip_prefix(BASE).unwrap_or(url)
}

#[tokio::test]
async fn a_get_shows_the_masked_address_and_one_button_but_never_unsubscribes() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    let r = site.get(&format!("/unsubscribe/{token}")).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = text_of(&r.body);
    assert!(text.contains("a***@example.org"), "{text}");
    assert!(
        !r.body.contains("ada@example.org"),
        "the full address is not shown"
    );
    assert!(text.contains("Paperpost Daily"));
    assert_eq!(
        form_actions(&r.body),
        vec![format!("{BASE}/unsubscribe/{token}")]
    );
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Active
    );
}

#[tokio::test]
async fn one_click_post_unsubscribes_at_once_cancels_queued_mail_and_is_idempotent() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    let other = site.subscriber("bob@example.org").await;
    let date = chrono::NaiveDate::from_ymd_opt(2024, 3, 11).unwrap();
    store::deliveries::start_edition(&site.app.pool, date, "send", |_| store::now_ms())
        .await
        .unwrap();

    let r = site
        .post_form(
            &format!("/unsubscribe/{token}"),
            "List-Unsubscribe=One-Click",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "RFC 8058: 200, not a redirect");
    assert!(text_of(&r.body).contains("You are unsubscribed"));
    let s = site.get_subscriber("ada@example.org").await;
    assert_eq!(s.status, SubscriberStatus::Unsubscribed);
    assert_eq!(s.unsubscribed_by, Some(paperpost::domain::EndedBy::Link));
    let mut conn = site.app.pool.acquire().await.unwrap();
    let counts = store::deliveries::counts(&mut conn, date).await.unwrap();
    assert_eq!(
        (counts.cancelled, counts.queued),
        (1, 1),
        "only Ada's row is cancelled"
    );

    // Again: the same answer, nothing else changes.
    let again = site
        .post_form(
            &format!("/unsubscribe/{token}"),
            "List-Unsubscribe=One-Click",
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(text_of(&again.body).contains("You are unsubscribed"));
    let events = site.events().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].0, "unsubscribe");
    assert_eq!(events[0].1, "one-click");
    assert_eq!(events[0].2.as_deref(), Some("test-agent/1.0"));
    assert_eq!(
        site.get_subscriber("bob@example.org").await.status,
        SubscriberStatus::Active,
        "nobody else's token can: {other}"
    );
}

#[tokio::test]
async fn a_burst_of_one_clicks_is_written_together_and_each_gets_its_answer() {
    let site = Site::new().await;
    let mut tokens = Vec::new();
    for i in 0..10 {
        tokens.push(site.subscriber(&format!("r{i}@example.org")).await);
    }
    let unknown = "0".repeat(64);
    let mut uris: Vec<String> = tokens
        .iter()
        .chain(&tokens)
        .map(|t| format!("/unsubscribe/{t}"))
        .collect();
    uris.push(format!("/unsubscribe/{unknown}"));
    let replies = futures_util::future::join_all(
        uris.iter()
            .map(|u| site.post_form(u, "List-Unsubscribe=One-Click")),
    )
    .await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses[..20], [200; 20]);
    assert_eq!(statuses[20], 404);
    for i in 0..10 {
        let s = site.get_subscriber(&format!("r{i}@example.org")).await;
        assert_eq!(s.status, SubscriberStatus::Unsubscribed);
    }
    assert_eq!(site.events().await.len(), 20, "every use is recorded");
    let metrics = site.metrics().await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "paperpost_unsubscribes_total{channel=\"one-click\"} 10"),
        "each subscription ends once:\n{metrics}"
    );
}

#[tokio::test]
async fn one_batch_with_the_same_link_twice_ends_the_subscription_once() {
    let site = Site::new().await;
    let a = site.subscriber("a@example.org").await;
    let b = site.subscriber("b@example.org").await;
    let use_of = |token: &str| subs::LinkUse {
        token: token.to_string(),
        channel: store::events::Channel::OneClick,
        user_agent: None,
    };
    let mut tx = site.app.writer.begin().await.unwrap();
    let done = subs::unsubscribe_by_links(
        &mut tx,
        &[use_of(&a), use_of(&"f".repeat(64)), use_of(&a), use_of(&b)],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let ended: Vec<Option<(String, bool)>> = done
        .into_iter()
        .map(|d| d.unwrap().map(|u| (u.owner.email.to_string(), u.ended)))
        .collect();
    assert_eq!(
        ended,
        vec![
            Some(("a@example.org".to_string(), true)),
            None,
            Some(("a@example.org".to_string(), false)),
            Some(("b@example.org".to_string(), true)),
        ]
    );
    assert_eq!(site.events().await.len(), 3);
}

#[tokio::test]
async fn a_link_unsubscribe_after_a_sync_deactivated_them_is_theirs() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    let s = site.get_subscriber("ada@example.org").await;
    let mut conn = site.app.pool.acquire().await.unwrap();
    subs::end_subscription(
        &mut conn,
        s.id,
        SubscriberStatus::Unsubscribed,
        paperpost::domain::EndedBy::Sync,
    )
    .await
    .unwrap();
    let r = site.post_form(&format!("/unsubscribe/{token}"), "").await;
    assert_eq!(r.status, StatusCode::OK);
    let s = site.get_subscriber("ada@example.org").await;
    assert_eq!(
        s.unsubscribed_by,
        Some(paperpost::domain::EndedBy::Link),
        "a later sync leaves them out"
    );
}

#[tokio::test]
async fn one_click_works_as_multipart_and_without_a_body() {
    let site = Site::new().await;
    let a = site.subscriber("a@example.org").await;
    let b = site.subscriber("b@example.org").await;
    let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
    let r = site
        .request(
            Request::post(format!("/unsubscribe/{a}"))
                .header(header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
                .body(Body::from(multipart))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = site
        .request(
            Request::post(format!("/unsubscribe/{b}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for e in ["a@example.org", "b@example.org"] {
        assert_eq!(
            site.get_subscriber(e).await.status,
            SubscriberStatus::Unsubscribed
        );
    }
    let channels: Vec<String> = site.events().await.into_iter().map(|e| e.1).collect();
    assert_eq!(channels, vec!["one-click", "page"]);
}

#[tokio::test]
async fn unknown_malformed_and_oversized_tokens_get_the_same_404_page() {
    let site = Site::new().await;
    let real = site.subscriber("ada@example.org").await;
    let mut wrong = real.clone();
    wrong.replace_range(0..1, if real.starts_with('0') { "1" } else { "0" });
    let long = "a".repeat(5000);
    let mut bodies = Vec::new();
    for t in [
        wrong.as_str(),
        "abc",
        &long,
        "ZZZZ%00",
        &real.to_uppercase(),
    ] {
        for (method, route) in [
            ("GET", "unsubscribe"),
            ("POST", "unsubscribe"),
            ("GET", "preferences"),
            ("POST", "resubscribe"),
            ("GET", "confirm"),
            ("POST", "confirm"),
        ] {
            let r = site
                .request(
                    Request::builder()
                        .method(method)
                        .uri(format!("/{route}/{t}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} /{route}/{t}");
            bodies.push(r.body);
        }
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "one page for all");
    assert!(text_of(&bodies[0]).contains("Link not found"));
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Active
    );
}

#[tokio::test]
async fn the_preview_token_does_nothing() {
    let site = Site::new().await;
    site.subscriber("ada@example.org").await;
    for uri in [
        "/unsubscribe/preview",
        "/preferences/preview",
        "/confirm/preview",
    ] {
        let r = site.post_form(uri, "List-Unsubscribe=One-Click").await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert!(text_of(&r.body).contains("preview"), "{uri}");
    }
    assert!(site.events().await.is_empty());
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Active
    );
}

#[tokio::test]
async fn resubscribe_undoes_a_link_unsubscribe_but_not_an_operator_removal() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    let r = site.post_form(&format!("/unsubscribe/{token}"), "").await;
    let actions = form_actions(&r.body);
    let resub = actions
        .iter()
        .find(|a| a.contains("/resubscribe/"))
        .expect("the page offers resubscribe");
    let r = site.post_form(path_of(resub), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(text_of(&r.body).contains("You are subscribed"));
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Active
    );

    // Removed by the operator: the link cannot bring them back.
    let mut conn = site.app.pool.acquire().await.unwrap();
    let s = site.get_subscriber("ada@example.org").await;
    subs::end_subscription(
        &mut conn,
        s.id,
        SubscriberStatus::Unsubscribed,
        paperpost::domain::EndedBy::Cli,
    )
    .await
    .unwrap();
    let r = site.post_form(path_of(resub), "").await;
    assert!(text_of(&r.body).contains("Subscribe again"));
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Unsubscribed
    );
}

#[tokio::test]
async fn preferences_show_the_stored_values_and_save_valid_changes() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    let uri = format!("/preferences/{token}");
    let r = site.get(&uri).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("value=\"10\""), "max papers shown");
    assert!(r.body.contains("<option selected>UTC</option>"));

    let r = site
        .post_form(
            &uri,
            "name=Ada+L.&topics=llm%2C+time+series&format=text&max_papers=5&timezone=Europe%2FBerlin",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(text_of(&r.body).contains("Saved"));
    let s = site.get_subscriber("ada@example.org").await;
    assert_eq!(s.profile.name.as_ref().unwrap().as_str(), "Ada L.");
    assert_eq!(s.profile.topics.join(","), "llm,time series");
    assert_eq!(s.profile.format.as_str(), "text");
    assert_eq!(s.profile.max_papers.get(), 5);
    assert_eq!(s.profile.timezone.name(), "Europe/Berlin");
    assert_eq!(site.events().await[0].0, "preferences");
}

#[tokio::test]
async fn invalid_preferences_are_shown_next_to_their_fields_and_nothing_is_saved() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    let r = site
        .post_form(
            &format!("/preferences/{token}"),
            "name=Ada&topics=llm&format=pdf&max_papers=500&timezone=Mars%2FBase",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let doc = scraper::Html::parse_document(&r.body);
    let err = |id: &str| {
        let sel = scraper::Selector::parse(&format!("#{id}")).unwrap();
        doc.select(&sel)
            .next()
            .map(|e| e.text().collect::<String>())
            .unwrap_or_default()
    };
    assert!(err("max-error").contains("50"), "{}", err("max-error"));
    assert!(err("tz-error").contains("Mars/Base"), "{}", err("tz-error"));
    assert!(text_of(&r.body).contains("choose HTML or plain text"));
    assert!(r.body.contains("value=\"500\""), "what was typed is kept");
    let s = site.get_subscriber("ada@example.org").await;
    assert_eq!(s.profile.max_papers.get(), 10, "nothing saved");
    assert!(s.profile.name.is_none());
}

#[tokio::test]
async fn pages_carry_the_security_headers() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    for uri in [
        format!("/unsubscribe/{token}"),
        format!("/preferences/{token}"),
        "/subscribe".to_string(),
        "/nope".to_string(),
    ] {
        let r = site.get(&uri).await;
        let h = |n: header::HeaderName| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            h(header::X_CONTENT_TYPE_OPTIONS).as_deref(),
            Some("nosniff"),
            "{uri}"
        );
        assert_eq!(
            h(header::CACHE_CONTROL).as_deref(),
            Some("no-store"),
            "{uri}"
        );
        assert_eq!(
            h(header::REFERRER_POLICY).as_deref(),
            Some("no-referrer"),
            "{uri}"
        );
        let csp = h(header::CONTENT_SECURITY_POLICY).unwrap();
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("script"),
            "{csp}"
        );
        assert!(r.body.contains("<html lang=\"en\">"), "{uri}");
        assert!(!r.body.contains("<script"), "{uri}");
    }
}

/// X-Frame-Options and the CSP on every response: pages, POST answers,
/// error pages, refusals, health and the stylesheet.
#[tokio::test]
async fn every_response_forbids_framing() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    let form = "application/x-www-form-urlencoded";
    let big = "x".repeat(100_000);
    let cases: Vec<(&str, String, &str, String)> = vec![
        ("GET", "/".into(), "", String::new()),
        ("GET", "/healthz".into(), "", String::new()),
        ("GET", "/style.css".into(), "", String::new()),
        ("GET", "/nope".into(), "", String::new()),
        (
            "GET",
            format!("/unsubscribe/{}", "0".repeat(64)),
            "",
            String::new(),
        ),
        (
            "POST",
            "/subscribe".into(),
            form,
            "email=not-an-email".into(),
        ),
        (
            "POST",
            format!("/preferences/{token}"),
            form,
            format!("name={big}"),
        ),
        (
            "POST",
            format!("/preferences/{token}"),
            form,
            "max_papers=x".into(),
        ),
        (
            "POST",
            format!("/unsubscribe/{token}"),
            form,
            "List-Unsubscribe=One-Click".into(),
        ),
        ("PUT", "/subscribe".into(), "", String::new()),
    ];
    for (method, uri, ct, body) in cases {
        let mut req = Request::builder().method(method).uri(uri.as_str());
        if !ct.is_empty() {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let r = site.request(req.body(Body::from(body)).unwrap()).await;
        let h = |n: header::HeaderName| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            h(header::X_FRAME_OPTIONS).as_deref(),
            Some("DENY"),
            "{method} {uri}: {}",
            r.status
        );
        let csp = h(header::CONTENT_SECURITY_POLICY).unwrap_or_default();
        assert!(
            csp.contains("frame-ancestors 'none'"),
            "{method} {uri}: {}: {csp:?}",
            r.status
        );
    }
}

/// The site served over a real loopback socket: its address, the token that
/// stops it, and the server's task.
async fn serve_on_loopback(
    site: &Site,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let slots = paperpost::web::server::Connections::new(64, Default::default());
    let server = tokio::spawn(paperpost::web::server::serve(
        listener,
        site.router.clone(),
        slots,
        stop.clone(),
    ));
    (addr, stop, server)
}

/// A request on a connection the server accepted just before it was told to
/// stop (a standby handing over to the sender at a takeover) is answered,
/// not cut: the drill's /healthz failed this way, "connection closed before
/// message completed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_just_as_the_server_stops_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let site = Site::new().await;
    let (addr, stop, server) = serve_on_loopback(&site).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Accepted (a request would be answered) before the stop.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    server.await.unwrap().unwrap();
}

/// Over a real socket: a request head up to 16 KiB is read, a longer one is
/// refused, and a client that sends half a head is cut after 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_are_bounded_in_size_and_time() {
    use std::io::{Read, Write};
    let site = Site::new().await;
    let (addr, stop, server) = serve_on_loopback(&site).await;
    let addr = addr.to_string();
    let head = |filler: usize| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            let head = format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(filler)
            );
            let _ = s.write_all(head.as_bytes());
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer
        })
    };
    let ok = head(15 * 1024).await.unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let refused = head(17 * 1024).await.unwrap();
    assert!(!refused.contains(" 200 "), "{refused}");

    let addr2 = addr.clone();
    let (took, answer) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr2).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let start = std::time::Instant::now();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        (start.elapsed(), answer)
    })
    .await
    .unwrap();
    assert!(!answer.contains(" 200 "), "{answer}");
    assert!(
        took >= std::time::Duration::from_secs(9) && took < std::time::Duration::from_secs(20),
        "a half head was held for {took:?}"
    );
    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn health_and_metrics() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    let r = site.get("/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok\n"));
    site.post_form(
        &format!("/unsubscribe/{token}"),
        "List-Unsubscribe=One-Click",
    )
    .await;
    let r = site.metrics().await;
    assert_eq!(r.status, StatusCode::OK);
    for line in [
        "paperpost_unsubscribes_total{channel=\"one-click\"} 1",
        "paperpost_subscribers{status=\"unsubscribed\"} 1",
        "paperpost_subscribers{status=\"active\"} 0",
        "paperpost_queue_depth 0",
        "paperpost_http_requests_total{route=\"/unsubscribe/{token}\",method=\"POST\",status=\"200\"} 1",
    ] {
        assert!(
            r.body.lines().any(|l| l == line),
            "missing {line}:\n{}",
            r.body
        );
    }
}

#[tokio::test]
async fn a_sending_process_whose_scheduler_stalled_is_unhealthy() {
    use paperpost::web::health::SCHEDULER_TICK;
    let tick = SCHEDULER_TICK.as_millis() as i64;
    let now = store::now_ms();
    let live = Liveness::sending(std::time::Duration::from_secs(30));
    assert_eq!(live.problem(now), Some("the scheduler lock is not held"));
    live.lock_held();
    assert_eq!(live.problem(now), Some("the scheduler is not running"));
    live.scheduler_alive();
    let at = store::now_ms();
    assert_eq!(live.problem(at), None);
    // Time passes with no renewal: the lock is seen not held after its TTL.
    assert_eq!(live.problem(at + 29_000), None);
    assert_eq!(
        live.problem(at + 31_000),
        Some("the scheduler lock is not held")
    );
    // With a lock that lasts, a scheduler that stopped going round is seen
    // after three ticks.
    let live = Liveness::sending(std::time::Duration::from_secs(3600));
    live.lock_held();
    live.scheduler_alive();
    let at = store::now_ms();
    assert_eq!(live.problem(at + 3 * tick - 1_000), None);
    assert_eq!(
        live.problem(at + 3 * tick + 1_000),
        Some("the scheduler is not running")
    );
    assert_eq!(
        Liveness::default().problem(now + 10 * tick),
        None,
        "serve alone sends nothing"
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_without_harm() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    let big = format!("name={}", "x".repeat(100_000));
    let r = site.post_form(&format!("/preferences/{token}"), &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        site.get_subscriber("ada@example.org")
            .await
            .profile
            .name
            .is_none()
    );
}

#[tokio::test]
async fn a_body_that_never_ends_gets_408_with_the_headers() {
    let site = Site::with(&[("PAPERPOST__HTTP__REQUEST_TIMEOUT", "200ms")]).await;
    let token = site.subscriber("ada@example.org").await;
    let stalled = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
    let r = site
        .request(
            Request::post(format!("/unsubscribe/{token}"))
                .body(Body::from_stream(stalled))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        r.headers.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(),
        "nosniff"
    );
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Active
    );
}

#[test]
fn rotate_token_makes_old_links_fail() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let site = rt.block_on(Site::new());
    let token = rt.block_on(site.subscriber("ada@example.org"));
    support::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_paperpost"))
            .args(["subscribers", "rotate-token", "ada@example.org"])
            .env("PAPERPOST__DATABASE__PATH", site.dir.path().join("pp.db"))
            .env("PAPERPOST__DATABASE__URL", site.db.url())
            .env("PAPERPOST__SECURITY__SECRET", support::SECRET)
            .env("PAPERPOST__LOG__LEVEL", "warn"),
        support::RUN_LIMIT,
    )
    .ok();
    let r = rt.block_on(site.get(&format!("/unsubscribe/{token}")));
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let s = rt.block_on(site.get_subscriber("ada@example.org"));
    let fresh = site.app.keys.subscriber_token(&s.uuid);
    assert_ne!(fresh, token);
    let r = rt.block_on(site.get(&format!("/unsubscribe/{fresh}")));
    assert_eq!(r.status, StatusCode::OK);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn method() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            3 => Just("GET"),
            3 => Just("POST"),
            1 => prop::sample::select(vec!["PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
        ]
    }

    /// Clients from the internet (never loopback), a few at a time so that
    /// the per-address limits are reached and left.
    fn client() -> impl Strategy<Value = std::net::SocketAddr> {
        prop_oneof![
            (0u8..8).prop_map(|i| std::net::SocketAddr::from(([203, 0, 113, i], 40000))),
            (0u16..8).prop_map(|i| std::net::SocketAddr::from((
                [0x2001, 0xdb8, 0, i, 0, 0, 0, 1],
                40000
            ))),
        ]
    }

    /// Paths: every route as it is, and compositions of route names,
    /// hostile segments, token-shaped and random tails, and queries.
    pub(super) fn path() -> impl Strategy<Value = String> {
        let exact = prop::sample::select(vec![
            "/",
            "/subscribe",
            "/healthz",
            "/metrics",
            "/style.css",
            "/favicon.ico",
            "/webhooks/ses",
            "/webhooks/postmark",
            "/webhooks/mailgun",
            "/webhooks/sendgrid",
        ])
        .prop_map(str::to_string);
        let segment = prop::sample::select(vec![
            "unsubscribe",
            "resubscribe",
            "preferences",
            "confirm",
            "subscribe",
            "healthz",
            "metrics",
            "style.css",
            "webhooks",
            "..",
            "%00",
            "%ff",
            "preview",
            "",
        ]);
        let tail = prop_oneof![
            Just(None),
            "[0-9a-f]{64}".prop_map(Some),
            "[a-zA-Z0-9%._~-]{0,80}".prop_map(Some),
        ];
        let query = prop::option::of("[a-zA-Z0-9=&%+._-]{0,60}");
        let composed =
            (prop::collection::vec(segment, 0..4), tail, query).prop_map(|(segs, tail, query)| {
                let mut p = format!("/{}", segs.join("/"));
                if let Some(t) = tail {
                    if !p.ends_with('/') {
                        p.push('/');
                    }
                    p.push_str(&t);
                }
                if let Some(q) = query {
                    p.push('?');
                    p.push_str(&q);
                }
                p
            });
        let tokened = (
            prop::sample::select(vec!["unsubscribe", "resubscribe", "preferences", "confirm"]),
            "[0-9a-f]{64}",
        )
            .prop_map(|(route, token)| format!("/{route}/{token}"));
        prop_oneof![1 => exact, 1 => tokened, 3 => composed]
    }

    /// Bodies: random bytes, and forms with the fields the routes read
    /// (empty, plausible, hostile or oversized values).
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let value = prop_oneof![
            Just(String::new()),
            Just("ada@example.org".to_string()),
            "[a-zA-Z0-9@.%+&=_-]{0,40}",
            "\\PC{0,200}",
        ];
        let field = (
            prop::sample::select(vec![
                "email",
                "name",
                "topics",
                "website",
                "format",
                "max_papers",
                "timezone",
                "List-Unsubscribe",
            ]),
            value,
        )
            .prop_map(|(k, v)| format!("{k}={}", url_encode(&v)));
        let form = prop::collection::vec(field, 0..6).prop_map(|f| f.join("&").into_bytes());
        prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), form]
    }

    fn url_encode(v: &str) -> String {
        v.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// The generator reaches every route, not only the 404 and the token
    /// check (its paths used to end in a tail, always).
    #[test]
    fn the_paths_reach_every_route() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = path();
        let seen: std::collections::HashSet<String> = (0..300)
            .map(|_| strategy.new_tree(&mut runner).unwrap().current())
            .collect();
        for route in [
            "/",
            "/subscribe",
            "/healthz",
            "/metrics",
            "/style.css",
            "/webhooks/ses",
            "/webhooks/postmark",
            "/webhooks/mailgun",
            "/webhooks/sendgrid",
        ] {
            assert!(seen.contains(route), "{route} never generated");
        }
        for prefix in [
            "/unsubscribe/",
            "/preferences/",
            "/confirm/",
            "/resubscribe/",
        ] {
            assert!(
                seen.iter().any(|p| p.starts_with(prefix)
                    && p[prefix.len()..].len() == 64
                    && p[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit())),
                "no token-shaped {prefix}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]
        #[test]
        fn random_requests_never_get_a_5xx(
            m in method(),
            p in path(),
            ct in prop_oneof![
                3 => Just("application/x-www-form-urlencoded"),
                1 => prop::sample::select(vec![
                    "multipart/form-data; boundary=x", "text/plain", "application/json", "",
                ]),
            ],
            from in client(),
            body in body(),
            ua in "[ -~]{0,300}",
        ) {
            // One runtime and one site for every case: the site's tasks (the
            // confirmation mailer) live on the runtime that made it.
            let (rt, site) = SITE.get_or_init(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                // Every webhook on, so random bodies meet their checks.
                let site = rt.block_on(Site::with(&[
                    ("PAPERPOST__WEBHOOKS__POSTMARK_USER", "pm"),
                    ("PAPERPOST__WEBHOOKS__POSTMARK_PASSWORD", "pw"),
                    ("PAPERPOST__WEBHOOKS__MAILGUN_SIGNING_KEY", "key"),
                    ("PAPERPOST__WEBHOOKS__SENDGRID_PUBLIC_KEY", "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"),
                    ("PAPERPOST__WEBHOOKS__SES_TOPIC_ARN", "arn:aws:sns:us-east-1:1:t"),
                ]));
                (rt, site)
            });
            let mut req = Request::builder().method(m).uri(p.as_str());
            if !ct.is_empty() {
                req = req.header(header::CONTENT_TYPE, ct);
            }
            let mut req = req.header(header::USER_AGENT, ua.as_str()).body(Body::from(body)).unwrap();
            // A client from the internet, not loopback: the limiter applies.
            req.extensions_mut().insert(axum::extract::ConnectInfo(from));
            let r = rt.block_on(site.request(req));
            prop_assert!(r.status.as_u16() < 500, "{m} {p}: {}", r.status);
        }
    }

    static SITE: std::sync::OnceLock<(tokio::runtime::Runtime, Site)> = std::sync::OnceLock::new();
}

/// Issue 15 item 10: unsubscribes written in one batch fail (or succeed)
/// one by one: a row the store cannot read in full (an unknown time zone)
/// neither fails the others in its batch nor stops its own unsubscribe,
/// which needs none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_row_fails_nobody_else_in_its_batch() {
    let site = Site::new().await;
    let good = site.subscriber("ada@example.org").await;
    let odd = site.subscriber("bob@example.org").await;
    crate::on_db!(&site.app.pool, |p| sqlx::query(p.sql(
        "UPDATE subscribers SET timezone = 'Mars/Olympus_Mons' WHERE email = 'bob@example.org'"
    ))
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    // Both arrive while another process holds the database: one batch.
    let blocker = crate::support::WriteLock::take(&site.app.pool).await;
    let (good_uri, odd_uri) = (
        format!("/unsubscribe/{good}"),
        format!("/unsubscribe/{odd}"),
    );
    let one_click = "List-Unsubscribe=One-Click";
    let (a, b, _) = tokio::join!(
        site.post_form(&good_uri, one_click),
        site.post_form(&odd_uri, one_click),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            blocker.release().await;
        }
    );
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    let status: Vec<String> = crate::on_db!(&site.app.pool, |p| sqlx::query_scalar(
        p.sql("SELECT status FROM subscribers ORDER BY email")
    )
    .fetch_all(p)
    .await)
    .unwrap();
    assert_eq!(status, ["unsubscribed", "unsubscribed"]);
}

/// Issue 15 item 11: an unsubscribe that cannot be written within the
/// request's time (another process holds the database) is not answered 408
/// and then applied behind the client's back: it is answered 202, "being
/// applied", and applied, counted and logged when the database frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_unsubscribe_is_answered_honestly_and_applied() {
    let site = Site::with(&[("PAPERPOST__HTTP__REQUEST_TIMEOUT", "2s")]).await;
    let token = site.subscriber("ada@example.org").await;
    let blocker = crate::support::WriteLock::take(&site.app.pool).await;
    let uri = format!("/unsubscribe/{token}");
    let (r, _) = tokio::join!(site.post_form(&uri, "List-Unsubscribe=One-Click"), async {
        tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
        blocker.release().await;
    });
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert!(r.body.contains("being applied"), "{}", r.body);
    for _ in 0..100 {
        if site.get_subscriber("ada@example.org").await.status == SubscriberStatus::Unsubscribed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Unsubscribed
    );
    let metrics = site.metrics().await.body;
    assert!(
        metrics.contains("paperpost_unsubscribes_total{channel=\"one-click\"} 1"),
        "{metrics}"
    );
}

/// Issue 16 item 1: label values come from fixed sets: random methods (and
/// paths) do not grow /metrics; they count as method "other" and route
/// "unmatched".
#[tokio::test]
async fn random_methods_and_paths_do_not_grow_the_metrics() {
    let site = Site::new().await;
    for i in 0..300 {
        let method = format!("M{i:04}{}", "X".repeat(i % 40));
        let req = Request::builder()
            .method(method.as_str())
            .uri(format!("/random/{i}"))
            .body(Body::empty())
            .unwrap();
        site.request(req).await;
    }
    let metrics = site.metrics().await.body;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("paperpost_http_requests_total{"))
        .collect();
    assert!(series.len() <= 4, "{series:#?}");
    assert!(
        series
            .iter()
            .any(|l| l.contains("method=\"other\"") && l.contains("route=\"unmatched\"")),
        "{series:#?}"
    );
    assert!(!metrics.contains("M0001"), "a method made a label");
}

/// Issue 16 item 8: request spans name the route template, never the path:
/// a token in a debug or error line is a working unsubscribe link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_carry_a_token() {
    use crate::support::{child::with, daemon::TestDaemon};
    let s = support::Sandbox::new();
    s.run(&["subscribers", "add", "ada@example.org"]).ok();
    let keys = paperpost::security::Keys::from_bytes(support::SECRET.as_bytes());
    let pool = s.pool().await;
    let uuid: String = crate::on_db!(&pool, |p| sqlx::query_scalar(
        p.sql("SELECT uuid FROM subscribers")
    )
    .fetch_one(p)
    .await)
    .unwrap();
    let token = keys.subscriber_token(&uuid);
    let env = with(vec![], "PAPERPOST__LOG__LEVEL", "debug");
    let mut server = TestDaemon::spawn(&s, &env, &["serve"]);
    let addr = server.addr().await;
    for path in [
        format!("/unsubscribe/{token}"),
        format!("/preferences/{token}"),
    ] {
        let r = support::http::request(&addr, "GET", &path, &[], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    let out = server.stop().await;
    assert!(
        out.stderr.contains("/unsubscribe/{token}"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(&token),
        "a token in the log:\n{}",
        out.stderr
    );
}

/// Issue 16 item 10: an unknown token is turned away before the write lock
/// is taken: random tokens must not queue behind (or hold up) real writes.
/// With another process holding the database, they still get their 404 at
/// once (they waited for the lock: 408).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_never_wait_for_the_write_lock() {
    let site = Site::with(&[
        ("PAPERPOST__HTTP__REQUEST_TIMEOUT", "2s"),
        ("PAPERPOST__DATABASE__BUSY_TIMEOUT", "60s"),
    ])
    .await;
    let blocker = crate::support::WriteLock::take(&site.app.pool).await;
    let random = "7".repeat(64);
    for route in ["preferences", "confirm", "resubscribe"] {
        let r = site
            .post_form(&format!("/{route}/{random}"), "name=x")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{route}");
    }
    blocker.release().await;
}

/// Issue 16 item 2: /metrics tells whether an address is subscribed (a
/// sign-up moves its counters only for a new one), so it is not on the
/// public endpoint: it has a listener of its own (`http.metrics_bind`,
/// loopback by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_apart_from_the_public_endpoint() {
    let site = Site::new().await;
    assert_eq!(site.get("/metrics").await.status, StatusCode::NOT_FOUND);
    let s = support::Sandbox::new();
    let env = crate::support::child::with(vec![], "PAPERPOST__LOG__LEVEL", "info");
    let mut server = crate::support::daemon::TestDaemon::spawn(&s, &env, &["serve"]);
    let public = server.addr().await;
    let log = server.logged("metrics endpoint listening").await;
    let metrics = log
        .split("metrics endpoint listening addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(metrics.starts_with("127.0.0.1:"), "{metrics}");
    let r = support::http::request(&public, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(r.status, 404);
    let r = support::http::request(&metrics, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("paperpost_http_requests_total"),
        "{}",
        r.body
    );
    assert_eq!(server.stop().await.code, 0);
}

/// A database another process holds past `database.busy_timeout` is not
/// our internal error: the page says busy, with 503 and Retry-After, so a
/// client (or a proxy) tries again; nothing is half-saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_answers_503_with_retry_after() {
    let site = Site::with(&[("PAPERPOST__DATABASE__BUSY_TIMEOUT", "300ms")]).await;
    let token = site.subscriber("ada@example.org").await;
    let blocker = crate::support::WriteLock::take(&site.app.pool).await;
    let r = site
        .post_form(
            &format!("/preferences/{token}"),
            "name=Ada&topics=llm&format=text&max_papers=5&timezone=UTC",
        )
        .await;
    blocker.release().await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(
        site.get_subscriber("ada@example.org")
            .await
            .profile
            .max_papers
            .get(),
        10
    );
}
