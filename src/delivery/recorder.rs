//! The recorder: group commit for the workers' status checks and outcomes.

use super::*;

/// A retry that does not count as an attempt: the failure said nothing
/// about the message (the server was down, the status could not be checked).
pub(super) fn uncounted(id: i64, reason: String, next_at: i64) -> (Outcome, Tally) {
    let counted = false;
    (
        Outcome::Retry {
            id,
            reason,
            next_at,
            counted,
        },
        Tally::Retried,
    )
}

/// Which progress counter an outcome moves.
#[derive(Debug, Clone, Copy)]
pub(super) enum Tally {
    Sent,
    Failed,
    Cancelled,
    Retried,
}

/// What happened to one delivery row.
#[derive(Debug)]
pub(super) enum Outcome {
    Sent {
        id: i64,
        reply: String,
        message_id: String,
    },
    Retry {
        id: i64,
        reason: String,
        next_at: i64,
        counted: bool,
    },
    /// Failed; `bounce` names a subscriber whose mailbox does not exist.
    Failed {
        id: i64,
        reason: String,
        bounce: Option<i64>,
    },
    Final {
        id: i64,
        status: crate::domain::DeliveryStatus,
        reason: String,
    },
    /// A refusal taken back (the server refused everyone): a failed row goes
    /// back to the queue, uncounted, and a bounce it counted is taken back.
    Undo { id: i64, bounce: Option<i64> },
}

/// A subscriber's standing, re-checked just before sending.
#[derive(Debug)]
pub(super) enum Standing {
    Active,
    /// Unsubscribed, bounced or deleted: never sent.
    Ended(String),
    /// The database could not say: not sent now, tried again.
    Unknown(String),
    /// Not asked: this process may not send now ([`Fence`]).
    Fenced,
}

pub(super) enum Request {
    /// Is this subscriber still active?
    Status(i64, tokio::sync::oneshot::Sender<Standing>),
    Record(Outcome, tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Group commit for the workers: status checks and outcomes that arrive
/// together are answered with one query and written in one transaction (the
/// sent rows with one statement), the two at once on separate connections. A
/// worker waits for its outcome to be committed before its next message's body
/// goes out, so a crash can lose at most the outcomes of the messages in flight.
pub(super) struct Recorder {
    tx: tokio::sync::mpsc::UnboundedSender<Request>,
}

impl Recorder {
    pub(super) fn start(
        pool: crate::store::Pool,
        writer: crate::store::Pool,
        token: i64,
        bounce_threshold: i64,
    ) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
        // On SQLite one batch at a time (one writer, in this process). On
        // PostgreSQL a few at once, each on its own connection: a batch's
        // checks then wait for no earlier batch's round trip. Outcomes are
        // still written in the order they came (an undone refusal after the
        // refusal): each batch's writes wait for the previous batch's.
        let in_flight = if writer.is_postgres() { 4 } else { 1 };
        let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
        tokio::spawn(async move {
            let mut previous: Option<tokio::sync::oneshot::Receiver<()>> = None;
            loop {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < 1024 {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let (pool, writer) = (pool.clone(), writer.clone());
                let (done, written) = tokio::sync::oneshot::channel();
                let order = (previous.replace(written), done);
                tokio::spawn(async move {
                    answer_batch(&pool, &writer, (token, bounce_threshold), batch, order).await;
                    drop(slot);
                });
            }
        });
        Self { tx }
    }

    /// Asks whether a subscriber is still active.
    pub(super) fn ask_status(&self, subscriber_id: i64) -> StatusReply {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Request::Status(subscriber_id, tx));
        rx
    }

    /// Asks for an outcome to be written; the answer comes once it is committed.
    pub(super) fn ask_record(
        &self,
        outcome: Outcome,
    ) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Request::Record(outcome, tx));
        rx
    }
}

/// One batch: its status checks answered on the pool while its outcomes are
/// written on the writer's connection.
async fn answer_batch(
    pool: &crate::store::Pool,
    writer: &crate::store::Pool,
    (token, bounce_threshold): (i64, i64),
    batch: Vec<Request>,
    (previous, done): (
        Option<tokio::sync::oneshot::Receiver<()>>,
        tokio::sync::oneshot::Sender<()>,
    ),
) {
    let mut checks = Vec::new();
    let mut outcomes = Vec::new();
    for r in batch {
        match r {
            Request::Status(id, reply) => checks.push((id, reply)),
            Request::Record(o, reply) => outcomes.push((o, reply)),
        }
    }
    // The checks read on the pool while the outcomes are written on
    // the writer's connection: two threads, at the same time.
    let check = async {
        if checks.is_empty() {
            return;
        }
        let ids: Vec<i64> = checks.iter().map(|(id, _)| *id).collect();
        let statuses = subscribers::statuses(pool, &ids).await;
        for (id, reply) in checks {
            let answer = match &statuses {
                Ok(m) => match m.get(&id).map(String::as_str) {
                    Some("active") => Standing::Active,
                    Some(other) => Standing::Ended(other.to_string()),
                    None => Standing::Ended("deleted".to_string()),
                },
                Err(e) => Standing::Unknown(format!("{e:#}")),
            };
            let _ = reply.send(answer);
        }
    };
    let record = async {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        if outcomes.is_empty() {
            let _ = done.send(());
            return;
        }
        let (items, replies): (Vec<_>, Vec<_>) = outcomes.into_iter().unzip();
        let result = write_patiently(writer, token, &items, bounce_threshold)
            .await
            .map_err(|e| format!("{e:#}"));
        let _ = done.send(());
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    };
    tokio::join!(check, record);
}

