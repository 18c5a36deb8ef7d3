//! `paperpost send`, `status` and `deliveries`.

use std::io::{IsTerminal, Write};

use chrono::NaiveDate;
use futures_util::TryStreamExt;

use super::output;
use crate::domain::DeliveryStatus;
use crate::{app::App, store};

/// What `send` did.
pub struct SendSummary {
    pub counts: store::deliveries::Counts,
    /// Messages this run sent.
    pub sent_now: u64,
    pub seconds: f64,
}

/// Sends one edition to completion in the foreground.
pub async fn send(app: &App, date: NaiveDate) -> anyhow::Result<SendSummary> {
    let lock = crate::lock::Lock::acquire(&app.pool, app.settings.database.lock_ttl).await?;
    let result = send_locked(app, &lock, date).await;
    lock.release().await;
    result
}

async fn send_locked(
    app: &App,
    lock: &crate::lock::Lock,
    date: NaiveDate,
) -> anyhow::Result<SendSummary> {
    use std::sync::atomic::Ordering;
    crate::lock::recover(&app.pool).await?;
    let mut conn = app.pool.acquire().await?;
    if store::papers::selection(&mut conn, date).await?.is_empty() {
        anyhow::bail!("no papers selected for {date}; import some with `paperpost papers import`");
    }
    drop(conn);
    let engine = app.engine(lock.fence())?;
    start(app, &engine, date).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let heartbeat = tokio::spawn(lock.heartbeat(shutdown.clone(), || {}));
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
    let reporter = report_progress(std::sync::Arc::clone(&engine), total, already);
    let until = crate::delivery::Until::EditionDone(date);
    let span = tracing::info_span!("edition", %date);
    let run = tracing::Instrument::instrument(engine.run(until, shutdown.clone()), span).await;
    reporter.abort();
    shutdown.cancel();
    let _ = heartbeat.await;
    run?;
    let seconds = started.elapsed().as_secs_f64();
    let mut conn = app.pool.acquire().await?;
    let counts = store::deliveries::counts(&mut conn, date).await?;
    let now_sent = engine.progress.sent.load(Ordering::Relaxed);
    print_summary(date, &counts, now_sent, seconds);
    Ok(SendSummary {
        counts,
        sent_now: now_sent,
        seconds,
    })
}

/// Starts the edition (or finds it started) and says so.
async fn start(app: &App, engine: &crate::delivery::Engine, date: NaiveDate) -> anyhow::Result<()> {
    let how = engine.describe_transport();
    match store::deliveries::start_edition(&app.pool, date, "send", |_| store::now_ms()).await? {
        store::deliveries::Started::Now(n) => {
            println!("Edition {date}: sending to {n} subscribers via {how}")
        }
        store::deliveries::Started::Already => {
            println!("Edition {date} was started before; sending what is left via {how}")
        }
    }
    Ok(())
}

/// `Edition D: N sent, N failed, N skipped ...` and what to do next.
fn print_summary(date: NaiveDate, counts: &store::deliveries::Counts, now_sent: u64, seconds: f64) {
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
}

/// Shows progress on standard error until `total` rows are final: a bar on a
/// terminal, a line every 5 s otherwise.
fn report_progress(
    engine: std::sync::Arc<crate::delivery::Engine>,
    total: u64,
    already: u64,
) -> tokio::task::JoinHandle<()> {
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
}

/// Bounce and complaint reports of the newest editions that have any.
async fn print_bounces(app: &App) -> anyhow::Result<()> {
    let rows = store::bounces::by_edition(&app.pool, 5).await?;
    let mut dates: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    dates.dedup();
    for date in dates {
        let of: Vec<_> = rows.iter().filter(|r| r.0 == date).collect();
        let sent = of[0].3;
        let kinds: Vec<String> = of.iter().map(|r| format!("{} {}", r.1, r.2)).collect();
        let complaints: i64 = of.iter().filter(|r| r.1 == "complaint").map(|r| r.2).sum();
        let rate = if sent > 0 {
            100.0 * complaints as f64 / sent as f64
        } else {
            0.0
        };
        println!(
            "Reports for {date}: {} ({sent} sent; complaint rate {rate:.2}%)",
            kinds.join(", ")
        );
    }
    Ok(())
}

pub async fn status(app: &App, date: Option<NaiveDate>, all: bool) -> anyhow::Result<()> {
    let mut conn = app.pool.acquire().await?;
    for a in store::alerts::current(&mut conn).await? {
        println!("ALERT since {}: {}", store::format_ms(a.at), a.message);
    }
    if let Some(f) = store::papers::last_fetch(&mut conn).await? {
        let how = if f.ok { "ok" } else { "FAILED" };
        println!(
            "Last fetch {} ({}): {how}: {}",
            store::format_ms(f.at),
            f.edition_date,
            f.message
        );
    }
    print_editions(&mut conn, date, all).await?;
    print_bounces(app).await?;
    let links = store::events::counts(&app.pool).await?;
    if !links.is_empty() {
        let uses: Vec<String> = links
            .iter()
            .map(|(action, channel, n)| format!("{action} ({channel}) {n}"))
            .collect();
        println!("Link uses: {}", uses.join(", "));
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

/// How many finished editions `status` shows without `--all`.
const FINISHED_SHOWN: usize = 5;

/// One line per edition (or just `date`'s): its counts and state. Without
/// `all`, the newest editions only: counting every edition ever started
/// reads every delivery row.
async fn print_editions(
    conn: &mut crate::store::Conn,
    date: Option<NaiveDate>,
    all: bool,
) -> anyhow::Result<()> {
    let editions = store::deliveries::editions(&mut *conn).await?;
    let matching: Vec<_> = editions
        .into_iter()
        .filter(|(d, _, _)| date.is_none_or(|x| x == *d))
        .collect();
    let shown = if all || date.is_some() {
        matching.len()
    } else {
        FINISHED_SHOWN
    };
    // Older editions still queued are shown too: they are not done.
    let queued = store::deliveries::queued_dates(&mut *conn).await?;
    let (editions, hidden): (Vec<_>, Vec<_>) = matching
        .into_iter()
        .enumerate()
        .partition(|(i, (d, _, _))| *i < shown || queued.contains(d));
    let editions: Vec<_> = editions.into_iter().map(|(_, e)| e).collect();
    let older = hidden.len();
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
            let c = store::deliveries::counts(&mut *conn, *d).await?;
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
        if older > 0 {
            println!("... and {older} older finished editions (status --all, or --date D)");
        }
    }
    Ok(())
}

pub async fn list_deliveries(
    app: &App,
    date: NaiveDate,
    status: Option<DeliveryStatus>,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut rows = store::deliveries::list(&app.pool, date, status.map(DeliveryStatus::as_str));
    let mut n = 0;
    if json {
        output::json_array(&mut out, rows, serde_json::to_string).await?;
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
