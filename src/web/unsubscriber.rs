//! Unsubscribe link uses, written in batches: every one-click or page POST
//! that arrives while a batch is being written joins the next one, which is
//! one short transaction on the process's writing connection whatever its
//! size. A burst of clicks after an edition goes out costs a few statements,
//! not a few per click.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::{
    app::App,
    metrics::{ChannelLabel, Metrics},
    store::subscribers::{self as subs, LinkResult, LinkUse, Unsubscribed},
};

/// The most uses written in one transaction.
const BATCH: usize = 256;

/// The most uses waiting to be written; past it, clicks are answered 503
/// with Retry-After rather than piling up.
const QUEUE: usize = 8192;

type Reply = oneshot::Sender<Result<LinkResult, Failed>>;

/// Why a batch was not written.
#[derive(Clone)]
enum Failed {
    /// The database is locked by another writer, or cannot be reached.
    Busy,
    Other(String),
}

/// The handle the unsubscribe handler sends link uses through.
#[derive(Clone)]
pub struct Unsubscriber {
    tx: mpsc::Sender<(LinkUse, Reply)>,
}

/// What became of an unsubscribe the handler waited for.
pub enum Applied {
    /// Written: whose link it was (`None`: nobody's).
    Done(Option<Unsubscribed>),
    /// Queued, not yet written within the patience given: it will be, and
    /// is logged and counted then.
    Pending,
}

impl Unsubscriber {
    /// Starts the writer on `tracker`; it ends when every handle is dropped.
    pub fn start(app: &App, tracker: &TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(write_batches(
            app.writer.clone(),
            std::sync::Arc::clone(&app.metrics),
            rx,
        ));
        Self { tx }
    }

    /// Unsubscribes the owner of the link, waiting up to `patience` for the
    /// write; `Err(None)` when the queue is full or the database is busy or
    /// out of reach (the answer is then 503: try again).
    pub async fn unsubscribe(
        &self,
        link: LinkUse,
        patience: Duration,
    ) -> Result<Applied, Option<anyhow::Error>> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((link, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => None,
            mpsc::error::TrySendError::Closed(_) => {
                Some(anyhow::anyhow!("the unsubscribe writer has stopped"))
            }
        })?;
        match tokio::time::timeout(patience, answer).await {
            Err(_) => Ok(Applied::Pending),
            Ok(Err(_)) => Err(Some(anyhow::anyhow!("the unsubscribe writer has stopped"))),
            Ok(Ok(Ok(Ok(done)))) => Ok(Applied::Done(done)),
            Ok(Ok(Ok(Err(e)) | Err(Failed::Other(e)))) => Err(Some(anyhow::Error::msg(e))),
            Ok(Ok(Err(Failed::Busy))) => Err(None),
        }
    }
}

async fn write_batches(
    writer: crate::store::Pool,
    metrics: std::sync::Arc<Metrics>,
    mut rx: mpsc::Receiver<(LinkUse, Reply)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (uses, replies): (Vec<LinkUse>, Vec<Reply>) = batch.drain(..).unzip();
        let result = async {
            let mut tx = crate::store::write(&writer).await?;
            let done = subs::unsubscribe_by_links(&mut tx, &uses).await?;
            tx.commit().await?;
            anyhow::Ok(done)
        }
        .await;
        match result {
            Ok(done) => {
                tracing::debug!(uses = done.len(), "wrote a batch of unsubscribes");
                for ((reply, one), link) in replies.into_iter().zip(done).zip(&uses) {
                    report(&metrics, link, &one);
                    let _ = reply.send(Ok(one));
                }
            }
            Err(e) => {
                let failed = if crate::store::is_busy(&e) {
                    tracing::warn!(error = %crate::telemetry::causes(&e), uses = uses.len(), "the database is busy or out of reach: unsubscribes answered 503");
                    Failed::Busy
                } else {
                    tracing::error!(error = %crate::telemetry::causes(&e), uses = uses.len(), "cannot write unsubscribes");
                    Failed::Other(crate::telemetry::causes(&e))
                };
                for reply in replies {
                    let _ = reply.send(Err(failed.clone()));
                }
            }
        }
    }
}

/// Logs and counts one written unsubscribe, whether or not its request is
/// still waiting for it.
fn report(metrics: &Metrics, link: &LinkUse, one: &LinkResult) {
    match one {
        Ok(Some(done)) if done.ended => {
            let channel = link.channel.as_str();
            metrics
                .unsubscribes
                .get_or_create(&ChannelLabel { channel })
                .inc();
            tracing::info!(subscriber = done.owner.id, channel, "unsubscribed by link");
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "cannot unsubscribe by link"),
    }
}
