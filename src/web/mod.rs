//! The web endpoint: the links in every mail (one-click unsubscribe,
//! preferences), the subscribe form with double opt-in, `/healthz` and
//! `/metrics`. Served by `paperpost run` beside the scheduler, or alone by
//! `paperpost serve`.

pub mod error;
pub mod health;
mod pages;
mod preferences;
pub mod server;
pub mod ses;
mod signups;
mod subscribe;
mod unsubscribe;
mod unsubscriber;
mod webhooks;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};

pub use health::Liveness;
pub use server::{Web, bind, serve, start};
pub use signups::SignUps;
pub use unsubscriber::Unsubscriber;

use crate::{app::App, delivery::Engine, digest::Look, links, metrics::HttpLabels};
use error::WebError;

/// The largest request body accepted (forms are a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct WebState(Arc<Inner>);

pub struct Inner {
    pub app: App,
    pub look: Look,
    pub signups: SignUps,
    pub unsubscriber: Unsubscriber,
    /// Standing by, sending or web only: changed at a takeover, while the
    /// endpoint goes on serving (see [`WebState::set_role`]).
    role: std::sync::RwLock<Role>,
    subscribe_limit: DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// How SNS certificates and subscription URLs are fetched (tests inject
    /// their own), and the certificates fetched so far.
    sns_fetch: std::sync::RwLock<ses::Fetch>,
    sns_certs: ses::Certificates,
}

impl std::ops::Deref for WebState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// What this process is, for `/healthz` and `/metrics`.
#[derive(Clone)]
pub struct Role {
    pub liveness: Arc<Liveness>,
    /// The engine, when this process sends.
    pub engine: Option<Arc<Engine>>,
}

impl WebState {
    /// What this process is now.
    pub fn role(&self) -> Role {
        self.role.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This process is now `role` (a standby that took over sending): the
    /// next request sees it; the connections open stay open.
    pub fn set_role(&self, role: Role) {
        *self.role.write().unwrap_or_else(|e| e.into_inner()) = role;
    }

    /// Replaces how SNS certificates and subscription URLs are fetched.
    pub fn set_sns_fetch(&self, fetch: ses::Fetch) {
        *self.sns_fetch.write().expect("sns fetch lock") = fetch;
    }

    /// Forgets the clients whose sign-up limit is back to full (every
    /// minute, or the limiter grows by every address that ever posted).
    pub fn trim_limits(&self) {
        self.subscribe_limit.retain_recent();
        self.subscribe_limit.shrink_to_fit();
    }

    pub fn new(app: App, signups: SignUps, unsubscriber: Unsubscriber, role: Role) -> Self {
        let per_minute = std::num::NonZeroU32::new(app.settings.http.subscribe_per_minute)
            .unwrap_or(std::num::NonZeroU32::MIN);
        WebState(Arc::new(Inner {
            look: Look::from_settings(&app.settings),
            subscribe_limit: RateLimiter::keyed(Quota::per_minute(per_minute)),
            app,
            signups,
            unsubscriber,
            role: std::sync::RwLock::new(role),
            sns_fetch: std::sync::RwLock::new(ses::https_fetch()),
            sns_certs: ses::Certificates::default(),
        }))
    }
}

/// The whole endpoint.
pub fn router(state: WebState) -> Router {
    let timeout = state.app.settings.http.request_timeout;
    Router::new()
        .route(
            links::UNSUBSCRIBE,
            get(unsubscribe::page).post(unsubscribe::unsubscribe),
        )
        .route(links::RESUBSCRIBE, post(unsubscribe::resubscribe))
        .route(
            links::PREFERENCES,
            get(preferences::page).post(preferences::save),
        )
        .route(
            links::SUBSCRIBE,
            get(subscribe::page).post(subscribe::sign_up),
        )
        .route(
            links::CONFIRM,
            get(subscribe::confirm_page).post(subscribe::confirm),
        )
        .route(
            "/webhooks/{provider}",
            post(webhooks::receive).layer(DefaultBodyLimit::max(webhooks::MAX_WEBHOOK_BODY)),
        )
        .route("/", get(subscribe::page))
        .route("/healthz", get(health::healthz))
        .route("/style.css", get(pages::style))
        .fallback(|| async { WebError::NotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // Outside the timeout, so a 408 is counted and gets the headers too.
        .layer(middleware::from_fn_with_state(state.clone(), finish))
        // Spans name the route template, never the path: a token in a log
        // line is a working unsubscribe link.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            tracing::debug_span!(
                "request",
                method = crate::metrics::method_label(req.method()),
                route
            )
        }))
        .with_state(state)
}

