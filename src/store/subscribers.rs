//! Subscriber queries.

use futures_util::{StreamExt, stream::BoxStream};
use serde::Serialize;
use sqlx::{Row, postgres::PgRow, sqlite::SqliteRow};

use super::{
    Conn, Dialect, Kind, Pool, StoreError,
    events::{Action, Channel},
    is_unique_violation, now_ms,
};
use crate::{
    domain::{
        EndedBy, Format, MaxPapers, SubscriberEmail, SubscriberName, SubscriberSource,
        SubscriberStatus, TimeZone, Topics,
    },
    security::Keys,
};

/// What a subscriber chose: everything but their address and status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    pub name: Option<SubscriberName>,
    pub topics: Topics,
    pub timezone: TimeZone,
    pub format: Format,
    pub max_papers: MaxPapers,
}

/// A partial edit of a [`Profile`]: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileChanges {
    /// `Some(None)` clears the name.
    pub name: Option<Option<SubscriberName>>,
    pub topics: Option<Topics>,
    pub timezone: Option<TimeZone>,
    pub format: Option<Format>,
    pub max_papers: Option<MaxPapers>,
}

impl ProfileChanges {
    pub fn apply_to(&self, p: &Profile) -> Profile {
        Profile {
            name: self.name.clone().unwrap_or_else(|| p.name.clone()),
            topics: self.topics.clone().unwrap_or_else(|| p.topics.clone()),
            timezone: self.timezone.unwrap_or(p.timezone),
            format: self.format.unwrap_or(p.format),
            max_papers: self.max_papers.unwrap_or(p.max_papers),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.topics.is_none()
            && self.timezone.is_none()
            && self.format.is_none()
            && self.max_papers.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub id: i64,
    pub uuid: String,
    pub email: SubscriberEmail,
    pub profile: Profile,
    pub status: SubscriberStatus,
    pub source: SubscriberSource,
    /// Who ended it, for unsubscribed and bounced subscribers.
    pub unsubscribed_by: Option<EndedBy>,
    pub created_at: i64,
    pub updated_at: i64,
    pub unsubscribed_at: Option<i64>,
}

/// The JSON shape of `subscribers list --json`.
#[derive(Debug, Serialize)]
pub struct SubscriberView<'a> {
    pub email: &'a str,
    pub name: Option<&'a str>,
    pub topics: &'a Topics,
    pub timezone: &'a str,
    pub format: &'a str,
    pub max_papers: u8,
    pub status: &'a str,
    pub source: &'a str,
    pub unsubscribed_by: Option<&'a str>,
    pub created_at: String,
    pub updated_at: String,
}

impl Subscriber {
    /// On the suppression list: their mail bounced, or the operator removed
    /// them (`subscribers remove`, or gone from the subscriber file). A
    /// sign-up on the web sends them nothing; `unbounce` or `subscribers add
    /// --again` lifts it.
    pub fn suppressed(&self) -> bool {
        match self.status {
            SubscriberStatus::Bounced => true,
            SubscriberStatus::Unsubscribed => matches!(
                self.unsubscribed_by,
                Some(EndedBy::Cli | EndedBy::Sync | EndedBy::Complaint)
            ),
            _ => false,
        }
    }

    pub fn view(&self) -> SubscriberView<'_> {
        SubscriberView {
            email: self.email.as_str(),
            name: self.profile.name.as_ref().map(SubscriberName::as_str),
            topics: &self.profile.topics,
            timezone: self.profile.timezone.name(),
            format: self.profile.format.as_str(),
            max_papers: self.profile.max_papers.get(),
            status: self.status.as_str(),
            source: self.source.as_str(),
            unsubscribed_by: self.unsubscribed_by.map(|b| b.as_str()),
            created_at: super::format_ms(self.created_at),
            updated_at: super::format_ms(self.updated_at),
        }
    }
}

macro_rules! columns {
    () => {
        "id, uuid, email, name, topics, timezone, format, max_papers, status, source, \
         unsubscribed_by, created_at, updated_at, unsubscribed_at"
    };
}
const COLUMNS: &str = columns!();

