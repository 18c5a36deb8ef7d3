//! Typed, layered settings: the compiled-in `config/default.toml`, then an optional
//! file (`--config FILE` or `PAPERPOST_CONFIG`), then `PAPERPOST__SECTION__KEY`
//! environment variables. Every value is parsed into its final type while it is
//! read, so an unknown key or a bad value stops start-up with the key's name.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::domain::{Format, MaxPapers, ParseError, SubscriberEmail, TimeZone};

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Start-up configuration error: names the key (or the file) and says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("cannot read configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub schedule: ScheduleSettings,
    pub mail: MailSettings,
    pub http: HttpSettings,
    pub newsletter: NewsletterSettings,
    pub subscribers: SubscribersSettings,
    pub papers: PapersSettings,
    pub security: SecuritySettings,
    pub log: LogSettings,
    pub retention: RetentionSettings,
    pub webhooks: WebhookSettings,
    /// The configuration file these settings were read from, if any (SIGHUP
    /// reads it again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Papers on autopilot: the daemon fetches each day's papers itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PapersSettings {
    /// The URL to GET a day's papers from, `{date}` standing for the date;
    /// `None` turns fetching off.
    #[serde(deserialize_with = "de::source_url")]
    pub source_url: Option<String>,
    /// When the daemon fetches (in `schedule.timezone`).
    pub fetch_cron: CronExpr,
    /// Which day it fetches: this many days before the fetch's own date.
    #[serde(deserialize_with = "de::days_ago")]
    pub fetch_days_ago: u32,
    /// Keep the top K papers by upvotes; 0 keeps all, in the source's order.
    #[serde(deserialize_with = "de::auto_select")]
    pub auto_select: u32,
    /// How long one request may take.
    #[serde(deserialize_with = "de::duration")]
    pub fetch_timeout: Duration,
    /// How long the daemon waits before trying a failed fetch again.
    #[serde(deserialize_with = "de::duration")]
    pub fetch_retry: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    #[serde(deserialize_with = "de::path")]
    pub path: PathBuf,
    #[serde(deserialize_with = "de::duration")]
    pub busy_timeout: Duration,
    #[serde(deserialize_with = "de::connections")]
    pub max_connections: u32,
    /// How long the sending lock lasts without a heartbeat.
    #[serde(deserialize_with = "de::lock_ttl")]
    pub lock_ttl: Duration,
    /// A PostgreSQL URL, or `None` for the SQLite file at `path`.
    #[serde(deserialize_with = "de::database_url")]
    pub url: Option<DatabaseUrl>,
    pub auto_migrate: bool,
}

impl DatabaseSettings {
    /// The database for people and logs: the SQLite file's path, or the
    /// PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match &self.url {
            Some(url) => url.to_string(),
            None => self.path.display().to_string(),
        }
    }
}

