//! `paperpost preview`: one digest, rendered and not sent.

use std::{io::Write, path::Path};

use anyhow::Context;
use chrono::NaiveDate;

use super::PreviewFormat;
use crate::{
    app::App,
    digest::{Edition, Reader},
    domain::{Format, SubscriberEmail, Topics},
    links::PREVIEW_TOKEN,
    store::{self, subscribers as subs},
};

pub async fn preview(
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
    let composer = app.composer()?;
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
        PreviewFormat::Eml => composer.envelope.finish(&message)?,
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
