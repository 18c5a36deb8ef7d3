//! `paperpost db copy-to`: a SQLite installation copied into an empty
//! PostgreSQL database in one consistent snapshot, verified table by table.

use sha2::{Digest, Sha256};
use sqlx::{Row, postgres::PgRow, sqlite::SqliteRow};

use super::{Pool, Tx, now_ms};

/// The tables, parents before children (foreign keys). The sending lock
/// (`scheduler_lock`), the migrations' own table and `moved` stay behind.
pub const TABLES: [&str; 14] = [
    "subscribers",
    "papers",
    "editions",
    "selections",
    "selection_origins",
    "deliveries",
    "token_events",
    "fires",
    "alerts",
    "fetch_status",
    "secret_fingerprint",
    "confirmations",
    "bounces",
    "webhook_tokens",
];

/// Tables whose `id` the database numbers: numbering goes on after the copy.
const IDENTITIES: [&str; 4] = ["subscribers", "deliveries", "token_events", "bounces"];

const BATCH: usize = 1000;

/// What one table's copy verified: rows on both sides, and the SHA-256 of
/// its rows (in a canonical form, sorted) read back from the target.
#[derive(Debug, Clone)]
pub struct Copied {
    pub table: &'static str,
    pub rows: u64,
    pub sha256: String,
}

/// A value as both databases hold it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(Option<bool>),
}

impl Val {
    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = match self {
            Val::Int(Some(v)) => write!(out, "i{v}"),
            Val::Text(Some(v)) => write!(out, "t{}:{v}", v.len()),
            Val::Bool(Some(v)) => write!(out, "b{v}"),
            Val::Int(None) | Val::Text(None) | Val::Bool(None) => write!(out, "n"),
        };
        out.push('\u{1f}');
    }
}

/// A column of the target table and the type both sides are read as.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Text,
    Bool,
}

macro_rules! decode_row {
    ($row:expr, $columns:expr) => {{
        let row = $row;
        let mut vals = Vec::with_capacity($columns.len());
        for (i, c) in $columns.iter().enumerate() {
            vals.push(match c.kind {
                Kind::Int => Val::Int(row.try_get(i)?),
                Kind::Text => Val::Text(row.try_get(i)?),
                Kind::Bool => Val::Bool(row.try_get(i)?),
            });
        }
        vals
    }};
}

fn sqlite_row(row: &SqliteRow, columns: &[Column]) -> Result<Vec<Val>, sqlx::Error> {
    Ok(decode_row!(row, columns))
}

fn pg_row(row: &PgRow, columns: &[Column]) -> Result<Vec<Val>, sqlx::Error> {
    Ok(decode_row!(row, columns))
}

/// Row count and digest of canonical rows, whatever order they came in.
fn digest(mut rows: Vec<String>) -> (u64, String) {
    rows.sort_unstable();
    let mut h = Sha256::new();
    for r in &rows {
        h.update(r.as_bytes());
        h.update(b"\n");
    }
    (rows.len() as u64, hex::encode(h.finalize()))
}

fn canonical(vals: &[Val]) -> String {
    let mut s = String::new();
    vals.iter().for_each(|v| v.render(&mut s));
    s
}

/// Copies every table of `from` (SQLite) into `to` (an empty PostgreSQL
/// database, migrated), under SQLite's write lock so that nothing written
/// meanwhile is left behind, and marks `from` as moved to `to_url` in the
/// same breath. Rows being sent go over as queued (their sender is gone).
pub async fn copy_to(from: &Pool, to: &Pool, to_url: &str) -> anyhow::Result<Vec<Copied>> {
    let (Pool::Sqlite(_), Pool::Postgres(dst)) = (from, to) else {
        anyhow::bail!("db copy-to copies a SQLite database into a PostgreSQL one");
    };
    super::migrate(to).await?;
    let held: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM subscribers) + (SELECT count(*) FROM papers) \
           + (SELECT count(*) FROM editions)",
    )
    .fetch_one(dst)
    .await?;
    anyhow::ensure!(
        held == 0,
        "the target database already holds paperpost data; db copy-to copies into an empty one"
    );
    let mut source = super::write(from).await?;
    let mut target = dst.begin().await?;
    let mut report = Vec::new();
    for table in TABLES {
        report.push(copy_table(&mut source, &mut target, table).await?);
    }
    for table in IDENTITIES {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
             coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
        ))
        .execute(&mut *target)
        .await?;
    }
    let Tx::Sqlite(mut source) = source else {
        unreachable!("the source is SQLite")
    };
    sqlx::query("INSERT INTO moved (id, url, at) VALUES (1, $1, $2)")
        .bind(to_url)
        .bind(now_ms())
        .execute(&mut *source)
        .await?;
    target.commit().await?;
    source.commit().await.map_err(|e| {
        anyhow::anyhow!(
            "the copy is committed in PostgreSQL, but the SQLite file could not be marked as \
             moved ({e}): make sure no paperpost sends from it"
        )
    })?;
    Ok(report)
}

