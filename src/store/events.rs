//! The record of link uses (`token_events`): what was done, through which
//! channel, by which user agent.

use super::{Conn, Dialect, Pool, StoreError, now_ms};

/// What a link (or an operator) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Unsubscribe,
    Resubscribe,
    Preferences,
    Confirm,
    Rotate,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsubscribe => "unsubscribe",
            Self::Resubscribe => "resubscribe",
            Self::Preferences => "preferences",
            Self::Confirm => "confirm",
            Self::Rotate => "rotate",
        }
    }
}

/// How it was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An RFC 8058 one-click POST from a mail client.
    OneClick,
    /// A person on our page.
    Page,
    /// An operator on the command line.
    Cli,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneClick => "one-click",
            Self::Page => "page",
            Self::Cli => "cli",
        }
    }
}

/// The longest user agent kept.
const MAX_USER_AGENT: usize = 256;

pub async fn record(
    conn: &mut Conn,
    subscriber_id: i64,
    action: Action,
    channel: Channel,
    user_agent: Option<&str>,
) -> Result<(), StoreError> {
    on!(conn => {
    record_many(conn, action, &[(subscriber_id, channel, user_agent)]).await
    })
}

/// Records `action` for each (subscriber, channel, user agent), in one statement.
pub async fn record_many(
    conn: &mut Conn,
    action: Action,
    uses: &[(i64, Channel, Option<&str>)],
) -> Result<(), StoreError> {
    on!(conn => {
    if uses.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = uses
        .iter()
        .map(|(id, channel, ua)| {
            let ua = ua.map(|u| {
                let cut = u
                    .char_indices()
                    .nth(MAX_USER_AGENT)
                    .map_or(u.len(), |(i, _)| i);
                &u[..cut]
            });
            serde_json::json!([id, channel.as_str(), ua])
        })
        .collect();
    sqlx::query(conn.sql(
        "INSERT INTO token_events (subscriber_id, kind, at, channel, user_agent) \
         SELECT CAST(value ->> 0 AS BIGINT), $1, $2, value ->> 1, value ->> 2 FROM json_each($3)",
    ))
    .bind(action.as_str())
    .bind(now_ms())
    .bind(serde_json::Value::Array(rows).to_string())
    .execute(conn)
    .await?;
    Ok(())
    })
}

/// How many times each (action, channel) happened.
pub async fn counts(pool: &Pool) -> Result<Vec<(String, String, i64)>, StoreError> {
    on_pool!(pool => {
    Ok(sqlx::query_as(pool.sql(
        "SELECT kind, coalesce(channel, 'unknown'), count(*) FROM token_events \
         GROUP BY kind, channel ORDER BY kind, channel",
    ))
    .fetch_all(pool)
    .await?)
    })
}
