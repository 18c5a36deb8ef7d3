//! The claimer: takes due rows from the queue in batches and hands them to
//! the workers.

use super::*;

/// What the claimer works with.
pub(super) struct Claimer<'a> {
    pub tx: &'a tokio::sync::mpsc::Sender<Job>,
    /// Rows handed to the workers and not yet recorded.
    pub in_flight: &'a AtomicU64,
    pub until: Until,
    pub shutdown: &'a CancellationToken,
}

impl Claimer<'_> {
    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, or less if shutdown comes.
    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}

/// Says why the claimer waits, and waits a second (or until shutdown).
async fn wait_out(c: &Claimer<'_>, e: &anyhow::Error, then: &str) {
    tracing::warn!(error = %crate::telemetry::causes(e), "the database is busy (locked by another process) or out of reach; {then}");
    c.pause(Duration::from_secs(1)).await;
}

impl Engine {
    /// Claims due rows in batches and hands them to the workers until
    /// shutdown, or until `until`'s edition is done.
    pub(super) async fn claim_loop(&self, c: Claimer<'_>) -> anyhow::Result<()> {
        let mut swept = Instant::now();
        while !c.shutdown.is_cancelled() {
            self.health.claimer_alive();
            if let Some(why) = self.fault() {
                anyhow::bail!("stopped sending: a delivery outcome could not be recorded: {why}");
            }
            let Some(limit) = self.batch_size(&c).await else {
                continue;
            };
            if !self.fence.held() {
                // The heartbeat has not renewed the lock within its TTL.
                c.pause(Duration::from_millis(200)).await;
                continue;
            }
            // Wait for room before claiming, so claimed rows do not sit in a
            // queue (going round every second meanwhile, for the watchdog).
            let permit = tokio::select! {
                p = c.tx.reserve() => p?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = c.shutdown.cancelled() => return Ok(()),
            };
            let claimed = match self.claim(limit, c.until.edition()).await {
                Ok(claimed) => claimed,
                // Another process holds the database (a large import), or it
                // is out of reach (restarting): wait it out.
                Err(e) if store::is_busy(&e) => {
                    drop(permit);
                    wait_out(&c, &e, "claiming later").await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if claimed.is_empty() {
                drop(permit);
                match self.idle(&c, &mut swept).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) if store::is_busy(&e) => wait_out(&c, &e, "looking again later").await,
                    Err(e) => return Err(e),
                }
                continue;
            }
            let ids: Vec<i64> = claimed.iter().map(|c| c.subscriber_id).collect();
            // The rows are claimed: their readers are read, however long the
            // database takes to answer (rows left claimed at a stop go back
            // to the queue at the next start).
            let subs = loop {
                let read = async {
                    let mut conn = self.pool.acquire().await?;
                    anyhow::Ok(subscribers::get_many(&mut conn, &ids).await?)
                };
                match read.await {
                    Ok(subs) => break subs,
                    Err(e) if store::is_busy(&e) && !c.shutdown.is_cancelled() => {
                        wait_out(&c, &e, "reading the claimed readers again").await
                    }
                    Err(e) if store::is_busy(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
            };
            self.dispatch(claimed, subs, permit, c.tx, c.in_flight)
                .await;
        }
        Ok(())
    }

    /// How many rows to claim now, once the breaker and the queue allow;
    /// `None` to look again (the breaker said wait, or shutdown came).
    async fn batch_size(&self, c: &Claimer<'_>) -> Option<u32> {
        match self.breaker.allowance() {
            Allowance::Full => {
                // Claim in batches: wait until half the queue is free (or
                // nothing is left to do) rather than claiming row by row.
                let half = c.tx.max_capacity() / 2;
                while c.tx.capacity() < half && c.in_flight() as usize > half {
                    if self.fault().is_some() {
                        return None;
                    }
                    self.health.claimer_alive();
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = c.shutdown.cancelled() => return None,
                    }
                }
                Some(c.tx.capacity().max(1) as u32)
            }
            Allowance::Probe => {
                // Wait for the workers to drain before probing with one message.
                while c.in_flight() > 0 && !c.shutdown.is_cancelled() && self.fault().is_none() {
                    self.health.claimer_alive();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(1)
            }
            Allowance::Wait(d) => {
                c.pause(d).await;
                None
            }
        }
    }

    /// Claims up to `limit` due rows (of `only`'s edition, if given).
    async fn claim(&self, limit: u32, only: Option<NaiveDate>) -> anyhow::Result<Vec<Claimed>> {
        let mut w = self.writer.acquire().await?;
        let lease = self.lease.as_millis() as i64;
        let me = self.fence.me();
        Ok(deliveries::claim(&mut w, me, self.fence.token(), limit, lease, only).await?)
    }

    /// Nothing was due: now and then puts back rows whose lease ran out,
    /// then waits for the next due row. True when `until`'s edition is done.
    async fn idle(&self, c: &Claimer<'_>, swept: &mut Instant) -> anyhow::Result<bool> {
        // A probe that found nothing to send says nothing of the server.
        if self.breaker.is_open() {
            self.breaker.probe_unanswered();
        }
        if swept.elapsed() >= SWEEP_EVERY {
            *swept = Instant::now();
            self.release_expired(c.until.edition()).await;
        }
        let only = c.until.edition();
        let mut conn = self.pool.acquire().await?;
        if let Until::EditionDone(date) = c.until
            && c.in_flight() == 0
            && deliveries::counts(&mut conn, date).await?.finished()
        {
            return Ok(true);
        }
        let next = deliveries::next_due(&mut conn, only).await?;
        drop(conn);
        let wait = next
            .map(|at| Duration::from_millis((at - store::now_ms()).clamp(5, 1000) as u64))
            .unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.wake.notified() => {}
            _ = c.shutdown.cancelled() => {}
        }
        Ok(false)
    }

    /// Hands claimed rows to the workers (the first through `permit`). A row
    /// whose subscriber cannot be read fails alone.
    pub(super) async fn dispatch(
        &self,
        claimed: Vec<Claimed>,
        subs: HashMap<i64, Result<Subscriber, String>>,
        permit: tokio::sync::mpsc::Permit<'_, Job>,
        tx: &tokio::sync::mpsc::Sender<Job>,
        in_flight: &AtomicU64,
    ) {
        let mut permit = Some(permit);
        for c in claimed {
            // One subscriber can have rows of several editions in a batch.
            let subscriber = match subs.get(&c.subscriber_id) {
                Some(Ok(s)) => s.clone(),
                Some(Err(e)) => {
                    let reason = format!("cannot read the subscriber: {e}");
                    tracing::error!(delivery = c.id, %reason, "failed");
                    let failed = Outcome::Failed {
                        id: c.id,
                        reason,
                        bounce: None,
                    };
                    if let Ok(Ok(())) = self.recorder.ask_record(failed).await {
                        self.count(Tally::Failed);
                    }
                    continue;
                }
                // Deleted since the claim (their rows go with them).
                None => continue,
            };
            let job = Job {
                claimed: c,
                subscriber,
            };
            in_flight.fetch_add(1, Ordering::SeqCst);
            self.hold(job.claimed.id);
            // A new attempt: a refusal taken back from an earlier one is
            // settled (the set would otherwise grow for ever and turn this
            // attempt's genuine failure into an uncounted retry).
            self.undone
                .lock()
                .expect("undone lock")
                .remove(&job.claimed.id);
            match permit.take() {
                Some(p) => p.send(job),
                None => {
                    if let Err(e) = tx.send(job).await {
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        self.unclaim(&e.0).await;
                        self.let_go(e.0.claimed.id);
                    }
                }
            }
        }
    }

    /// Puts rows whose lease ran out back in the queue, but for those this
    /// process still holds.
    pub(super) async fn release_expired(&self, sending: Option<NaiveDate>) {
        let released = async {
            let held = self.held();
            let mut w = self.writer.acquire().await?;
            let me = self.fence.me();
            anyhow::Ok(deliveries::release_expired(&mut w, me, &held, sending).await?)
        }
        .await;
        match released {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                messages = n,
                "claimed messages whose lease ran out go back to the queue (a recipient may get one twice)"
            ),
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::causes(&e), "cannot release expired claims")
            }
        }
    }

    pub(super) async fn unclaim(&self, job: &Job) {
        let r = async {
            let mut conn = self.writer.acquire().await?;
            anyhow::Ok(deliveries::unclaim(&mut conn, self.fence.token(), job.claimed.id).await?)
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot release a claimed delivery; it is retried when its lease ends");
        }
    }
}
