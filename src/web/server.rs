//! The HTTP server: our own accept loop over hyper so that slow clients are
//! bounded (headers within [`HEADER_TIMEOUT`], a request within
//! `http.request_timeout`, a head of at most [`MAX_HEAD`] bytes), and shutdown
//! lets requests in flight finish.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, extract::ConnectInfo};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use super::{Role, SignUps, Unsubscriber, WebState, router};
use crate::{app::App, store};

/// A client must send its request line and headers within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long requests in flight may take to finish at shutdown.
pub const GRACE: Duration = Duration::from_secs(10);

/// How long a connection open at shutdown keeps being served before it is
/// closed once idle: long enough for a request just sent to arrive.
const SETTLE: Duration = Duration::from_millis(250);
/// How often unconfirmed sign-ups past `subscribers.pending_ttl` are removed.
const EXPIRY_EVERY: Duration = Duration::from_secs(3600);
/// Connections the metrics listener keeps open at once (Prometheus needs one).
const METRICS_CONNECTIONS: usize = 16;
/// What a connection past the cap is told before it is closed.
const SHED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\nConnection: close\r\n\r\n\
Too many requests.\n";

/// How many connections the endpoint serves at once, and what it does past
/// that: answer 503 and close at once, so a descriptor is held only for a
/// moment and the rest stay free for the engine.
#[derive(Clone)]
pub struct Connections {
    slots: Arc<tokio::sync::Semaphore>,
    shed: prometheus_client::metrics::counter::Counter,
}

impl Connections {
    pub fn new(max: usize, shed: prometheus_client::metrics::counter::Counter) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            shed,
        }
    }
}

/// Descriptors kept for everything but web connections: the database pools,
/// the mail server connections, both listeners, the log, files read and
/// written (secret, papers, outbox), and a margin.
fn reserved_descriptors(app: &App) -> u64 {
    let s = &app.settings;
    128 + u64::from(s.database.max_connections)
        + 2 * u64::from(s.mail.concurrency)
        + METRICS_CONNECTIONS as u64
}

/// Raises the soft limit on open files to the hard one (as Go's runtime
/// does; systemd's soft default is 1024); returns the soft limit now.
fn raise_descriptor_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `l`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return u64::MAX;
        }
        if l.rlim_cur < l.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                l = raised;
            }
        }
    }
    l.rlim_cur
}

/// `http.max_connections`, lowered (with a warning) to fit under the limit
/// on open files with the engine's reserve.
fn connection_cap(app: &App) -> usize {
    let wanted = app.settings.http.max_connections;
    let limit = raise_descriptor_limit();
    let room = limit.saturating_sub(reserved_descriptors(app)).max(16);
    if (wanted as u64) <= room {
        return wanted;
    }
    tracing::warn!(
        http.max_connections = wanted,
        open_files_limit = limit,
        using = room,
        "http.max_connections does not fit under the limit on open files with the engine's reserve; \
         raise LimitNOFILE (the unit sets 65536) or lower http.max_connections"
    );
    room as usize
}

