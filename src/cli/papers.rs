//! `paperpost papers ...`

use std::{io::Write, path::Path};

use anyhow::Context;
use chrono::NaiveDate;

use super::PapersCmd;
use crate::{
    app::App,
    domain::{PaperId, SelectionOrigin},
    ingest::{self, papers::Record},
    store::{self, StoreError},
};

pub async fn import_papers(
    ctx: &App,
    label: &Path,
    records: Vec<Record>,
    date: Option<NaiveDate>,
) -> anyhow::Result<()> {
    let groups = ingest::papers::by_date(label, &records, date, Some(ctx.today()))?;
    let r = ingest::papers::store(&ctx.pool, &records, &groups, SelectionOrigin::File).await?;
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

pub async fn run(ctx: &App, cmd: PapersCmd) -> anyhow::Result<()> {
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
        PapersCmd::Fetch { date } => fetch(ctx, date).await?,
        PapersCmd::List { date, json } => list(ctx, date, json).await?,
        PapersCmd::Select { date, ids } => select(ctx, date, ids).await?,
        PapersCmd::Export { date, out } => export(ctx, date, out).await?,
    }
    Ok(())
}

async fn list(ctx: &App, date: Option<NaiveDate>, json: bool) -> anyhow::Result<()> {
    let pool = &ctx.pool;
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
    Ok(())
}

async fn select(ctx: &App, date: NaiveDate, ids: Vec<String>) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    let ids = ids
        .iter()
        .map(|i| PaperId::parse(i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tx = crate::store::write(pool).await?;
    let changed = store::papers::replace_selection(&mut tx, date, &ids)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) | StoreError::NotFound(m) => anyhow::anyhow!(m),
            other => other.into(),
        })?;
    store::papers::set_origin(&mut tx, date, SelectionOrigin::Hand).await?;
    tx.commit().await?;
    if changed {
        println!("Selected {} papers for {date}", ids.len());
    } else {
        println!("Selection for {date} unchanged ({} papers)", ids.len());
    }
    Ok(())
}

async fn export(ctx: &App, date: NaiveDate, out: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let pool = &ctx.pool;
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
    Ok(())
}

async fn fetch(ctx: &App, date: Option<NaiveDate>) -> anyhow::Result<()> {
    let Some(fetcher) = ingest::fetch::Fetcher::new(&ctx.settings.papers)? else {
        anyhow::bail!(
            "papers.source_url is not set; set it (PAPERPOST__PAPERS__SOURCE_URL) to fetch papers"
        );
    };
    let date = date.unwrap_or_else(|| ctx.fetch_date());
    let r = ingest::fetch::fetch_and_import(ctx, &fetcher, date).await?;
    println!(
        "Fetched {}: {}",
        fetcher.url(date),
        ingest::fetch::summary(&r, date)
    );
    Ok(())
}
