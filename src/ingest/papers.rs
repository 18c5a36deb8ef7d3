//! `papers import`: Hugging Face daily_papers JSON, plain text, and paperpost's
//! own JSON export. Files are parsed whole (they are a day's list, capped at
//! [`MAX_FILE_BYTES`]), then stored in one transaction.

use std::{collections::HashMap, path::Path};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::InputError;
use crate::{
    domain::{Paper, PaperDraft, SelectionOrigin},
    store::papers::{self as store, Upsert},
};

/// Paper files larger than this are refused before they are read.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PaperFormat {
    /// Decide from the content.
    #[default]
    Auto,
    /// Hugging Face daily_papers API JSON (an array of records with a `paper` object).
    Hf,
    /// Plain text: a title line, a blank line, an abstract paragraph, repeated.
    Text,
    /// paperpost's own JSON, as written by `papers export`.
    Json,
}

/// A paper read from a file, with the date its record carries (if any).
#[derive(Debug, Clone)]
pub struct Record {
    /// Record number (JSON) or line (text), for messages.
    pub place: u64,
    pub paper: Paper,
    pub date: Option<NaiveDate>,
}

/// Reads and validates a paper file.
pub fn read(path: &Path, format: PaperFormat) -> anyhow::Result<Vec<Record>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        anyhow::bail!(
            "{}: the file is {:.1} MB; paper files over {} MB are refused",
            path.display(),
            meta.len() as f64 / 1e6,
            MAX_FILE_BYTES / 1024 / 1024
        );
    }
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    parse(path, bytes, format)
}

/// Parses a paper file's bytes; `path` names it in messages.
pub fn parse(path: &Path, bytes: Vec<u8>, format: PaperFormat) -> anyhow::Result<Vec<Record>> {
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let upto = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..upto].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            return Err(InputError::new(
                path,
                line,
                "not valid UTF-8 text; save the file as UTF-8",
            )
            .into());
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim().is_empty() {
        return Err(InputError::new(path, 1, "the file is empty").into());
    }
    let format = match format {
        PaperFormat::Auto => detect(text),
        f => f,
    };
    // Auto here means JSON of either kind.
    let records = match format {
        PaperFormat::Text => parse_text(path, text)?,
        PaperFormat::Hf | PaperFormat::Json | PaperFormat::Auto => parse_json(path, text, format)?,
    };
    let mut first: HashMap<&str, u64> = HashMap::new();
    for r in &records {
        if let Some(prev) = first.insert(r.paper.id.as_str(), r.place) {
            return Err(InputError::new(
                path,
                r.place,
                format!("paper {} appears twice (first at {prev})", r.paper.id),
            )
            .into());
        }
    }
    Ok(records)
}

/// JSON (either kind, told apart once parsed) or plain text, by the first character.
fn detect(text: &str) -> PaperFormat {
    if text.trim_start().starts_with(['[', '{']) {
        PaperFormat::Auto
    } else {
        PaperFormat::Text
    }
}

// ---------------------------------------------------------------- JSON

#[derive(Deserialize)]
struct HfRecord {
    paper: Option<HfPaper>,
    title: Option<String>,
    summary: Option<String>,
    #[serde(rename = "publishedAt")]
    published_at: Option<String>,
    thumbnail: Option<String>,
    #[serde(rename = "numComments")]
    num_comments: Option<i64>,
}

#[derive(Deserialize)]
struct HfPaper {
    id: Option<String>,
    title: Option<String>,
    summary: Option<String>,
    #[serde(default)]
    authors: Vec<HfAuthor>,
    upvotes: Option<i64>,
    #[serde(rename = "publishedAt")]
    published_at: Option<String>,
    ai_keywords: Option<Vec<String>>,
    #[serde(rename = "githubRepo")]
    github_repo: Option<String>,
}

#[derive(Deserialize)]
struct HfAuthor {
    name: Option<String>,
}

/// paperpost's own export: `{"date": "YYYY-MM-DD", "papers": [...]}` (or a bare array).
#[derive(Serialize, Deserialize)]
pub struct Export {
    pub date: Option<NaiveDate>,
    pub papers: Vec<Paper>,
}