/// The web endpoint's socket on `http.bind`, bound before anything else so
/// that a taken port stops the start at once.
pub fn bind(app: &App) -> anyhow::Result<std::net::TcpListener> {
    let bind = app.settings.http.bind;
    let listener = std::net::TcpListener::bind(bind)
        .with_context(|| format!("cannot listen on http.bind {bind}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The web endpoint [`start`] serves until its shutdown.
pub struct Web {
    state: WebState,
    /// The serving thread's id, once it runs.
    thread: Arc<std::sync::OnceLock<libc::pid_t>>,
}

impl Web {
    /// This process sends from now on (a standby took over): `/healthz` and
    /// `/metrics` speak for `role`, and requests yield to the engine. The
    /// endpoint serves on: no connection is closed, none waits.
    pub fn become_sender(&self, role: Role) {
        self.state.set_role(role);
        if let Some(&tid) = self.thread.get() {
            yield_to_the_engine(tid);
        }
    }
}

/// Serves the endpoint on `listener` as `role` until `shutdown`: requests on
/// a thread of their own, its other tasks on `tracker`.
pub async fn start(
    app: &App,
    listener: std::net::TcpListener,
    role: Role,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<Web> {
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    warn_if_not_https(app);
    let signups = SignUps::start(app, tracker)?;
    let unsubscriber = Unsubscriber::start(app, tracker);
    let state = WebState::new(app.clone(), signups, unsubscriber, role);
    tracker.spawn(expire_pending(app.clone(), shutdown.clone()));
    tracker.spawn(trim_limits(state.clone(), shutdown.clone()));
    if let Some(bind) = app.settings.http.metrics_bind {
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on http.metrics_bind {bind}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics endpoint listening");
        let metrics = super::metrics_router(state.clone());
        let stop = shutdown.clone();
        let slots = Connections::new(METRICS_CONNECTIONS, app.metrics.http_shed.clone());
        tracker.spawn(async move {
            if let Err(e) = serve(listener, metrics, slots, stop).await {
                tracing::error!(error = %crate::telemetry::causes(&e), "the metrics endpoint stopped");
            }
        });
    }
    let max_connections = connection_cap(app);
    let slots = Connections::new(max_connections, app.metrics.http_shed.clone());
    let thread = spawn_thread(
        listener.into_std()?,
        state.clone(),
        slots,
        tracker,
        shutdown,
    )?;
    tracing::info!(%addr, public_url = %app.settings.http.public_url, max_connections, "web endpoint listening");
    Ok(Web { state, thread })
}

/// Serves requests on a thread of their own, so answering them never waits
/// for (or delays) the delivery engine on the main thread; not a pooled
/// blocking thread, as its priority is lowered for good once this process
/// sends. `tracker` waits for it. Returns where its id will be.
fn spawn_thread(
    listener: std::net::TcpListener,
    state: WebState,
    slots: Connections,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<std::sync::OnceLock<libc::pid_t>>> {
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    tracker.spawn(async move {
        let _ = finished.await;
    });
    let thread = Arc::new(std::sync::OnceLock::new());
    let tid = Arc::clone(&thread);
    std::thread::Builder::new()
        .name("paperpost-web".into())
        .spawn(move || {
            let _done = done;
            // SAFETY: gettid takes nothing and returns this thread's id.
            let me = unsafe { libc::gettid() };
            let _ = tid.set(me);
            if state.role().engine.is_some() {
                yield_to_the_engine(me);
            }
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        serve(listener, router(state), slots, shutdown).await
                    })
                });
            if let Err(e) = served {
                tracing::error!(error = %crate::telemetry::causes(&e), "the web endpoint stopped");
            }
        })?;
    Ok(thread)
}

/// How much nicer than the rest of the process the web thread runs.
const WEB_NICE: libc::c_int = 10;

/// Lowers thread `tid`'s CPU priority (Linux's nice is per thread): when
/// the cores are busy, the delivery engine keeps its pace and requests get a
/// smaller share, which they can spare (milliseconds against a 50 ms p99).
fn yield_to_the_engine(tid: libc::pid_t) {
    // SAFETY: getpriority and setpriority take and return plain integers.
    let r = unsafe {
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, now + WEB_NICE)
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the web thread's priority");
    }
}

/// RFC 8058 one-click needs https; mailbox providers ignore it otherwise.
fn warn_if_not_https(app: &App) {
    let url = &app.settings.http.public_url;
    let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if app.settings.mail.transport == crate::config::TransportKind::Smtp
        && url.scheme() != "https"
        && !local
    {
        tracing::warn!(
            public_url = %url,
            "http.public_url is not https: mailbox providers ignore one-click unsubscribe without it"
        );
    }
}

/// Trims the per-client limits every minute until `shutdown`.
async fn trim_limits(state: super::WebState, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => state.trim_limits(),
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn expire_pending(app: App, shutdown: CancellationToken) {
    loop {
        let ttl = app.settings.subscribers.pending_ttl;
        let result = async {
            let mut conn = app.pool.acquire().await?;
            anyhow::Ok(store::subscribers::expire_pending(&mut conn, ttl).await?)
        }
        .await;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "forgot sign-ups that were never confirmed"),
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::causes(&e), "cannot remove expired sign-ups")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Accepts connections until `shutdown`, then lets requests in flight finish
/// (up to [`GRACE`]). Past `slots`' cap, a connection is answered 503 and
/// closed at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    slots: Connections,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = Arc::clone(&slots.slots).try_acquire_owned() else {
            // Non-blocking: the 503 fits an empty socket buffer, or is lost.
            let _ = stream.try_write(SHED);
            slots.shed.inc();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.cancelled() => {}
            }
            // A connection accepted a moment ago may not have sent its request
            // yet, and a graceful shutdown closes a connection with no request
            // in progress: the request would fail (a client whose request
            // crossed the stop, or one a load balancer still sends here). It
            // gets a moment to arrive and be answered first.
            if tokio::time::timeout(SETTLE, conn.as_mut()).await.is_ok() {
                return;
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    connections.close();
    if tokio::time::timeout(GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after the grace period; closing them");
    }
    Ok(())
}
