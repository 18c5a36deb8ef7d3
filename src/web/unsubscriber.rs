//! Unsubscribe link uses, written in batches: every one-click or page POST
//! that arrives while a batch is being written joins the next one, which is
//! one short transaction on the process's writing connection whatever its
//! size. A burst of clicks after an edition goes out costs a few statements,
//! not a few per click.

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::{
    app::App,
    store::subscribers::{self as subs, LinkUse, Unsubscribed},
};

/// The most uses written in one transaction.
const BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Option<Unsubscribed>, String>>;

/// The handle the unsubscribe handler sends link uses through.
#[derive(Clone)]
pub struct Unsubscriber {
    tx: mpsc::UnboundedSender<(LinkUse, Reply)>,
}

impl Unsubscriber {
    /// Starts the writer on `tracker`; it ends when every handle is dropped.
    pub fn start(app: &App, tracker: &TaskTracker) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tracker.spawn(write_batches(app.writer.clone(), rx));
        Self { tx }
    }

    /// Unsubscribes the owner of the link, once committed; `None` for a token
    /// nobody has.
    pub async fn unsubscribe(&self, link: LinkUse) -> anyhow::Result<Option<Unsubscribed>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((link, reply))
            .map_err(|_| anyhow::anyhow!("the unsubscribe writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the unsubscribe writer has stopped"))?
            .map_err(anyhow::Error::msg)
    }
}

async fn write_batches(
    writer: sqlx::SqlitePool,
    mut rx: mpsc::UnboundedReceiver<(LinkUse, Reply)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (uses, replies): (Vec<LinkUse>, Vec<Reply>) = batch.drain(..).unzip();
        let result = async {
            let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
            let done = subs::unsubscribe_by_links(&mut tx, &uses).await?;
            tx.commit().await?;
            anyhow::Ok(done)
        }
        .await;
        match result {
            Ok(done) => {
                tracing::debug!(uses = done.len(), "wrote a batch of unsubscribes");
                for (reply, one) in replies.into_iter().zip(done) {
                    let _ = reply.send(one);
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
