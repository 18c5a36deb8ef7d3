//! Getting one message to the mail server: SMTP (STARTTLS, implicit TLS or plain
//! for a loopback relay; AUTH) or .eml files in an outbox folder.
//!
//! Each delivery worker owns one [`Sender`], which keeps one SMTP connection
//! open across messages (the pool is the set of workers). The transaction is
//! run step by step (MAIL, RCPT, DATA) so a failure is classified by the step
//! that failed, and the whole of it runs under `mail.smtp.timeout`; a connection
//! that failed or timed out is dropped, never reused. lettre's own pool is not
//! used because a send cancelled by a timeout would return its half-finished
//! connection to the pool. The global rate limit is applied here, in one place.

use std::{future::Future, num::NonZeroU32, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use lettre::{
    address::Envelope,
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, TlsParameters},
        commands::{Mail, Rcpt, Rset},
        extension::{ClientId, Extension, MailBodyParameter, MailParameter},
    },
};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use crate::config::{MailSettings, TlsMode, TransportKind};
use reply::Step;

mod file;
pub mod reply;
mod smtp;

pub use smtp::SmtpTarget;
use smtp::{MAX_IDLE, tls_parameters};

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again later: a 4xx reply, or the server could not be reached, dropped
    /// the line or did not answer in time (`connection`).
    Transient { reason: String, connection: bool },
    /// Never retry: a 5xx reply to RCPT or DATA. `hard_bounce`: the mailbox does
    /// not exist (550, 551, 553 to RCPT).
    Permanent { reason: String, hard_bounce: bool },
    /// A 5xx reply to MAIL FROM: the server refuses our envelope sender (a
    /// relay that does not let this login send as the VERP address, say).
    /// Nothing about the recipient: sending pauses, no attempt is spent.
    SenderRefused { reason: String },
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient { reason, .. }
            | Failure::Permanent { reason, .. }
            | Failure::SenderRefused { reason } => reason,
        }
    }
}

/// The configured transport and rate limit, shared by all workers.
pub struct Mailer {
    transport: Transport,
    /// Swapped when `mail.rate_limit` changes (SIGHUP).
    limiter: std::sync::RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    timeout: Duration,
}

enum Transport {
    Smtp(SmtpTarget),
    /// `.eml` files in this folder ([`file`]).
    File(PathBuf),
}

impl Mailer {
    pub fn from_settings(m: &MailSettings) -> anyhow::Result<Arc<Self>> {
        let transport = match m.transport {
            TransportKind::File => {
                std::fs::create_dir_all(&m.outbox_dir).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create mail.outbox_dir {}: {e}",
                        m.outbox_dir.display()
                    )
                })?;
                Transport::File(m.outbox_dir.clone())
            }
            TransportKind::Smtp => {
                let s = &m.smtp;
                let tls_parameters = match s.tls {
                    TlsMode::None => None,
                    TlsMode::Starttls | TlsMode::Tls => Some(tls_parameters(s)?),
                };
                let credentials = (!s.username.is_empty()).then(|| {
                    Credentials::new(s.username.clone(), s.password.expose_secret().to_string())
                });
                Transport::Smtp(SmtpTarget {
                    host: s.host.clone(),
                    port: s.port,
                    tls: s.tls,
                    tls_parameters,
                    credentials,
                    hello: ClientId::default(),
                })
            }
        };
        Ok(Arc::new(Self {
            transport,
            limiter: std::sync::RwLock::new(limiter(m.rate_limit)),
            timeout: m.smtp.timeout,
        }))
    }

    /// Changes the rate limit (messages per second; 0 = unlimited).
    pub fn set_rate_limit(&self, per_second: u32) {
        *self.limiter.write().expect("limiter lock") = limiter(per_second);
    }

    /// Where messages go, for logs: "smtp://host:port" or the outbox folder.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp(t) => format!("smtp://{}:{} (tls: {:?})", t.host, t.port, t.tls),
            Transport::File(dir) => format!("files in {}", dir.display()),
        }
    }

    /// A sender for one worker.
    pub fn sender(self: &Arc<Self>) -> Sender {
        Sender {
            mailer: Arc::clone(self),
            conn: None,
            pipelining: false,
            last_used: Instant::now(),
            failed_at: None,
        }
    }
}

/// One worker's connection.
pub struct Sender {
    mailer: Arc<Mailer>,
    conn: Option<AsyncSmtpConnection>,
    /// The server advertised PIPELINING (RFC 2920) on the current connection.
    pipelining: bool,
    last_used: Instant,
    /// The transaction step the last failure happened at.
    failed_at: Option<Step>,
}

