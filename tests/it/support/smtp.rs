//! A scriptable SMTP server speaking real SMTP over TCP on loopback.
//!
//! A script decides, per recipient and per attempt (1-based, counted at RCPT),
//! what happens at RCPT and at the end of DATA: accept, answer a code, stall
//! (never answer), or drop the connection (at DATA: in the middle of the data).
//! Everything accepted is recorded. It can speak STARTTLS or implicit TLS
//! with a certificate from the test CA (tests/fixtures/smtp-ca.pem) and
//! require AUTH (PLAIN or LOGIN).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::watch,
};

/// How the server speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    None,
    /// Plain at first; STARTTLS offered.
    Starttls,
    /// TLS from the first byte (port 465 style).
    Implicit,
}

/// The server's TLS and AUTH.
#[derive(Clone)]
struct Security {
    tls: Tls,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// Required user and password, if AUTH is required.
    auth: Option<(String, String)>,
}

impl Security {
    fn plain() -> Self {
        Security {
            tls: Tls::None,
            acceptor: None,
            auth: None,
        }
    }
}

/// A TLS acceptor with the test CA's certificate for localhost and 127.0.0.1.
fn acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let cert = CertificateDer::pem_file_iter(super::fixture("smtp-server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(super::fixture("smtp-server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A successful or failed AUTH, as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub password: String,
    /// Whether the connection was encrypted when the password came.
    pub encrypted: bool,
    pub accepted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    Reply(u16, &'static str),
    Stall,
    Drop,
}

/// What to do with one attempt for one recipient.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rcpt: Action,
    pub data: Action,
}

impl Plan {
    pub fn accept() -> Self {
        Plan {
            rcpt: Action::Accept,
            data: Action::Accept,
        }
    }
    pub fn at_rcpt(a: Action) -> Self {
        Plan {
            rcpt: a,
            data: Action::Accept,
        }
    }
    pub fn at_data(a: Action) -> Self {
        Plan {
            rcpt: Action::Accept,
            data: a,
        }
    }
}

type Script = Arc<dyn Fn(&str, u32) -> Plan + Send + Sync>;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub from: String,
    pub to: String,
    pub data: Vec<u8>,
    /// When its body was read in full.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct State {
    accepted: Vec<Accepted>,
    /// Recipients whose message body has been read, before any reply to it.
    received: Vec<String>,
    attempts: HashMap<String, u32>,
    connections: u32,
    logins: Vec<Login>,
    /// Every message body read, whatever the reply to it.
    bodies: Vec<Accepted>,
    /// The next this many MAIL FROM commands get this reply.
    mail_refusals: (u32, u16, &'static str),
    /// With `Some(n)`, a MAIL FROM waits while `n` messages are accepted or
    /// in a transaction (see `hold_at`).
    hold: Option<usize>,
    /// Transactions that passed the hold and are not finished.
    in_flight: usize,
}

/// A session's place in a transaction that passed the hold; given back when
/// the transaction ends or the connection does.
struct Slot {
    state: Arc<Mutex<State>>,
    taken: bool,
}

impl Slot {
    /// Waits until the hold lets one more transaction in.
    async fn take(&mut self) {
        if self.taken {
            return;
        }
        loop {
            {
                let mut st = self.state.lock().unwrap();
                if st.hold.is_none_or(|n| st.accepted.len() + st.in_flight < n) {
                    st.in_flight += 1;
                    self.taken = true;
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn give_back(&mut self) {
        if std::mem::take(&mut self.taken) {
            self.state.lock().unwrap().in_flight -= 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.give_back();
    }
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    script: Arc<Mutex<Script>>,
    delay: Arc<Mutex<Duration>>,
    /// How long a new connection waits for the server's greeting.
    greeting: Arc<Mutex<Duration>>,
    pipelining: Arc<std::sync::atomic::AtomicBool>,
    security: Security,
    stop: watch::Sender<bool>,
}

impl SmtpServer {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Listens on `addr` (to bring a server back on the same port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(
            addr,
            Arc::new(|_: &str, _: u32| Plan::accept()),
            Default::default(),
            Security::plain(),
        )
        .await
    }

    /// Listens on a free loopback port speaking `tls`, requiring AUTH with
    /// `auth` (user, password) if given.
    pub async fn start_secure(tls: Tls, auth: Option<(&str, &str)>) -> Self {
        let security = Security {
            tls,
            acceptor: (tls != Tls::None).then(acceptor),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        Self::start_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|_: &str, _: u32| Plan::accept()),
            Default::default(),
            security,
        )
        .await
    }

    /// The next `n` MAIL FROM commands are answered `code text`.
    pub fn refuse_mail(&self, n: u32, code: u16, text: &'static str) {
        self.state.lock().unwrap().mail_refusals = (n, code, text);
    }

    /// Every message body the server read, accepted or not, in order.
    pub fn bodies(&self) -> Vec<Accepted> {
        self.state.lock().unwrap().bodies.clone()
    }

    /// From now on, no more than `n` messages in all are accepted: a new
    /// transaction waits at MAIL FROM until `release` (or a higher hold), so
    /// a test can act on a sender at exactly `n` accepted messages, with
    /// no other message in flight.
    pub fn hold_at(&self, n: usize) {
        self.state.lock().unwrap().hold = Some(n);
    }

    /// Lets every waiting transaction go on.
    pub fn release(&self) {
        self.state.lock().unwrap().hold = None;
    }

    /// Every AUTH attempt so far.
    pub fn logins(&self) -> Vec<Login> {
        self.state.lock().unwrap().logins.clone()
    }

    async fn start_with(
        addr: SocketAddr,
        script: Script,
        state: Arc<Mutex<State>>,
        security: Security,
    ) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the test SMTP server");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = SmtpServer {
            addr,
            state,
            script: Arc::new(Mutex::new(script)),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
            greeting: Arc::new(Mutex::new(Duration::ZERO)),
            pipelining: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            security,
            stop,
        };
        let (state, script, delay) = (
            server.state.clone(),
            server.script.clone(),
            server.delay.clone(),
        );
        let greeting = server.greeting.clone();
        let pipelining = server.pipelining.clone();
        let security = server.security.clone();
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((sock, _)) = r else { continue };
                        // As a real server: replies to pipelined commands are
                        // small writes that Nagle would hold for the client's
                        // delayed ACK (40 ms a message).
                        let _ = sock.set_nodelay(true);
                        state.lock().unwrap().connections += 1;
                        let (state, script, delay) = (state.clone(), script.clone(), delay.clone());
                        let wait = *greeting.lock().unwrap();
                        let pipelining = pipelining.load(std::sync::atomic::Ordering::SeqCst);
                        let mut stopped = stopped.clone();
                        let security = security.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let ctx = Session { state, script, delay, pipelining, security };
                            tokio::select! {
                                _ = ctx.connection(sock) => {}
                                _ = stopped.wait_for(|s| *s) => {}
                            }
                        });
                    }
                    _ = stopped_accept.wait_for(|s| *s) => return,
                }
            }
        });
        server
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn script(&self, f: impl Fn(&str, u32) -> Plan + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(f);
    }

    /// Whether new sessions advertise PIPELINING (they do by default).
    pub fn set_pipelining(&self, on: bool) {
        self.pipelining
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits this long before answering the end of each message's DATA.
    /// New connections wait `d` for the greeting (a slow connect, TLS or AUTH).
    pub fn set_greeting_delay(&self, d: Duration) {
        *self.greeting.lock().unwrap() = d;
    }

    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Recipients whose message body the server has read, whatever it then
    /// answers (with `set_delay`, it has not answered yet).
    pub fn received(&self) -> Vec<String> {
        self.state.lock().unwrap().received.clone()
    }

    /// Accepted messages per recipient.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for a in self.state.lock().unwrap().accepted.iter() {
            *m.entry(a.to.clone()).or_insert(0) += 1;
        }
        m
    }

    pub fn attempts(&self, rcpt: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .attempts
            .get(rcpt)
            .copied()
            .unwrap_or(0)
    }

    pub fn connections(&self) -> u32 {
        self.state.lock().unwrap().connections
    }

    /// Closes the listener and every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