#[derive(Deserialize)]
struct OwnRecord {
    id: Option<String>,
    title: String,
    #[serde(rename = "abstract")]
    abstract_text: String,
    #[serde(default)]
    authors: Vec<String>,
    #[serde(default)]
    upvotes: i64,
    #[serde(default)]
    keywords: Vec<String>,
    github_repo: Option<String>,
    thumbnail: Option<String>,
    #[serde(default)]
    num_comments: i64,
    published_at: Option<DateTime<Utc>>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

fn parse_time(s: Option<&str>, field: &str) -> Result<Option<DateTime<Utc>>, String> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| format!("{field}: {s:?} is not an RFC 3339 time: {e}")),
    }
}

fn hf_record(value: serde_json::Value) -> Result<Record, String> {
    let r: HfRecord = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let p = r.paper.ok_or("no `paper` object")?;
    let id = nonempty(p.id).ok_or("paper.id is missing or empty")?;
    let published_at = parse_time(p.published_at.as_deref(), "paper.publishedAt")?;
    let listed_at = parse_time(r.published_at.as_deref(), "publishedAt")?;
    let paper = Paper::new(PaperDraft {
        id: Some(id),
        title: nonempty(p.title)
            .or(nonempty(r.title))
            .ok_or("paper.title is missing or empty")?,
        abstract_text: nonempty(p.summary)
            .or(nonempty(r.summary))
            .ok_or("paper.summary is missing or empty")?,
        authors: p.authors.into_iter().filter_map(|a| a.name).collect(),
        upvotes: p.upvotes.unwrap_or(0),
        keywords: p.ai_keywords.unwrap_or_default(),
        github_repo: p.github_repo,
        thumbnail: r.thumbnail,
        num_comments: r.num_comments.unwrap_or(0),
        published_at,
    })
    .map_err(|e| e.to_string())?;
    let date = listed_at.or(published_at).map(|t| t.date_naive());
    Ok(Record {
        place: 0,
        paper,
        date,
    })
}

fn own_record(value: serde_json::Value, date: Option<NaiveDate>) -> Result<Record, String> {
    let r: OwnRecord = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let paper = Paper::new(PaperDraft {
        id: r.id,
        title: r.title,
        abstract_text: r.abstract_text,
        authors: r.authors,
        upvotes: r.upvotes,
        keywords: r.keywords,
        github_repo: r.github_repo,
        thumbnail: r.thumbnail,
        num_comments: r.num_comments,
        published_at: r.published_at,
    })
    .map_err(|e| e.to_string())?;
    Ok(Record {
        place: 0,
        paper,
        date,
    })
}

fn parse_json(path: &Path, text: &str, format: PaperFormat) -> anyhow::Result<Vec<Record>> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        InputError::new(
            path,
            e.line() as u64,
            format!("invalid JSON at column {}: {e}", e.column()),
        )
    })?;
    let (date, items) = match doc {
        serde_json::Value::Array(items) => (None, items),
        serde_json::Value::Object(mut obj)
            if format != PaperFormat::Hf && obj.contains_key("papers") =>
        {
            let date = match obj.remove("date") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => {
                    Some(s.parse::<NaiveDate>().map_err(|_| {
                        InputError::new(
                            path,
                            1,
                            format!("\"date\": {s:?} is not a date (YYYY-MM-DD)"),
                        )
                    })?)
                }
                Some(_) => {
                    return Err(
                        InputError::new(path, 1, "\"date\" must be a string (YYYY-MM-DD)").into(),
                    );
                }
            };
            match obj.remove("papers") {
                Some(serde_json::Value::Array(items)) => (date, items),
                _ => return Err(InputError::new(path, 1, "expected a \"papers\" array").into()),
            }
        }
        _ => {
            return Err(InputError::new(
                path,
                1,
                "expected a JSON array of daily_papers records, or paperpost's {\"date\", \"papers\"} export",
            )
            .into());
        }
    };
    // HF records carry a nested `paper` object; ours do not.
    let hf = match format {
        PaperFormat::Hf => true,
        PaperFormat::Auto => {
            date.is_none() && items.first().is_some_and(|r| r.get("abstract").is_none())
        }
        _ => false,
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let n = i as u64 + 1;
            let parsed = if hf {
                hf_record(value)
            } else {
                own_record(value, date)
            };
            parsed
                .map(|r| Record { place: n, ..r })
                .map_err(|reason| InputError::new(path, n, format!("record {n}: {reason}")).into())
        })
        .collect()
}

// ---------------------------------------------------------------- text

