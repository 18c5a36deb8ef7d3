//! The `paperpost` command line.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use futures_util::TryStreamExt;
use sqlx::SqlitePool;

use crate::{
    config::Settings,
    digest::{Composer, Edition, Reader},
    domain::{
        Format, MaxPapers, PaperId, SubscriberEmail, SubscriberName, SubscriberSource,
        SubscriberStatus, TimeZone, Topics,
    },
    ingest::{
        self, InputError,
        papers::{PaperFormat, Record},
        subscriber_csv, subscriber_file,
    },
    security::Keys,
    store::{
        self, StoreError,
        subscribers::{self as subs, Profile, ProfileChanges},
    },
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
    /// Check the configuration and print the effective settings (secrets hidden).
    Config,
    /// Add, edit, remove, list, import, export and sync subscribers.
    #[command(subcommand)]
    Subscribers(SubscribersCmd),
    /// Import papers and choose each day's selection.
    #[command(subcommand)]
    Papers(PapersCmd),
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
pub enum DeliveryStatus {
    Queued,
    Sending,
    Sent,
    Failed,
    Cancelled,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
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
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
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
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// Bad input is shown as `FILE:LINE: reason` on the first line; anything else as `error: ...`.
fn report_error(e: &anyhow::Error) {
    if let Some(input) = e.downcast_ref::<InputError>() {
        eprintln!("{input}");
        eprintln!("error: nothing was imported or changed");
    } else {
        eprintln!("error: {e:#}");
    }
}

/// What commands share: settings, the database and the link keys.
pub struct App {
    pub settings: Settings,
    pub pool: SqlitePool,
    pub keys: Keys,
}

impl App {
    pub async fn open(settings: Settings) -> anyhow::Result<Self> {
        let pool = store::connect(&settings.database).await?;
        let keys = Keys::load(&settings.security)?;
        Ok(Self {
            settings,
            pool,
            keys,
        })
    }

    fn defaults(&self) -> Profile {
        let s = &self.settings.subscribers;
        Profile {
            name: None,
            topics: Topics::default(),
            timezone: s.default_timezone,
            format: s.default_format,
            max_papers: s.default_max_papers,
        }
    }

    fn today(&self) -> NaiveDate {
        chrono::Utc::now()
            .with_timezone(&self.settings.schedule.timezone.0)
            .date_naive()
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
            let pool = store::connect(&settings.database).await?;
            let applied = store::MIGRATOR.iter().count();
            pool.close().await;
            println!(
                "database {} is up to date ({applied} migrations)",
                settings.database.path.display()
            );
            Ok(())
        }
        Command::Demo => demo(&App::open(settings).await?).await,
        Command::Subscribers(cmd) => subscribers(&App::open(settings).await?, cmd).await,
        Command::Papers(cmd) => papers(&App::open(settings).await?, cmd).await,
        Command::Run => {
            let app = App::open(settings).await?;
            crate::daemon::run(app.settings, app.pool, app.keys).await
        }
        Command::Send { date } => {
            let app = App::open(settings).await?;
            send(&app, date).await.map(|_| ())
        }
        Command::Status { date } => status(&App::open(settings).await?, date).await,
        Command::Deliveries { date, status, json } => {
            list_deliveries(&App::open(settings).await?, date, status, json).await
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
            preview(
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

// ------------------------------------------------------------ subscribers

fn parse_changes(p: ProfileArgs) -> anyhow::Result<ProfileChanges> {
    Ok(ProfileChanges {
        name: p
            .name
            .as_deref()
            .map(SubscriberName::parse_optional)
            .transpose()
            .context("--name")?,
        topics: p
            .topics
            .as_deref()
            .map(|t| Topics::parse_separated(t, ','))
            .transpose()
            .context("--topics")?,
        timezone: p
            .timezone
            .as_deref()
            .map(TimeZone::parse)
            .transpose()
            .context("--timezone")?,
        format: p.format,
        max_papers: p
            .max_papers
            .map(MaxPapers::new)
            .transpose()
            .context("--max-papers")?,
    })
}

fn describe(s: &subs::Subscriber) -> String {
    let p = &s.profile;
    let topics = if p.topics.is_empty() {
        "none".to_string()
    } else {
        p.topics.join(", ")
    };
    format!(
        "{}{} ({}; {}, {} papers, {}; topics: {topics})",
        p.name.as_ref().map(|n| format!("{n} ")).unwrap_or_default(),
        if p.name.is_some() {
            format!("<{}>", s.email)
        } else {
            s.email.to_string()
        },
        s.status.as_str(),
        p.format.as_str(),
        p.max_papers.get(),
        p.timezone,
    )
}

async fn subscribers(ctx: &App, cmd: SubscribersCmd) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    match cmd {
        SubscribersCmd::Add { email, profile } => {
            let email = SubscriberEmail::parse(&email)?;
            let profile = parse_changes(profile)?.apply_to(&ctx.defaults());
            let mut conn = pool.acquire().await?;
            if let Some(existing) = subs::find_by_email(&mut conn, email.as_str()).await? {
                anyhow::bail!(
                    "{} is already a subscriber ({}); change them with `paperpost subscribers edit`",
                    existing.email,
                    existing.status.as_str()
                );
            }
            let s = subs::insert(
                &mut conn,
                &ctx.keys,
                &email,
                &profile,
                SubscriberStatus::Active,
                SubscriberSource::Cli,
            )
            .await?;
            println!("Added {}", describe(&s));
        }
        SubscribersCmd::Edit { email, profile } => {
            let changes = parse_changes(profile)?;
            if changes.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --name, --topics, --timezone, --format or --max-papers"
                );
            }
            let mut tx = pool.begin().await?;
            let s = subs::get_by_email(&mut tx, &email).await?;
            let changed =
                subs::update_profile(&mut tx, s.id, &changes.apply_to(&s.profile)).await?;
            let s = subs::get_by_email(&mut tx, &email).await?;
            tx.commit().await?;
            if changed {
                println!("Updated {}", describe(&s));
            } else {
                println!("No change: {}", describe(&s));
            }
        }
        SubscribersCmd::Remove { email, purge } => {
            let mut tx = pool.begin().await?;
            let s = subs::get_by_email(&mut tx, &email).await?;
            if purge {
                subs::purge(&mut tx, s.id).await?;
                tx.commit().await?;
                println!("Deleted {} and every record of mail sent to them", s.email);
            } else if s.status == SubscriberStatus::Unsubscribed {
                println!("{} is already unsubscribed", s.email);
            } else {
                subs::end_subscription(&mut tx, s.id, SubscriberStatus::Unsubscribed, "cli")
                    .await?;
                tx.commit().await?;
                println!(
                    "Unsubscribed {}; their history is kept (--purge deletes it)",
                    s.email
                );
            }
        }
        SubscribersCmd::List { status, json } => list_subscribers(pool, status, json).await?,
        SubscribersCmd::Import { file } => {
            let r = subscriber_csv::import(pool, &ctx.keys, &ctx.defaults(), &file).await?;
            println!(
                "Imported {}: {} rows: {} added, {} updated, {} unchanged, {} skipped",
                file.display(),
                r.rows,
                r.added,
                r.updated,
                r.unchanged,
                r.skipped.len()
            );
            for s in &r.skipped {
                let who = match &s.name {
                    Some(n) => format!("{n} <{}>", s.email),
                    None => s.email.clone(),
                };
                let why = match (s.status.as_str(), s.by.as_deref()) {
                    ("bounced", _) => "mail to them bounced".to_string(),
                    (_, Some("link")) => "they unsubscribed by link".to_string(),
                    (_, Some(by)) => format!("unsubscribed ({by})"),
                    (st, None) => st.to_string(),
                };
                println!("  skipped {who}: {why}; left as is");
            }
        }
        SubscribersCmd::Export { file, status } => match file {
            Some(path) => {
                let f = std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let n = subscriber_csv::export(pool, status, std::io::BufWriter::new(f)).await?;
                println!("Exported {n} subscribers to {}", path.display());
            }
            None => {
                subscriber_csv::export(pool, status, std::io::stdout().lock()).await?;
            }
        },
        SubscribersCmd::Sync {
            file,
            resubscribe,
            dry_run,
        } => {
            let path = file.unwrap_or_else(|| ctx.settings.subscribers.file.clone());
            let entries = subscriber_file::read(&path, &ctx.defaults())?;
            let resubscribe = resubscribe
                .iter()
                .map(|e| SubscriberEmail::parse(e))
                .collect::<Result<Vec<_>, _>>()?;
            let r = subscriber_file::sync(pool, &ctx.keys, &entries, &resubscribe, dry_run).await?;
            print_sync(&path, &r, dry_run);
        }
    }
    Ok(())
}

async fn list_subscribers(
    pool: &SqlitePool,
    status: Option<SubscriberStatus>,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut rows = subs::stream(pool, status);
    let mut n = 0usize;
    if json {
        write!(out, "[")?;
        while let Some(s) = rows.try_next().await? {
            if n > 0 {
                write!(out, ",")?;
            }
            write!(out, "\n  {}", serde_json::to_string(&s.view())?)?;
            n += 1;
        }
        writeln!(out, "{}]", if n > 0 { "\n" } else { "" })?;
    } else {
        writeln!(
            out,
            "{:<32} {:<24} {:<12} {:<6} {:>3} {:<20} TOPICS",
            "EMAIL", "NAME", "STATUS", "FORMAT", "MAX", "TIMEZONE"
        )?;
        while let Some(s) = rows.try_next().await? {
            let p = &s.profile;
            writeln!(
                out,
                "{:<32} {:<24} {:<12} {:<6} {:>3} {:<20} {}",
                s.email.as_str(),
                p.name.as_ref().map(SubscriberName::as_str).unwrap_or("-"),
                s.status.as_str(),
                p.format.as_str(),
                p.max_papers.get(),
                p.timezone.name(),
                p.topics.join(", ")
            )?;
            n += 1;
        }
        writeln!(out, "{n} subscriber{}", if n == 1 { "" } else { "s" })?;
    }
    out.flush()?;
    Ok(())
}

fn print_sync(path: &Path, r: &subscriber_file::SyncReport, dry_run: bool) {
    let verb = if dry_run { "would be " } else { "" };
    println!(
        "{}{}: {} listed: {} added, {} updated, {} resubscribed, {} unchanged, {} deactivated, {} skipped",
        if dry_run { "Dry run of " } else { "Synced " },
        path.display(),
        r.listed,
        r.added.len(),
        r.updated.len(),
        r.reactivated.len(),
        r.unchanged,
        r.deactivated.len(),
        r.kept_unsubscribed.len() + r.not_managed.len()
    );
    for e in &r.added {
        println!("  {verb}added {e}");
    }
    for e in &r.updated {
        println!("  {verb}updated {e}");
    }
    for e in &r.reactivated {
        println!("  {verb}resubscribed {e}");
    }
    for e in &r.deactivated {
        println!("  {verb}deactivated {e} (no longer in the file)");
    }
    for (who, how) in &r.kept_unsubscribed {
        let email = who.rsplit(['<', '>']).nth(1).unwrap_or(who);
        println!(
            "  skipped {who}: {how}; they stay unsubscribed (--resubscribe {email} overrides)"
        );
    }
    for (who, source) in &r.not_managed {
        println!("  skipped {who}: added by {source}, not managed by the file");
    }
    for (email, why) in &r.unused_resubscribe {
        println!("  note: --resubscribe {email} was not used: {why}");
    }
}

// ------------------------------------------------------------ papers

async fn import_papers(
    ctx: &App,
    label: &Path,
    records: Vec<Record>,
    date: Option<NaiveDate>,
) -> anyhow::Result<()> {
    let groups = ingest::papers::by_date(label, &records, date, Some(ctx.today()))?;
    let r = ingest::papers::store(&ctx.pool, &records, &groups).await?;
    println!(
        "Imported {}: {} papers ({} added, {} updated, {} unchanged)",
        label.display(),
        records.len(),
        r.added,
        r.updated,
        r.unchanged
    );
    for (d, n, changed) in &r.dates {
        if *changed {
            println!("Selected {n} papers for {d}");
        } else {
            println!("Selection for {d} unchanged ({n} papers)");
        }
    }
    Ok(())
}

async fn papers(ctx: &App, cmd: PapersCmd) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    match cmd {
        PapersCmd::Import { file, date, format } => {
            let records = ingest::papers::read(&file, format)?;
            let has_dates = records.iter().any(|r| r.date.is_some());
            if date.is_none() && !has_dates {
                eprintln!(
                    "note: the file carries no dates; selecting its papers for today, {}",
                    ctx.today()
                );
            }
            import_papers(ctx, &file, records, date).await?;
        }
        PapersCmd::List { date, json } => {
            let mut conn = pool.acquire().await?;
            let papers = match date {
                Some(d) => store::papers::selection(&mut conn, d).await?,
                None => store::papers::all(&mut conn).await?,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if json {
                serde_json::to_writer_pretty(&mut out, &papers)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{:>3} {:<16} {:>7}  TITLE", "#", "ID", "UPVOTES")?;
                for (i, p) in papers.iter().enumerate() {
                    writeln!(
                        out,
                        "{:>3} {:<16} {:>7}  {}",
                        i + 1,
                        p.id.as_str(),
                        p.upvotes,
                        p.title
                    )?;
                }
                match date {
                    Some(d) if papers.is_empty() => writeln!(out, "no papers selected for {d}")?,
                    Some(d) => writeln!(out, "{} papers selected for {d}", papers.len())?,
                    None => {
                        writeln!(out, "{} papers stored", papers.len())?;
                        for (d, n) in store::papers::selected_dates(&mut conn).await? {
                            writeln!(out, "  {d}: {n} selected")?;
                        }
                    }
                }
            }
            out.flush()?;
        }
        PapersCmd::Select { date, ids } => {
            let ids = ids
                .iter()
                .map(|i| PaperId::parse(i))
                .collect::<Result<Vec<_>, _>>()?;
            let mut tx = pool.begin().await?;
            let changed = store::papers::replace_selection(&mut tx, date, &ids)
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(m) | StoreError::NotFound(m) => anyhow::anyhow!(m),
                    other => other.into(),
                })?;
            tx.commit().await?;
            if changed {
                println!("Selected {} papers for {date}", ids.len());
            } else {
                println!("Selection for {date} unchanged ({} papers)", ids.len());
            }
        }
        PapersCmd::Export { date, out } => {
            let mut conn = pool.acquire().await?;
            let papers = store::papers::selection(&mut conn, date).await?;
            if papers.is_empty() {
                anyhow::bail!("no papers selected for {date}");
            }
            let export = ingest::papers::Export {
                date: Some(date),
                papers,
            };
            let json = serde_json::to_string_pretty(&export)? + "\n";
            match out {
                Some(path) => {
                    std::fs::write(&path, json)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!(
                        "Exported {} papers for {date} to {}",
                        export.papers.len(),
                        path.display()
                    );
                }
                None => std::io::stdout().write_all(json.as_bytes())?,
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------ sending

/// What `send` did.
pub struct SendSummary {
    pub counts: store::deliveries::Counts,
    /// Messages this run sent.
    pub sent_now: u64,
    pub seconds: f64,
}

/// Sends one edition to completion in the foreground.
pub async fn send(app: &App, date: NaiveDate) -> anyhow::Result<SendSummary> {
    let lock = crate::daemon::Lock::acquire(&app.pool).await?;
    let result = send_locked(app, date).await;
    lock.release().await;
    result
}

async fn send_locked(app: &App, date: NaiveDate) -> anyhow::Result<SendSummary> {
    use std::sync::atomic::Ordering;
    crate::daemon::recover(&app.pool).await?;
    let mut conn = app.pool.acquire().await?;
    if store::papers::selection(&mut conn, date).await?.is_empty() {
        anyhow::bail!("no papers selected for {date}; import some with `paperpost papers import`");
    }
    drop(conn);
    let composer = Composer::new(&app.settings, app.keys.clone())?;
    let mailer = crate::mailer::Mailer::from_settings(&app.settings.mail)?;
    match store::deliveries::start_edition(&app.pool, date, "send", |_| store::now_ms()).await? {
        store::deliveries::Started::Now(n) => println!(
            "Edition {date}: sending to {n} subscribers via {}",
            mailer.describe()
        ),
        store::deliveries::Started::Already => {
            println!(
                "Edition {date} was started before; sending what is left via {}",
                mailer.describe()
            )
        }
    }
    let engine = crate::delivery::Engine::new(&app.settings, app.pool.clone(), composer, mailer);
    let shutdown = tokio_util::sync::CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing the messages in flight");
                shutdown.cancel();
            }
        });
    }
    let mut conn = app.pool.acquire().await?;
    let before = store::deliveries::counts(&mut conn, date).await?;
    drop(conn);
    let total = before.total() as u64;
    let already = (before.sent + before.failed + before.cancelled) as u64;
    let started = std::time::Instant::now();
    let reporter = {
        let engine = std::sync::Arc::clone(&engine);
        let tty = std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let bar = tty.then(|| {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar
            });
            let mut last_log = std::time::Instant::now();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let done = already + engine.progress.done();
                let paused = if engine.breaker.is_open() {
                    "(mail server unreachable: paused)"
                } else {
                    ""
                };
                match &bar {
                    Some(b) => {
                        b.set_position(done);
                        b.set_message(paused);
                    }
                    None if last_log.elapsed().as_secs() >= 5 => {
                        eprintln!("progress: {done}/{total} {paused}");
                        last_log = std::time::Instant::now();
                    }
                    None => {}
                }
                if done >= total {
                    if let Some(b) = &bar {
                        b.finish_and_clear();
                    }
                    return;
                }
            }
        })
    };
    let run = engine.run(Some(date), true, shutdown.clone()).await;
    reporter.abort();
    run?;
    let seconds = started.elapsed().as_secs_f64();
    let mut conn = app.pool.acquire().await?;
    let counts = store::deliveries::counts(&mut conn, date).await?;
    let now_sent = engine.progress.sent.load(Ordering::Relaxed);
    println!(
        "Edition {date}: {} sent, {} failed, {} skipped (unsubscribed) in {seconds:.1} s ({:.0} messages/s)",
        counts.sent,
        counts.failed,
        counts.cancelled,
        now_sent as f64 / seconds.max(1e-9)
    );
    if counts.failed > 0 {
        println!(
            "  see `paperpost deliveries --date {date} --status failed`; `paperpost resend --date {date} --failed` retries them"
        );
    }
    if !counts.finished() {
        println!(
            "  interrupted: {} messages are still queued; run the command again to continue",
            counts.queued + counts.sending
        );
    }
    Ok(SendSummary {
        counts,
        sent_now: now_sent,
        seconds,
    })
}

