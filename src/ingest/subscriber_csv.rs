//! `subscribers import FILE.csv` and `subscribers export`.
//!
//! Columns: `email,name,topics,timezone,format,max_papers` in any order; only
//! `email` is required; topics are separated by `;`.

use std::{fs::File, io::Write, path::Path};

use futures_util::TryStreamExt;

use super::{InputError, LineLimit, line_too_long};
use crate::{
    domain::{
        Format, MaxPapers, SubscriberEmail, SubscriberName, SubscriberStatus, TimeZone, Topics,
    },
    security::Keys,
    store::subscribers::{Import, ImportError, ImportReport, ImportRow, Profile},
};

pub const COLUMNS: [&str; 6] = [
    "email",
    "name",
    "topics",
    "timezone",
    "format",
    "max_papers",
];
/// The longest physical line accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// Column positions found in the header.
#[derive(Debug, Default)]
struct Layout {
    email: usize,
    name: Option<usize>,
    topics: Option<usize>,
    timezone: Option<usize>,
    format: Option<usize>,
    max_papers: Option<usize>,
}

fn layout(file: &Path, header: &csv::StringRecord) -> Result<Layout, InputError> {
    let err = |reason: String| InputError::new(file, 1, reason);
    if header.is_empty() || (header.len() == 1 && header[0].trim().is_empty()) {
        return Err(err(format!(
            "the file is empty; expected a header line: {}",
            COLUMNS.join(",")
        )));
    }
    let mut email = None;
    let mut l = Layout::default();
    for (i, raw) in header.iter().enumerate() {
        let name = raw
            .trim()
            .trim_start_matches('\u{feff}')
            .to_ascii_lowercase();
        let slot = match name.as_str() {
            "email" => &mut email,
            "name" => &mut l.name,
            "topics" => &mut l.topics,
            "timezone" => &mut l.timezone,
            "format" => &mut l.format,
            "max_papers" => &mut l.max_papers,
            _ => {
                return Err(err(format!(
                    "unknown column {raw:?} in the header (expected some of: {})",
                    COLUMNS.join(",")
                )));
            }
        };
        if slot.replace(i).is_some() {
            return Err(err(format!("column {name:?} appears twice in the header")));
        }
    }
    l.email = email.ok_or_else(|| {
        err(format!(
            "the header has no email column (expected: {})",
            COLUMNS.join(",")
        ))
    })?;
    Ok(l)
}

fn cell(rec: &csv::StringRecord, i: Option<usize>) -> Option<&str> {
    i.and_then(|i| rec.get(i))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn parse_row(l: &Layout, rec: &csv::StringRecord, line: u64) -> Result<ImportRow, String> {
    let email = SubscriberEmail::parse(rec.get(l.email).unwrap_or(""))
        .map_err(|e| format!("email: {e}"))?;
    let name = cell(rec, l.name)
        .map(SubscriberName::parse)
        .transpose()
        .map_err(|e| format!("name: {e}"))?;
    let topics = cell(rec, l.topics)
        .map(|t| Topics::parse_separated(t, ';'))
        .transpose()
        .map_err(|e| format!("topics: {e}"))?;
    let timezone = cell(rec, l.timezone)
        .map(TimeZone::parse)
        .transpose()
        .map_err(|e| format!("timezone: {e}"))?;
    let format = cell(rec, l.format)
        .map(Format::parse)
        .transpose()
        .map_err(|e| format!("format: {e}"))?;
    let max_papers = cell(rec, l.max_papers)
        .map(MaxPapers::parse)
        .transpose()
        .map_err(|e| format!("max_papers: {e}"))?;
    Ok(ImportRow {
        line,
        email,
        name,
        topics,
        timezone,
        format,
        max_papers,
    })
}

/// Turns a csv error into `FILE:LINE: reason`.
fn csv_error(file: &Path, e: csv::Error) -> InputError {
    let line = e.position().map(|p| p.line()).unwrap_or(1);
    match e.into_kind() {
        csv::ErrorKind::Io(io) => match line_too_long(&io) {
            Some(t) => InputError::new(file, t.line, t.to_string()),
            None => InputError::new(file, line, format!("cannot read: {io}")),
        },
        csv::ErrorKind::Utf8 { pos, err } => InputError::new(
            file,
            pos.map(|p| p.line()).unwrap_or(line),
            format!(
                "not valid UTF-8 text (field {}); save the file as UTF-8",
                err.field() + 1
            ),
        ),
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => InputError::new(
            file,
            pos.map(|p| p.line()).unwrap_or(line),
            format!("expected {expected_len} fields like the header, found {len}"),
        ),
        other => InputError::new(file, line, format!("malformed CSV: {other:?}")),
    }
}

/// Imports a CSV file in one transaction: every row is validated and staged,
/// then merged; the first bad row aborts the whole import and changes nothing.
pub async fn import(
    pool: &crate::store::Pool,
    keys: &Keys,
    defaults: &Profile,
    path: &Path,
) -> anyhow::Result<ImportReport> {
    let file =
        File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        // Records end at LF; the CR of a CRLF file (what spreadsheets export)
        // is trimmed with the other whitespace. The csv crate's own CRLF
        // handling reports the line before the right one.
        .terminator(csv::Terminator::Any(b'\n'))
        .trim(csv::Trim::All)
        .buffer_capacity(256 * 1024)
        .from_reader(LineLimit::new(file, MAX_LINE));
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let layout = layout(path, &header)?;

    let mut conn = pool.acquire().await?;
    let mut import = Import::begin(&mut conn, keys).await?;
    let mut rec = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(path, e).into()),
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        // A blank line between rows is not a subscriber.
        if rec.len() == 1 && rec[0].trim().is_empty() && header.len() > 1 {
            continue;
        }
        let row =
            parse_row(&layout, &rec, line).map_err(|reason| InputError::new(path, line, reason))?;
        import.push(row).await?;
    }
    let report = match import.finish(defaults).await {
        Ok(r) => r,
        Err(ImportError::Duplicate {
            line,
            first_line,
            email,
        }) => {
            return Err(InputError::new(
                path,
                line,
                format!("duplicate email {email} (first on line {first_line})"),
            )
            .into());
        }
        Err(ImportError::Store(e)) => return Err(e.into()),
    };
    Ok(report)
}

/// Writes subscribers of `status` as CSV with the import's columns, streaming.
pub async fn export(
    pool: &crate::store::Pool,
    status: SubscriberStatus,
    out: impl Write,
) -> anyhow::Result<u64> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(COLUMNS)?;
    let mut rows = crate::store::subscribers::stream(pool, Some(status));
    let mut n = 0;
    while let Some(s) = rows.try_next().await? {
        let p = &s.profile;
        let max = p.max_papers.get().to_string();
        w.write_record([
            s.email.as_str(),
            p.name.as_ref().map(SubscriberName::as_str).unwrap_or(""),
            &p.topics.join(";"),
            p.timezone.name(),
            p.format.as_str(),
            &max,
        ])?;
        n += 1;
    }
    w.flush()?;
    Ok(n)
}
