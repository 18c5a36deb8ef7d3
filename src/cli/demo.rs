//! `paperpost demo`: the bundled samples, sent to the outbox.

use std::{io::IsTerminal, path::Path};

use chrono::NaiveDate;

use super::{
    PapersCmd, papers,
    send::send,
    subscribers::{list_subscribers, print_sync},
};
use crate::{
    app::App,
    domain::SubscriberStatus,
    ingest::{self, papers::PaperFormat, subscriber_file},
};

/// The bundled sample: a day of Hugging Face daily papers.
pub const SAMPLE_PAPERS: &str = include_str!("../../samples/daily_papers-2024-03-11.json");
/// The bundled example subscriber file.
pub const SAMPLE_SUBSCRIBERS: &str = include_str!("../../config/subscribers.example.toml");

pub async fn demo(ctx: &App) -> anyhow::Result<()> {
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
        ctx.settings.database.describe()
    );

    step("Importing the bundled sample papers (Hugging Face daily_papers JSON)");
    let label = Path::new("samples/daily_papers-2024-03-11.json");
    let records =
        ingest::papers::parse(label, SAMPLE_PAPERS.as_bytes().to_vec(), PaperFormat::Auto)?;
    papers::import_papers(ctx, label, records, None).await?;

    step("Applying the example subscriber file");
    let label = Path::new("config/subscribers.example.toml");
    let entries = subscriber_file::parse(label, SAMPLE_SUBSCRIBERS, &ctx.defaults())?;
    let r = subscriber_file::sync(&ctx.pool, &ctx.keys, &entries, &[], Default::default()).await?;
    print_sync(label, &r, false);

    step("Subscribers");
    list_subscribers(&ctx.pool, Some(SubscriberStatus::Active), false).await?;
    step("Papers selected for 2024-03-11");
    Box::pin(papers::run(
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
