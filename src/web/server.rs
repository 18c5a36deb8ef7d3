//! The HTTP server: our own accept loop over hyper so that slow clients are
//! bounded (headers within [`HEADER_TIMEOUT`], a request within
//! `http.request_timeout`, a head of at most [`MAX_HEAD`] bytes), and shutdown
//! lets requests in flight finish.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, extract::ConnectInfo};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use super::{ConfirmationMailer, Liveness, Unsubscriber, WebState, router};
use crate::{app::App, delivery::Engine, store};

/// A client must send its request line and headers within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long requests in flight may take to finish at shutdown.
pub const GRACE: Duration = Duration::from_secs(10);
/// How often unconfirmed sign-ups past `subscribers.pending_ttl` are removed.
const EXPIRY_EVERY: Duration = Duration::from_secs(3600);

/// Binds `http.bind` and serves the endpoint on `tracker` until `shutdown`.
/// Returns the address it listens on (the port is chosen when it is 0).
pub async fn start(
    app: &App,
    liveness: Arc<Liveness>,
    engine: Option<Arc<Engine>>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let bind = app.settings.http.bind;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on http.bind {bind}"))?;
    let addr = listener.local_addr()?;
    warn_if_not_https(app);
    let confirmations = ConfirmationMailer::start(app, tracker)?;
    let unsubscriber = Unsubscriber::start(app, tracker);
    let state = WebState::new(app.clone(), confirmations, unsubscriber, liveness, engine);
    tracker.spawn(expire_pending(app.clone(), shutdown.clone()));
    tracker.spawn(trim_limits(state.clone(), shutdown.clone()));
    if let Some(bind) = app.settings.http.metrics_bind {
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on http.metrics_bind {bind}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics endpoint listening");
        let metrics = super::metrics_router(state.clone());
        let stop = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = serve(listener, metrics, stop).await {
                tracing::error!(error = %format!("{e:#}"), "the metrics endpoint stopped");
            }
        });
    }
    // Requests are served on a thread of their own, so answering them never
    // waits for (or delays) the delivery engine on the main thread.
    let listener = listener.into_std()?;
    tracker.spawn_blocking(move || {
        let served = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve(listener, router(state), shutdown).await
                })
            });
        if let Err(e) = served {
            tracing::error!(error = %format!("{e:#}"), "the web endpoint stopped");
        }
    });
    tracing::info!(%addr, public_url = %app.settings.http.public_url, "web endpoint listening");
    Ok(addr)
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
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot remove expired sign-ups"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Accepts connections until `shutdown`, then lets requests in flight finish
/// (up to [`GRACE`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
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
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
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
