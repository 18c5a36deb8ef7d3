//! `paperpost subscribers ...`

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use futures_util::TryStreamExt;

use super::{ProfileArgs, SubscribersCmd, output};
use crate::{
    app::App,
    domain::{
        MaxPapers, SubscriberEmail, SubscriberName, SubscriberSource, SubscriberStatus, TimeZone,
        Topics,
    },
    ingest::{subscriber_csv, subscriber_file},
    store,
    store::{
        events::{self, Action, Channel},
        subscribers::{self as subs, ProfileChanges},
    },
};

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

pub async fn run(ctx: &App, cmd: SubscribersCmd) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    match cmd {
        SubscribersCmd::Add {
            email,
            again,
            profile,
        } => add(ctx, email, again, profile).await?,
        SubscribersCmd::Edit { email, profile } => edit(ctx, email, profile).await?,
        SubscribersCmd::Remove { email, purge } => remove(ctx, email, purge).await?,
        SubscribersCmd::Unbounce { since, emails } => unbounce(ctx, since, emails).await?,
        SubscribersCmd::RotateToken { email } => rotate_token(ctx, email).await?,
        SubscribersCmd::List { status, json } => list_subscribers(pool, status, json).await?,
        SubscribersCmd::Import { file } => import(ctx, file).await?,
        SubscribersCmd::Export { file, status } => export(ctx, file, status).await?,
        SubscribersCmd::Sync {
            file,
            resubscribe,
            dry_run,
            force,
            include_complaints,
        } => {
            let mode = subscriber_file::SyncMode {
                dry_run,
                force,
                include_complaints,
            };
            sync(ctx, file, resubscribe, mode).await?
        }
    }
    Ok(())
}

async fn add(ctx: &App, email: String, again: bool, profile: ProfileArgs) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    let email = SubscriberEmail::parse(&email)?;
    let changes = parse_changes(profile)?;
    let mut conn = pool.acquire().await?;
    if let Some(existing) = subs::find_by_email(&mut conn, email.as_str()).await? {
        return add_again(&mut conn, existing, again, &changes).await;
    }
    if again {
        anyhow::bail!("no subscriber with address {email} to add again; leave out --again");
    }
    let profile = changes.apply_to(&ctx.defaults());
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
    Ok(())
}

/// `add` for an address already known: with `--again`, someone no longer
/// subscribed becomes active again (the operator's word lifts a removal or
/// a bounce); otherwise an error saying how.
async fn add_again(
    conn: &mut crate::store::Conn,
    s: subs::Subscriber,
    again: bool,
    changes: &ProfileChanges,
) -> anyhow::Result<()> {
    let how = match s.status {
        SubscriberStatus::Active => "change them with `paperpost subscribers edit`",
        _ if again => {
            let mut tx = store::begin(&mut *conn).await?;
            subs::update_profile(&mut *tx, s.id, &changes.apply_to(&s.profile)).await?;
            subs::reactivate(&mut *tx, s.id).await?;
            tx.commit().await?;
            let s = subs::get_by_email(conn, s.email.as_str()).await?;
            println!("Added again: {}", describe(&s));
            return Ok(());
        }
        _ => "add --again makes them active again",
    };
    anyhow::bail!(
        "{} is already a subscriber ({}); {how}",
        s.email,
        s.status.as_str()
    )
}

async fn edit(ctx: &App, email: String, profile: ProfileArgs) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    let changes = parse_changes(profile)?;
    if changes.is_empty() {
        anyhow::bail!(
            "nothing to change: give --name, --topics, --timezone, --format or --max-papers"
        );
    }
    let mut tx = crate::store::write(pool).await?;
    let s = subs::get_by_email(&mut tx, &email).await?;
    let changed = subs::update_profile(&mut tx, s.id, &changes.apply_to(&s.profile)).await?;
    let s = subs::get_by_email(&mut tx, &email).await?;
    tx.commit().await?;
    if changed {
        println!("Updated {}", describe(&s));
    } else {
        println!("No change: {}", describe(&s));
    }
    Ok(())
}

