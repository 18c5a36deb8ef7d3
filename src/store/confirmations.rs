//! Double opt-in: sign-ups from the web and the confirmation links mailed
//! for them. A confirmation is a random value of its own (never the
//! subscriber's link token), stored hashed, that works once within
//! `subscribers.pending_ttl`.

use std::time::Duration;

use super::{
    Conn, Dialect, StoreError, now_ms,
    subscribers::{self as subs, Profile, Subscriber},
};
use crate::{
    domain::{SubscriberEmail, SubscriberSource, SubscriberStatus},
    security::{Keys, token_hash},
};

/// One hour, the window both sign-up limits count in.
const HOUR_MS: i64 = 3_600_000;

/// The limits on confirmation mails.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// One mail per inbox (normalized address) per this long.
    pub per_inbox: Duration,
    /// Mails in any hour, to everyone together.
    pub per_hour: u32,
}

/// Why a sign-up sends no mail. The page is the same whatever the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Already subscribed.
    Active,
    /// On the suppression list ([`Subscriber::suppressed`]).
    Suppressed,
    /// The inbox got a confirmation mail within [`Limits::per_inbox`].
    Inbox,
    /// [`Limits::per_hour`] mails went out in the last hour.
    Hourly,
}

/// What a sign-up leads to.
#[derive(Debug)]
pub enum SignUp {
    /// Mail `token` (a confirmation link) to this subscriber.
    Confirm {
        subscriber: Subscriber,
        token: String,
    },
    Nothing(Skipped),
}

/// Records a sign-up from the web: a new address becomes pending; a pending
/// or self-unsubscribed one gets a new confirmation (their click is the
/// consent). Run inside a `BEGIN IMMEDIATE` transaction.
pub async fn sign_up(
    conn: &mut Conn,
    keys: &Keys,
    email: &SubscriberEmail,
    profile: &Profile,
    limits: Limits,
) -> Result<SignUp, StoreError> {
    on!(conn => {
    let existing = subs::find_by_email(conn, email.as_str()).await?;
    if let Some(s) = &existing {
        if s.status == SubscriberStatus::Active {
            return Ok(SignUp::Nothing(Skipped::Active));
        }
        if s.suppressed() {
            return Ok(SignUp::Nothing(Skipped::Suppressed));
        }
    }
    let now = now_ms();
    let mailbox = email.mailbox();
    if mailed_since(conn, &mailbox, now - limits.per_inbox.as_millis() as i64).await? {
        return Ok(SignUp::Nothing(Skipped::Inbox));
    }
    if mails_since(conn, now - HOUR_MS).await? >= i64::from(limits.per_hour) {
        return Ok(SignUp::Nothing(Skipped::Hourly));
    }
    let subscriber = match existing {
        Some(s) => s,
        None => {
            let (pending, web) = (SubscriberStatus::Pending, SubscriberSource::Web);
            subs::insert(conn, keys, email, profile, pending, web).await?
        }
    };
    let token = random_token()?;
    sqlx::query(conn.sql(
        "INSERT INTO confirmations (token_hash, subscriber_id, mailbox, created_at) \
         VALUES ($1, $2, $3, $4)",
    ))
    .bind(token_hash(&token))
    .bind(subscriber.id)
    .bind(&mailbox)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(SignUp::Confirm { subscriber, token })
    })
}

/// 32 random bytes, hex-encoded: the shape of every link token.
fn random_token() -> Result<String, StoreError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| {
        let e = std::io::Error::other(format!("no randomness available: {e}"));
        StoreError::Db(sqlx::Error::Io(e))
    })?;
    Ok(hex::encode(raw))
}

async fn mailed_since(conn: &mut Conn, mailbox: &str, since: i64) -> Result<bool, StoreError> {
    on!(conn => {
    Ok(sqlx::query_scalar(conn.sql(
        "SELECT EXISTS (SELECT 1 FROM confirmations WHERE mailbox = $1 AND created_at >= $2)",
    ))
    .bind(mailbox)
    .bind(since)
    .fetch_one(conn)
    .await?)
    })
}

async fn mails_since(conn: &mut Conn, since: i64) -> Result<i64, StoreError> {
    on!(conn => {
    Ok(
        sqlx::query_scalar(conn.sql("SELECT count(*) FROM confirmations WHERE created_at >= $1"))
            .bind(since)
            .fetch_one(conn)
            .await?,
    )
    })
}

/// Forgets a confirmation whose mail could not be sent: it counts toward
/// neither limit, so the address can ask again at once.
pub async fn forget(conn: &mut Conn, token: &str) -> Result<(), StoreError> {
    on!(conn => {
    sqlx::query(conn.sql("DELETE FROM confirmations WHERE token_hash = $1"))
        .bind(token_hash(token))
        .execute(conn)
        .await?;
    Ok(())
    })
}

/// A confirmation link's state, and whose it is.
#[derive(Debug)]
pub enum Confirmation {
    /// Valid: a click confirms.
    Open(Subscriber),
    /// Used already; the subscriber as they are now.
    Used(Subscriber),
    /// Older than the TTL.
    Expired,
}

/// The confirmation `token` stands for, or `None` for an unknown token.
pub async fn find(
    conn: &mut Conn,
    token: &str,
    ttl: Duration,
) -> Result<Option<Confirmation>, StoreError> {
    on!(conn => {
    let row: Option<(i64, i64, Option<i64>)> = sqlx::query_as(conn.sql(
        "SELECT subscriber_id, created_at, used_at FROM confirmations WHERE token_hash = $1",
    ))
    .bind(token_hash(token))
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, created_at, used_at)) = row else {
        return Ok(None);
    };
    let Some(s) = subs::find_by_id(conn, id).await? else {
        return Ok(None);
    };
    Ok(Some(if used_at.is_some() {
        Confirmation::Used(s)
    } else if created_at < now_ms() - ttl.as_millis() as i64 || s.suppressed() {
        Confirmation::Expired
    } else {
        Confirmation::Open(s)
    }))
    })
}

/// Uses a confirmation: marks it used and makes its subscriber active.
/// Returns what it was before (run inside a `BEGIN IMMEDIATE` transaction).
pub async fn confirm(
    conn: &mut Conn,
    token: &str,
    ttl: Duration,
) -> Result<Option<Confirmation>, StoreError> {
    on!(conn => {
    let found = find(conn, token, ttl).await?;
    if let Some(Confirmation::Open(s)) = &found {
        let now = now_ms();
        sqlx::query(conn.sql("UPDATE confirmations SET used_at = $1 WHERE token_hash = $2"))
            .bind(now)
            .bind(token_hash(token))
            .execute(&mut *conn)
            .await?;
        if s.status != SubscriberStatus::Active {
            subs::reactivate(conn, s.id).await?;
        }
    }
    Ok(found)
    })
}