/// Every response: an error rendered as a page, the security headers, and the
/// request counted by route and status.
async fn finish(State(state): State<WebState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = crate::metrics::method_label(req.method());
    let mut res = next.run(req).await;
    if let Some(err) = res.extensions_mut().remove::<Arc<WebError>>() {
        res = err.page(&state);
    }
    security_headers(&mut res);
    let m = &state.app.metrics;
    m.http_requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            method,
            status: res.status().as_u16(),
        })
        .inc();
    m.http_seconds
        .get_or_create(&crate::metrics::RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    res
}

fn security_headers(res: &mut Response) {
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name, value: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    };
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         base-uri 'none'; frame-ancestors 'none'",
    );
}

/// The client's address: the socket's peer (set by [`serve`]; loopback when
/// there is none, a request driven in-process by a test), or, when that
/// peer is one of `http.trusted_proxies`, the nearest address in its
/// X-Forwarded-For (or Forwarded) that is not a trusted proxy.
pub struct ClientIp(pub std::net::IpAddr);

impl FromRequestParts<WebState> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &WebState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.ip());
        let trusted = &state.app.settings.http.trusted_proxies;
        Ok(ClientIp(client_ip(peer, &parts.headers, trusted)))
    }
}

/// The client behind `peer` ([`ClientIp`]): right to left through the
/// forwarded addresses, the first that no trusted proxy added.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[crate::config::Network],
) -> std::net::IpAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<std::net::IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let text = v.to_str().unwrap_or("");
        hops.extend(
            text.split(',')
                .filter_map(|h| h.trim().parse::<std::net::IpAddr>().ok()),
        );
    }
    if hops.is_empty() {
        for v in headers.get_all(header::FORWARDED) {
            let text = v.to_str().unwrap_or("");
            hops.extend(text.split([',', ';']).filter_map(forwarded_for));
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// The address in one `for=` element of a Forwarded header (RFC 7239):
/// `for=192.0.2.60`, `for="[2001:db8::1]:4711"`.
fn forwarded_for(element: &str) -> Option<std::net::IpAddr> {
    let (key, value) = element.trim().split_once('=')?;
    if !key.trim().eq_ignore_ascii_case("for") {
        return None;
    }
    let v = value.trim().trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.parse()
        .ok()
        .or_else(|| v.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()))
}

/// What the sign-up limit counts by: an IPv4 address, or an IPv6 /64 (one
/// host commonly has all of one).
pub fn limit_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)).into(),
        },
        v4 => v4,
    }
}

/// The User-Agent header, when it is text.
pub struct UserAgent(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for UserAgent {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(UserAgent(
            parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ))
    }
}

/// True when `token` can be a link token at all: 64 lowercase hex digits.
/// Anything else is turned away without a database lookup.
pub fn token_shape_ok(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A link's token from the path: the preview token (which does nothing), or
/// one shaped like a real token. Anything else is [`WebError::NotFound`]
/// before any lookup.
pub enum Link {
    Preview,
    Token(String),
}

impl<S: Send + Sync> FromRequestParts<S> for Link {
    type Rejection = WebError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, WebError> {
        let axum::extract::Path(token) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| WebError::NotFound)?;
        if token == links::PREVIEW_TOKEN {
            Ok(Link::Preview)
        } else if token_shape_ok(&token) {
            Ok(Link::Token(token))
        } else {
            Err(WebError::NotFound)
        }
    }
}

/// The subscriber a link token (from [`Link`]) belongs to, or [`WebError::NotFound`].
/// `/metrics` alone, for its own listener (`http.metrics_bind`).
pub fn metrics_router(state: WebState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .with_state(state)
}

/// Turns an unknown token away with a read, before a handler takes the
/// write lock: random tokens must not queue behind real writes.
pub async fn known_token(state: &WebState, token: &str) -> Result<(), WebError> {
    let mut conn = state.app.pool.acquire().await?;
    subscriber_for(&mut conn, token).await.map(|_| ())
}

pub async fn subscriber_for(
    conn: &mut crate::store::Conn,
    token: &str,
) -> Result<crate::store::subscribers::Subscriber, WebError> {
    crate::store::subscribers::find_by_token(conn, token)
        .await?
        .ok_or(WebError::NotFound)
}
