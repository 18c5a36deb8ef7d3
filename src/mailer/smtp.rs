//! The SMTP side of a sender: connecting (TLS, AUTH), one transaction
//! (MAIL, RCPT, DATA with pipelining), and what a failure means.

use super::*;

/// How to reach the SMTP server.
#[derive(Clone)]
pub struct SmtpTarget {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tls: TlsMode,
    pub(super) tls_parameters: Option<TlsParameters>,
    pub(super) credentials: Option<Credentials>,
    pub(super) hello: ClientId,
}

/// A kept connection idle longer than this is replaced rather than reused:
/// servers close idle sessions, and a message should not pay for finding out.
pub(super) const MAX_IDLE: Duration = Duration::from_secs(15);

pub(super) fn timed_out(timeout: Duration) -> Failure {
    Failure::Transient {
        reason: format!(
            "no answer from the mail server within {}",
            humantime::format_duration(timeout)
        ),
        connection: true,
    }
}

pub(super) fn code_of(e: &lettre::transport::smtp::Error) -> Option<u16> {
    e.status().and_then(|c| c.to_string().parse().ok())
}

/// TLS for `s.host`, trusting the built-in roots and `s.ca_file`'s certificates.
pub(super) fn tls_parameters(s: &crate::config::SmtpSettings) -> anyhow::Result<TlsParameters> {
    let mut builder = TlsParameters::builder(s.host.clone());
    if let Some(path) = &s.ca_file {
        let bad = |why: String| {
            anyhow::anyhow!(
                "invalid configuration: mail.smtp.ca_file: {}: {why}",
                path.display()
            )
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = lettre::transport::smtp::client::Certificate::from_pem(&pem)
            .map_err(|e| bad(e.to_string()))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(bad("no PEM certificate in it".into()));
        }
        builder = builder.add_root_certificate(certs);
    }
    builder.build().map_err(|e| {
        anyhow::anyhow!(
            "invalid configuration: mail.smtp.host: no TLS for {:?}: {e}",
            s.host
        )
    })
}

/// How one step of a transaction failed, and whether the connection is still
/// in a known state (a reply was read) and may be kept after RSET. What a
/// refusal means is decided by [`reply::judge`].
pub(super) fn classify(stage: Step, e: lettre::transport::smtp::Error) -> (Failure, bool) {
    let reason = format!("{stage}: {e}");
    let Some(code) = code_of(&e) else {
        return (
            Failure::Transient {
                reason,
                connection: true,
            },
            false,
        );
    };
    let step = stage;
    if step == Step::Mail && code >= 500 {
        return (Failure::SenderRefused { reason }, true);
    }
    let failure = match reply::judge(step, code, &reply_text(&e)) {
        reply::Verdict::Retry => Failure::Transient {
            reason,
            connection: false,
        },
        verdict => Failure::Permanent {
            reason,
            hard_bounce: verdict == reply::Verdict::Bounce,
        },
    };
    (failure, true)
}

/// The text of a server's reply, after its code: lettre shows an error as
/// "permanent error (550): 5.1.1 User unknown".
pub(super) fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    let shown = e.to_string();
    match shown.split_once("): ") {
        Some((_, text)) => text.to_string(),
        None => shown,
    }
}

/// A message as sent after DATA (RFC 5321 4.5.2): every line that starts with
/// a dot gets a second one, and the body ends with CRLF "." CRLF. lettre's own
/// encoder copies byte by byte and writes the ending separately; this finds the
/// few dots with memchr and is written with the ending in one go.
pub(super) struct DataBody<'a>(&'a str);

impl std::fmt::Display for DataBody<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0;
        let mut from = 0;
        if text.starts_with('.') {
            f.write_str(".")?;
        }
        for at in memchr::memmem::find_iter(text.as_bytes(), b"\n.") {
            // Up to and including the newline, then the extra dot.
            f.write_str(&text[from..=at])?;
            f.write_str(".")?;
            from = at + 1;
        }
        f.write_str(&text[from..])?;
        if !text.is_empty() && !text.ends_with("\r\n") {
            f.write_str("\r\n")?;
        }
        f.write_str(".\r\n")
    }
}

impl Sender {
    /// The open connection (opening one if needed) and whether it pipelines.
    pub(super) async fn connect(
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
                    // Our own socket, to turn off Nagle's algorithm: a small write
                    // behind unacknowledged data (such as a command after a body)
                    // would wait for the server's delayed ACK (about 40 ms).
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

    /// One transaction: MAIL, RCPT and DATA (connecting first if needed), the
    /// gate, then the body. Each half runs under `mail.smtp.timeout`; the gate
    /// does not, as it waits for our own database, not for the server.
    pub(super) async fn transaction(
        &mut self,
        t: &SmtpTarget,
        envelope: &Envelope,
        raw: &[u8],
        headers: &mut super::Headers<'_>,
        gate: &mut Option<Gate<'_>>,
    ) -> Result<String, Failure> {
        let timeout = self.mailer.timeout;
        let opened = match tokio::time::timeout(timeout, self.open_data(t, envelope, raw)).await {
            Ok(r) => r,
            Err(_) => {
                // A hung server is not retried at once on a new connection.
                self.failed_at = None;
                Err((timed_out(timeout), false))
            }
        };
        if let Err((failure, keep)) = opened {
            self.abandon(keep).await;
            return Err(failure);
        }
        if let Some(g) = gate.take()
            && !g.await
        {
            // Closing the line in the middle of DATA makes the server discard it.
            self.conn = None;
            return Err(not_sent());
        }
        let raw = match headers.complete(raw).await {
            Ok(raw) => raw,
            Err(failure) => {
                self.conn = None;
                return Err(failure);
            }
        };
        let raw: &[u8] = &raw;
        self.failed_at = Some(Step::Data);
        let conn = self.conn.as_mut().expect("connected by open_data");
        let body = async {
            match std::str::from_utf8(raw) {
                // The body, dot-stuffed and ended, in one write.
                Ok(text) => conn.command(DataBody(text)).await,
                Err(_) => conn.message(raw).await,
            }
        };
        let sent = match tokio::time::timeout(timeout, body).await {
            Ok(r) => r.map_err(|e| classify(Step::Data, e)),
            Err(_) => Err((timed_out(timeout), false)),
        };
        match sent {
            Ok(response) => {
                self.failed_at = None;
                Ok(format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                ))
            }
            Err((failure, keep)) => {
                self.abandon(keep).await;
                Err(failure)
            }
        }
    }

