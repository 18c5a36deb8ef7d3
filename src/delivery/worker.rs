//! A worker: composes one reader's digest, sends it on the worker's
//! connection, and decides what the outcome means.

use super::*;
use tracing::Instrument;

/// The claimed rows waiting for a worker, shared by the workers.
pub(super) type Jobs = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Job>>>;

/// The next job, the check of its reader's standing, and when that was asked.
type Next = Option<(Job, StatusReply, Instant)>;

impl Engine {
    /// One worker: sends the jobs it takes from `jobs` on a connection of its
    /// own until the claimer stops. The previous message's outcome is written
    /// while the next one is composed and its MAIL, RCPT and DATA go out; the
    /// next waits for it only at its point of no return (the server's 354),
    /// so no worker ever has more than one message delivered but not recorded.
    /// The next reader's status check goes with the outcome and is answered
    /// by the same round trip, just before that reader's body.
    pub(super) async fn work(
        self: Arc<Self>,
        jobs: Jobs,
        in_flight: Arc<AtomicU64>,
        shutdown: CancellationToken,
    ) {
        let engine = Arc::clone(&self);
        let _present = WorkerPresence::new(&engine.health);
        let mut sender = self.mailer.sender();
        let mut unrecorded: Option<Unrecorded> = None;
        let mut next: Next = None;
        loop {
            let Some((job, status, asked)) = self
                .take_job(&jobs, &mut next, &mut unrecorded, &in_flight)
                .await
            else {
                break;
            };
            if self.fault().is_some() {
                // An outcome could not be recorded: nothing more leaves.
                self.let_go(job.claimed.id);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            if shutdown.is_cancelled() {
                // Not started: back to the queue untouched.
                self.settle(&mut unrecorded, &in_flight).await;
                self.unclaim(&job).await;
                self.let_go(job.claimed.id);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                self.wake.notify_one();
                continue;
            }
            let gate: Gate = Box::pin(self.settle(&mut unrecorded, &in_flight));
            // The span names the row; addresses are left to debug logs.
            let span = tracing::info_span!(
                "delivery",
                id = job.claimed.id,
                subscriber = job.subscriber.id,
                edition = %job.claimed.edition_date,
                attempt = job.claimed.attempts,
            );
            let (outcome, tally) = self
                .attempt(&mut sender, &job, (status, asked), gate)
                .instrument(span)
                .await;
            // When nothing was sent the gate was never reached.
            self.settle(&mut unrecorded, &in_flight).await;
            let (outcome, tally) = self.reconsider(outcome, tally);
            let following = jobs.try_lock().ok().and_then(|mut r| r.try_recv().ok());
            let reader = following.as_ref().map(|j| j.subscriber.id);
            let (written, status) = self.recorder.ask_record_checking(outcome, reader);
            unrecorded = Some(Unrecorded {
                id: job.claimed.id,
                tally,
                written,
            });
            next = following.zip(status).map(|(j, s)| (j, s, Instant::now()));
        }
        self.settle(&mut unrecorded, &in_flight).await;
        sender.close().await;
    }

    /// The job to send next and its status check: the one already at hand, or
    /// the next from the queue (after settling the last outcome), its check
    /// asked on its own. `None` when the claimer stopped.
    async fn take_job(
        &self,
        jobs: &Jobs,
        next: &mut Next,
        unrecorded: &mut Option<Unrecorded>,
        in_flight: &AtomicU64,
    ) -> Option<(Job, StatusReply, Instant)> {
        if let Some(n) = next.take() {
            return Some(n);
        }
        self.settle(unrecorded, in_flight).await;
        let job = { jobs.lock().await.recv().await }?;
        let status = self.recorder.ask_status(job.subscriber.id);
        Some((job, status, Instant::now()))
    }
}

impl Engine {
    /// The edition's prepared papers, prepared once and again only when its
    /// selection changes (compared at most every [`EDITION_RECHECK`]).
    pub(super) async fn edition(&self, date: NaiveDate) -> anyhow::Result<Option<Arc<Edition>>> {
        let mut cache = self.editions.lock().await;
        if let Some(e) = cache.fresh(date) {
            return Ok(e);
        }
        let mut conn = self.pool.acquire().await?;
        let version = store::papers::selection_version(&mut conn, date).await?;
        if let Some(e) = cache.confirm(date, &version) {
            return Ok(e);
        }
        let papers = store::papers::selection(&mut conn, date).await?;
        let n = papers.len();
        let edition =
            (!papers.is_empty()).then(|| Arc::new(Edition::new(date, papers, self.thumbnails)));
        if cache.put(date, version, edition.clone()) {
            tracing::info!(%date, papers = n, "the edition's selection changed; readers not yet sent get the new one");
        }
        Ok(edition)
    }