/// The gate said no: the message was not sent, through no fault of its own.
fn not_sent() -> Failure {
    Failure::Transient {
        reason: "not sent: the previous delivery outcome could not be recorded".into(),
        connection: false,
    }
}

/// A limiter for `per_second` messages a second; `None` for 0 (unlimited).
fn limiter(per_second: u32) -> Option<Arc<DefaultDirectRateLimiter>> {
    NonZeroU32::new(per_second).map(|n| Arc::new(RateLimiter::direct(Quota::per_second(n))))
}

/// What a sender waits for between the server's "354" and the message body,
/// the point after which the message may be delivered: the worker's previous
/// outcome being recorded. `false` means stop: the message is not sent.
pub type Gate<'g> = Pin<Box<dyn Future<Output = bool> + Send + 'g>>;

/// Header lines that go in front of the message (its DKIM signatures),
/// still being made while the transaction opens: awaited after the gate,
/// once, and kept for a second attempt on a fresh connection.
pub enum Headers<'h> {
    None,
    Pending(Pin<Box<dyn Future<Output = anyhow::Result<String>> + Send + 'h>>),
    Ready(String),
}

impl Headers<'_> {
    /// The lines, made if still pending.
    async fn ready(&mut self) -> anyhow::Result<Option<&str>> {
        if let Headers::Pending(f) = self {
            *self = Headers::Ready(f.await?);
        }
        Ok(match self {
            Headers::Ready(h) => Some(h.as_str()),
            _ => None,
        })
    }

    /// `raw` with the lines in front (borrowed when there are none).
    async fn complete<'r>(&mut self, raw: &'r [u8]) -> Result<std::borrow::Cow<'r, [u8]>, Failure> {
        match self.ready().await {
            Ok(None) => Ok(std::borrow::Cow::Borrowed(raw)),
            Ok(Some(h)) => Ok(std::borrow::Cow::Owned([h.as_bytes(), raw].concat())),
            Err(e) => Err(Failure::Transient {
                reason: format!("cannot sign the message: {}", crate::telemetry::causes(&e)),
                connection: false,
            }),
        }
    }
}

impl Sender {
    /// Sends one message; returns what the server (or the file system) said.
    ///
    /// `gate` is awaited once the server is ready for the body and before any
    /// of it is written (so the work before it overlaps with whatever the gate
    /// waits for); if it yields `false` the transaction is abandoned unsent.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        raw: &[u8],
        gate: Gate<'_>,
    ) -> Result<String, Failure> {
        self.send_headed(envelope, raw, Headers::None, gate).await
    }

    /// [`Sender::send`] with `headers` in front of `raw`: their making
    /// (signing) overlaps the transaction's opening.
    pub async fn send_headed(
        &mut self,
        envelope: &Envelope,
        raw: &[u8],
        mut headers: Headers<'_>,
        gate: Gate<'_>,
    ) -> Result<String, Failure> {
        let limiter = self.mailer.limiter.read().expect("limiter lock").clone();
        if let Some(l) = limiter {
            l.until_ready().await;
        }
        let mut gate = Some(gate);
        let target = match &self.mailer.transport {
            Transport::File(dir) => {
                if let Some(g) = gate.take()
                    && !g.await
                {
                    return Err(not_sent());
                }
                let (dir, raw) = (dir.clone(), headers.complete(raw).await?.into_owned());
                let written = tokio::task::spawn_blocking(move || file::write(&dir, &raw)).await;
                return match written {
                    Ok(Ok(name)) => Ok(format!("written as {name}")),
                    Ok(Err(e)) => Err(Failure::Transient {
                        reason: format!("cannot write the message: {e}"),
                        connection: true,
                    }),
                    Err(e) => Err(Failure::Transient {
                        reason: format!("cannot write the message: {e}"),
                        connection: true,
                    }),
                };
            }
            Transport::Smtp(t) => t.clone(),
        };
        let reused = self.conn.is_some() && self.last_used.elapsed() < MAX_IDLE;
        if !reused {
            self.drop_connection().await;
        }
        let result = self
            .transaction(&target, envelope, raw, &mut headers, &mut gate)
            .await;
        // A kept connection may have been closed by the server in the meantime:
        // if it failed before the server took anything (at MAIL), one immediate
        // retry on a fresh connection. Later failures may have delivered the
        // message, so they wait for a regular retry.
        let result = match result {
            Err(Failure::Transient {
                connection: true, ..
            }) if reused && self.failed_at == Some(Step::Mail) => {
                self.conn = None;
                self.transaction(&target, envelope, raw, &mut headers, &mut gate)
                    .await
            }
            other => other,
        };
        self.last_used = Instant::now();
        result
    }

    /// Says goodbye to the server (QUIT), if connected.
    pub async fn close(&mut self) {
        self.drop_connection().await;
    }
}
