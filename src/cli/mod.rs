//! The `paperpost` command line.

use std::{path::PathBuf, process::ExitCode};

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};

mod bounces;
mod db;
mod demo;
mod dkim;
mod output;
mod papers;
mod preview;
mod secret;
mod send;
mod subscribers;

pub use send::{SendSummary, send};

use crate::{
    app::App,
    config::Settings,
    domain::{DeliveryStatus, Format, SubscriberStatus},
    ingest::{InputError, papers::PaperFormat},
    store,
};

/// paperpost mails each day's selected research papers to your subscribers,
/// as a personalized digest per person.
///
/// An editor imports the day's papers (`papers import`), subscribers are managed
/// with `subscribers ...` or a hand-edited file, and the daemon sends each edition
/// on schedule. Start with `paperpost demo` to see it work on sample data.
#[derive(Debug, Parser)]
#[command(name = "paperpost", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// A configuration file layered over the built-in defaults (see config/default.toml).
    #[arg(long, global = true, env = "PAPERPOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Try paperpost on sample data: creates the database, imports the bundled
    /// sample papers and sample subscribers, sends the sample edition (to the
    /// outbox folder by default), and shows the result.
    Demo,
    /// Run the service: send each edition on schedule, retry, and resume after
    /// restarts. Stops gracefully on SIGTERM or Ctrl-C; SIGHUP re-reads the
    /// subscriber file.
    Run,
    /// Serve only the web endpoint (the links in mail, the subscribe form,
    /// /healthz, /metrics) on http.bind, without sending: for a second instance
    /// on the same database, or for sites that send with `send` from a timer.
    Serve,
    /// Send one edition now, in the foreground, and exit when every message is
    /// sent or has failed (for cron users and scripts).
    Send {
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: NaiveDate,
    },
    /// Show each edition's progress (counts by status) and the latest errors.
    Status {
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: Option<NaiveDate>,
        /// Every edition ever started, not only those in progress and the
        /// latest finished ones (slower on a long history).
        #[arg(long)]
        all: bool,
    },
    /// List who got an edition: status, attempts, server reply or error.
    Deliveries {
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: NaiveDate,
        /// Only rows with this status.
        #[arg(long, value_enum)]
        status: Option<DeliveryStatus>,
        #[arg(long)]
        json: bool,
    },
    /// Queue an edition's failed deliveries again (to subscribers still active).
    Resend {
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: NaiveDate,
        /// Re-queue the failed rows (the only kind that can be resent).
        #[arg(long, required = true)]
        failed: bool,
    },
    /// Create the database or bring its schema up to date (also done on every start).
    Migrate,
    /// Move the installation between databases.
    #[command(subcommand)]
    Db(db::DbCmd),
    /// Write a consistent copy of the database to FILE, while the daemon runs.
    Backup {
        /// Where the copy goes; it must not exist yet.
        file: PathBuf,
    },
    /// Delete history older than [retention] (the daemon does it daily):
    /// finished editions' deliveries, link uses, fire records, unused papers.
    Prune {
        /// Count what would go, deleting nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Exit 0 if the web endpoint's /healthz (on http.bind) answers 200, else 1
    /// (for container health checks; needs no curl).
    Healthcheck,
    /// Check the configuration and print the effective settings (secrets hidden).
    Config,
    /// Add, edit, remove, list, import, export and sync subscribers.
    #[command(subcommand)]
    Subscribers(SubscribersCmd),
    /// Import papers and choose each day's selection.
    #[command(subcommand)]
    Papers(PapersCmd),
    /// The link secret (rotate it).
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// DKIM keys: make one and its DNS record, check the published records.
    #[command(subcommand)]
    Dkim(dkim::DkimCmd),
    /// Bounce and complaint reports: read them (a Postfix pipe, a Maildir), list them.
    #[command(subcommand)]
    Bounces(bounces::BouncesCmd),
    /// Render one digest without sending it or touching any delivery state.
    Preview {
        /// The edition date.
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: NaiveDate,
        /// Whose digest (their topics, name and format); default: a reader with no
        /// name and no topics.
        #[arg(long, value_name = "EMAIL")]
        subscriber: Option<String>,
        /// html or text: that part of the digest; eml: the whole message as sent.
        /// Default: the reader's format.
        #[arg(long, value_enum)]
        format: Option<PreviewFormat>,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PreviewFormat {
    Html,
    Text,
    Eml,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Display name, used in the greeting and the To: header ("" clears it).
    #[arg(long)]
    pub name: Option<String>,
    /// Topics of interest, separated by commas: papers matching them come first ("" clears them).
    #[arg(long, value_name = "A,B,...")]
    pub topics: Option<String>,
    /// IANA time zone, such as Europe/Berlin.
    #[arg(long, value_name = "TZ")]
    pub timezone: Option<String>,
    /// html (HTML with a plain-text alternative) or text.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// How many papers a digest holds (1 to 50).
    #[arg(long, value_name = "K")]
    pub max_papers: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum SubscribersCmd {
    /// Add a subscriber (active at once).
    Add {
        /// Their email address.
        email: String,
        /// Make someone removed earlier (or whose mail bounced) active again:
        /// the operator's word, which a sign-up on the web cannot give.
        #[arg(long)]
        again: bool,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Change a subscriber's name, topics, time zone, format or max papers.
    Edit {
        email: String,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Unsubscribe someone, keeping their history; --purge deletes them and their deliveries.
    Remove {
        email: String,
        /// Delete the subscriber and every record of mail sent to them.
        #[arg(long)]
        purge: bool,
    },
    /// Make bounced subscribers active again (after a server, not their
    /// mailbox, refused them): those bounced since TIME, or the given addresses.
    #[command(group(clap::ArgGroup::new("who").required(true).multiple(true).args(["since", "emails"])))]
    Unbounce {
        /// Bounced at or after this: a date (2026-11-28), a time (RFC 3339)
        /// or a span back from now ("2h", "3days").
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// These addresses.
        #[arg(value_name = "EMAIL")]
        emails: Vec<String>,
    },
    /// Give a subscriber a new link token: the unsubscribe and preferences
    /// links in mail already sent to them stop working (for a leaked link).
    RotateToken { email: String },
    /// List subscribers, by address.
    List {
        /// Only those with this status.
        #[arg(long, value_enum)]
        status: Option<SubscriberStatus>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Import subscribers from CSV (header email,name,topics,timezone,format,max_papers;
    /// only email is required; topics separated by ';'). All or nothing.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
    /// Write subscribers as CSV in the import's columns (to FILE, or standard output).
    Export {
        file: Option<PathBuf>,
        /// Which subscribers to write.
        #[arg(long, value_enum, default_value = "active")]
        status: SubscriberStatus,
    },
    /// Apply the subscriber file (subscribers.file, default config/subscribers.toml).
    Sync {
        /// Another subscriber file to apply.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Subscribe this address again although they unsubscribed (repeatable).
        #[arg(long, value_name = "EMAIL")]
        resubscribe: Vec<String>,
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Apply even if it unsubscribes all, or more than 10%, of the
        /// subscribers the file manages (refused otherwise: an empty or
        /// truncated file looks like that).
        #[arg(long)]
        force: bool,
        /// Let --resubscribe bring back someone who reported our mail as spam.
        #[arg(long)]
        include_complaints: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PapersCmd {
    /// Import papers and make them the selection for their date.
    Import {
        /// A daily_papers JSON file, a text file of papers, or a `papers export` file.
        file: PathBuf,
        /// The edition date the papers are selected for (default: each record's
        /// publishedAt date; for text files, today in schedule.timezone).
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: Option<NaiveDate>,
        #[arg(long, value_enum, default_value = "auto")]
        format: PaperFormat,
    },
    /// Fetch a day's papers from papers.source_url and select them (never
    /// replacing a selection made by hand or by a file import).
    Fetch {
        /// The day to fetch (default: papers.fetch_days_ago days before today,
        /// in schedule.timezone).
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: Option<NaiveDate>,
    },
    /// List the papers selected for a date, or all stored papers.
    List {
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: Option<NaiveDate>,
        #[arg(long)]
        json: bool,
    },
    /// Set a date's selection by hand: the given paper ids, in this order.
    Select {
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: NaiveDate,
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Write a date's selection as JSON (re-importable with `papers import`).
    Export {
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: NaiveDate,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Exit code for configuration errors (EX_CONFIG from sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// Parses arguments, loads settings, runs the command, and turns errors into
/// messages and exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    quiet_on_closed_pipe(&cli.command);
    // The mail system reads `bounces ingest`'s exit code: every failure is
    // "try again later" (75), never one that bounces the bounce.
    let ingest = matches!(
        cli.command,
        Command::Bounces(bounces::BouncesCmd::Ingest { .. })
    );
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            let code = if ingest {
                bounces::TEMPFAIL as u8
            } else {
                EXIT_CONFIG
            };
            return ExitCode::from(code);
        }
    };
    crate::telemetry::init(&settings.log);
    // One scheduler thread: paperpost waits on sockets and on SQLite (which sqlx
    // runs on threads of its own), and a multi-threaded scheduler spent more
    // time waking its threads than it saved: `cargo bench --bench send` went
    // from about 5,700 to 6,100-6,700 messages/s and 177 to 140 us of CPU per
    // message with this.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Bounces(bounces::BouncesCmd::Ingest { recipient, maildir }) = cli.command {
        let code = runtime.block_on(bounces::ingest_exit(settings, recipient, maildir));
        return ExitCode::from(code as u8);
    }
    let code = match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e);
            ExitCode::FAILURE
        }
    };
    crate::security::report_new_secret();
    code
}

/// Bad input is shown as `FILE:LINE: reason` on the first line; anything else as `error: ...`.
fn report_error(e: &anyhow::Error) {
    if let Some(input) = e.downcast_ref::<InputError>() {
        eprintln!("{input}");
        eprintln!("error: nothing was imported or changed");
    } else {
        eprintln!("error: {}", crate::telemetry::causes(e));
    }
}

/// Commands whose output is made to be piped (`| head`) exit quietly when the
/// reader goes away, as Unix tools do, instead of failing on a broken pipe.
/// Only for commands that open no network connections.
fn quiet_on_closed_pipe(command: &Command) {
    let piped = matches!(
        command,
        Command::Config
            | Command::Subscribers(SubscribersCmd::List { .. } | SubscribersCmd::Export { .. })
            | Command::Papers(PapersCmd::List { .. } | PapersCmd::Export { .. })
            | Command::Preview { .. }
            | Command::Status { .. }
            | Command::Deliveries { .. }
    );
    #[cfg(unix)]
    if piped {
        // SAFETY: called before any thread is spawned; restores the default action.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Config => {
            println!("{settings:#?}");
            println!("configuration is valid");
            Ok(())
        }
        Command::Migrate => {
            let pool = store::open(&settings.database).await?;
            store::migrate(&pool).await?;
            let applied = store::schema_version(&pool).await?;
            pool.close().await;
            println!(
                "database {} is up to date (schema version {applied})",
                settings.database.describe()
            );
            Ok(())
        }
        Command::Demo => demo::demo(&App::open(settings).await?).await,
        Command::Subscribers(cmd) => subscribers::run(&App::open(settings).await?, cmd).await,
        Command::Papers(cmd) => papers::run(&App::open(settings).await?, cmd).await,
        Command::Backup { file } => backup(&settings, &file).await,
        Command::Db(cmd) => db::run(settings, cmd).await,
        Command::Secret(cmd) => secret::run(settings, cmd).await,
        Command::Dkim(cmd) => dkim::run(settings, cmd).await,
        Command::Bounces(cmd) => bounces::run(&App::open(settings).await?, cmd).await,
        Command::Prune { dry_run } => {
            let app = App::open(settings).await?;
            let p = crate::daemon::prune(&app, dry_run).await?;
            let verb = if dry_run { "Would delete" } else { "Deleted" };
            println!(
                "{verb} {} deliveries of {} old editions, {} link uses, {} fire records, {} unused papers",
                p.deliveries, p.editions, p.link_events, p.fires, p.papers
            );
            Ok(())
        }
        Command::Healthcheck => healthcheck(&settings).await,
        Command::Run => crate::daemon::run(App::open(settings).await?).await,
        Command::Serve => crate::daemon::serve_web(App::open(settings).await?).await,
        Command::Send { date } => {
            let app = App::open(settings).await?;
            send(&app, date).await.map(|_| ())
        }
        Command::Status { date, all } => send::status(&App::open(settings).await?, date, all).await,
        Command::Deliveries { date, status, json } => {
            send::list_deliveries(&App::open(settings).await?, date, status, json).await
        }
        Command::Resend { date, failed: _ } => {
            let app = App::open(settings).await?;
            let mut conn = app.pool.acquire().await?;
            let n = store::deliveries::requeue_failed(&mut conn, date).await?;
            println!(
                "Re-queued {n} failed deliveries of {date}; a running daemon sends them, or run `paperpost send --date {date}`"
            );
            Ok(())
        }
        Command::Preview {
            date,
            subscriber,
            format,
            out,
        } => {
            preview::preview(
                &App::open(settings).await?,
                date,
                subscriber.as_deref(),
                format,
                out.as_deref(),
            )
            .await
        }
    }
}

/// `paperpost backup FILE`.
async fn backup(settings: &Settings, file: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    if file.exists() {
        anyhow::bail!("{} exists already; give a new file name", file.display());
    }
    // Read only: a backup never migrates the live database (this binary may
    // be newer than the daemon running on it).
    let pool = store::open_read_only(&settings.database).await?;
    store::backup(&pool, file)
        .await
        .with_context(|| format!("cannot write the backup {}", file.display()))?;
    pool.close().await;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    println!(
        "Backed up {} to {} ({:.1} MB)",
        settings.database.describe(),
        file.display(),
        size as f64 / 1e6
    );
    Ok(())
}

/// `paperpost healthcheck`: GET /healthz on the configured bind address (a
/// wildcard address is asked on loopback).
async fn healthcheck(settings: &Settings) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut addr = settings.http.bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/healthz");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} does not answer"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{url}: {status}: {}", body.trim());
    }
    println!("{url}: {}", body.trim());
    Ok(())
}
