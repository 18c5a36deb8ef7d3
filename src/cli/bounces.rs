//! `paperpost bounces`: read bounce and complaint reports that come back
//! after the mail server accepted a message, and list them.

use std::{io::Read, path::PathBuf};

use crate::{
    app::App,
    bounce::{
        Kind,
        ingest::{self, Ingested, MAX_REPORT},
    },
    config::Settings,
    store::{self, alerts},
};

/// Postfix's "try again later" (EX_TEMPFAIL): the report stays queued.
pub const TEMPFAIL: i32 = 75;

#[derive(Debug, clap::Subcommand)]
pub enum BouncesCmd {
    /// Read one report on standard input (a Postfix `pipe` transport), or
    /// every message in a Maildir's new/ folder. Exits 0 when a message is
    /// recorded, forged, unmatched or an auto-reply, and 75 (try again
    /// later) when the database cannot take it: never a code that makes the
    /// mail system bounce the bounce.
    Ingest {
        /// The address the report was delivered to (Postfix: ${recipient}).
        #[arg(long)]
        recipient: Option<String>,
        /// Read the messages in DIR/new instead, moving each to DIR/cur.
        #[arg(long, value_name = "DIR")]
        maildir: Option<PathBuf>,
    },
    /// The reports recorded, newest first.
    List {
        /// Since a date, an RFC 3339 time or a span back from now (default 7days).
        #[arg(long, value_name = "TIME", default_value = "7days")]
        since: String,
        /// Only this kind: hard, soft, block, complaint, delayed, unknown.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Clear the bounce alert `paperpost status` shows (after a relay's fault
    /// is fixed, or a policy block is dealt with).
    ClearAlert,
}

/// Runs `bounces ingest`, whose exit code the mail system reads: any error
/// is 75, so the report is kept and offered again.
pub async fn ingest_exit(
    settings: Settings,
    recipient: Option<String>,
    maildir: Option<PathBuf>,
) -> i32 {
    let result = async {
        let app = App::open(settings).await?;
        match maildir {
            Some(dir) => ingest_maildir(&app, &dir).await,
            None => ingest_stdin(&app, recipient.as_deref()).await,
        }
    }
    .await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "error: {} (the report is kept: exit 75, try again later)",
                crate::telemetry::causes(&e)
            );
            TEMPFAIL
        }
    }
}

async fn ingest_stdin(app: &App, recipient: Option<&str>) -> anyhow::Result<()> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_REPORT as u64 + 1)
        .read_to_end(&mut raw)?;
    if raw.len() > MAX_REPORT {
        println!(
            "ignored: larger than {} KiB, not a report we read",
            MAX_REPORT / 1024
        );
        return Ok(());
    }
    let done = ingest::ingest(app, &raw, recipient, "mail").await?;
    println!("{}", describe(&done));
    Ok(())
}

async fn ingest_maildir(app: &App, dir: &std::path::Path) -> anyhow::Result<()> {
    let new = dir.join("new");
    let cur = dir.join("cur");
    std::fs::create_dir_all(&cur)?;
    let mut names: Vec<_> = std::fs::read_dir(&new)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let path = new.join(&name);
        let raw = std::fs::read(&path)?;
        let done = if raw.len() > MAX_REPORT {
            "ignored: too large".to_string()
        } else {
            describe(&ingest::ingest(app, &raw, None, "mail").await?)
        };
        println!("{}: {done}", name.to_string_lossy());
        let seen = format!("{}:2,S", name.to_string_lossy());
        std::fs::rename(&path, cur.join(seen))?;
    }
    Ok(())
}

fn describe(done: &Ingested) -> String {
    match done {
        Ingested::AutoReply => "an auto-reply: ignored".into(),
        Ingested::NotAReport => "not a bounce or complaint report: ignored".into(),
        Ingested::Reports(r) if r.is_empty() => "a report of deliveries: nothing to do".into(),
        Ingested::Reports(r) => r
            .iter()
            .map(|(kind, matched, effect)| {
                let who = if *matched { "matched" } else { "unmatched" };
                format!("{} ({who}): {effect:?}", kind.as_str())
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

pub async fn run(app: &App, cmd: BouncesCmd) -> anyhow::Result<()> {
    match cmd {
        BouncesCmd::Ingest { .. } => unreachable!("handled by ingest_exit"),
        BouncesCmd::List { since, kind, json } => list(app, &since, kind, json).await,
        BouncesCmd::ClearAlert => {
            let mut conn = app.writer.acquire().await?;
            alerts::set(&mut conn, alerts::AlertKind::Bounces, None).await?;
            println!("The bounce alert is cleared");
            Ok(())
        }
    }
}

async fn list(app: &App, since: &str, kind: Option<String>, json: bool) -> anyhow::Result<()> {
    let since = super::subscribers::parse_since(since)?;
    if let Some(k) = &kind
        && Kind::parse(k).is_none()
    {
        anyhow::bail!("--kind: {k:?} is not hard, soft, block, complaint, delayed or unknown");
    }
    let rows = store::bounces::list(&app.pool, since, kind.as_deref()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for r in &rows {
        println!(
            "{}  {:<9} {:<10} {:<40} {} {}{}",
            store::format_ms(r.at),
            r.kind,
            r.matched_by,
            r.email.as_deref().or(r.recipient.as_deref()).unwrap_or("?"),
            r.status.as_deref().unwrap_or(""),
            r.diagnostic.as_deref().unwrap_or(""),
            if r.counted { "" } else { " (taken back)" }
        );
    }
    println!("{}", super::output::plural(rows.len(), "report", "reports"));
    Ok(())
}
