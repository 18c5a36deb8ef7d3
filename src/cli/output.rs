//! Output helpers shared by the commands.

use std::io::Write;

use futures_util::{Stream, TryStreamExt};

/// Writes a stream of rows as one JSON array, one row per line, without
/// holding the rows in memory; `json` turns a row into its JSON text.
/// Returns how many were written.
pub async fn json_array<T, E, S>(
    out: &mut impl Write,
    rows: S,
    json: impl Fn(&T) -> serde_json::Result<String>,
) -> anyhow::Result<usize>
where
    S: Stream<Item = Result<T, E>>,
    anyhow::Error: From<E>,
{
    let mut rows = std::pin::pin!(rows);
    let mut n = 0usize;
    write!(out, "[")?;
    while let Some(row) = rows.try_next().await? {
        write!(out, "{}\n  {}", if n > 0 { "," } else { "" }, json(&row)?)?;
        n += 1;
    }
    writeln!(out, "{}]", if n > 0 { "\n" } else { "" })?;
    Ok(n)
}

/// "1 subscriber", "2 subscribers".
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