fn addr_of(arg: &str) -> String {
    arg.split_once(':')
        .map(|(_, v)| v.trim())
        .unwrap_or("")
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or("")
        .to_string()
}

/// One connection's settings.
struct Session {
    state: Arc<Mutex<State>>,
    script: Arc<Mutex<Script>>,
    delay: Arc<Mutex<Duration>>,
    pipelining: bool,
    security: Security,
}

/// How a session ended.
enum End<S> {
    Closed,
    /// The client asked for STARTTLS: the stream, to be wrapped in TLS.
    Starttls(S),
}

impl Session {
    async fn connection(self, sock: tokio::net::TcpStream) {
        let acceptor = self.security.acceptor.clone();
        match (self.security.tls, acceptor) {
            (Tls::Implicit, Some(a)) => {
                if let Ok(tls) = a.accept(sock).await {
                    self.session(tls, true, true).await;
                }
            }
            (Tls::Starttls, Some(a)) => {
                if let End::Starttls(sock) = self.session(sock, false, true).await
                    && let Ok(tls) = a.accept(sock).await
                {
                    self.session(tls, true, false).await;
                }
            }
            _ => {
                self.session(sock, false, true).await;
            }
        }
    }

    /// The AUTH command `cmd` (and, for LOGIN, the lines that follow).
    async fn auth<R, W>(&self, cmd: &str, r: &mut R, w: &mut W, encrypted: bool) -> Option<bool>
    where
        R: AsyncBufReadExt + Unpin,
        W: AsyncWriteExt + Unpin,
    {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| String::from_utf8(b64.decode(s.trim()).ok()?).ok();
        let mut ask = async |prompt: &str| -> Option<String> {
            w.write_all(format!("334 {prompt}\r\n").as_bytes())
                .await
                .ok()?;
            let mut l = String::new();
            r.read_line(&mut l).await.ok()?;
            decode(&l)
        };
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let (user, password) = match words.get(1).map(|m| m.to_ascii_uppercase()).as_deref() {
            Some("PLAIN") => {
                let text = match words.get(2) {
                    Some(t) => decode(t)?,
                    None => ask("").await?,
                };
                let mut parts = text.split('\0').skip(1);
                (parts.next()?.to_string(), parts.next()?.to_string())
            }
            Some("LOGIN") => (ask("VXNlcm5hbWU6").await?, ask("UGFzc3dvcmQ6").await?),
            _ => return None,
        };
        let accepted = self
            .security
            .auth
            .as_ref()
            .is_some_and(|(u, p)| *u == user && *p == password);
        self.state.lock().unwrap().logins.push(Login {
            user,
            password,
            encrypted,
            accepted,
        });
        Some(accepted)
    }