    /// Waits for a worker's last outcome to be committed and counts it; `false`
    /// if it could not be recorded. Safe to cancel and call again.
    pub(super) async fn settle(
        &self,
        slot: &mut Option<Unrecorded>,
        in_flight: &AtomicU64,
    ) -> bool {
        let Some(u) = slot.as_mut() else {
            return true;
        };
        let result = (&mut u.written)
            .await
            .map_err(|_| "the recorder stopped".to_string())
            .and_then(|r| r);
        let u = slot.take().expect("checked above");
        self.let_go(u.id);
        in_flight.fetch_sub(1, Ordering::SeqCst);
        self.wake.notify_one();
        match result {
            Ok(()) => {
                self.count(u.tally);
                true
            }
            Err(e) => {
                // The row keeps its lease and is sent again after a restart;
                // nothing more is sent meanwhile.
                tracing::error!(delivery = u.id, error = %e, "cannot record a delivery outcome");
                self.stop_for_good(e);
                false
            }
        }
    }

    /// Decides what happens to one claimed row: `status` is the check of the
    /// subscriber's standing asked at `asked`, answered by the time the gate
    /// opens. Sends at most one message.
    pub(super) async fn attempt(
        &self,
        sender: &mut Sender,
        job: &Job,
        (mut status, asked): (StatusReply, Instant),
        gate: Gate<'_>,
    ) -> (Outcome, Tally) {
        // Already answered: a reader who wants no more mail costs no message.
        let status = match status.try_recv() {
            Ok(Standing::Active) => None,
            Ok(other) => return self.not_wanted(job, other),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => Some(status),
            Err(_) => {
                let stopped = Standing::Unknown("the recorder stopped".into());
                return self.not_wanted(job, stopped);
            }
        };
        let message = match self.compose(job).await {
            Ok(m) => m,
            Err(outcome) => return outcome,
        };
        // Recorded as the message carries it.
        let message_id = message
            .headers()
            .get_raw("Message-ID")
            .unwrap_or_default()
            .to_string();
        // Signing starts now, on another thread, while the transaction opens.
        let raw = Arc::new(message.formatted());
        let verp = self.verp_envelope(job, &message);
        let envelope = verp.as_ref().unwrap_or(message.envelope());
        let headers = match self.composer().envelope.dkim() {
            Some(dkim) => Headers::Pending(Box::pin(dkim.headers_soon(Arc::clone(&raw)))),
            None => Headers::None,
        };
        let started = std::time::Instant::now();
        let changed: Mutex<Option<Standing>> = Mutex::new(None);
        let gate = self.last_look(job, (status, asked), gate, &changed);
        let result = sender.send_headed(envelope, &raw, headers, gate).await;
        self.metrics
            .send_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Some(standing) = changed.into_inner().expect("status lock") {
            return self.not_wanted(job, standing);
        }
        match result {
            Ok(reply) => self.sent(job, reply, message_id),
            Err(Failure::Permanent {
                reason,
                hard_bounce,
            }) => self.refused(job, reason, hard_bounce),
            Err(Failure::SenderRefused { reason }) => self.sender_refused(job, reason),
            Err(Failure::Transient { reason, connection }) => {
                self.transient(job, reason, connection)
            }
        }
    }

    /// The message's envelope with the signed VERP address of the row as
    /// its sender, when `mail.bounce.verp_domain` is set (`None`: the
    /// message's own envelope, used as it is).
    fn verp_envelope(
        &self,
        job: &Job,
        message: &lettre::Message,
    ) -> Option<lettre::address::Envelope> {
        let domain = self.verp_domain.as_ref()?;
        let from = self
            .composer()
            .verp_address(job.claimed.id, domain)
            .parse()
            .ok()?;
        lettre::address::Envelope::new(Some(from), message.envelope().to().to_vec()).ok()
    }

    /// The reader's message for the row's edition, or the outcome when there
    /// is none to send.
    async fn compose(&self, job: &Job) -> Result<lettre::Message, (Outcome, Tally)> {
        let c = &job.claimed;
        let failed = |reason: String| {
            let bounce = None;
            let id = c.id;
            (Outcome::Failed { id, reason, bounce }, Tally::Failed)
        };
        let Ok(date) = c.edition_date.parse::<NaiveDate>() else {
            return Err(failed(format!("invalid edition date {:?}", c.edition_date)));
        };
        let edition = match self.edition(date).await {
            Ok(Some(e)) => e,
            Ok(None) => return Err(failed(format!("no papers are selected for {date}"))),
            Err(e) => {
                let reason = format!("cannot load the edition: {}", crate::telemetry::causes(&e));
                let next_at = store::now_ms() + self.retry().base_delay.as_millis() as i64;
                return Err(uncounted(c.id, reason, next_at));
            }
        };
        let reader = Reader::from(&job.subscriber);
        match self.composer().compose(&edition, &reader) {
            Ok(m) => Ok(m),
            Err(e) => Err(failed(format!(
                "cannot build the message: {}",
                crate::telemetry::causes(&e)
            ))),
        }
    }