/// A `postgres://` URL. Its password is kept out of `Debug`, `Display` and
/// every log line; [`DatabaseUrl::expose`] gives the whole URL to the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
            .ok_or("must start with postgres:// (or be empty for SQLite)")?;
        if rest.is_empty() {
            return Err("names no server".into());
        }
        Ok(DatabaseUrl(s.to_string()))
    }

    /// The URL with its password, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("postgres", &self.0));
        match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => write!(f, "{scheme}://{user}:***@{host}"),
                None => write!(f, "{scheme}://{userinfo}@{host}"),
            },
            None => write!(f, "{scheme}://{rest}"),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    pub cron: CronExpr,
    #[serde(deserialize_with = "de::timezone")]
    pub timezone: TimeZone,
    #[serde(deserialize_with = "de::duration")]
    pub catch_up: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub max_edition_age: Duration,
    pub per_subscriber_timezone: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Smtp,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    #[serde(deserialize_with = "de::mailbox")]
    pub from: lettre::message::Mailbox,
    #[serde(deserialize_with = "de::optional_mailbox")]
    pub reply_to: Option<lettre::message::Mailbox>,
    pub transport: TransportKind,
    #[serde(deserialize_with = "de::path")]
    pub outbox_dir: PathBuf,
    #[serde(deserialize_with = "de::concurrency")]
    pub concurrency: u16,
    pub rate_limit: u32,
    /// How long a claimed message stays claimed by a process that no longer
    /// tracks it (its outcome could not be recorded) before it is sent again.
    #[serde(deserialize_with = "de::lease")]
    pub lease: Duration,
    #[serde(deserialize_with = "de::optional_domain")]
    pub message_id_domain: Option<String>,
    #[serde(deserialize_with = "de::optional_address")]
    pub unsubscribe_mailto: Option<lettre::Address>,
    pub smtp: SmtpSettings,
    pub dkim: DkimSettings,
    pub bounce: BounceSettings,
    pub retry: RetrySettings,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    #[serde(deserialize_with = "de::host")]
    pub host: String,
    #[serde(deserialize_with = "de::port")]
    pub port: u16,
    pub tls: TlsMode,
    pub username: String,
    pub password: SecretString,
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Certificates (PEM) trusted besides the built-in roots, for a relay
    /// with a private CA or a self-signed certificate.
    #[serde(deserialize_with = "de::optional_path")]
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SecretString already redacts itself; spelled out so no future field slips through.
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSettings {
    pub selector: String,
    #[serde(deserialize_with = "de::optional_domain")]
    pub domain: Option<String>,
    /// One per selector, comma-separated (checked with the keys at start).
    pub key_file: PathBuf,
    /// "rsa" or "ed25519": one for every selector, or one each.
    pub algorithm: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BounceSettings {
    #[serde(deserialize_with = "de::attempts")]
    pub threshold: u32,
    /// The domain of the signed VERP envelope sender
    /// (`bounces+ID-TAG@domain`); `None` (empty): `mail.from`.
    #[serde(deserialize_with = "de::optional_domain")]
    pub verp_domain: Option<String>,
    /// Soft bounces (mailbox full, 4.x.x) from this many distinct editions
    /// within `soft_window` suppress a subscriber.
    #[serde(deserialize_with = "de::attempts")]
    pub soft_editions: u32,
    #[serde(deserialize_with = "de::duration")]
    pub soft_window: Duration,
    /// The guard: one diagnostic from this many recipient domains within
    /// `guard_window` is the relay's fault, not the recipients'.
    #[serde(deserialize_with = "de::attempts")]
    pub guard_domains: u32,
    #[serde(deserialize_with = "de::duration")]
    pub guard_window: Duration,
    /// ... or hard reports for more than this share (0 to 1) of an
    /// edition's messages within `guard_window`.
    #[serde(deserialize_with = "de::share")]
    pub guard_share: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(deserialize_with = "de::attempts")]
    pub max_attempts: u32,
    #[serde(deserialize_with = "de::duration")]
    pub base_delay: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub max_delay: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(deserialize_with = "de::socket_addr")]
    pub bind: SocketAddr,
    /// Where /metrics is served, apart from the public endpoint (it tells
    /// whether an address is subscribed); `None` (empty): not served.
    #[serde(deserialize_with = "de::optional_socket_addr")]
    pub metrics_bind: Option<SocketAddr>,
    /// Reverse proxies whose X-Forwarded-For / Forwarded name the client
    /// (addresses or CIDR ranges); nobody else's are believed.
    #[serde(deserialize_with = "de::networks")]
    pub trusted_proxies: Vec<Network>,
    #[serde(deserialize_with = "de::base_url")]
    pub public_url: url::Url,
    /// Other sites' origins (`https://host[:port]`) whose pages may post the
    /// subscribe form (an embedded form); `public_url`'s always may.
    #[serde(deserialize_with = "de::origins")]
    pub form_origins: Vec<String>,
    /// Subscribe form posts one address (IP) may make per minute.
    #[serde(deserialize_with = "de::per_minute")]
    pub subscribe_per_minute: u32,
    /// Longest time a request may take, reading its body included.
    #[serde(deserialize_with = "de::duration")]
    pub request_timeout: Duration,
    /// Connections served at once; past it, 503 and closed.
    #[serde(deserialize_with = "de::max_connections")]
    pub max_connections: usize,
}