/// The target's columns of `table`, in order, with the type to read them as.
async fn columns(target: &mut sqlx::PgConnection, table: &str) -> anyhow::Result<Vec<Column>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *target)
    .await?;
    rows.into_iter()
        .map(|(name, ty)| {
            let kind = match ty.as_str() {
                "bigint" => Kind::Int,
                "text" => Kind::Text,
                "boolean" => Kind::Bool,
                other => anyhow::bail!("{table}.{name}: no copy for the type {other}"),
            };
            Ok(Column { name, kind })
        })
        .collect()
}

/// One table: read, adjusted, inserted in batches, read back and compared.
async fn copy_table(
    source: &mut Tx<'static>,
    target: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    table: &'static str,
) -> anyhow::Result<Copied> {
    let columns = columns(target, table).await?;
    let list = columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let select = format!("SELECT {list} FROM {table}");
    let Tx::Sqlite(source) = source else {
        unreachable!("the source is SQLite")
    };
    let rows = sqlx::query(&select).fetch_all(&mut **source).await?;
    let mut sent = Vec::with_capacity(rows.len());
    let mut batch = Vec::with_capacity(BATCH);
    for row in &rows {
        let mut vals = sqlite_row(row, &columns)?;
        adjust(table, &columns, &mut vals);
        sent.push(canonical(&vals));
        batch.push(vals);
        if batch.len() == BATCH {
            insert(target, table, &list, std::mem::take(&mut batch)).await?;
        }
    }
    insert(target, table, &list, batch).await?;
    let back = sqlx::query(&select).fetch_all(&mut **target).await?;
    let back = back
        .iter()
        .map(|r| pg_row(r, &columns).map(|v| canonical(&v)))
        .collect::<Result<Vec<_>, _>>()?;
    let (rows_in, sum_in) = digest(sent);
    let (rows_out, sum_out) = digest(back);
    anyhow::ensure!(
        (rows_in, &sum_in) == (rows_out, &sum_out),
        "{table}: {rows_in} rows read, {rows_out} written, checksums {sum_in} and {sum_out}"
    );
    Ok(Copied {
        table,
        rows: rows_out,
        sha256: sum_out,
    })
}

/// A delivery being sent when the copy was made goes over queued and
/// unclaimed: its sender stays behind, and the new one sends it.
fn adjust(table: &str, columns: &[Column], vals: &mut [Val]) {
    if table != "deliveries" {
        return;
    }
    let at = |name: &str| columns.iter().position(|c| c.name == name);
    let (Some(status), Some(claimed), Some(lease)) =
        (at("status"), at("claimed_by"), at("lease_until"))
    else {
        return;
    };
    if vals[status] == Val::Text(Some("sending".into())) {
        vals[status] = Val::Text(Some("queued".into()));
        vals[claimed] = Val::Int(None);
        vals[lease] = Val::Int(None);
    }
}

async fn insert(
    target: &mut sqlx::PgConnection,
    table: &str,
    list: &str,
    rows: Vec<Vec<Val>>,
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut qb =
        sqlx::QueryBuilder::<sqlx::Postgres>::new(format!("INSERT INTO {table} ({list}) "));
    qb.push_values(rows, |mut b, row| {
        for v in row {
            match v {
                Val::Int(v) => b.push_bind(v),
                Val::Text(v) => b.push_bind(v),
                Val::Bool(v) => b.push_bind(v),
            };
        }
    });
    qb.build().execute(&mut *target).await?;
    Ok(())
}

/// Where this database moved, if `db copy-to` copied it: (URL, when).
pub async fn moved(pool: &Pool) -> Result<Option<(String, i64)>, super::StoreError> {
    Ok(
        on_pool!(pool => sqlx::query_as("SELECT url, at FROM moved WHERE id = 1")
        .fetch_optional(pool)
        .await?),
    )
}
