//! Confirmation mails for the subscribe form, sent at once (not at the next
//! edition) through the configured mailer by one background worker, so a form
//! post never waits on the mail server and every answer takes the same time.

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
    metrics::{Metrics, OutcomeLabel},
    security::Keys,
    store::subscribers::Subscriber,
};

/// Mails waiting for the worker; past this, new requests are dropped (logged),
/// and the address may ask again after an hour.
const QUEUE: usize = 1024;

/// A confirmation to mail. No name: anyone can post anyone's address with
/// any name, which would ride to a stranger's inbox under our DKIM.
struct Job {
    email: SubscriberEmail,
    token: String,
}

#[derive(Template)]
#[template(path = "mail/confirm.txt")]
struct ConfirmText<'a> {
    title: &'a str,
    url: &'a str,
    ttl: String,
    sender: &'a str,
}

/// The handle the web handlers queue confirmation mails through.
#[derive(Clone)]
pub struct ConfirmationMailer {
    tx: mpsc::Sender<Job>,
}

impl ConfirmationMailer {
    /// Starts the worker on `tracker`; it ends when every handle is dropped.
    pub fn start(app: &App, tracker: &TaskTracker) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Worker {
            composer: app.composer()?,
            sender: app.mailer()?.sender(),
            metrics: std::sync::Arc::clone(&app.metrics),
            ttl: humantime::format_duration(app.settings.subscribers.pending_ttl).to_string(),
        };
        tracker.spawn(worker.run(rx));
        Ok(Self { tx })
    }

    /// Queues a confirmation mail to `s`.
    pub fn send(&self, keys: &Keys, s: &Subscriber) {
        let job = Job {
            email: s.email.clone(),
            token: keys.subscriber_token(&s.uuid),
        };
        if self.tx.try_send(job).is_err() {
            tracing::warn!(
                subscriber = s.id,
                "confirmation mail queue is full; not sent"
            );
        }
    }
}

struct Worker {
    /// Its look (title, sender, base URL) and envelope (From, DKIM).
    composer: Composer,
    sender: Sender,
    metrics: std::sync::Arc<Metrics>,
    ttl: String,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.recv().await {
            let outcome = match self.deliver(&job).await {
                Ok(reply) => {
                    tracing::info!(%reply, "confirmation mail sent");
                    "sent"
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "confirmation mail not sent");
                    "failed"
                }
            };
            self.metrics
                .confirmation_mails
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
        }
        self.sender.close().await;
    }

    async fn deliver(&mut self, job: &Job) -> anyhow::Result<String> {
        let look = &self.composer.look;
        let url = links::url(&look.base_url, links::CONFIRM, &job.token);
        let text = ConfirmText {
            title: &look.title,
            url: &url,
            ttl: self.ttl.clone(),
            sender: &look.sender,
        }
        .render()?;
        let to = Mailbox::new(None, job.email.to_address());
        let subject = format!("Confirm your subscription to {}", look.title);
        let message = self.composer.envelope.notice(to, &subject, text)?;
        let raw = message.formatted();
        self.sender
            .send(message.envelope(), &raw, Box::pin(async { true }))
            .await
            .map_err(|f| anyhow::anyhow!("{}", f.reason()))
    }
}