    async fn session<S>(&self, sock: S, encrypted: bool, offer_starttls: bool) -> End<S>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (state, script, pipelining) = (&self.state, &self.script, self.pipelining);
        let starttls = self.security.tls == Tls::Starttls && !encrypted && offer_starttls;
        let auth_required = self.security.auth.is_some();
        let mut authenticated = false;
        let (r, mut w) = tokio::io::split(sock);
        let mut r = BufReader::new(r);
        if offer_starttls || self.security.tls != Tls::Starttls {
            let _ = w.write_all(b"220 paperpost-test ESMTP\r\n").await;
        }
        let mut slot = Slot {
            state: state.clone(),
            taken: false,
        };
        let mut from = String::new();
        // A transaction is open (MAIL FROM was accepted).
        let mut open = false;
        let mut rcpts: Vec<(String, Plan)> = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => return End::Closed,
                Ok(_) => {}
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            let reply: String = if upper.starts_with("EHLO") {
                let pipe = if pipelining { "250-PIPELINING\r\n" } else { "" };
                let tls = if starttls { "250-STARTTLS\r\n" } else { "" };
                // AUTH is offered before STARTTLS too, as a permissive server
                // does: only the client can keep the password off the wire.
                let auth = if auth_required {
                    "250-AUTH PLAIN LOGIN\r\n"
                } else {
                    ""
                };
                format!(
                    "250-paperpost-test\r\n{pipe}{tls}{auth}250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 52428800\r\n"
                )
            } else if upper == "STARTTLS" && starttls {
                if w.write_all(b"220 2.0.0 ready to start TLS\r\n")
                    .await
                    .is_err()
                {
                    return End::Closed;
                }
                return End::Starttls(r.into_inner().unsplit(w));
            } else if upper.starts_with("AUTH ") && auth_required {
                match self.auth(&cmd, &mut r, &mut w, encrypted).await {
                    Some(true) => {
                        authenticated = true;
                        "235 2.7.0 authenticated\r\n".into()
                    }
                    Some(false) => "535 5.7.8 authentication failed\r\n".into(),
                    None => "501 5.5.4 bad AUTH\r\n".into(),
                }
            } else if upper.starts_with("MAIL FROM") && auth_required && !authenticated {
                "530 5.7.0 authentication required\r\n".into()
            } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
                "250 OK\r\n".into()
            } else if upper.starts_with("MAIL FROM") {
                slot.take().await;
                from = addr_of(&cmd);
                rcpts.clear();
                let mut st = state.lock().unwrap();
                match st.mail_refusals {
                    (n, code, text) if n > 0 => {
                        st.mail_refusals.0 -= 1;
                        open = false;
                        format!("{code} {text}\r\n")
                    }
                    _ => {
                        open = true;
                        "250 2.1.0 OK\r\n".into()
                    }
                }
            } else if upper.starts_with("RCPT TO") && !open {
                "503 5.5.1 need MAIL command\r\n".into()
            } else if upper.starts_with("RCPT TO") {
                let to = addr_of(&cmd);
                let attempt = {
                    let mut s = state.lock().unwrap();
                    let n = s.attempts.entry(to.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                let plan = (script.lock().unwrap().clone())(&to, attempt);
                match plan.rcpt.clone() {
                    Action::Accept => {
                        rcpts.push((to, plan));
                        "250 2.1.5 OK\r\n".into()
                    }
                    Action::Reply(code, text) => format!("{code} {text}\r\n"),
                    Action::Stall => std::future::pending().await,
                    Action::Drop => return End::Closed,
                }
            } else if upper == "DATA" {
                if rcpts.is_empty() {
                    "503 5.5.1 no valid recipients\r\n".into()
                } else {
                    if w.write_all(b"354 go ahead\r\n").await.is_err() {
                        return End::Closed;
                    }
                    if rcpts.iter().any(|(_, p)| p.data == Action::Drop) {
                        // Read a little of the message, then hang up mid-DATA.
                        let mut buf = [0u8; 256];
                        let _ = r.read(&mut buf).await;
                        return End::Closed;
                    }
                    let Some(data) = read_body(&mut r).await else {
                        return End::Closed;
                    };
                    let answer = self.answer_data(&rcpts, &from, data).await;
                    slot.give_back();
                    match answer {
                        Some(reply) => {
                            rcpts.clear();
                            open = false;
                            reply
                        }
                        None => return End::Closed,
                    }
                }
            } else if upper.starts_with("RSET") {
                slot.give_back();
                rcpts.clear();
                open = false;
                "250 2.0.0 OK\r\n".into()
            } else if upper.starts_with("QUIT") {
                let _ = w.write_all(b"221 2.0.0 bye\r\n").await;
                return End::Closed;
            } else {
                "500 5.5.2 unrecognized command\r\n".into()
            };
            if w.write_all(reply.as_bytes()).await.is_err() {
                return End::Closed;
            }
        }
    }
}

