//! Logging: tracing to stderr, as text for people or JSON for collectors. The
//! level can change while running (SIGHUP); addresses are shown at info level
//! only with `log.addresses`.

use std::sync::{
    OnceLock,
    atomic::{AtomicBool, Ordering},
};

use tracing_subscriber::{EnvFilter, Registry, fmt, prelude::*, reload};

use crate::config::{LogFormat, LogSettings};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static ADDRESSES: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(settings: &LogSettings) {
    ADDRESSES.store(settings.addresses, Ordering::Relaxed);
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok());
    let env_wins = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&settings.level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match settings.format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
    };
    if installed.is_ok() && !env_wins {
        let _ = FILTER.set(handle);
    }
}

/// Applies changed log settings while running (`RUST_LOG`, when set, stays).
pub fn reload(settings: &LogSettings) {
    ADDRESSES.store(settings.addresses, Ordering::Relaxed);
    if let Some(handle) = FILTER.get()
        && let Err(e) = handle.reload(EnvFilter::new(&settings.level))
    {
        tracing::warn!(error = %e, "cannot change the log level");
    }
}

/// An email address as info-level logs show it: itself with `log.addresses`,
/// else only its domain.
pub fn address(email: &str) -> String {
    if ADDRESSES.load(Ordering::Relaxed) {
        return email.to_string();
    }
    match email.rsplit_once('@') {
        Some((_, domain)) => format!("…@{domain}"),
        None => "…".to_string(),
    }
}

/// `e` and its causes, joined as `{e:#}` joins them, without a cause whose
/// text the one before it already ends with: sqlx's errors, and ours that
/// wrap them, print their source and also return it, so `{e:#}` read
/// "…: database is locked: database is locked".
pub fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if previous.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}