async fn status(app: &App, date: Option<NaiveDate>) -> anyhow::Result<()> {
    let mut conn = app.pool.acquire().await?;
    let editions = store::deliveries::editions(&mut conn).await?;
    let editions: Vec<_> = editions
        .into_iter()
        .filter(|(d, _, _)| date.is_none_or(|x| x == *d))
        .collect();
    if editions.is_empty() {
        match date {
            Some(d) => println!("Edition {d} has not started"),
            None => println!("No edition has started yet"),
        }
    } else {
        println!(
            "{:<10}  {:<23}  {:<9} {:>8} {:>7} {:>8} {:>7}  STATE",
            "EDITION", "STARTED", "BY", "SENT", "FAILED", "SKIPPED", "QUEUED"
        );
        for (d, at, by) in &editions {
            let c = store::deliveries::counts(&mut conn, *d).await?;
            println!(
                "{:<10}  {:<23}  {:<9} {:>8} {:>7} {:>8} {:>7}  {}",
                d.to_string(),
                store::format_ms(*at),
                by,
                c.sent,
                c.failed,
                c.cancelled,
                c.queued + c.sending,
                if c.finished() {
                    "finished"
                } else {
                    "in progress"
                }
            );
        }
    }
    let errors = store::deliveries::recent_errors(&mut conn, date, 10).await?;
    if !errors.is_empty() {
        println!("Recent errors:");
        for e in errors {
            println!(
                "  {} {} {} ({} attempts): {}",
                store::format_ms(e.updated_at),
                e.edition_date,
                e.email,
                e.attempts,
                e.last_error.unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn list_deliveries(
    app: &App,
    date: NaiveDate,
    status: Option<DeliveryStatus>,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut rows = store::deliveries::list(&app.pool, date, status.map(DeliveryStatus::as_str));
    let mut n = 0;
    if json {
        write!(out, "[")?;
        while let Some(d) = rows.try_next().await? {
            write!(
                out,
                "{}\n  {}",
                if n > 0 { "," } else { "" },
                serde_json::to_string(&d)?
            )?;
            n += 1;
        }
        writeln!(out, "{}]", if n > 0 { "\n" } else { "" })?;
    } else {
        writeln!(
            out,
            "{:<32} {:<9} {:>8}  {:<23}  REPLY / ERROR",
            "EMAIL", "STATUS", "ATTEMPTS", "SENT AT"
        )?;
        while let Some(d) = rows.try_next().await? {
            let detail = match d.status.as_str() {
                "sent" => d.smtp_reply.clone().unwrap_or_default(),
                _ => d.last_error.clone().unwrap_or_default(),
            };
            writeln!(
                out,
                "{:<32} {:<9} {:>8}  {:<23}  {}",
                d.email,
                d.status,
                d.attempts,
                d.sent_at
                    .map(store::format_ms)
                    .unwrap_or_else(|| "-".into()),
                detail
            )?;
            n += 1;
        }
        writeln!(out, "{n} deliveries")?;
    }
    out.flush()?;
    Ok(())
}

// ------------------------------------------------------------ preview

/// The token shown in previews' links: a preview forwarded to someone cannot
/// unsubscribe the reader it was made for.
pub const PREVIEW_TOKEN: &str = "preview";

async fn preview(
    app: &App,
    date: NaiveDate,
    email: Option<&str>,
    format: Option<PreviewFormat>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let mut conn = app.pool.acquire().await?;
    let papers = store::papers::selection(&mut conn, date).await?;
    if papers.is_empty() {
        anyhow::bail!("no papers selected for {date}; import some with `paperpost papers import`");
    }
    let sample_email = SubscriberEmail::parse("reader@example.org")?;
    let subscriber = match email {
        Some(e) => Some(subs::get_by_email(&mut conn, e).await?),
        None => None,
    };
    drop(conn);
    let sample_topics = Topics::default();
    let reader = match &subscriber {
        Some(s) => Reader::from(s),
        None => Reader {
            uuid: "00000000-0000-0000-0000-000000000000",
            email: &sample_email,
            name: None,
            topics: &sample_topics,
            format: Format::Html,
            max_papers: app.settings.subscribers.default_max_papers,
        },
    };
    let format = format.unwrap_or(match reader.format {
        Format::Html => PreviewFormat::Html,
        Format::Text => PreviewFormat::Text,
    });
    let composer = Composer::new(&app.settings, app.keys.clone())?;
    let edition = Edition::new(date, papers, app.settings.newsletter.thumbnails);
    let reader = Reader {
        format: if format == PreviewFormat::Html {
            Format::Html
        } else {
            reader.format
        },
        ..reader
    };
    let (message, rendered) = composer.compose_with_token(&edition, &reader, PREVIEW_TOKEN)?;
    let bytes = match format {
        PreviewFormat::Html => rendered.html.unwrap_or_default().into_bytes(),
        PreviewFormat::Text => rendered.text.into_bytes(),
        PreviewFormat::Eml => message.formatted(),
    };
    match out {
        Some(path) => {
            std::fs::write(path, &bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "Wrote the {date} digest for {} to {} ({} papers)",
                reader.email,
                path.display(),
                rendered.papers
            );
        }
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(())
}

// ------------------------------------------------------------ demo

/// The bundled sample: a day of Hugging Face daily papers.
pub const SAMPLE_PAPERS: &str = include_str!("../samples/daily_papers-2024-03-11.json");
/// The bundled example subscriber file.
pub const SAMPLE_SUBSCRIBERS: &str = include_str!("../config/subscribers.example.toml");

async fn demo(ctx: &App) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal();
    let step = |s: &str| {
        if tty {
            println!("\x1b[1m==> {s}\x1b[0m");
        } else {
            println!("==> {s}");
        }
    };
    println!(
        "paperpost demo: database {}",
        ctx.settings.database.path.display()
    );

    step("Importing the bundled sample papers (Hugging Face daily_papers JSON)");
    let label = Path::new("samples/daily_papers-2024-03-11.json");
    let records =
        ingest::papers::parse(label, SAMPLE_PAPERS.as_bytes().to_vec(), PaperFormat::Auto)?;
    import_papers(ctx, label, records, None).await?;

    step("Applying the example subscriber file");
    let label = Path::new("config/subscribers.example.toml");
    let entries = subscriber_file::parse(label, SAMPLE_SUBSCRIBERS, &ctx.defaults())?;
    let r = subscriber_file::sync(&ctx.pool, &ctx.keys, &entries, &[], false).await?;
    print_sync(label, &r, false);

    step("Subscribers");
    list_subscribers(&ctx.pool, Some(SubscriberStatus::Active), false).await?;
    step("Papers selected for 2024-03-11");
    Box::pin(papers(
        ctx,
        PapersCmd::List {
            date: NaiveDate::from_ymd_opt(2024, 3, 11),
            json: false,
        },
    ))
    .await?;
    step("Sending the 2024-03-11 edition");
    let date = NaiveDate::from_ymd_opt(2024, 3, 11).expect("a valid date");
    let summary = send(ctx, date).await?;
    if ctx.settings.mail.transport == crate::config::TransportKind::File {
        println!(
            "The messages are .eml files in {}/ (open one in a mail client).",
            ctx.settings.mail.outbox_dir.display()
        );
    }
    if summary.sent_now == 0 && summary.counts.sent > 0 {
        println!("(They were sent by an earlier run: an edition goes to each subscriber once.)");
    }
    println!();
    println!(
        "Look at a digest:  paperpost preview --date 2024-03-11 --subscriber ada@example.org --out ada.html"
    );
    println!(
        "                   paperpost preview --date 2024-03-11 --subscriber zoe@example.org   (plain text)"
    );
    println!("See who got what:  paperpost status; paperpost deliveries --date 2024-03-11");
    println!("Add yourself:      paperpost subscribers add you@example.org --topics llm");
    Ok(())
}