fn decode_err(col: &str, e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: col.to_string(),
        source: e.to_string().into(),
    }
}

macro_rules! decode_subscriber {
    ($row:ty) => {
        impl<'r> sqlx::FromRow<'r, $row> for Subscriber {
            fn from_row(row: &'r $row) -> Result<Self, sqlx::Error> {
                let email: String = row.try_get("email")?;
                let name: Option<String> = row.try_get("name")?;
                let topics: String = row.try_get("topics")?;
                let timezone: String = row.try_get("timezone")?;
                let format: String = row.try_get("format")?;
                let max_papers: i64 = row.try_get("max_papers")?;
                let status: String = row.try_get("status")?;
                let source: String = row.try_get("source")?;
                Ok(Subscriber {
                    id: row.try_get("id")?,
                    uuid: row.try_get("uuid")?,
                    email: SubscriberEmail::parse(&email).map_err(|e| decode_err("email", e))?,
                    profile: Profile {
                        name: name
                            .as_deref()
                            .map(SubscriberName::parse)
                            .transpose()
                            .map_err(|e| decode_err("name", e))?,
                        topics: Topics::from_json(&topics),
                        timezone: TimeZone::parse(&timezone)
                            .map_err(|e| decode_err("timezone", e))?,
                        format: Format::parse(&format).map_err(|e| decode_err("format", e))?,
                        max_papers: MaxPapers::new(max_papers)
                            .map_err(|e| decode_err("max_papers", e))?,
                    },
                    status: status.parse().map_err(|e| decode_err("status", e))?,
                    source: source.parse().map_err(|e| decode_err("source", e))?,
                    unsubscribed_by: row
                        .try_get::<Option<String>, _>("unsubscribed_by")?
                        .map(|b| b.parse())
                        .transpose()
                        .map_err(|e| decode_err("unsubscribed_by", e))?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    unsubscribed_at: row.try_get("unsubscribed_at")?,
                })
            }
        }
    };
}
decode_subscriber!(SqliteRow);
decode_subscriber!(PgRow);

/// Adds a subscriber. Fails with [`StoreError::Conflict`] when the address
/// (compared case-insensitively) is already known.
pub async fn insert(
    conn: &mut Conn,
    keys: &Keys,
    email: &SubscriberEmail,
    profile: &Profile,
    status: SubscriberStatus,
    source: SubscriberSource,
) -> Result<Subscriber, StoreError> {
    on!(conn => {
    let uuid = uuid::Uuid::new_v4().to_string();
    let now = now_ms();
    let sql = format!(
        "INSERT INTO subscribers (uuid, email, name, topics, timezone, format, max_papers, status, source, \
         token_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
    );
    sqlx::query_as::<_, Subscriber>(conn.sql(&sql))
        .bind(&uuid)
        .bind(email.as_str())
        .bind(profile.name.as_ref().map(SubscriberName::as_str))
        .bind(profile.topics.to_json())
        .bind(profile.timezone.name())
        .bind(profile.format.as_str())
        .bind(i64::from(profile.max_papers.get()))
        .bind(status.as_str())
        .bind(source.as_str())
        .bind(keys.subscriber_token_hash(&uuid))
        .bind(now)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("{email} is already a subscriber"))
            } else {
                e.into()
            }
        })
    })
}

pub async fn find_by_email(conn: &mut Conn, email: &str) -> Result<Option<Subscriber>, StoreError> {
    on!(conn => {
    let sql = format!("SELECT {COLUMNS} FROM subscribers WHERE email = $1");
    Ok(sqlx::query_as(conn.sql(&sql))
        .bind(email.trim())
        .fetch_optional(conn)
        .await?)
    })
}

pub async fn find_by_id(conn: &mut Conn, id: i64) -> Result<Option<Subscriber>, StoreError> {
    on!(conn => {
    let sql = format!("SELECT {COLUMNS} FROM subscribers WHERE id = $1");
    Ok(sqlx::query_as(conn.sql(&sql)).bind(id).fetch_optional(conn).await?)
    })
}