/// An address range, `IP/prefix` (a bare IP is a range of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr: std::net::IpAddr = ip.trim().parse().map_err(|_| {
            format!("invalid address {s:?} (write an IP or IP/prefix, e.g. 10.0.0.0/8)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix in {s:?} (0 to {max})"))?
        };
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewsletterSettings {
    #[serde(deserialize_with = "de::title")]
    pub title: String,
    #[serde(deserialize_with = "de::list_id")]
    pub list_id: String,
    #[serde(deserialize_with = "de::subject")]
    pub subject: String,
    #[serde(deserialize_with = "de::one_line")]
    pub postal_address: String,
    pub thumbnails: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribersSettings {
    #[serde(deserialize_with = "de::path")]
    pub file: PathBuf,
    #[serde(deserialize_with = "de::timezone")]
    pub default_timezone: TimeZone,
    #[serde(deserialize_with = "de::format")]
    pub default_format: Format,
    #[serde(deserialize_with = "de::max_papers")]
    pub default_max_papers: MaxPapers,
    /// Pending (web) subscribers who never confirm are deleted after this long.
    #[serde(deserialize_with = "de::duration")]
    pub pending_ttl: Duration,
    /// At most this many confirmation mails go out in any hour, to all
    /// addresses together (past it, an alert and a metric).
    #[serde(deserialize_with = "de::per_hour")]
    pub confirmations_per_hour: u32,
}

/// How long history is kept before `prune` (daily in the daemon) deletes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Delivery rows of finished editions started longer ago (with the
    /// edition and its selection).
    #[serde(deserialize_with = "de::retention")]
    pub deliveries: Duration,
    /// Link uses (unsubscribe, preferences) older than this.
    #[serde(deserialize_with = "de::retention")]
    pub link_events: Duration,
    /// Records of handled fire times older than this.
    #[serde(deserialize_with = "de::retention")]
    pub fires: Duration,
}

/// Bounce and complaint webhooks of mail providers (`POST /webhooks/NAME`);
/// each is off while its credential is empty.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Postmark: the Basic auth user and password set on the webhook.
    pub postmark_user: String,
    #[serde(deserialize_with = "de::credential")]
    pub postmark_password: SecretString,
    /// Mailgun: the HTTP webhook signing key.
    #[serde(deserialize_with = "de::credential")]
    pub mailgun_signing_key: SecretString,
    /// SendGrid: the signed event webhook's verification key (base64).
    pub sendgrid_public_key: String,
    /// Amazon SES through SNS: the topic's ARN (messages from any other
    /// topic are refused).
    pub ses_topic_arn: String,
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &SecretString| {
            if s.expose_secret().is_empty() {
                ""
            } else {
                "[REDACTED]"
            }
        };
        f.debug_struct("WebhookSettings")
            .field("postmark_user", &self.postmark_user)
            .field("postmark_password", &set(&self.postmark_password))
            .field("mailgun_signing_key", &set(&self.mailgun_signing_key))
            .field("sendgrid_public_key", &self.sendgrid_public_key)
            .field("ses_topic_arn", &self.ses_topic_arn)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    #[serde(deserialize_with = "de::secret")]
    pub secret: SecretString,
    #[serde(deserialize_with = "de::path")]
    pub secret_file: PathBuf,
}

impl fmt::Debug for SecuritySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecuritySettings")
            .field("secret", &"[REDACTED]")
            .field("secret_file", &self.secret_file)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(deserialize_with = "de::log_level")]
    pub level: String,
    pub format: LogFormat,
    /// Show subscribers' email addresses in info-level logs.
    pub addresses: bool,
}

/// What a configuration reload changed ([`Settings::changes`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Applied at once.
    pub live: Vec<&'static str>,
    /// Take effect at the next start.
    pub restart: Vec<&'static str>,
}

/// A parsed cron expression (with seconds) and the text it came from.
#[derive(Clone)]
pub struct CronExpr {
    pub source: String,
    pub schedule: cron::Schedule,
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronExpr({:?})", self.source)
    }
}

