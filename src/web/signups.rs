//! Sign-ups from the subscribe form, recorded and mailed by one background
//! worker: the form's answer waits for no database or mail server work, so it
//! takes the same time for every address and tells nothing about any. The
//! worker records the sign-up (with its limits and the suppression list) and
//! sends the confirmation mail through the configured mailer at once.

use askama::Template;
use lettre::message::Mailbox;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::{
    app::App,
    digest::Composer,
    domain::SubscriberEmail,
    links,
    mailer::Sender,
    metrics::{LimitLabel, OutcomeLabel},
    store::{
        alerts::{self, AlertKind},
        confirmations::{self, Limits, SignUp, Skipped},
        subscribers::Profile,
    },
};

/// Sign-ups waiting for the worker; past this the form answers 503 (try
/// again) and records nothing.
const QUEUE: usize = 1024;

/// At most one confirmation mail per inbox per this long.
pub const PER_INBOX: std::time::Duration = std::time::Duration::from_secs(3600);

/// The sign-up alert clears at the first mail sent this long after it was
/// raised, so an operator who looks the next day still sees it.
const ALERT_KEPT_MS: i64 = 24 * 3_600_000;

/// A sign-up to record and mail. The name stays in the profile (for the
/// digests, once confirmed) and out of the mail: anyone can post anyone's
/// address with any name, which would ride to a stranger's inbox under our
/// DKIM.
struct Job {
    email: SubscriberEmail,
    profile: Profile,
}

#[derive(Template)]
#[template(path = "mail/confirm.txt")]
struct ConfirmText<'a> {
    title: &'a str,
    url: &'a str,
    ttl: String,
    sender: &'a str,
}

/// The handle the subscribe form queues sign-ups through.
#[derive(Clone)]
pub struct SignUps {
    tx: mpsc::Sender<Job>,
}

/// The queue is full: nothing was recorded; the client should try again.
#[derive(Debug)]
pub struct Full;

impl SignUps {
    /// Starts the worker on `tracker`; it ends when every handle is dropped.
    pub fn start(app: &App, tracker: &TaskTracker) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let subscribers = &app.settings.subscribers;
        let worker = Worker {
            composer: app.composer()?,
            sender: app.mailer()?.sender(),
            app: app.clone(),
            limits: Limits {
                per_inbox: PER_INBOX,
                per_hour: subscribers.confirmations_per_hour,
            },
            ttl: humantime::format_duration(subscribers.pending_ttl).to_string(),
        };
        tracker.spawn(worker.run(rx));
        Ok(Self { tx })
    }

    /// Queues a sign-up, or says the queue is full.
    pub fn submit(&self, email: SubscriberEmail, profile: Profile) -> Result<(), Full> {
        self.tx.try_send(Job { email, profile }).map_err(|_| {
            tracing::warn!("the sign-up queue is full; answered 503");
            Full
        })
    }
}

struct Worker {
    app: App,
    /// Its look (title, sender, base URL) and envelope (From, DKIM).
    composer: Composer,
    sender: Sender,
    limits: Limits,
    ttl: String,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.recv().await {
            match self.record(&job).await {
                Ok(SignUp::Confirm { token, .. }) => self.mail(&job.email, &token).await,
                Ok(SignUp::Nothing(skipped)) => self.skipped(skipped).await,
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::causes(&e), "cannot record a sign-up; nothing sent")
                }
            }
        }
        self.sender.close().await;
    }

    async fn record(&self, job: &Job) -> anyhow::Result<SignUp> {
        let mut tx = crate::store::write(&self.app.writer).await?;
        let (keys, limits) = (&self.app.keys, self.limits);
        let outcome =
            confirmations::sign_up(&mut tx, keys, &job.email, &job.profile, limits).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Sends the confirmation mail; one that fails is forgotten, so the
    /// address is not locked out by our fault.
    async fn mail(&mut self, email: &SubscriberEmail, token: &str) {
        let outcome = match self.deliver(email, token).await {
            Ok(reply) => {
                tracing::info!(%reply, "confirmation mail sent");
                let before = crate::store::now_ms() - ALERT_KEPT_MS;
                let cleared = async {
                    let mut c = self.app.writer.acquire().await?;
                    anyhow::Ok(alerts::clear_older(&mut c, AlertKind::SignUps, before).await?)
                };
                logged("clear the sign-up alert", cleared.await);
                "sent"
            }
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::causes(&e), "confirmation mail not sent; the address may ask again");
                let forgotten = async {
                    let mut c = self.app.writer.acquire().await?;
                    anyhow::Ok(confirmations::forget(&mut c, token).await?)
                };
                logged("forget a confirmation not sent", forgotten.await);
                "failed"
            }
        };
        let m = &self.app.metrics;
        m.confirmation_mails
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    async fn skipped(&self, skipped: Skipped) {
        let limit = match skipped {
            Skipped::Active | Skipped::Suppressed => return,
            Skipped::Inbox => "inbox",
            Skipped::Hourly => "hourly",
        };
        let m = &self.app.metrics;
        m.signups_limited.get_or_create(&LimitLabel { limit }).inc();
        if skipped == Skipped::Hourly {
            let message = format!(
                "sign-ups reached subscribers.confirmations_per_hour ({}): further sign-ups get \
                 no confirmation mail until the hour has room (many at once may be an attack)",
                self.limits.per_hour
            );
            let raised = async {
                let mut c = self.app.writer.acquire().await?;
                anyhow::Ok(alerts::raise(&mut c, AlertKind::SignUps, &message).await?)
            };
            let raised = logged("raise the sign-up alert", raised.await);
            if raised == Some(true) {
                tracing::warn!(
                    limit = self.limits.per_hour,
                    "sign-ups reached subscribers.confirmations_per_hour"
                );
            }
        }
    }

    async fn deliver(&mut self, email: &SubscriberEmail, token: &str) -> anyhow::Result<String> {
        let look = &self.composer.look;
        let url = links::url(&look.base_url, links::CONFIRM, token);
        let text = ConfirmText {
            title: &look.title,
            url: &url,
            ttl: self.ttl.clone(),
            sender: &look.sender,
        }
        .render()?;
        let to = Mailbox::new(None, email.to_address());
        let subject = format!("Confirm your subscription to {}", look.title);
        let message = self.composer.envelope.notice(to, &subject, text)?;
        let raw = self.composer.envelope.finish(&message)?;
        self.sender
            .send(message.envelope(), &raw, Box::pin(async { true }))
            .await
            .map_err(|f| anyhow::anyhow!("{}", f.reason()))
    }
}

/// A write's value, or `None` with the failure logged (the worker goes on).
fn logged<T>(what: &str, r: anyhow::Result<T>) -> Option<T> {
    r.map_err(|e| tracing::warn!(error = %crate::telemetry::causes(&e), "cannot {what}"))
        .ok()
}