pub(super) type StatusReply = tokio::sync::oneshot::Receiver<Standing>;

/// How long outcomes wait for a database that another process keeps locked
/// (a large import, a backup) before the error is given up on. Meanwhile the
/// workers hold their next message before its body: an outcome not written
/// means a message sent twice, so not sending is the better wait.
pub(super) const RECORD_PATIENCE: Duration = Duration::from_secs(600);

pub(super) async fn write_patiently(
    writer: &crate::store::Pool,
    token: i64,
    items: &[Outcome],
    bounce_threshold: i64,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut warned = false;
    loop {
        match write_outcomes(writer, token, items, bounce_threshold).await {
            Err(e) if store::is_busy(&e) && start.elapsed() < RECORD_PATIENCE => {
                if !warned {
                    tracing::warn!(error = %format!("{e:#}"), "the database is locked by another process; waiting to record delivery outcomes");
                    warned = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Ok(()) if warned => {
                tracing::info!(waited = ?start.elapsed(), "the database is free again; outcomes recorded");
                return Ok(());
            }
            other => return other,
        }
    }
}

pub(super) async fn write_outcomes(
    writer: &crate::store::Pool,
    token: i64,
    items: &[Outcome],
    bounce_threshold: i64,
) -> anyhow::Result<()> {
    let sent: Vec<deliveries::SentRow> = items
        .iter()
        .filter_map(|o| match o {
            Outcome::Sent {
                id,
                reply,
                message_id,
            } => Some(deliveries::SentRow {
                id: *id,
                reply,
                message_id,
            }),
            _ => None,
        })
        .collect();
    let sent_n = sent.len() as u64;
    let all_sent = sent_n == items.len() as u64;
    // The common case, a batch of accepted messages: one statement, autocommit.
    if all_sent && !sent.is_empty() {
        let mut conn = writer.acquire().await?;
        let written = deliveries::mark_sent_many(&mut conn, token, &sent).await?;
        warn_not_ours(sent_n - written);
        return Ok(());
    }
    let mut tx = writer.begin().await?;
    for o in items {
        write_one(&mut tx, token, o, bounce_threshold).await?;
    }
    if !sent.is_empty() {
        let written = deliveries::mark_sent_many(&mut tx, token, &sent).await?;
        warn_not_ours(sent_n - written);
    }
    tx.commit().await?;
    Ok(())
}

/// Writes one outcome other than a plain "sent" (those go in one statement).
async fn write_one(
    tx: &mut crate::store::Conn,
    token: i64,
    o: &Outcome,
    bounce_threshold: i64,
) -> anyhow::Result<()> {
    match o {
        Outcome::Sent { .. } => {}
        Outcome::Retry {
            id,
            reason,
            next_at,
            counted,
        } => {
            deliveries::mark_retry(tx, token, *id, reason, *next_at, *counted).await?;
        }
        Outcome::Final { id, status, reason } => {
            if !deliveries::mark_final(tx, token, *id, *status, reason).await? {
                warn_not_ours(1);
            }
        }
        Outcome::Undo { id, bounce } => {
            let undone = deliveries::undo_refusal(tx, *id).await?;
            if let (true, Some(subscriber_id)) = (undone, bounce) {
                subscribers::undo_bounce(tx, *subscriber_id, bounce_threshold).await?;
            }
        }
        Outcome::Failed { id, reason, bounce } => {
            if !deliveries::mark_final(
                tx,
                token,
                *id,
                crate::domain::DeliveryStatus::Failed,
                reason,
            )
            .await?
            {
                warn_not_ours(1);
                return Ok(());
            }
            if let Some(subscriber_id) = *bounce {
                let n = deliveries::add_hard_bounce(tx, subscriber_id).await?;
                if n >= bounce_threshold {
                    subscribers::end_subscription(
                        tx,
                        subscriber_id,
                        SubscriberStatus::Bounced,
                        crate::domain::EndedBy::Bounce,
                    )
                    .await?;
                    tracing::warn!(
                        subscriber = subscriber_id,
                        bounces = n,
                        "marked bounced; no more mail goes to this address"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Outcomes of rows that are no longer this process's (it lost the sending
/// lock and the next holder took them back) are not written.
pub(super) fn warn_not_ours(n: u64) {
    if n > 0 {
        tracing::warn!(
            outcomes = n,
            "outcomes not recorded: their messages now belong to the process that took over the              sending lock (a recipient may get one twice)"
        );
    }
}