/// Like [`find_by_email`], but a missing subscriber is an error naming the address.
pub async fn get_by_email(conn: &mut Conn, email: &str) -> Result<Subscriber, StoreError> {
    on!(conn => {
    find_by_email(conn, email)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no subscriber with address {}", email.trim())))
    })
}

/// The subscriber a link token belongs to, by the token's hash.
pub async fn find_by_token(conn: &mut Conn, token: &str) -> Result<Option<Subscriber>, StoreError> {
    on!(conn => {
    let sql = format!("SELECT {COLUMNS} FROM subscribers WHERE token_hash = $1");
    Ok(sqlx::query_as(conn.sql(&sql))
        .bind(crate::security::token_hash(token))
        .fetch_optional(conn)
        .await?)
    })
}

/// Writes a profile. Returns false when nothing changed.
pub async fn update_profile(conn: &mut Conn, id: i64, p: &Profile) -> Result<bool, StoreError> {
    on!(conn => {
    let r = sqlx::query(conn.sql(
        "UPDATE subscribers SET name = $1, topics = $2, timezone = $3, format = $4, max_papers = $5, \
         updated_at = $6 WHERE id = $7 AND (name IS NOT $1 OR topics IS NOT $2 OR timezone IS NOT $3 \
         OR format IS NOT $4 OR max_papers IS NOT $5)",
    ))
    .bind(p.name.as_ref().map(SubscriberName::as_str))
    .bind(p.topics.to_json())
    .bind(p.timezone.name())
    .bind(p.format.as_str())
    .bind(i64::from(p.max_papers.get()))
    .bind(now_ms())
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
    })
}

/// Ends a subscription (`by`: link, cli, sync or bounce) and cancels every
/// delivery of theirs that has not gone out yet, in one step.
pub async fn end_subscription(
    conn: &mut Conn,
    id: i64,
    status: SubscriberStatus,
    by: EndedBy,
) -> Result<(), StoreError> {
    on!(conn => {
    end_subscriptions(conn, &[id], status, by).await
    })
}

/// [`end_subscription`] for many subscribers, in two statements.
pub async fn end_subscriptions(
    conn: &mut Conn,
    ids: &[i64],
    status: SubscriberStatus,
    by: EndedBy,
) -> Result<(), StoreError> {
    on!(conn => {
    debug_assert!(matches!(
        status,
        SubscriberStatus::Unsubscribed | SubscriberStatus::Bounced
    ));
    let now = now_ms();
    let ids = serde_json::to_string(ids).expect("integers serialize");
    sqlx::query(conn.sql(
        "UPDATE subscribers SET status = $1, unsubscribed_by = $2, unsubscribed_at = $3, updated_at = $3 \
         WHERE id IN (SELECT CAST(value AS BIGINT) FROM json_each($4))",
    ))
    .bind(status.as_str())
    .bind(by.as_str())
    .bind(now)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    sqlx::query(conn.sql(
        "UPDATE deliveries SET status = 'cancelled', last_error = $1, updated_at = $2 \
         WHERE subscriber_id IN (SELECT CAST(value AS BIGINT) FROM json_each($3)) AND status = 'queued'",
    ))
    .bind(format!("subscriber {}", status.as_str()))
    .bind(now)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
    })
}

/// One use of an unsubscribe link.
#[derive(Debug, Clone)]
pub struct LinkUse {
    pub token: String,
    pub channel: Channel,
    pub user_agent: Option<String>,
}

/// What an unsubscribe needs of a link's owner, and nothing else, so that a
/// field it does not need (a time zone no longer known) cannot fail it.
#[derive(Debug, Clone)]
pub struct LinkOwner {
    pub id: i64,
    pub email: SubscriberEmail,
    pub status: SubscriberStatus,
    pub unsubscribed_by: Option<EndedBy>,
}