    /// After a failed step: RSET to keep the connection if its state is known,
    /// else drop it.
    pub(super) async fn abandon(&mut self, keep: bool) {
        let clean = match self.conn.as_mut() {
            Some(conn) if keep => tokio::time::timeout(self.mailer.timeout, conn.command(Rset))
                .await
                .is_ok_and(|r| r.is_ok()),
            _ => false,
        };
        if !clean {
            self.conn = None;
        }
    }

    /// Connects if needed and runs MAIL, RCPT and DATA up to the server's 354.
    /// `self.failed_at` names the step that failed.
    pub(super) async fn open_data(
        &mut self,
        t: &SmtpTarget,
        envelope: &Envelope,
        raw: &[u8],
    ) -> Result<(), (Failure, bool)> {
        let mut stage = Step::Mail;
        let result = self.open_data_steps(t, envelope, raw, &mut stage).await;
        self.failed_at = Some(stage);
        result
    }

    pub(super) async fn open_data_steps(
        &mut self,
        t: &SmtpTarget,
        envelope: &Envelope,
        raw: &[u8],
        stage: &mut Step,
    ) -> Result<(), (Failure, bool)> {
        let (conn, pipelining) = self.connect(t).await.map_err(|f| (f, false))?;
        let mut params = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                let reason =
                    "the address is not ASCII and the mail server does not support SMTPUTF8";
                return Err((
                    Failure::Permanent {
                        reason: reason.into(),
                        hard_bounce: false,
                    },
                    true,
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !raw.is_ascii() {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let mail = Mail::new(envelope.from().cloned(), params);
        let data = lettre::transport::smtp::commands::Data;
        if pipelining && envelope.to().len() == 1 {
            // MAIL, RCPT and DATA in one write (RFC 2920), then their three
            // replies in order: two round trips fewer per message. A reply
            // that could not be read leaves the connection in an unknown state.
            let rcpt = Rcpt::new(envelope.to()[0].clone(), vec![]);
            let is_io = |r: &Result<_, lettre::transport::smtp::Error>| {
                r.as_ref().is_err_and(|e| code_of(e).is_none())
            };
            let r_mail = conn.command(format!("{mail}{rcpt}{data}")).await;
            if is_io(&r_mail) {
                return Err(classify(Step::Mail, r_mail.expect_err("an error")));
            }
            *stage = Step::Rcpt;
            let r_rcpt = conn.read_response().await;
            if is_io(&r_rcpt) {
                return Err(classify(Step::Rcpt, r_rcpt.expect_err("an error")));
            }
            *stage = Step::Data;
            let r_data = conn.read_response().await;
            if is_io(&r_data) {
                return Err(classify(Step::Data, r_data.expect_err("an error")));
            }
            if r_data.is_ok() && (r_mail.is_err() || r_rcpt.is_err()) {
                // A server that opened DATA anyway gets an empty message ended at once.
                let _ = conn.message(b"").await;
            }
            for (step, r) in [
                (Step::Mail, r_mail),
                (Step::Rcpt, r_rcpt),
                (Step::Data, r_data),
            ] {
                if let Err(e) = r {
                    *stage = step;
                    return Err(classify(step, e));
                }
            }
        } else {
            conn.command(mail)
                .await
                .map_err(|e| classify(Step::Mail, e))?;
            *stage = Step::Rcpt;
            for to in envelope.to() {
                conn.command(Rcpt::new(to.clone(), vec![]))
                    .await
                    .map_err(|e| classify(Step::Rcpt, e))?;
            }
            *stage = Step::Data;
            conn.command(data)
                .await
                .map_err(|e| classify(Step::Data, e))?;
        }
        Ok(())
    }

    pub(super) async fn drop_connection(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.quit()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DataBody;

    #[test]
    fn data_body_stuffs_leading_dots_and_ends_once() {
        assert_eq!(
            DataBody("Subject: x\r\n\r\n.hidden\r\na.b\r\n..\r\n.").to_string(),
            "Subject: x\r\n\r\n..hidden\r\na.b\r\n...\r\n..\r\n.\r\n"
        );
        assert_eq!(DataBody(".x\r\n").to_string(), "..x\r\n.\r\n");
        assert_eq!(DataBody("").to_string(), ".\r\n");
        assert_eq!(DataBody("no newline").to_string(), "no newline\r\n.\r\n");
    }
}