/// The message body after DATA's 354, up to the lone dot, un-dot-stuffed;
/// `None` if the connection ends first.
async fn read_body<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut l = Vec::new();
        if r.read_until(b'\n', &mut l).await.ok()? == 0 {
            return None;
        }
        if l == b".\r\n" {
            return Some(data);
        }
        let l = if l.starts_with(b"..") {
            &l[1..]
        } else {
            &l[..]
        };
        data.extend_from_slice(l);
    }
}

impl Session {
    /// Records a body read for `rcpts`, waits the configured delay, and
    /// answers as the first recipient's plan says; `None` to hang up.
    async fn answer_data(
        &self,
        rcpts: &[(String, Plan)],
        from: &str,
        data: Vec<u8>,
    ) -> Option<String> {
        let at = std::time::Instant::now();
        let message = |to: &String| Accepted {
            from: from.to_string(),
            to: to.clone(),
            data: data.clone(),
            at,
        };
        {
            let mut st = self.state.lock().unwrap();
            st.received.extend(rcpts.iter().map(|(to, _)| to.clone()));
            st.bodies.extend(rcpts.iter().map(|(to, _)| message(to)));
        }
        let d = *self.delay.lock().unwrap();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        match rcpts[0].1.data.clone() {
            Action::Accept => {
                let mut st = self.state.lock().unwrap();
                st.accepted.extend(rcpts.iter().map(|(to, _)| message(to)));
                Some(format!(
                    "250 2.0.0 Ok: queued as T{}\r\n",
                    st.accepted.len()
                ))
            }
            Action::Reply(code, text) => Some(format!("{code} {text}\r\n")),
            Action::Stall => std::future::pending().await,
            Action::Drop => None,
        }
    }
}
