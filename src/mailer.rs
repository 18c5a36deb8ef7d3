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

use std::{num::NonZeroU32, path::PathBuf, sync::Arc, time::Duration};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use lettre::{
    AsyncFileTransport, AsyncTransport, Tokio1Executor,
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

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again later: a 4xx reply, or the server could not be reached, dropped
    /// the line or did not answer in time (`connection`).
    Transient { reason: String, connection: bool },
    /// Never retry: a 5xx reply to RCPT or DATA. `hard_bounce`: the mailbox does
    /// not exist (550, 551, 553 to RCPT).
    Permanent { reason: String, hard_bounce: bool },
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient { reason, .. } | Failure::Permanent { reason, .. } => reason,
        }
    }
}

/// How to reach the SMTP server.
#[derive(Clone)]
pub struct SmtpTarget {
    host: String,
    port: u16,
    tls: TlsMode,
    tls_parameters: Option<TlsParameters>,
    credentials: Option<Credentials>,
    hello: ClientId,
}

/// The configured transport and rate limit, shared by all workers.
pub struct Mailer {
    transport: Transport,
    limiter: Option<DefaultDirectRateLimiter>,
    timeout: Duration,
}

enum Transport {
    Smtp(SmtpTarget),
    File(AsyncFileTransport<Tokio1Executor>, PathBuf),
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
                Transport::File(AsyncFileTransport::new(&m.outbox_dir), m.outbox_dir.clone())
            }
            TransportKind::Smtp => {
                let s = &m.smtp;
                let tls_parameters = match s.tls {
                    TlsMode::None => None,
                    TlsMode::Starttls | TlsMode::Tls => {
                        Some(TlsParameters::new(s.host.clone()).map_err(|e| {
                            anyhow::anyhow!(
                                "invalid configuration: mail.smtp.host: no TLS for {:?}: {e}",
                                s.host
                            )
                        })?)
                    }
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
        let limiter =
            NonZeroU32::new(m.rate_limit).map(|n| RateLimiter::direct(Quota::per_second(n)));
        Ok(Arc::new(Self {
            transport,
            limiter,
            timeout: m.smtp.timeout,
        }))
    }

    /// Where messages go, for logs: "smtp://host:port" or the outbox folder.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp(t) => format!("smtp://{}:{} (tls: {:?})", t.host, t.port, t.tls),
            Transport::File(_, dir) => format!("files in {}", dir.display()),
        }
    }

    /// A sender for one worker.
    pub fn sender(self: &Arc<Self>) -> Sender {
        Sender {
            mailer: Arc::clone(self),
            conn: None,
            pipelining: false,
            last_used: Instant::now(),
            failed_at: "",
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
    failed_at: &'static str,
}

/// A kept connection idle longer than this is replaced rather than reused:
/// servers close idle sessions, and a message should not pay for finding out.
const MAX_IDLE: Duration = Duration::from_secs(15);

fn code_of(e: &lettre::transport::smtp::Error) -> Option<u16> {
    e.status().and_then(|c| c.to_string().parse().ok())
}

impl Sender {
    /// Sends one message; returns what the server (or the file system) said.
    pub async fn send(&mut self, envelope: &Envelope, raw: &[u8]) -> Result<String, Failure> {
        if let Some(l) = &self.mailer.limiter {
            l.until_ready().await;
        }
        let timeout = self.mailer.timeout;
        match tokio::time::timeout(timeout, self.send_inner(envelope, raw)).await {
            Ok(result) => result,
            Err(_) => {
                // The connection is in an unknown state: drop it.
                self.conn = None;
                Err(Failure::Transient {
                    reason: format!(
                        "no answer from the mail server within {}",
                        humantime::format_duration(timeout)
                    ),
                    connection: true,
                })
            }
        }
    }

    async fn send_inner(&mut self, envelope: &Envelope, raw: &[u8]) -> Result<String, Failure> {
        let target = match &self.mailer.transport {
            Transport::File(t, _) => {
                return t
                    .send_raw(envelope, raw)
                    .await
                    .map(|id| format!("written as {id}.eml"))
                    .map_err(|e| Failure::Transient {
                        reason: format!("cannot write the message: {e}"),
                        connection: true,
                    });
            }
            Transport::Smtp(t) => t.clone(),
        };
        let reused = self.conn.is_some() && self.last_used.elapsed() < MAX_IDLE;
        if !reused {
            self.drop_connection().await;
        }
        let result = self.transaction(&target, envelope, raw).await;
        // A kept connection may have been closed by the server in the meantime:
        // if it failed before the server took anything (at MAIL), one immediate
        // retry on a fresh connection. Later failures may have delivered the
        // message, so they wait for a regular retry.
        let result = match result {
            Err(Failure::Transient {
                connection: true, ..
            }) if reused && self.failed_at == "MAIL" => {
                self.conn = None;
                self.transaction(&target, envelope, raw).await
            }
            other => other,
        };
        self.last_used = Instant::now();
        result
    }

    /// The open connection (opening one if needed) and whether it pipelines.
    async fn connect(
        &mut self,
        t: &SmtpTarget,
    ) -> Result<(&mut AsyncSmtpConnection, bool), Failure> {
        if self.conn.is_none() {
            let conn_err = |e: lettre::transport::smtp::Error| Failure::Transient {
                reason: format!("cannot connect to {}:{}: {e}", t.host, t.port),
                connection: true,
            };
            let mut conn = match (t.tls, &t.tls_parameters) {
                (TlsMode::Tls, Some(params)) => AsyncSmtpConnection::connect_tokio1(
                    (t.host.as_str(), t.port),
                    Some(self.mailer.timeout),
                    &t.hello,
                    Some(params.clone()),
                    None,
                )
                .await
                .map_err(conn_err)?,
                _ => {
                    // Our own socket, to turn off Nagle's algorithm: lettre writes the
                    // message and its final ".\r\n" separately, and with Nagle each
                    // message waits for the server's delayed ACK (about 40 ms).
                    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
                        .await
                        .map_err(|e| Failure::Transient {
                            reason: format!("cannot connect to {}:{}: {e}", t.host, t.port),
                            connection: true,
                        })?;
                    let _ = tcp.set_nodelay(true);
                    AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &t.hello)
                        .await
                        .map_err(conn_err)?
                }
            };
            if let (TlsMode::Starttls, Some(params)) = (t.tls, &t.tls_parameters) {
                conn.starttls(params.clone(), &t.hello)
                    .await
                    .map_err(conn_err)?;
            }
            // lettre keeps no record of PIPELINING: ask again (EHLO may be
            // repeated; before AUTH, so the login is not reset).
            let ehlo = lettre::transport::smtp::commands::Ehlo::new(t.hello.clone());
            self.pipelining = conn.command(ehlo).await.is_ok_and(|r| {
                r.message()
                    .any(|l| l.trim().eq_ignore_ascii_case("PIPELINING"))
            });
            if let Some(creds) = &t.credentials {
                conn.auth(&[Mechanism::Plain, Mechanism::Login], creds)
                    .await
                    .map_err(|e| Failure::Transient {
                        reason: format!(
                            "the mail server refused the login (mail.smtp.username/password): {e}"
                        ),
                        connection: true,
                    })?;
            }
            self.conn = Some(conn);
        }
        Ok((
            self.conn.as_mut().expect("connected above"),
            self.pipelining,
        ))
    }

    async fn transaction(
        &mut self,
        t: &SmtpTarget,
        envelope: &Envelope,
        raw: &[u8],
    ) -> Result<String, Failure> {
        self.failed_at = "";
        let (conn, pipelining) = self.connect(t).await?;
        let mut params = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(Failure::Permanent {
                    reason:
                        "the address is not ASCII and the mail server does not support SMTPUTF8"
                            .into(),
                    hard_bounce: false,
                });
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !raw.is_ascii() {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        // Each step: a negative reply keeps the connection (after RSET); any
        // other error (I/O, malformed reply) drops it.
        let step = |stage: &'static str, e: lettre::transport::smtp::Error| match code_of(&e) {
            Some(code) if e.is_permanent() => {
                let hard_bounce = stage == "RCPT" && matches!(code, 550 | 551 | 553);
                if stage == "MAIL" {
                    // The server refuses our sender: not the recipient's fault.
                    (
                        Failure::Transient {
                            reason: format!("{stage}: {e}"),
                            connection: false,
                        },
                        true,
                    )
                } else {
                    (
                        Failure::Permanent {
                            reason: format!("{stage}: {e}"),
                            hard_bounce,
                        },
                        true,
                    )
                }
            }
            Some(_) if e.is_transient() => (
                Failure::Transient {
                    reason: format!("{stage}: {e}"),
                    connection: false,
                },
                true,
            ),
            _ => (
                Failure::Transient {
                    reason: format!("{stage}: {e}"),
                    connection: true,
                },
                false,
            ),
        };
        let mut stage = "MAIL";
        let pipelining = pipelining && envelope.to().len() == 1;
        let outcome = async {
            let mail = Mail::new(envelope.from().cloned(), params);
            let data = lettre::transport::smtp::commands::Data;
            if pipelining {
                // MAIL, RCPT and DATA in one write (RFC 2920), then their three
                // replies in order: two round trips fewer per message.
                let rcpt = Rcpt::new(envelope.to()[0].clone(), vec![]);
                let is_io = |r: &Result<_, lettre::transport::smtp::Error>| {
                    r.as_ref().is_err_and(|e| code_of(e).is_none())
                };
                let r_mail = conn.command(format!("{mail}{rcpt}{data}")).await;
                if is_io(&r_mail) {
                    return Err(step("MAIL", r_mail.expect_err("an error")));
                }
                stage = "RCPT";
                let r_rcpt = conn.read_response().await;
                if is_io(&r_rcpt) {
                    return Err(step("RCPT", r_rcpt.expect_err("an error")));
                }
                stage = "DATA";
                let r_data = conn.read_response().await;
                if is_io(&r_data) {
                    return Err(step("DATA", r_data.expect_err("an error")));
                }
                if r_data.is_ok() && (r_mail.is_err() || r_rcpt.is_err()) {
                    // A server that opened DATA anyway gets an empty message ended at once.
                    let _ = conn.message(b"").await;
                }
                r_mail.map_err(|e| step("MAIL", e))?;
                r_rcpt.map_err(|e| step("RCPT", e))?;
                r_data.map_err(|e| step("DATA", e))?;
            } else {
                conn.command(mail).await.map_err(|e| step("MAIL", e))?;
                stage = "RCPT";
                for to in envelope.to() {
                    conn.command(Rcpt::new(to.clone(), vec![]))
                        .await
                        .map_err(|e| step("RCPT", e))?;
                }
                stage = "DATA";
                conn.command(data).await.map_err(|e| step("DATA", e))?;
            }
            conn.message(raw).await.map_err(|e| step("DATA", e))
        }
        .await;
        match outcome {
            Ok(response) => Ok(format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err((failure, keep)) => {
                let clean = keep && conn.command(Rset).await.is_ok();
                if !clean {
                    self.conn = None;
                }
                self.failed_at = stage;
                Err(failure)
            }
        }
    }

    async fn drop_connection(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.quit()).await;
        }
    }

    /// Says goodbye to the server (QUIT), if connected.
    pub async fn close(&mut self) {
        self.drop_connection().await;
    }
}