impl FromStr for CronExpr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let schedule = cron::Schedule::from_str(s.trim()).map_err(|e| {
            let e = e.to_string();
            let reason = e.lines().last().unwrap_or("").trim();
            ParseError::new(format!(
                "invalid cron expression {s:?}: {reason} (expected \"sec min hour day-of-month month day-of-week\", e.g. \"0 0 7 * * Mon-Fri\")"
            ))
        })?;
        Ok(CronExpr {
            source: s.trim().to_string(),
            schedule,
        })
    }
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

impl Settings {
    /// Reads the layers: defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, None)
    }

    /// As [`Settings::load`], with the environment given as a map (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            // Parse it ourselves first so a syntax error names the file and line.
            if let Err(e) = text.parse::<toml::Table>() {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    message: e.to_string().trim().to_string(),
                });
            }
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("PAPERPOST")
                .prefix_separator("__")
                .separator("__")
                .source(env),
        );
        let cfg = builder.build().map_err(|e| ConfigError::Invalid {
            key: "(layers)".into(),
            message: e.to_string(),
        })?;
        let mut settings = serde_path_to_error::deserialize::<_, Settings>(cfg).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            ConfigError::Invalid {
                key,
                message: clean_message(&message),
            }
        })?;
        settings.check()?;
        settings.source = file.map(Path::to_path_buf);
        Ok(settings)
    }

    /// What changed from `self` to `new`: the keys applied while running
    /// (the rate limit, the retry policy, the newsletter texts, the log
    /// level and addresses) and those that take effect at the next start.
    pub fn changes(&self, new: &Settings) -> Changes {
        let differ = |a: &dyn fmt::Debug, b: &dyn fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let mut c = Changes::default();
        let mut live = |key: &'static str, changed: bool| {
            if changed {
                c.live.push(key);
            }
        };
        live(
            "mail.rate_limit",
            self.mail.rate_limit != new.mail.rate_limit,
        );
        live("mail.retry", differ(&self.mail.retry, &new.mail.retry));
        live("newsletter", differ(&self.newsletter, &new.newsletter));
        live("log.level", self.log.level != new.log.level);
        live("log.addresses", self.log.addresses != new.log.addresses);
        // The rest of [mail], with the live keys as they were.
        let mut mail = new.mail.clone();
        mail.rate_limit = self.mail.rate_limit;
        mail.retry = self.mail.retry.clone();
        let restart: [(&'static str, bool); 11] = [
            ("database", differ(&self.database, &new.database)),
            ("schedule", differ(&self.schedule, &new.schedule)),
            ("mail", differ(&self.mail, &mail)),
            ("http", differ(&self.http, &new.http)),
            ("subscribers", differ(&self.subscribers, &new.subscribers)),
            ("papers", differ(&self.papers, &new.papers)),
            ("security", differ(&self.security, &new.security)),
            ("retention", differ(&self.retention, &new.retention)),
            ("log.format", differ(&self.log.format, &new.log.format)),
            ("mail.smtp.password", {
                use secrecy::ExposeSecret;
                self.mail.smtp.password.expose_secret() != new.mail.smtp.password.expose_secret()
            }),
            ("security.secret", {
                use secrecy::ExposeSecret;
                self.security.secret.expose_secret() != new.security.secret.expose_secret()
            }),
        ];
        c.restart = restart
            .into_iter()
            .filter(|(_, d)| *d)
            .map(|(k, _)| k)
            .collect();
        c
    }

    /// Rules that span several keys.
    fn check(&self) -> Result<(), ConfigError> {
        let smtp = &self.mail.smtp;
        let loopback = matches!(smtp.host.as_str(), "localhost" | "127.0.0.1" | "::1")
            || smtp
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if smtp.tls == TlsMode::None && !smtp.username.is_empty() && !loopback {
            return Err(ConfigError::Invalid {
                key: "mail.smtp.tls".into(),
                message: format!(
                    "\"none\" with mail.smtp.username set would send the password in clear to {}; \
                     use \"starttls\" or \"tls\" (plain text is allowed only to a loopback relay)",
                    smtp.host
                ),
            });
        }
        Ok(())
    }

    /// The directory that holds the database file.
    pub fn data_dir(&self) -> &Path {
        self.database.path.parent().unwrap_or(Path::new("."))
    }
}