impl LinkOwner {
    /// Still receiving mail, or deactivated by a sync (the subscriber's own
    /// word now, so a later sync does not bring them back).
    fn receiving(&self) -> bool {
        matches!(
            self.status,
            SubscriberStatus::Active | SubscriberStatus::Pending
        ) || (self.status == SubscriberStatus::Unsubscribed
            && self.unsubscribed_by == Some(EndedBy::Sync))
    }

    fn from_row<R>(row: &R) -> Result<Self, String>
    where
        R: Row,
        for<'c> &'c str: sqlx::ColumnIndex<R>,
        for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let get = |col: &str| -> Result<Option<String>, String> {
            row.try_get::<Option<String>, _>(col)
                .map_err(|e| format!("{col}: {e}"))
        };
        let required = |col: &str| get(col)?.ok_or_else(|| format!("{col} is empty"));
        Ok(LinkOwner {
            id: row.try_get("id").map_err(|e| format!("id: {e}"))?,
            email: SubscriberEmail::parse(&required("email")?)
                .map_err(|e| format!("email: {e}"))?,
            status: required("status")?
                .parse()
                .map_err(|e| format!("status: {e}"))?,
            unsubscribed_by: get("unsubscribed_by")?
                .map(|b| b.parse())
                .transpose()
                .map_err(|e| format!("unsubscribed_by: {e}"))?,
        })
    }
}

/// What an unsubscribe link did: whose it is, and whether this use ended
/// their subscription (false: it had ended before).
#[derive(Debug, Clone)]
pub struct Unsubscribed {
    pub owner: LinkOwner,
    pub ended: bool,
}

/// One link's result in a batch: `Ok(None)` for a token nobody has, `Err`
/// for an owner whose row cannot be read (that link alone fails).
pub type LinkResult = Result<Option<Unsubscribed>, String>;

/// Unsubscribes the owners of these links (in order) and records each use,
/// with a handful of statements for the whole batch; each link succeeds or
/// fails on its own. Run inside a `BEGIN IMMEDIATE` transaction.
pub async fn unsubscribe_by_links(
    conn: &mut Conn,
    uses: &[LinkUse],
) -> Result<Vec<LinkResult>, StoreError> {
    on!(conn => {
    let hashes: Vec<String> = uses
        .iter()
        .map(|u| crate::security::token_hash(&u.token))
        .collect();
    let mut owners: std::collections::HashMap<String, Result<LinkOwner, String>> =
        std::collections::HashMap::new();
    for row in sqlx::query(conn.sql(
        "SELECT id, email, status, unsubscribed_by, token_hash FROM subscribers \
         WHERE token_hash IN (SELECT value FROM json_each($1))",
    ))
    .bind(serde_json::to_string(&hashes).expect("strings serialize"))
    .fetch_all(&mut *conn)
    .await?
    {
        let hash: String = row.try_get("token_hash")?;
        owners.insert(hash, LinkOwner::from_row(&row));
    }
    let readable = || owners.values().filter_map(|o| o.as_ref().ok());
    let mut ending: Vec<i64> = readable().filter(|s| s.receiving()).map(|s| s.id).collect();
    ending.sort_unstable();
    end_subscriptions(conn, &ending, SubscriberStatus::Unsubscribed, EndedBy::Link).await?;
    let used: Vec<_> = uses
        .iter()
        .zip(&hashes)
        .filter_map(|(u, h)| match owners.get(h) {
            Some(Ok(s)) => Some((s.id, u.channel, u.user_agent.as_deref())),
            _ => None,
        })
        .collect();
    super::events::record_many(conn, Action::Unsubscribe, &used).await?;
    let mut first_use = std::collections::HashSet::new();
    Ok(hashes
        .iter()
        .map(|h| match owners.get(h) {
            None => Ok(None),
            Some(Err(e)) => Err(format!("cannot read the subscriber: {e}")),
            Some(Ok(s)) => Ok(Some(Unsubscribed {
                owner: s.clone(),
                // A token twice in one batch ends the subscription once.
                ended: s.receiving() && first_use.insert(s.id),
            })),
        })
        .collect())
    })
}

