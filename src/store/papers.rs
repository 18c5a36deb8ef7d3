//! Paper and selection queries.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Row, postgres::PgRow, sqlite::SqliteRow};

use super::{Conn, Dialect, StoreError, now_ms};
use crate::domain::{Paper, PaperId, SelectionOrigin};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Added,
    Updated,
    Unchanged,
}

const COLUMNS: &str = "p.id, p.title, p.abstract, p.authors, p.keywords, p.upvotes, p.num_comments, p.github_repo, p.thumbnail, p.published_at";

/// A stored paper read from a row of either database.
trait PaperRow {
    fn paper(&self) -> Result<Paper, sqlx::Error>;
}

macro_rules! paper_row {
    ($row:ty) => {
        impl PaperRow for $row {
            fn paper(&self) -> Result<Paper, sqlx::Error> {
                let row = self;
                let id: String = row.try_get("id")?;
                let authors: String = row.try_get("authors")?;
                let keywords: String = row.try_get("keywords")?;
                let published: Option<i64> = row.try_get("published_at")?;
                Ok(Paper {
                    id: PaperId::parse(&id).map_err(|e| sqlx::Error::ColumnDecode {
                        index: "id".into(),
                        source: e.into(),
                    })?,
                    title: row.try_get("title")?,
                    abstract_text: row.try_get("abstract")?,
                    authors: serde_json::from_str(&authors).unwrap_or_default(),
                    keywords: serde_json::from_str(&keywords).unwrap_or_default(),
                    upvotes: row.try_get("upvotes")?,
                    num_comments: row.try_get("num_comments")?,
                    github_repo: row.try_get("github_repo")?,
                    thumbnail: row.try_get("thumbnail")?,
                    published_at: published.and_then(DateTime::<Utc>::from_timestamp_millis),
                })
            }
        }
    };
}
paper_row!(SqliteRow);
paper_row!(PgRow);

/// Inserts a paper or brings the stored copy up to date; reports which.
pub async fn upsert(conn: &mut Conn, p: &Paper) -> Result<Upsert, StoreError> {
    on!(conn => {
    let existed: Option<(i64,)> = sqlx::query_as(conn.sql("SELECT CAST(1 AS BIGINT) FROM papers WHERE id = $1"))
        .bind(p.id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let now = now_ms();
    let r = sqlx::query(conn.sql(
        "INSERT INTO papers (id, title, abstract, authors, keywords, upvotes, num_comments, github_repo, thumbnail, \
           published_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, abstract = excluded.abstract, \
           authors = excluded.authors, keywords = excluded.keywords, upvotes = excluded.upvotes, \
           num_comments = excluded.num_comments, github_repo = excluded.github_repo, \
           thumbnail = excluded.thumbnail, published_at = excluded.published_at, updated_at = excluded.updated_at \
         WHERE papers.title IS NOT excluded.title OR papers.abstract IS NOT excluded.abstract OR papers.authors IS NOT excluded.authors \
           OR papers.keywords IS NOT excluded.keywords OR papers.upvotes IS NOT excluded.upvotes \
           OR papers.num_comments IS NOT excluded.num_comments OR papers.github_repo IS NOT excluded.github_repo \
           OR papers.thumbnail IS NOT excluded.thumbnail OR papers.published_at IS NOT excluded.published_at",
    ))
    .bind(p.id.as_str())
    .bind(&p.title)
    .bind(&p.abstract_text)
    .bind(serde_json::to_string(&p.authors).expect("strings serialize"))
    .bind(serde_json::to_string(&p.keywords).expect("strings serialize"))
    .bind(p.upvotes)
    .bind(p.num_comments)
    .bind(&p.github_repo)
    .bind(&p.thumbnail)
    .bind(p.published_at.map(|t| t.timestamp_millis()))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(match (existed.is_some(), r.rows_affected() > 0) {
        (false, _) => Upsert::Added,
        (true, true) => Upsert::Updated,
        (true, false) => Upsert::Unchanged,
    })
    })
}

/// The ids selected for `date`, in the editor's order.
pub async fn selection_ids(conn: &mut Conn, date: NaiveDate) -> Result<Vec<PaperId>, StoreError> {
    on!(conn => {
    let rows: Vec<(String,)> =
        sqlx::query_as(conn.sql("SELECT paper_id FROM selections WHERE edition_date = $1 ORDER BY position"))
            .bind(date.to_string())
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id,)| PaperId::parse(&id).ok())
        .collect())
    })
}

/// Makes `ids` the selection for `date`, in that order. Returns false when it
/// already was. Every id must name a stored paper.
pub async fn replace_selection(
    conn: &mut Conn,
    date: NaiveDate,
    ids: &[PaperId],
) -> Result<bool, StoreError> {
    on!(conn => {
    if selection_ids(&mut *conn, date).await? == ids {
        return Ok(false);
    }
    let missing = missing_ids(&mut *conn, ids).await?;
    if !missing.is_empty() {
        return Err(StoreError::NotFound(format!(
            "no paper with id {}; import it first (paperpost papers import)",
            missing.join(", ")
        )));
    }
    sqlx::query(conn.sql("DELETE FROM selections WHERE edition_date = $1"))
        .bind(date.to_string())
        .execute(&mut *conn)
        .await?;
    for (pos, id) in ids.iter().enumerate() {
        sqlx::query(conn.sql("INSERT INTO selections (edition_date, position, paper_id) VALUES ($1, $2, $3)"))
            .bind(date.to_string())
            .bind(pos as i64 + 1)
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                if super::is_unique_violation(&e) {
                    StoreError::Conflict(format!("paper {id} is listed twice"))
                } else {
                    e.into()
                }
            })?;
    }
    Ok(true)
    })
}

