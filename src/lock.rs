//! The scheduler lock: one process sends for a database at a time. The holder
//! renews it with a heartbeat; a holder that died is taken over.

use std::time::Duration;

use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

use crate::store::{self, deliveries};

/// How long the scheduler lock lasts without a heartbeat.
pub const LOCK_TTL: Duration = Duration::from_secs(30);

/// The scheduler lock: only one process sends for a database at a time.
pub struct Lock {
    pool: SqlitePool,
    me: String,
}

fn host() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// True if `holder` ("host:pid:tag") names a process on this host that is gone.
fn is_dead_local(holder: &str) -> bool {
    let mut parts = holder.split(':');
    let (Some(h), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if h != host() || pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

impl Lock {
    /// Takes the lock, or fails naming the process that holds it. A holder on
    /// this machine that is no longer running is taken over at once.
    pub async fn acquire(pool: &SqlitePool) -> anyhow::Result<Self> {
        let me = format!(
            "{}:{}:{:08x}",
            host(),
            std::process::id(),
            fastrand::u32(..)
        );
        let ttl = LOCK_TTL.as_millis() as i64;
        let mut conn = pool.acquire().await?;
        let Some(other) = deliveries::try_lock(&mut conn, &me, ttl, None).await? else {
            return Ok(Self {
                pool: pool.clone(),
                me,
            });
        };
        if is_dead_local(&other.holder)
            && deliveries::try_lock(&mut conn, &me, ttl, Some(&other.holder))
                .await?
                .is_none()
        {
            tracing::warn!(previous = %other.holder, "took over the lock of a paperpost process that is no longer running");
            return Ok(Self {
                pool: pool.clone(),
                me,
            });
        }
        let left = ((other.expires_at - store::now_ms()) / 1000).max(0);
        anyhow::bail!(
            "another paperpost process ({}) is sending for this database; only one may at a time \
             (its lock expires {left} s after it stops)",
            other.holder
        )
    }

    /// Renews the lock until `shutdown`, calling `renewed` after each renewal;
    /// losing it cancels `shutdown`.
    pub fn heartbeat(
        &self,
        shutdown: CancellationToken,
        renewed: impl Fn() + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let pool = self.pool.clone();
        let me = self.me.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LOCK_TTL / 3) => {}
                    _ = shutdown.cancelled() => return,
                }
                let result = async {
                    let mut conn = pool.acquire().await?;
                    anyhow::Ok(
                        deliveries::renew_lock(&mut conn, &me, LOCK_TTL.as_millis() as i64).await?,
                    )
                }
                .await;
                match result {
                    Ok(true) => renewed(),
                    Ok(false) => {
                        tracing::error!("lost the scheduler lock to another process; stopping");
                        shutdown.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the scheduler lock; retrying")
                    }
                }
            }
        }
    }

    pub async fn release(self) {
        if let Ok(mut conn) = self.pool.acquire().await {
            let _ = deliveries::release_lock(&mut conn, &self.me).await;
        }
    }
}

/// After taking the lock: rows that were being sent when the last holder
/// stopped go back to the queue.
pub async fn recover(pool: &SqlitePool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let n = deliveries::release_in_flight(&mut conn).await?;
    if n > 0 {
        tracing::warn!(
            messages = n,
            "messages were being sent when paperpost last stopped; they are sent again (a recipient may get one twice)"
        );
    }
    Ok(())
}