async fn remove(ctx: &App, email: String, purge: bool) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    let mut tx = crate::store::write(pool).await?;
    let s = subs::get_by_email(&mut tx, &email).await?;
    if purge {
        subs::purge(&mut tx, s.id).await?;
        tx.commit().await?;
        println!("Deleted {} and every record of mail sent to them", s.email);
    } else if s.status == SubscriberStatus::Unsubscribed
        && s.unsubscribed_by != Some(crate::domain::EndedBy::Sync)
    {
        println!("{} is already unsubscribed", s.email);
    } else {
        // Including someone a sync deactivated: now the removal is the
        // operator's, and a later sync does not bring them back.
        subs::end_subscription(
            &mut tx,
            s.id,
            SubscriberStatus::Unsubscribed,
            crate::domain::EndedBy::Cli,
        )
        .await?;
        tx.commit().await?;
        println!(
            "Unsubscribed {}; their history is kept (--purge deletes it)",
            s.email
        );
    }
    Ok(())
}

async fn unbounce(ctx: &App, since: Option<String>, emails: Vec<String>) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    let since = since.as_deref().map(parse_since).transpose()?;
    let emails = emails
        .iter()
        .map(|e| SubscriberEmail::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let mut conn = pool.acquire().await?;
    let back = subs::unbounce(&mut conn, since, &emails).await?;
    println!(
        "{} active again",
        output::plural(back.len(), "subscriber is", "subscribers are")
    );
    for e in &back {
        println!("  {e}");
    }
    if !back.is_empty() {
        println!(
            "Their failed digests stay failed: `paperpost resend --date D --failed` queues them again"
        );
    }
    Ok(())
}

async fn rotate_token(ctx: &App, email: String) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    let mut tx = crate::store::write(pool).await?;
    let s = subs::get_by_email(&mut tx, &email).await?;
    subs::rotate_token(&mut tx, &ctx.keys, s.id).await?;
    events::record(&mut tx, s.id, Action::Rotate, Channel::Cli, None).await?;
    tx.commit().await?;
    println!(
        "New link token for {}: the links in mail sent to them before no longer work",
        s.email
    );
    Ok(())
}

async fn import(ctx: &App, file: PathBuf) -> anyhow::Result<()> {
    let pool = &ctx.pool;
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
    Ok(())
}

async fn export(ctx: &App, file: Option<PathBuf>, status: SubscriberStatus) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    match file {
        Some(path) => {
            let f = std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let n = subscriber_csv::export(pool, status, std::io::BufWriter::new(f)).await?;
            println!("Exported {n} subscribers to {}", path.display());
        }
        None => {
            subscriber_csv::export(pool, status, std::io::stdout().lock()).await?;
        }
    }
    Ok(())
}

async fn sync(
    ctx: &App,
    file: Option<PathBuf>,
    resubscribe: Vec<String>,
    mode: subscriber_file::SyncMode,
) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    let path = file.unwrap_or_else(|| ctx.settings.subscribers.file.clone());
    let entries = subscriber_file::read(&path, &ctx.defaults())?;
    let resubscribe = resubscribe
        .iter()
        .map(|e| SubscriberEmail::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let r = subscriber_file::sync(pool, &ctx.keys, &entries, &resubscribe, mode)
        .await
        .with_context(|| format!("{}", path.display()))?;
    print_sync(&path, &r, mode.dry_run);
    Ok(())
}

pub async fn list_subscribers(
    pool: &crate::store::Pool,
    status: Option<SubscriberStatus>,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut rows = subs::stream(pool, status);
    let mut n = 0usize;
    if json {
        output::json_array(&mut out, rows, |s| serde_json::to_string(&s.view())).await?;
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
        writeln!(out, "{}", output::plural(n, "subscriber", "subscribers"))?;
    }
    out.flush()?;
    Ok(())
}

pub fn print_sync(path: &Path, r: &subscriber_file::SyncReport, dry_run: bool) {
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
    if let Some(why) = &r.refused {
        println!("  without --force, a sync would be {why}");
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

/// `--since`: a span back from now ("2h"), an RFC 3339 time, or a date (its
/// midnight UTC), as Unix ms.
pub(super) fn parse_since(text: &str) -> anyhow::Result<i64> {
    let now = chrono::Utc::now();
    if let Ok(span) = humantime::parse_duration(text) {
        return Ok((now - chrono::Duration::from_std(span)?).timestamp_millis());
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = text.parse::<chrono::NaiveDate>() {
        return Ok(d
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis());
    }
    anyhow::bail!("--since: {text:?} is not a date, an RFC 3339 time or a span such as \"2h\"")
}