/// Blocks of consecutive non-blank lines, with the line each starts on.
fn blocks(text: &str) -> Vec<(u64, Vec<&str>)> {
    let mut out: Vec<(u64, Vec<&str>)> = Vec::new();
    let mut current: Option<(u64, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if let Some(b) = current.take() {
                out.push(b);
            }
        } else {
            current
                .get_or_insert_with(|| (i as u64 + 1, Vec::new()))
                .1
                .push(line);
        }
    }
    out.extend(current);
    out
}

fn parse_text(path: &Path, text: &str) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut it = blocks(text).into_iter();
    while let Some((line, title_block)) = it.next() {
        if title_block.len() > 1 {
            return Err(InputError::new(
                path,
                line,
                "expected a title on one line, then a blank line, then the abstract",
            )
            .into());
        }
        let title = title_block[0];
        let Some((_, abstract_block)) = it.next() else {
            return Err(InputError::new(
                path,
                line,
                format!(
                    "paper {:?} has no abstract (expected a blank line and an abstract paragraph)",
                    title.trim()
                ),
            )
            .into());
        };
        let paper = Paper::new(PaperDraft {
            title: title.to_string(),
            abstract_text: abstract_block.join("\n"),
            ..Default::default()
        })
        .map_err(|e| InputError::new(path, line, e.to_string()))?;
        records.push(Record {
            place: line,
            paper,
            date: None,
        });
    }
    Ok(records)
}

// ---------------------------------------------------------------- storing

/// What an import stored.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Each date whose selection the file sets: (date, papers, changed?).
    pub dates: Vec<(NaiveDate, usize, bool)>,
    /// Dates a fetch left alone, and why (the editor's selection, an
    /// edition already started).
    pub kept: Vec<(NaiveDate, &'static str)>,
}

/// Groups records by date: `date` when given, else each record's own date;
/// records without one use `fallback` (today, for plain text files).
pub fn by_date(
    path: &Path,
    records: &[Record],
    date: Option<NaiveDate>,
    fallback: Option<NaiveDate>,
) -> Result<Vec<(NaiveDate, Vec<usize>)>, InputError> {
    let mut groups: Vec<(NaiveDate, Vec<usize>)> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let d = match date.or(r.date).or(fallback) {
            Some(d) => d,
            None => {
                return Err(InputError::new(
                    path,
                    r.place,
                    "the record has no publishedAt date; pass --date YYYY-MM-DD",
                ));
            }
        };
        match groups.iter_mut().find(|(gd, _)| *gd == d) {
            Some((_, v)) => v.push(i),
            None => groups.push((d, vec![i])),
        }
    }
    Ok(groups)
}

/// Stores the papers and sets each date's selection to the file's list, in
/// the file's order, all in one transaction.
pub async fn store(
    pool: &crate::store::Pool,
    records: &[Record],
    groups: &[(NaiveDate, Vec<usize>)],
    origin: SelectionOrigin,
) -> anyhow::Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut tx = crate::store::write(pool).await?;
    for r in records {
        match store::upsert(&mut tx, &r.paper).await? {
            Upsert::Added => report.added += 1,
            Upsert::Updated => report.updated += 1,
            Upsert::Unchanged => report.unchanged += 1,
        }
    }
    for (date, idx) in groups {
        if origin == SelectionOrigin::Fetch
            && let Some(why) = fetch_keeps(&mut tx, *date).await?
        {
            report.kept.push((*date, why));
            continue;
        }
        let ids: Vec<_> = idx.iter().map(|&i| records[i].paper.id.clone()).collect();
        let changed = store::replace_selection(&mut tx, *date, &ids).await?;
        store::set_origin(&mut tx, *date, origin).await?;
        report.dates.push((*date, ids.len(), changed));
    }
    tx.commit().await?;
    Ok(report)
}

/// Why a fetch must leave `date`'s selection alone, if it must: the editor
/// made it, or its edition has started.
async fn fetch_keeps(
    conn: &mut crate::store::Conn,
    date: NaiveDate,
) -> anyhow::Result<Option<&'static str>> {
    match store::selection_origin(&mut *conn, date).await? {
        Some(SelectionOrigin::File | SelectionOrigin::Hand) => {
            return Ok(Some("the editor's selection is kept"));
        }
        Some(SelectionOrigin::Fetch) | None => {}
    }
    let started = crate::store::deliveries::started_dates(conn).await?;
    Ok(started
        .contains(&date)
        .then_some("its edition has started; the selection it was sent with is kept"))
}