/// Makes an unsubscribed (or bounced) subscriber active again.
pub async fn reactivate(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql(
        "UPDATE subscribers SET status = 'active', unsubscribed_by = NULL, unsubscribed_at = NULL, \
         hard_bounces = 0, updated_at = $1 WHERE id = $2",
    ))
    .bind(now_ms())
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
    })
}

/// Takes back one hard bounce of a subscriber (the server, not their mailbox,
/// refused): below `threshold` again, a subscriber the bounces suppressed is
/// active again.
pub async fn undo_bounce(conn: &mut Conn, id: i64, threshold: i64) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql(
        "UPDATE subscribers SET hard_bounces = max(hard_bounces - 1, 0), \
           status = CASE WHEN status = 'bounced' AND unsubscribed_by = 'bounce' \
                          AND hard_bounces - 1 < $1 THEN 'active' ELSE status END, \
           unsubscribed_by = CASE WHEN status = 'bounced' AND unsubscribed_by = 'bounce' \
                          AND hard_bounces - 1 < $1 THEN NULL ELSE unsubscribed_by END, \
           unsubscribed_at = CASE WHEN status = 'bounced' AND unsubscribed_by = 'bounce' \
                          AND hard_bounces - 1 < $1 THEN NULL ELSE unsubscribed_at END, \
           updated_at = $2 \
         WHERE id = $3",
    ))
    .bind(threshold)
    .bind(now_ms())
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
    })
}

/// Makes bounced subscribers active again (an operator's way back after a
/// server's fault): those bounced since `since` (Unix ms), or the given
/// addresses, or both conditions together. Returns their addresses.
pub async fn unbounce(
    conn: &mut Conn,
    since: Option<i64>,
    emails: &[SubscriberEmail],
) -> Result<Vec<String>, StoreError> {
    on!(conn => {
    let emails: Vec<&str> = emails.iter().map(SubscriberEmail::as_str).collect();
    let back: Vec<(i64, String)> = sqlx::query_as(conn.sql(
        "UPDATE subscribers SET status = 'active', unsubscribed_by = NULL, unsubscribed_at = NULL, \
           hard_bounces = 0, updated_at = $1 \
         WHERE status = 'bounced' AND (CAST($2 AS INTEGER) IS NULL OR unsubscribed_at >= $2) \
           AND ($3 = '[]' OR email IN (SELECT value FROM json_each($3))) \
         RETURNING id, email",
    ))
    .bind(now_ms())
    .bind(since)
    .bind(serde_json::to_string(&emails).expect("strings serialize"))
    .fetch_all(&mut *conn)
    .await?;
    // Their bounce reports stop counting, or the soft rule would suppress
    // them again at the next one.
    let ids: Vec<i64> = back.iter().map(|(id, _)| *id).collect();
    super::bounces::uncount(conn, &ids).await?;
    Ok(back.into_iter().map(|(_, email)| email).collect())
    })
}

/// Deletes a subscriber with their deliveries and link history.
pub async fn purge(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql("DELETE FROM subscribers WHERE id = $1"))
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
    })
}

/// Every subscriber (optionally of one status), by address, streamed from the database.
pub fn stream<'a>(
    pool: &'a Pool,
    status: Option<SubscriberStatus>,
) -> BoxStream<'a, Result<Subscriber, StoreError>> {
    on_pool!(pool => {
    sqlx::query_as::<_, Subscriber>(pool.sql(concat!(
        "SELECT ",
        columns!(),
        " FROM subscribers WHERE ($1 IS NULL OR status = $1) ORDER BY email"
    )))
    .bind(status.map(|s| s.as_str()))
    .fetch(pool)
    .map(|r| r.map_err(StoreError::from))
    .boxed()
    })
}

