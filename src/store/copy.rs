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

/// Bytes of COPY data sent at a time.
const CHUNK: usize = 64 * 1024;

/// What one table's copy verified: rows on both sides, and the sum of its
/// rows' SHA-256 (each in a canonical form) read back from the target.
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

/// A table's rows as a multiset: their count, and the sum (modulo 2^256)
/// of each canonical row's SHA-256, the same whatever order the rows come
/// in, kept in constant memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    rows: u64,
    sum: [u64; 4],
}

impl Tally {
    fn add(&mut self, vals: &[Val]) {
        let hash = Sha256::digest(canonical(vals).as_bytes());
        let mut carry = false;
        for (i, chunk) in hash.chunks(8).enumerate().rev() {
            let word = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
            let limb = &mut self.sum[i];
            let (v, c1) = limb.overflowing_add(word);
            let (v, c2) = v.overflowing_add(u64::from(carry));
            *limb = v;
            carry = c1 || c2;
        }
        self.rows += 1;
    }

    fn hex(&self) -> String {
        self.sum.iter().map(|w| format!("{w:016x}")).collect()
    }
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

/// One table: streamed from SQLite through `COPY ... FROM STDIN`, adjusted,
/// read back and compared; memory stays at one chunk whatever its size.
async fn copy_table(
    source: &mut Tx<'static>,
    target: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    table: &'static str,
) -> anyhow::Result<Copied> {
    use futures_util::TryStreamExt;
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
    let mut sent = Tally::default();
    let mut chunk = Vec::with_capacity(CHUNK + 4096);
    let copy = format!("COPY {table} ({list}) FROM STDIN WITH (FORMAT csv)");
    let mut copy = target.copy_in_raw(&copy).await?;
    let mut rows = sqlx::query(&select).fetch(&mut **source);
    while let Some(row) = rows.try_next().await? {
        let mut vals = sqlite_row(&row, &columns)?;
        adjust(table, &columns, &mut vals);
        sent.add(&vals);
        csv_row(&vals, &mut chunk);
        if chunk.len() >= CHUNK {
            copy.send(std::mem::take(&mut chunk)).await?;
        }
    }
    drop(rows);
    if !chunk.is_empty() {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    let mut back = Tally::default();
    let mut rows = sqlx::query(&select).fetch(&mut **target);
    while let Some(row) = rows.try_next().await? {
        back.add(&pg_row(&row, &columns)?);
    }
    anyhow::ensure!(
        sent == back,
        "{table}: {} rows read, {} written, checksums {} and {}",
        sent.rows,
        back.rows,
        sent.hex(),
        back.hex()
    );
    Ok(Copied {
        table,
        rows: back.rows,
        sha256: back.hex(),
    })
}

/// One row as `COPY`'s CSV reads it: NULL as nothing, every text quoted (so
/// an empty text stays a text), quotes doubled.
fn csv_row(vals: &[Val], out: &mut Vec<u8>) {
    use std::io::Write;
    for (i, v) in vals.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match v {
            Val::Int(Some(n)) => {
                let _ = write!(out, "{n}");
            }
            Val::Bool(Some(b)) => out.push(if *b { b't' } else { b'f' }),
            Val::Text(Some(t)) => {
                out.push(b'"');
                for &b in t.as_bytes() {
                    if b == b'"' {
                        out.push(b'"');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
            Val::Int(None) | Val::Text(None) | Val::Bool(None) => {}
        }
    }
    out.push(b'\n');
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

/// Where this database moved, if `db copy-to` copied it: (URL, when).
pub async fn moved(pool: &Pool) -> Result<Option<(String, i64)>, super::StoreError> {
    Ok(
        on_pool!(pool => sqlx::query_as("SELECT url, at FROM moved WHERE id = 1")
        .fetch_optional(pool)
        .await?),
    )
}

#[cfg(test)]
mod tests {
    use super::{Tally, Val};

    fn row(i: i64, t: &str) -> Vec<Val> {
        vec![
            Val::Int(Some(i)),
            Val::Text(Some(t.into())),
            Val::Bool(None),
        ]
    }

    #[test]
    fn the_tally_is_the_same_in_any_order_and_tells_rows_apart() {
        let (mut a, mut b, mut c) = (Tally::default(), Tally::default(), Tally::default());
        for i in 0..1000 {
            a.add(&row(i, "x"));
            b.add(&row(999 - i, "x"));
            c.add(&row(i, if i == 500 { "y" } else { "x" }));
        }
        assert_eq!(a, b);
        assert_eq!(a.rows, c.rows);
        assert_ne!(a, c);
        // A value moved from one column to the next is another row.
        let (mut d, mut e) = (Tally::default(), Tally::default());
        d.add(&[Val::Text(Some("ab".into())), Val::Text(Some("c".into()))]);
        e.add(&[Val::Text(Some("a".into())), Val::Text(Some("bc".into()))]);
        assert_ne!(d, e);
    }
}