/// config's messages sometimes repeat the key ("... for key `a.b`"); ours already leads with it.
fn clean_message(msg: &str) -> String {
    match msg.find(" for key `") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Deserializes a unit enum from one of its lower-case names; any other value
/// is an error that lists the choices.
macro_rules! named_choices {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                match s.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(D::Error::custom(format!(
                        "invalid value {s:?} (expected one of: {})",
                        [$($name),+].join(", ")
                    ))),
                }
            }
        }
    };
}

named_choices!(TransportKind { "smtp" => Smtp, "file" => File });
named_choices!(TlsMode { "none" => None, "starttls" => Starttls, "tls" => Tls });
named_choices!(LogFormat { "text" => Text, "json" => Json });

mod de {
    use super::*;

    fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        String::deserialize(d)
    }

    fn parsed<'de, D, T>(d: D, f: impl FnOnce(&str) -> Result<T, String>) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
    {
        let s = string(d)?;
        f(&s).map_err(D::Error::custom)
    }

    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parsed(d, |s| {
            humantime::parse_duration(s.trim()).map_err(|e| {
                format!("invalid duration {s:?}: {e} (write e.g. \"100ms\", \"30s\", \"5m\", \"6h\", \"2days\")")
            })
        })
    }

    /// An http(s) URL once `{date}` is filled in; empty is `None`.
    pub fn source_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        parsed(d, |s| {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            let url = url::Url::parse(&s.replace("{date}", "2024-03-11"))
                .map_err(|e| format!("invalid URL {s:?}: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("{s:?} is not an http or https URL"));
            }
            Ok(Some(s.to_string()))
        })
    }

    pub fn days_ago<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        ranged(d, 0, 7, "days").map(|n| n as u32)
    }

    pub fn auto_select<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        ranged(d, 0, 200, "papers").map(|n| n as u32)
    }

    /// At least 7 days: a fire time is caught up within hours, a retry
    /// gives up within days, and a bounce arrives within days.
    pub fn retention<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let keep = duration(d)?;
        if keep < Duration::from_secs(7 * 86_400) {
            return Err(D::Error::custom(format!(
                "{} is too short (at least 7days)",
                humantime::format_duration(keep)
            )));
        }
        Ok(keep)
    }

    pub fn lease<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let lease = duration(d)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&lease) {
            return Err(D::Error::custom(format!(
                "{} is out of range (1s to 1day)",
                humantime::format_duration(lease)
            )));
        }
        Ok(lease)
    }

    pub fn database_url<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<super::DatabaseUrl>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(None);
        }
        super::DatabaseUrl::parse(s.trim())
            .map(Some)
            .map_err(D::Error::custom)
    }

    pub fn lock_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ttl = duration(d)?;
        if !(Duration::from_secs(3)..=Duration::from_secs(600)).contains(&ttl) {
            return Err(D::Error::custom(format!(
                "{} is out of range (3s to 10m)",
                humantime::format_duration(ttl)
            )));
        }
        Ok(ttl)
    }

    /// A path, or `None` for an empty string.
    pub fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        parsed(d, |s| {
            if s.contains('\0') {
                Err(format!("invalid path {s:?}"))
            } else {
                Ok((!s.trim().is_empty()).then(|| PathBuf::from(s)))
            }
        })
    }

    pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        parsed(d, |s| {
            if s.trim().is_empty() {
                Err("the path is empty".to_string())
            } else if s.contains('\0') {
                Err(format!("invalid path {s:?}"))
            } else {
                Ok(PathBuf::from(s))
            }
        })
    }

    pub fn timezone<'de, D: Deserializer<'de>>(d: D) -> Result<TimeZone, D::Error> {
        parsed(d, |s| TimeZone::parse(s).map_err(|e| e.to_string()))
    }

    pub fn format<'de, D: Deserializer<'de>>(d: D) -> Result<Format, D::Error> {
        parsed(d, |s| Format::parse(s).map_err(|e| e.to_string()))
    }

    pub fn max_papers<'de, D: Deserializer<'de>>(d: D) -> Result<MaxPapers, D::Error> {
        let n = i64::deserialize(d)?;
        MaxPapers::new(n).map_err(D::Error::custom)
    }

    fn ranged<'de, D: Deserializer<'de>>(
        d: D,
        lo: u64,
        hi: u64,
        what: &str,
    ) -> Result<u64, D::Error> {
        let n = u64::deserialize(d)?;
        if (lo..=hi).contains(&n) {
            Ok(n)
        } else {
            Err(D::Error::custom(format!(
                "{what} {n} is out of range ({lo} to {hi})"
            )))
        }
    }

    pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        ranged(d, 1, 65535, "port").map(|n| n as u16)
    }

    pub fn concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        ranged(d, 1, 256, "concurrency").map(|n| n as u16)
    }

    pub fn connections<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        ranged(d, 1, 64, "connections").map(|n| n as u32)
    }

    pub fn per_minute<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        ranged(d, 1, 100_000, "rate").map(|n| n as u32)
    }

    pub fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        ranged(d, 16, 1_000_000, "connections").map(|n| n as usize)
    }

    pub fn share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        parsed(d, |s| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| (0.0..=1.0).contains(x))
                .ok_or_else(|| format!("invalid share {s:?}: a number from 0 to 1, e.g. 0.2"))
        })
    }

    pub fn per_hour<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        ranged(d, 1, 10_000_000, "rate").map(|n| n as u32)
    }

    /// Web origins (`scheme://host[:port]`), separated by commas or spaces.
    pub fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        parsed(d, |s| {
            s.split([',', ' '])
                .filter(|t| !t.trim().is_empty())
                .map(|t| {
                    let url = url::Url::parse(t.trim())
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https") && u.path() == "/")
                        .ok_or_else(|| {
                            format!("invalid origin {t:?} (write scheme://host[:port], e.g. https://blog.example.org)")
                        })?;
                    Ok(url.origin().ascii_serialization())
                })
                .collect()
        })
    }

    pub fn attempts<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        ranged(d, 1, 1000, "attempts").map(|n| n as u32)
    }

    pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        parsed(d, |s| {
            s.trim().parse().map_err(|_| {
                format!("invalid listen address {s:?} (write IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080)")
            })
        })
    }

    /// Addresses or ranges, separated by commas or spaces; empty for none.
    pub fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<super::Network>, D::Error> {
        parsed(d, |s| {
            s.split([',', ' '])
                .filter(|t| !t.trim().is_empty())
                .map(super::Network::parse)
                .collect()
        })
    }

    pub fn optional_socket_addr<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        parsed(d, |s| {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            s.parse().map(Some).map_err(|_| {
                format!("invalid listen address {s:?} (write IP:PORT, e.g. 127.0.0.1:9464, or empty for none)")
            })
        })
    }

    pub fn host<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        parsed(d, |s| {
            let s = s.trim();
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
            {
                Err(format!("invalid host name {s:?}"))
            } else {
                Ok(s.to_string())
            }
        })
    }

    pub fn mailbox<'de, D: Deserializer<'de>>(d: D) -> Result<lettre::message::Mailbox, D::Error> {
        parsed(d, parse_mailbox)
    }

    pub fn optional_mailbox<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<lettre::message::Mailbox>, D::Error> {
        parsed(d, |s| {
            if s.trim().is_empty() {
                Ok(None)
            } else {
                parse_mailbox(s).map(Some)
            }
        })
    }

    fn parse_mailbox(s: &str) -> Result<lettre::message::Mailbox, String> {
        if s.contains(|c: char| c.is_control()) {
            return Err(format!(
                "invalid mail address {s:?}: it contains control characters"
            ));
        }
        let mb: lettre::message::Mailbox = s.trim().parse().map_err(|e| {
            format!("invalid mail address {s:?}: {e} (write \"Name <user@example.org>\" or \"user@example.org\")")
        })?;
        // The address part must also pass the subscriber address rules.
        SubscriberEmail::parse(mb.email.as_ref())
            .map_err(|e| format!("invalid mail address {s:?}: {e}"))?;
        Ok(mb)
    }

    pub fn base_url<'de, D: Deserializer<'de>>(d: D) -> Result<url::Url, D::Error> {
        parsed(d, |s| {
            let url = url::Url::parse(s.trim()).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(format!(
                    "invalid URL {s:?}: it must be an absolute http:// or https:// URL"
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!(
                    "invalid URL {s:?}: a base URL has no query or fragment"
                ));
            }
            Ok(url)
        })
    }

    pub fn title<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        parsed(d, |s| {
            let t = crate::domain::normalize_ws(s);
            if t.is_empty()
                || t.chars().count() > 100
                || s.chars().any(|c| c.is_control() && c != ' ')
            {
                Err(format!(
                    "invalid title {s:?}: 1 to 100 characters on one line"
                ))
            } else {
                Ok(t)
            }
        })
    }

    pub fn list_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        parsed(d, |s| {
            let s = s.trim();
            let ok = !s.is_empty()
                && s.len() <= 255
                && s.contains('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if ok {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "invalid list id {s:?}: use a domain-like name such as daily.news.example.org"
                ))
            }
        })
    }

    pub fn optional_domain<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        parsed(d, |s| {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            let ok = s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if ok {
                Ok(Some(s.to_ascii_lowercase()))
            } else {
                Err(format!("invalid domain name {s:?}"))
            }
        })
    }

    pub fn optional_address<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<lettre::Address>, D::Error> {
        parsed(d, |s| {
            let s = s.trim().trim_start_matches("mailto:");
            if s.is_empty() {
                return Ok(None);
            }
            SubscriberEmail::parse(s)
                .map(|e| Some(e.to_address()))
                .map_err(|e| e.to_string())
        })
    }

    pub fn subject<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        parsed(d, |s| {
            let t = crate::domain::normalize_ws(s);
            if t.is_empty() || s.chars().any(|c| c.is_control() && c != ' ') {
                return Err(format!("invalid subject pattern {s:?}: one line of text"));
            }
            let mut rest = t.as_str();
            while let Some(i) = rest.find('{') {
                let end = rest[i..]
                    .find('}')
                    .ok_or_else(|| format!("invalid subject pattern {s:?}: unclosed '{{'"))?;
                let name = &rest[i + 1..i + end];
                if !matches!(name, "title" | "date" | "top") {
                    return Err(format!(
                        "invalid subject pattern {s:?}: unknown placeholder {{{name}}} (use {{title}}, {{date}}, {{top}})"
                    ));
                }
                rest = &rest[i + end + 1..];
            }
            Ok(t)
        })
    }

    pub fn one_line<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        parsed(d, |s| {
            if s.chars().any(|c| c.is_control()) {
                Err(format!(
                    "invalid value {s:?}: one line of text without control characters"
                ))
            } else {
                Ok(crate::domain::normalize_ws(s))
            }
        })
    }

    /// A credential kept from logs and `paperpost config`; any length.
    pub fn credential<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        parsed(d, |s| Ok(SecretString::from(s.trim().to_string())))
    }

    pub fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        // Never echo the value.
        parsed(d, |s| {
            if !s.is_empty() && s.chars().count() < 32 {
                Err(
                    "the secret is shorter than 32 characters (leave it empty to use secret_file)"
                        .to_string(),
                )
            } else {
                Ok(SecretString::from(s.to_string()))
            }
        })
    }

    pub fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        parsed(d, |s| {
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_string())
                .map_err(|e| format!("invalid log filter {s:?}: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        Settings::load_from(None, env(pairs))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.database.path, PathBuf::from("data/paperpost.db"));
        assert_eq!(s.mail.transport, TransportKind::File);
        assert_eq!(s.mail.retry.max_attempts, 8);
        assert_eq!(s.mail.retry.base_delay, Duration::from_secs(30));
        assert_eq!(s.schedule.catch_up, Duration::from_secs(6 * 3600));
        assert_eq!(s.schedule.timezone.name(), "UTC");
    }

    #[test]
    fn environment_overrides() {
        let s = Settings::load_from(
            None,
            env(&[
                ("PAPERPOST__MAIL__SMTP__PORT", "2525"),
                ("PAPERPOST__SCHEDULE__CATCH_UP", "100ms"),
                ("PAPERPOST__MAIL__TRANSPORT", "smtp"),
            ]),
        )
        .unwrap();
        assert_eq!(s.mail.smtp.port, 2525);
        assert_eq!(s.schedule.catch_up, Duration::from_millis(100));
        assert_eq!(s.mail.transport, TransportKind::Smtp);
    }

    #[test]
    fn bad_values_name_the_key_and_value() {
        let cases = [
            (
                "PAPERPOST__SCHEDULE__CRON",
                "every day",
                "schedule.cron",
                "every day",
            ),
            (
                "PAPERPOST__SCHEDULE__TIMEZONE",
                "Mars/Base",
                "schedule.timezone",
                "Mars/Base",
            ),
            (
                "PAPERPOST__HTTP__PUBLIC_URL",
                "javascript:alert(1)",
                "http.public_url",
                "javascript:alert(1)",
            ),
            (
                "PAPERPOST__MAIL__FROM",
                "not an address",
                "mail.from",
                "not an address",
            ),
            (
                "PAPERPOST__MAIL__SMTP__PORT",
                "70000",
                "mail.smtp.port",
                "70000",
            ),
            ("PAPERPOST__MAIL__SMTP__PORT", "0", "mail.smtp.port", "0"),
            (
                "PAPERPOST__MAIL__SMTP__TLS",
                "maybe",
                "mail.smtp.tls",
                "maybe",
            ),
            (
                "PAPERPOST__MAIL__RETRY__BASE_DELAY",
                "soon",
                "mail.retry.base_delay",
                "soon",
            ),
            ("PAPERPOST__DATABASE__PATH", "", "database.path", "empty"),
            (
                "PAPERPOST__HTTP__BIND",
                "localhost:http",
                "http.bind",
                "localhost:http",
            ),
            (
                "PAPERPOST__MAIL__SMTP__TLS",
                "maybe",
                "mail.smtp.tls",
                "starttls",
            ),
        ];
        for (var, value, key, shown) in cases {
            let msg = err(&[(var, value)]);
            assert!(msg.contains(key), "{var}={value}: {msg}");
            assert!(msg.contains(shown), "{var}={value}: {msg}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let msg = err(&[("PAPERPOST__MAIL__SMTP__HOSTNAME", "x")]);
        assert!(msg.contains("hostname"), "{msg}");
        assert!(msg.contains("mail.smtp"), "{msg}");
    }

    #[test]
    fn secrets_never_show() {
        let s = Settings::load_from(
            None,
            env(&[
                ("PAPERPOST__MAIL__SMTP__PASSWORD", "hunter2-very-secret"),
                (
                    "PAPERPOST__SECURITY__SECRET",
                    "0123456789abcdef0123456789abcdef-topsecret",
                ),
            ]),
        )
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
        let msg = err(&[("PAPERPOST__SECURITY__SECRET", "short-secret")]);
        assert!(
            msg.contains("security.secret") && !msg.contains("short-secret"),
            "{msg}"
        );
    }

    #[test]
    fn file_layer_with_syntax_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("local.toml");
        std::fs::write(&p, "[mail]\nfrom = \n").unwrap();
        let msg = Settings::load_from(Some(&p), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("local.toml"), "{msg}");
        std::fs::write(&p, "[mail]\nconcurrency = 8\n").unwrap();
        assert_eq!(
            Settings::load_from(Some(&p), env(&[]))
                .unwrap()
                .mail
                .concurrency,
            8
        );
    }
}