/// The subscribers with these ids (any status), in one query, by id. A row
/// that does not decode (a value edited by hand into something invalid) is
/// that subscriber's error, not the whole query's.
pub async fn get_many(
    conn: &mut Conn,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, Result<Subscriber, String>>, StoreError> {
    on!(conn => {
    let sql =
        format!("SELECT {COLUMNS} FROM subscribers WHERE id IN (SELECT CAST(value AS BIGINT) FROM json_each($1))");
    let list = serde_json::to_string(ids).expect("integers serialize");
    let rows = sqlx::query(conn.sql(&sql)).bind(list).fetch_all(conn).await?;
    let mut out = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let decoded = <Subscriber as sqlx::FromRow<_>>::from_row(&row).map_err(|e| e.to_string());
        out.insert(id, decoded);
    }
    Ok(out)
    })
}

/// Subscribers that came from the subscriber file.
pub async fn list_by_source(
    conn: &mut Conn,
    source: SubscriberSource,
) -> Result<Vec<Subscriber>, StoreError> {
    on!(conn => {
    let sql = format!("SELECT {COLUMNS} FROM subscribers WHERE source = $1 ORDER BY email");
    Ok(sqlx::query_as(conn.sql(&sql))
        .bind(source.as_str())
        .fetch_all(conn)
        .await?)
    })
}

/// How many subscribers have each status.
pub async fn count_by_status(pool: &Pool) -> Result<Vec<(String, i64)>, StoreError> {
    on_pool!(pool => {
    Ok(
        sqlx::query_as(pool.sql("SELECT status, count(*) FROM subscribers GROUP BY status ORDER BY status"))
            .fetch_all(pool)
            .await?,
    )
    })
}

/// One validated row of a subscriber import. `None` fields were empty or absent:
/// new subscribers get the defaults, existing ones keep what they have.
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub line: u64,
    pub email: SubscriberEmail,
    pub name: Option<SubscriberName>,
    pub topics: Option<Topics>,
    pub timezone: Option<TimeZone>,
    pub format: Option<Format>,
    pub max_papers: Option<MaxPapers>,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: u64,
    pub added: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Known subscribers the import left alone: (email, name, status, ended by).
    pub skipped: Vec<SkippedSubscriber>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSubscriber {
    pub email: String,
    pub name: Option<String>,
    pub status: String,
    pub by: Option<String>,
}

/// Why an import was refused after all rows were read.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("duplicate email {email} (first on line {first_line})")]
    Duplicate {
        line: u64,
        first_line: u64,
        email: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ImportError {
    fn from(e: sqlx::Error) -> Self {
        ImportError::Store(e.into())
    }
}

/// A bulk import in progress on one connection. Rows are staged in batches
/// into a temporary table (which locks nothing another process needs),
/// checked as a whole, then merged with a few set-based statements in one
/// `BEGIN IMMEDIATE` transaction: constant memory, one round trip per batch,
/// and a merge that reads and writes under the write lock, so a sender
/// committing meanwhile cannot make it fail (SQLITE_BUSY_SNAPSHOT).
pub struct Import<'c> {
    conn: &'c mut Conn,
    keys: Keys,
    batch: Vec<ImportRow>,
    rows: u64,
}

const BATCH: usize = 500;

impl<'c> Import<'c> {
    pub async fn begin(conn: &'c mut Conn, keys: &Keys) -> Result<Self, StoreError> {
        {
            let conn = &mut *conn;
            on!(conn => {
                sqlx::query(conn.sql("DROP TABLE IF EXISTS temp.import_rows"))
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(conn.sql(
                    "CREATE TEMP TABLE import_rows (line INTEGER NOT NULL, email TEXT NOT NULL COLLATE NOCASE, \
                     name TEXT, topics TEXT, timezone TEXT, format TEXT, max_papers INTEGER, \
                     uuid TEXT NOT NULL, token_hash TEXT NOT NULL)",
                ))
                .execute(&mut *conn)
                .await?;
            });
        }
        Ok(Self {
            conn,
            keys: keys.clone(),
            batch: Vec::with_capacity(BATCH),
            rows: 0,
        })
    }