    /// `gate` followed by a last look before the body: this process still
    /// holds the sending lock, and the reader still wants mail (`status`, the
    /// check still to be answered, if any; asked again when the check asked at
    /// `asked` is older than [`STATUS_MAX_AGE`]: connecting, TLS, AUTH and the
    /// gate can take seconds). What stopped the message goes into `changed`.
    fn last_look<'g>(
        &'g self,
        job: &'g Job,
        (status, asked): (Option<StatusReply>, Instant),
        gate: Gate<'g>,
        changed: &'g Mutex<Option<Standing>>,
    ) -> Gate<'g> {
        let stop = move |why: Standing| {
            *changed.lock().expect("status lock") = Some(why);
            false
        };
        Box::pin(async move {
            if !gate.await {
                return false;
            }
            if !self.fence.held() {
                return stop(Standing::Fenced);
            }
            let stopped = |_| Standing::Unknown("the recorder stopped".into());
            let mut standing = match status {
                Some(pending) => pending.await.unwrap_or_else(stopped),
                None => Standing::Active,
            };
            if matches!(standing, Standing::Active) && asked.elapsed() > STATUS_MAX_AGE {
                let again = self.recorder.ask_status(job.subscriber.id).await;
                standing = again.unwrap_or_else(stopped);
            }
            match standing {
                Standing::Active => true,
                other => stop(other),
            }
        })
    }

    /// The subscriber is not (known to be) wanting mail: an ended subscription
    /// cancels the row; an unanswered check retries it soon, uncounted.
    pub(super) fn not_wanted(&self, job: &Job, standing: Standing) -> (Outcome, Tally) {
        let id = job.claimed.id;
        // A probe that is not sent says nothing of the server.
        if self.breaker.is_open() {
            self.breaker.probe_unanswered();
        }
        match standing {
            Standing::Ended(status) => {
                let reason = format!("subscriber {status}");
                let status = crate::domain::DeliveryStatus::Cancelled;
                (Outcome::Final { id, status, reason }, Tally::Cancelled)
            }
            Standing::Unknown(why) => {
                let reason = format!("cannot check the subscriber's status: {why}");
                let next_at = store::now_ms() + self.retry().base_delay.as_millis() as i64;
                uncounted(id, reason, next_at)
            }
            Standing::Fenced => {
                let reason = "not sent: this process does not hold the sending lock".to_string();
                uncounted(id, reason, store::now_ms())
            }
            // Not reached: only called for a subscriber not known active.
            Standing::Active => {
                let reason = "not sent".to_string();
                let next_at = store::now_ms();
                uncounted(id, reason, next_at)
            }
        }
    }

    pub(super) fn sent(&self, job: &Job, reply: String, message_id: String) -> (Outcome, Tally) {
        self.breaker.success();
        if self.guard.lock().expect("guard lock").accepted() {
            tracing::info!("the mail server accepts recipients again");
        }
        // An alert raised by this process or an earlier one is over.
        if self.alerted.swap(false, Ordering::Relaxed) {
            self.alert(None);
        }
        tracing::debug!(to = %job.subscriber.email, %reply, "sent");
        let id = job.claimed.id;
        (
            Outcome::Sent {
                id,
                reply,
                message_id,
            },
            Tally::Sent,
        )
    }

    /// A permanent refusal: about the recipient, unless the guard finds the
    /// server refusing everyone with the same reply.
    pub(super) fn refused(&self, job: &Job, reason: String, bounce: bool) -> (Outcome, Tally) {
        let (id, subscriber) = (job.claimed.id, &job.subscriber);
        let domain = subscriber.email.as_str().rsplit('@').next().unwrap_or("");
        let refusal = guard::Refusal {
            delivery: id,
            subscriber: subscriber.id,
            bounce,
            domain: guard::domain_key(domain),
        };
        let key = guard::reply_key(&reason, subscriber.email.as_str());
        let judgement = self.guard.lock().expect("guard lock").refused(key, refusal);
        let guard::Judgement::Server { undo } = judgement else {
            self.breaker.success();
            tracing::warn!(%reason, "rejected");
            let bounce = bounce.then_some(subscriber.id);
            return (Outcome::Failed { id, reason, bounce }, Tally::Failed);
        };
        if !undo.is_empty() {
            tracing::error!(
                reply = %reason,
                recipients = undo.len() + 1,
                "the mail server refuses every recipient with the same reply: the fault is the \
                 server's (relaying, policy, credentials), not the recipients'; sending pauses, \
                 nobody is suppressed, and the refusals so far are taken back"
            );
            self.alerted.store(true, Ordering::Relaxed);
            self.alert(Some(&reason));
            self.undo(undo);
        }
        self.breaker.trip(&reason);
        let age = store::now_ms() - job.claimed.first_attempt_at;
        if age >= self.retry().max_age.as_millis() as i64 {
            let reason = format!("gave up: older than mail.retry.max_age: {reason}");
            return (
                Outcome::Failed {
                    id,
                    reason,
                    bounce: None,
                },
                Tally::Failed,
            );
        }
        let next_at = store::now_ms();
        uncounted(id, reason, next_at)
    }

    /// Takes back refusals the guard found to be the server's doing: rows
    /// already recorded as failed go back to the queue (and a bounce they
    /// counted is taken back); a row not yet recorded is retried, uncounted,
    /// when its worker records it ([`Engine::reconsider`]).
    pub(super) fn undo(&self, refusals: Vec<guard::Refusal>) {
        let mut pending = self.undone.lock().expect("undone lock");
        for r in refusals {
            pending.insert(r.delivery);
            let bounce = r.bounce.then_some(r.subscriber);
            drop(self.recorder.ask_record(Outcome::Undo {
                id: r.delivery,
                bounce,
            }));
        }
    }

    /// A worker's outcome just before it is recorded: a refusal taken back by
    /// the guard meanwhile becomes an uncounted retry.
    pub(super) fn reconsider(&self, outcome: Outcome, tally: Tally) -> (Outcome, Tally) {
        match outcome {
            Outcome::Failed { id, reason, .. }
                if self.undone.lock().expect("undone lock").remove(&id) =>
            {
                let next_at = store::now_ms();
                uncounted(id, reason, next_at)
            }
            other => (other, tally),
        }
    }

    /// Records (or, with `None`, clears) the alert `paperpost status` shows.
    pub(super) fn alert(&self, reply: Option<&str>) {
        let message = reply.map(|r| {
            format!("sending paused: the mail server refuses every recipient with \"{r}\"")
        });
        self.set_alert(message);
    }

    fn alert_text(&self, message: String) {
        self.set_alert(Some(message));
    }

    fn set_alert(&self, message: Option<String>) {
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let r = async {
                let mut w = writer.acquire().await?;
                let kind = crate::store::alerts::AlertKind::Delivery;
                anyhow::Ok(crate::store::alerts::set(&mut w, kind, message.as_deref()).await?)
            };
            if let Err(e) = r.await {
                tracing::warn!(error = %crate::telemetry::causes(&e), "cannot record the alert for `paperpost status`");
            }
        });
    }

    /// The server refuses our envelope sender: no recipient's fault and no
    /// attempt spent; sending pauses (the breaker) and an alert says why.
    pub(super) fn sender_refused(&self, job: &Job, reason: String) -> (Outcome, Tally) {
        self.alerted.store(true, Ordering::Relaxed);
        tracing::error!(%reason, "the mail server refuses our envelope sender; sending pauses");
        let message = format!(
            "sending paused: the mail server refuses the envelope sender ({reason}); with \
             mail.bounce.verp_domain set, let this login send as bounces+…@that domain, or empty it"
        );
        self.alert_text(message);
        self.breaker.trip(&reason);
        uncounted(job.claimed.id, reason, store::now_ms())
    }

    /// A failure worth another try.
    pub(super) fn transient(
        &self,
        job: &Job,
        reason: String,
        connection: bool,
    ) -> (Outcome, Tally) {
        let c = &job.claimed;
        let age = Duration::from_millis((store::now_ms() - c.first_attempt_at).max(0) as u64);
        if connection {
            self.breaker.connection_failure(&reason);
        } else {
            self.breaker.success();
        }
        let attempts = c.attempts.max(1) as u32;
        let server_down = connection && self.breaker.is_open();
        match retry::decide(attempts, age, server_down, &self.retry()) {
            retry::Decision::Uncounted => uncounted(c.id, reason, store::now_ms()),
            retry::Decision::GiveUp(why) => {
                let reason = format!("{why}: {reason}");
                tracing::warn!(%reason, "failed");
                let failed = Outcome::Failed {
                    id: c.id,
                    reason,
                    bounce: None,
                };
                (failed, Tally::Failed)
            }
            retry::Decision::After(delay) => {
                tracing::info!(%reason, retry_in = ?delay, "will retry");
                let next_at = store::now_ms() + delay.as_millis() as i64;
                let retry = Outcome::Retry {
                    id: c.id,
                    reason,
                    next_at,
                    counted: true,
                };
                (retry, Tally::Retried)
            }
        }
    }
}
