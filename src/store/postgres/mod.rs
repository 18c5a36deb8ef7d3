//! PostgreSQL: opening the pool and its writer.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    ConnectOptions, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::{DatabaseSettings, DatabaseUrl};

/// The advisory lock every write transaction takes (see [`super::write`]):
/// one writer at a time, as on SQLite. The number is "paperpost" in ASCII.
pub const WRITE_LOCK: i64 = 0x7061_7065_7270_6f73;

/// Opens a pool to the server at `url`. Statements that wait for a lock
/// give up after `database.busy_timeout`, as SQLite's do.
pub async fn open(settings: &DatabaseSettings, url: &DatabaseUrl) -> anyhow::Result<PgPool> {
    use sqlx::Connection;
    let options = options(settings, url)?;
    // One connection first, so that a server that is down or refuses us
    // says so at once rather than after the pool's patience runs out.
    let first = sqlx::PgConnection::connect_with(&options)
        .await
        .with_context(|| format!("cannot connect to the database {url}"))?;
    first.close().await.ok();
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(30).max(settings.busy_timeout))
        .connect_lazy_with(options))
}

/// The session settings of every connection. A transaction left open by a
/// process that stopped (SIGSTOP, a paused container or VM, a hung host
/// whose socket stays up) is ended by the server after `lock_ttl / 3`, the
/// sender's renewal period: its locks, which would stop every instance's
/// writes and any takeover, are freed, and what it wrote is rolled back
/// (the process, if it resumes, finds its connection gone: busy, retried).
fn options(settings: &DatabaseSettings, url: &DatabaseUrl) -> anyhow::Result<PgConnectOptions> {
    let lock_timeout = format!("{}ms", settings.busy_timeout.as_millis());
    let idle_in_transaction = format!("{}ms", (settings.lock_ttl / 3).as_millis());
    Ok(PgConnectOptions::from_str(url.expose())
        .with_context(|| format!("database.url: cannot read {url}"))?
        .application_name("paperpost")
        // NOTICEs ("relation already exists, skipping") are not for logs.
        .options([
            ("lock_timeout", lock_timeout.as_str()),
            (
                "idle_in_transaction_session_timeout",
                idle_in_transaction.as_str(),
            ),
            ("client_min_messages", "warning"),
        ])
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(60)))
}

/// The connections for a process's writes (see [`super::writer`]): a few,
/// since on a server each write is a round trip that others need not wait
/// for; the rows they change never overlap (each claimed by one worker).
pub fn writer(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect_lazy_with((*pool.connect_options()).clone())
}

/// SQLSTATEs that mean "try again": serialization failure, deadlock, lock
/// not available (`lock_timeout`), the server shutting down or restarting,
/// and the connection exceptions (class 08).
pub fn busy_code(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
}

/// The PostgreSQL text of a statement written for SQLite (with `$N`
/// placeholders): the few spellings that differ are rewritten once per
/// distinct text and kept, so a statement costs a map lookup after its first
/// use. Statements that differ beyond these rules have their own text where
/// they are (see `dialect` in the callers).
pub fn text(sql: &str) -> &'static str {
    use std::{
        collections::HashMap,
        sync::{LazyLock, Mutex},
    };
    static TEXTS: LazyLock<Mutex<HashMap<String, &'static str>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut texts = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = texts.get(sql) {
        return t;
    }
    let t: &'static str = Box::leak(translate(sql).into_boxed_str());
    texts.insert(sql.to_string(), t);
    t
}

/// The rewriting rules of [`text`].
pub fn translate(sql: &str) -> String {
    use regex::Regex;
    use std::sync::LazyLock;
    static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
        [
            // Index hints: PostgreSQL's planner chooses.
            (r"\s+INDEXED BY \w+", ""),
            (r"\browid\b", "ctid"),
            (r"CREATE INDEX temp\.", "CREATE INDEX "),
            (r"\btemp\.", "pg_temp."),
            (r"\bINTEGER\b", "BIGINT"),
            // Scalar max/min of two values.
            (r"\bmax\(([^(),]+),([^(),]+)\)", "greatest($1,$2)"),
            (r"\bmin\(([^(),]+),([^(),]+)\)", "least($1,$2)"),
            // SQLite's IS compares with NULL as a value.
            (r"\bIS NOT (\$\d+|[a-z_]+\.[a-z_]+)", "IS DISTINCT FROM $1"),
            (r"\bIS (\$\d+|[a-z_]+\.[a-z_]+)", "IS NOT DISTINCT FROM $1"),
            // A JSON array bound as text, read element by element: as text,
            // or as JSON where the statement reads fields of each element.
            (
                r"\bjson_each\((\$\d+)\)( AS \w+)?",
                "JSON_ELEMENTS(CAST($1 AS json)) AS j(value)",
            ),
            (r"\bgroup_concat\(", "string_agg("),
        ]
        .into_iter()
        .map(|(re, to)| (Regex::new(re).expect("a valid rule"), to))
        .collect()
    });
    let mut out = sql.to_string();
    for (re, to) in RULES.iter() {
        out = re.replace_all(&out, *to).into_owned();
    }
    let elements = if out.contains("value ->>") {
        "json_array_elements"
    } else {
        "json_array_elements_text"
    };
    out = out.replace("JSON_ELEMENTS", elements);
    if let Some(rest) = out.strip_prefix("INSERT OR IGNORE INTO") {
        out = format!("INSERT INTO{rest} ON CONFLICT DO NOTHING");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn sqlite_spellings_become_postgres_ones() {
        assert_eq!(
            translate("SELECT count(*) FROM deliveries INDEXED BY deliveries_queued WHERE a IS $4"),
            "SELECT count(*) FROM deliveries WHERE a IS NOT DISTINCT FROM $4"
        );
        assert_eq!(
            translate("WHERE title IS NOT excluded.title OR s.holder IS $1"),
            "WHERE title IS DISTINCT FROM excluded.title OR s.holder IS NOT DISTINCT FROM $1"
        );
        assert_eq!(
            translate(
                "UPDATE d SET a = max(attempts - $1, 0), b = min(next_attempt_at, $2) WHERE x IS NOT $3 AND y IS NULL"
            ),
            "UPDATE d SET a = greatest(attempts - $1, 0), b = least(next_attempt_at, $2) WHERE x IS DISTINCT FROM $3 AND y IS NULL"
        );
        assert_eq!(
            translate("INSERT OR IGNORE INTO fires (a) VALUES ($1)"),
            "INSERT INTO fires (a) VALUES ($1) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            translate("WHERE email IN (SELECT value FROM json_each($3))"),
            "WHERE email IN (SELECT value FROM json_array_elements_text(CAST($3 AS json)) AS j(value))"
        );
    }
}