    pub async fn push(&mut self, row: ImportRow) -> Result<(), StoreError> {
        self.batch.push(row);
        self.rows += 1;
        if self.batch.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let keys = &self.keys;
        let batch = &mut self.batch;
        let conn = &mut *self.conn;
        on!(conn => {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO import_rows (line, email, name, topics, timezone, format, max_papers, uuid, token_hash) ",
            );
            qb.push_values(batch.drain(..), |mut b, r| {
                let uuid = uuid::Uuid::new_v4().to_string();
                let hash = keys.subscriber_token_hash(&uuid);
                b.push_bind(r.line as i64)
                    .push_bind(r.email.as_str().to_string())
                    .push_bind(r.name.map(|n| n.as_str().to_string()))
                    .push_bind(r.topics.map(|t| t.to_json()))
                    .push_bind(r.timezone.map(|t| t.name()))
                    .push_bind(r.format.map(|f| f.as_str()))
                    .push_bind(r.max_papers.map(|m| i64::from(m.get())))
                    .push_bind(uuid)
                    .push_bind(hash);
            });
            qb.build()
                .persistent(false)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Checks the staged rows and merges them. New addresses are added as active;
    /// known ones are updated unless they unsubscribed or bounced (reported).
    pub async fn finish(mut self, defaults: &Profile) -> Result<ImportReport, ImportError> {
        self.flush().await?;
        let conn = &mut *self.conn;
        let dup: Option<(i64, i64, String)> = on!(conn => {
            sqlx::query(conn.sql("CREATE INDEX temp.import_rows_email ON import_rows (email)"))
                .execute(&mut *conn)
                .await?;
            sqlx::query_as(conn.sql(
                "SELECT b.line, min(a.line), b.email FROM import_rows b JOIN import_rows a \
                 ON a.email = b.email AND a.line < b.line GROUP BY b.line, b.email ORDER BY b.line LIMIT 1",
            ))
            .fetch_optional(&mut *conn)
            .await?
        });
        if let Some((line, first_line, email)) = dup {
            return Err(ImportError::Duplicate {
                line: line as u64,
                first_line: first_line as u64,
                email,
            });
        }

        let mut tx = super::write_on(conn).await?;
        let report = merge(&mut *tx, defaults, self.rows).await?;
        tx.commit().await?;
        on!(conn => {
            sqlx::query(conn.sql("DROP TABLE temp.import_rows"))
                .execute(&mut *conn)
                .await?;
        });
        Ok(report)
    }
}

/// The staged rows into `subscribers`: new addresses added as active, known
/// ones updated unless they unsubscribed or bounced (reported).
async fn merge(
    conn: &mut Conn,
    defaults: &Profile,
    rows: u64,
) -> Result<ImportReport, ImportError> {
    on!(conn => {
    let skipped = sqlx::query_as::<_, (String, Option<String>, String, Option<String>)>(conn.sql(
            "SELECT s.email, s.name, s.status, s.unsubscribed_by FROM import_rows i \
             JOIN subscribers s ON s.email = i.email WHERE s.status IN ('unsubscribed', 'bounced') ORDER BY i.line",
        ))
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(email, name, status, by)| SkippedSubscriber { email, name, status, by })
        .collect();

    let (matched,): (i64,) = sqlx::query_as(conn.sql(
        "SELECT count(*) FROM import_rows i JOIN subscribers s ON s.email = i.email \
             WHERE s.status IN ('active', 'pending')",
    ))
    .fetch_one(&mut *conn)
    .await?;

    let now = now_ms();
    let updated = sqlx::query(conn.sql(
        "UPDATE subscribers SET \
               name = coalesce(i.name, subscribers.name), \
               topics = coalesce(i.topics, subscribers.topics), \
               timezone = coalesce(i.timezone, subscribers.timezone), \
               format = coalesce(i.format, subscribers.format), \
               max_papers = coalesce(i.max_papers, subscribers.max_papers), \
               updated_at = $1 \
             FROM import_rows AS i \
             WHERE i.email = subscribers.email AND subscribers.status IN ('active', 'pending') \
               AND (coalesce(i.name, subscribers.name) IS NOT subscribers.name \
                 OR coalesce(i.topics, subscribers.topics) IS NOT subscribers.topics \
                 OR coalesce(i.timezone, subscribers.timezone) IS NOT subscribers.timezone \
                 OR coalesce(i.format, subscribers.format) IS NOT subscribers.format \
                 OR coalesce(i.max_papers, subscribers.max_papers) IS NOT subscribers.max_papers)",
    ))
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();

    let added = sqlx::query(conn.sql(
            "INSERT INTO subscribers (uuid, email, name, topics, timezone, format, max_papers, status, source, \
               token_hash, created_at, updated_at) \
             SELECT i.uuid, i.email, i.name, coalesce(i.topics, $1), coalesce(i.timezone, $2), \
               coalesce(i.format, $3), coalesce(i.max_papers, $4), 'active', 'import', i.token_hash, $5, $5 \
             FROM import_rows i WHERE NOT EXISTS (SELECT 1 FROM subscribers s WHERE s.email = i.email) \
             ORDER BY i.line",
        ))
        .bind(defaults.topics.to_json())
        .bind(defaults.timezone.name())
        .bind(defaults.format.as_str())
        .bind(i64::from(defaults.max_papers.get()))
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();

    Ok(ImportReport {
        rows,
        added,
        updated,
        unchanged: matched as u64 - updated,
        skipped,
    })
    })
}

/// Gives a subscriber a new link token: every link in mail already sent stops
/// working. The token is derived from the uuid, so the uuid is replaced (the
/// Message-ID of their later digests changes with it).
pub async fn rotate_token(conn: &mut Conn, keys: &Keys, id: i64) -> Result<(), StoreError> {
    on!(conn => {
    let uuid = uuid::Uuid::new_v4().to_string();
    sqlx::query(conn.sql("UPDATE subscribers SET uuid = $1, token_hash = $2, updated_at = $3 WHERE id = $4"))
        .bind(&uuid)
        .bind(keys.subscriber_token_hash(&uuid))
        .bind(now_ms())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
    })
}

/// Deletes pending subscribers who did not confirm within `ttl` of their
/// latest confirmation mail, and confirmations past `ttl` (and past the hour
/// the limits count).
pub async fn expire_pending(conn: &mut Conn, ttl: std::time::Duration) -> Result<u64, StoreError> {
    on!(conn => {
    let before = now_ms() - ttl.as_millis() as i64;
    let r = sqlx::query(conn.sql(
        "DELETE FROM subscribers WHERE status = 'pending' AND created_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM confirmations c \
                         WHERE c.subscriber_id = subscribers.id AND c.created_at >= $1)",
    ))
    .bind(before)
    .execute(&mut *conn)
    .await?;
    let hour_ago = now_ms() - 3_600_000;
    sqlx::query(conn.sql("DELETE FROM confirmations WHERE created_at < $1 AND created_at < $2"))
        .bind(before)
        .bind(hour_ago)
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
    })
}

/// The status of each of `ids` that still exists (the delivery engine's
/// check just before a message's body).
pub async fn statuses(
    conn: &mut Conn,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, String>, StoreError> {
    let rows: Vec<(i64, String)> =
        match conn.kind() {
            // One check per message a worker sends: an array, not JSON to parse.
            Kind::Postgres(c) => {
                sqlx::query_as("SELECT id, status FROM subscribers WHERE id = ANY($1)")
                    .bind(ids)
                    .fetch_all(c)
                    .await?
            }
            Kind::Sqlite(c) => sqlx::query_as(
                "SELECT id, status FROM subscribers WHERE id IN (SELECT value FROM json_each($1))",
            )
            .bind(serde_json::to_string(ids).unwrap_or_else(|_| "[]".into()))
            .fetch_all(c)
            .await?,
        };
    Ok(rows.into_iter().collect())
}
