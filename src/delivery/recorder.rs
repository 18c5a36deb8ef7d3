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

/// A status check: the subscriber, and where its standing goes.
type Check = (i64, tokio::sync::oneshot::Sender<Standing>);

/// An outcome to write, with the status check of its worker's next message
/// when it has one: the check is answered by the write's own round trip.
struct Record {
    outcome: Outcome,
    check: Option<Check>,
    written: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Group commit for the workers: outcomes that arrive together are written in
/// one transaction (the sent rows with one statement) and the status checks
/// that came with them are answered in the same round trip (one statement on
/// PostgreSQL); checks asked on their own are answered together with one
/// query, on another connection. A
/// worker waits for its outcome to be committed before its next message's
/// body goes out, so a crash can lose at most the outcomes of the messages in
/// flight.
pub(super) struct Recorder {
    checks: tokio::sync::mpsc::UnboundedSender<Check>,
    records: tokio::sync::mpsc::UnboundedSender<Record>,
}

impl Recorder {
    pub(super) fn start(
        pool: crate::store::Pool,
        writer: crate::store::Pool,
        token: i64,
        bounce_threshold: i64,
    ) -> Self {
        let (checks, check_rx) = tokio::sync::mpsc::unbounded_channel();
        let (records, record_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(answer_checks(pool.own(1), check_rx));
        tokio::spawn(write_records(
            writer.own(1),
            record_rx,
            (token, bounce_threshold),
        ));
        Self { checks, records }
    }

    /// Asks whether a subscriber is still active.
    pub(super) fn ask_status(&self, subscriber_id: i64) -> StatusReply {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.checks.send((subscriber_id, tx));
        rx
    }

    /// Asks for an outcome to be written; the answer comes once it is committed.
    pub(super) fn ask_record(&self, outcome: Outcome) -> RecordReply {
        self.ask_record_checking(outcome, None).0
    }

    /// [`Recorder::ask_record`], and whether `next` (a subscriber) is still
    /// active, read once the outcome is written.
    pub(super) fn ask_record_checking(
        &self,
        outcome: Outcome,
        next: Option<i64>,
    ) -> (RecordReply, Option<StatusReply>) {
        let (written, written_rx) = tokio::sync::oneshot::channel();
        let (check, status) = match next {
            Some(id) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some((id, tx)), Some(rx))
            }
            None => (None, None),
        };
        let record = Record {
            outcome,
            check,
            written,
        };
        let _ = self.records.send(record);
        (written_rx, status)
    }
}

pub(super) type RecordReply = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// Takes what is waiting in `rx` after `first`, up to 1,024 in all.
fn drain<T>(first: T, rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < 1024 {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    batch
}

/// Answers the checks asked on their own (a worker's first, and those asked
/// again because the answer grew old), those waiting together with one query.
async fn answer_checks(
    pool: crate::store::Pool,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Check>,
) {
    let mut conn = Held::new(pool);
    while let Some(checks) = conn.next(&mut rx).await {
        let ids: Vec<i64> = checks.iter().map(|(id, _)| *id).collect();
        let statuses = async {
            let c = conn.get().await?;
            anyhow::Ok(subscribers::statuses(c, &ids).await?)
        };
        let statuses = statuses.await;
        conn.done(statuses.is_ok());
        answer(checks, &statuses.map_err(|e| crate::telemetry::causes(&e)));
    }
}

/// A connection of the recorder's: on PostgreSQL kept from one batch to the
/// next (sqlx pings a connection as it is taken from its pool and as it is
/// handed back: two round trips more per batch), and handed back after an
/// error or [`HELD_IDLE`] without work. On SQLite taken for each batch: the
/// writer is the process's one writing connection, shared.
struct Held {
    pool: crate::store::Pool,
    conn: Option<crate::store::Pooled>,
}

/// How long the recorder keeps a PostgreSQL connection with nothing to do.
const HELD_IDLE: Duration = Duration::from_secs(30);

impl Held {
    fn new(pool: crate::store::Pool) -> Self {
        Self { pool, conn: None }
    }

    /// The next batch from `rx` (`None` once it is closed); the connection
    /// is let go while none comes for [`HELD_IDLE`].
    async fn next<T>(
        &mut self,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> Option<Vec<T>> {
        let first = match tokio::time::timeout(HELD_IDLE, rx.recv()).await {
            Ok(first) => first?,
            Err(_) => {
                self.conn = None;
                rx.recv().await?
            }
        };
        Some(drain(first, rx))
    }

    async fn get(&mut self) -> Result<&mut crate::store::Conn, sqlx::Error> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => self.pool.acquire().await?,
        };
        Ok(&mut **self.conn.insert(conn))
    }

    /// After a batch: the connection is kept if it did well, on PostgreSQL.
    fn done(&mut self, ok: bool) {
        if !ok || !self.pool.is_postgres() {
            self.conn = None;
        }
    }
}