/// The ids among `ids` that no stored paper has.
pub async fn missing_ids(conn: &mut Conn, ids: &[PaperId]) -> Result<Vec<String>, StoreError> {
    on!(conn => {
    let mut missing = Vec::new();
    for id in ids {
        let found: Option<(i64,)> = sqlx::query_as(conn.sql("SELECT CAST(1 AS BIGINT) FROM papers WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if found.is_none() {
            missing.push(id.to_string());
        }
    }
    Ok(missing)
    })
}

/// The papers selected for `date`, in the editor's order.
pub async fn selection(conn: &mut Conn, date: NaiveDate) -> Result<Vec<Paper>, StoreError> {
    on!(conn => {
    let sql = format!(
        "SELECT {COLUMNS} FROM selections s JOIN papers p ON p.id = s.paper_id WHERE s.edition_date = $1 ORDER BY s.position"
    );
    let rows = sqlx::query(conn.sql(&sql))
        .bind(date.to_string())
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(PaperRow::paper).collect::<Result<_, _>>()?)
    })
}

/// A fingerprint of `date`'s selection: it changes when the selection or
/// one of its papers does.
pub async fn selection_version(conn: &mut Conn, date: NaiveDate) -> Result<String, StoreError> {
    on!(conn => {
    Ok(sqlx::query_scalar(conn.sql(
        "SELECT coalesce(group_concat(s.paper_id || '@' || p.updated_at, ' '), '') FROM \
           (SELECT paper_id FROM selections WHERE edition_date = $1 ORDER BY position) s \
         JOIN papers p ON p.id = s.paper_id",
    ))
    .bind(date.to_string())
    .fetch_one(conn)
    .await?)
    })
}

/// Every stored paper, newest first.
pub async fn all(conn: &mut Conn) -> Result<Vec<Paper>, StoreError> {
    on!(conn => {
    let sql = format!("SELECT {COLUMNS} FROM papers p ORDER BY p.published_at DESC, p.id");
    let rows = sqlx::query(conn.sql(&sql)).fetch_all(conn).await?;
    Ok(rows.iter().map(PaperRow::paper).collect::<Result<_, _>>()?)
    })
}

/// Dates that have a selection, newest first, with how many papers each holds.
pub async fn selected_dates(conn: &mut Conn) -> Result<Vec<(NaiveDate, i64)>, StoreError> {
    on!(conn => {
    let rows: Vec<(String, i64)> = sqlx::query_as(conn.sql(
        "SELECT edition_date, count(*) FROM selections GROUP BY edition_date ORDER BY edition_date DESC",
    ))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(d, n)| d.parse().ok().map(|d| (d, n)))
        .collect())
    })
}

/// Who made `date`'s selection: `None` if nothing is selected; a selection
/// older than the record of origins counts as the editor's file import.
pub async fn selection_origin(
    conn: &mut Conn,
    date: NaiveDate,
) -> Result<Option<SelectionOrigin>, StoreError> {
    on!(conn => {
    let row: Option<String> =
        sqlx::query_scalar(conn.sql("SELECT origin FROM selection_origins WHERE edition_date = $1"))
            .bind(date.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match row.as_deref() {
        Some("fetch") => Some(SelectionOrigin::Fetch),
        Some("hand") => Some(SelectionOrigin::Hand),
        Some(_) => Some(SelectionOrigin::File),
        None if selection_ids(&mut *conn, date).await?.is_empty() => None,
        None => Some(SelectionOrigin::File),
    })
    })
}

/// Records who made `date`'s selection.
pub async fn set_origin(
    conn: &mut Conn,
    date: NaiveDate,
    origin: SelectionOrigin,
) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql(
        "INSERT INTO selection_origins (edition_date, origin, at) VALUES ($1, $2, $3) \
         ON CONFLICT (edition_date) DO UPDATE SET origin = $2, at = $3",
    ))
    .bind(date.to_string())
    .bind(origin.as_str())
    .bind(super::now_ms())
    .execute(conn)
    .await?;
    Ok(())
    })
}

/// The last fetch: its date, when, whether it worked, and what happened.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FetchRecord {
    pub edition_date: String,
    pub at: i64,
    pub ok: bool,
    pub message: String,
}

pub async fn record_fetch(
    conn: &mut Conn,
    date: NaiveDate,
    ok: bool,
    message: &str,
) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql(
        "INSERT INTO fetch_status (id, edition_date, at, ok, message) VALUES (1, $1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET edition_date = $1, at = $2, ok = $3, message = $4",
    ))
    .bind(date.to_string())
    .bind(super::now_ms())
    .bind(ok)
    .bind(message)
    .execute(conn)
    .await?;
    Ok(())
    })
}

pub async fn last_fetch(conn: &mut Conn) -> Result<Option<FetchRecord>, StoreError> {
    on!(conn => {
    Ok(
        sqlx::query_as(conn.sql("SELECT edition_date, at, ok, message FROM fetch_status WHERE id = 1"))
            .fetch_optional(conn)
            .await?,
    )
    })
}