/// Sends each check its subscriber's standing from `statuses`.
fn answer(checks: Vec<Check>, statuses: &Result<Statuses, String>) {
    for (id, reply) in checks {
        let standing = match statuses {
            Ok(m) => match m.get(&id).map(String::as_str) {
                Some("active") => Standing::Active,
                Some(other) => Standing::Ended(other.to_string()),
                None => Standing::Ended("deleted".to_string()),
            },
            Err(e) => Standing::Unknown(e.clone()),
        };
        let _ = reply.send(standing);
    }
}

type Statuses = std::collections::HashMap<i64, String>;

/// Writes outcomes in the order they came (an undone refusal after the
/// refusal), one transaction at a time, each taking every outcome that
/// arrived while the one before was written: the slower a commit, the more
/// outcomes the next one carries.
async fn write_records(
    writer: crate::store::Pool,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Record>,
    (token, bounce_threshold): (i64, i64),
) {
    let mut conn = Held::new(writer);
    while let Some(batch) = conn.next(&mut rx).await {
        let mut items = Vec::with_capacity(batch.len());
        let mut checks = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for r in batch {
            items.push(r.outcome);
            checks.extend(r.check);
            replies.push(r.written);
        }
        let ids: Vec<i64> = checks.iter().map(|(id, _)| *id).collect();
        let statuses = write_patiently(&mut conn, token, &items, &ids, bounce_threshold)
            .await
            .map_err(|e| crate::telemetry::causes(&e));
        let written = statuses.as_ref().map(|_| ()).map_err(Clone::clone);
        answer(checks, &statuses);
        for reply in replies {
            let _ = reply.send(written.clone());
        }
    }
}

pub(super) type StatusReply = tokio::sync::oneshot::Receiver<Standing>;

/// How long outcomes wait for a database that another process keeps locked
/// (a large import, a backup) before the error is given up on. Meanwhile the
/// workers hold their next message before its body: an outcome not written
/// means a message sent twice, so not sending is the better wait.
pub(super) const RECORD_PATIENCE: Duration = Duration::from_secs(600);

/// Writes `items` (see [`write_outcomes`]), waiting out a database another
/// process keeps locked; returns the standing of each of `check`.
async fn write_patiently(
    conn: &mut Held,
    token: i64,
    items: &[Outcome],
    check: &[i64],
    bounce_threshold: i64,
) -> anyhow::Result<Statuses> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut warned = false;
    loop {
        let written = match conn.get().await {
            Ok(c) => write_outcomes(c, token, items, check, bounce_threshold).await,
            Err(e) => Err(e.into()),
        };
        conn.done(written.is_ok());
        match written {
            Err(e) if store::is_busy(&e) && start.elapsed() < RECORD_PATIENCE => {
                if !warned {
                    tracing::warn!(error = %crate::telemetry::causes(&e), "the database is busy (locked by another process) or out of reach; waiting to record delivery outcomes");
                    warned = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Ok(statuses) if warned => {
                tracing::info!(waited = ?start.elapsed(), "the database answers again; outcomes recorded");
                return Ok(statuses);
            }
            other => return other,
        }
    }
}

/// Writes `items` in one transaction, then reads the standing of each of
/// `check`.
async fn write_outcomes(
    conn: &mut crate::store::Conn,
    token: i64,
    items: &[Outcome],
    check: &[i64],
    bounce_threshold: i64,
) -> anyhow::Result<Statuses> {
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
        let (written, statuses) =
            deliveries::mark_sent_many_checking(conn, token, &sent, check).await?;
        warn_not_ours(sent_n - written);
        return Ok(statuses);
    }
    let mut tx = store::begin(&mut *conn).await?;
    for o in items {
        write_one(&mut *tx, token, o, bounce_threshold).await?;
    }
    if !sent.is_empty() {
        let written = deliveries::mark_sent_many(&mut *tx, token, &sent).await?;
        warn_not_ours(sent_n - written);
    }
    let statuses = match check {
        [] => Statuses::new(),
        ids => subscribers::statuses(&mut *tx, ids).await?,
    };
    tx.commit().await?;
    Ok(statuses)
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
