//! The store. Every query paperpost runs lives in this module's children,
//! and every other module (CLI, daemon, web) reads and writes through them.
//! Which database it is (the SQLite file, the embedded default, or
//! PostgreSQL, chosen by `database.url`) is known here and nowhere else.

/// Runs `$body` with `$c` (a `&mut Conn`, a `Tx` or a pooled connection)
/// rebound to the driver's own connection: one text serves both databases
/// (`$N` placeholders; SQLite accepts them too).
macro_rules! on {
    ($c:ident => $body:expr) => {
        match $crate::store::Db::kind(&mut *$c) {
            $crate::store::Kind::Sqlite($c) => $body,
            $crate::store::Kind::Postgres($c) => $body,
        }
    };
}

/// [`on!`] for a pool.
macro_rules! on_pool {
    ($p:ident => $body:expr) => {
        match $p {
            $crate::store::Pool::Sqlite($p) => $body,
            $crate::store::Pool::Postgres($p) => $body,
        }
    };
}

pub mod alerts;
pub mod bounces;
pub mod confirmations;
pub mod copy;
pub mod deliveries;
pub mod events;
pub mod papers;
pub mod postgres;
pub mod prune;
pub mod secret;
mod sqlite;
pub mod subscribers;

use std::ops::{Deref, DerefMut};

use anyhow::Context;
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, pool::PoolConnection};

use crate::config::DatabaseSettings;

/// The database handles the rest of paperpost passes around.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// One connection (a pooled one, or a transaction through `&mut *tx`).
pub type Conn = dyn Db;

/// A driver connection, whichever database it is.
pub trait Db: Send {
    fn kind(&mut self) -> Kind<'_>;
    fn postgres(&self) -> bool;
}

/// The driver's own connection, for [`on!`].
pub enum Kind<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl Db for SqliteConnection {
    fn kind(&mut self) -> Kind<'_> {
        Kind::Sqlite(self)
    }
    fn postgres(&self) -> bool {
        false
    }
}

impl Db for PgConnection {
    fn kind(&mut self) -> Kind<'_> {
        Kind::Postgres(self)
    }
    fn postgres(&self) -> bool {
        true
    }
}

/// A statement's text for the database at hand: SQLite's as written, the
/// PostgreSQL spelling from [`postgres::text`]. Inside [`on!`] a statement
/// is written `sqlx::query(conn.sql("..."))`.
pub trait Dialect {
    fn sql<'s>(&self, text: &'s str) -> &'s str;
}

impl Dialect for SqliteConnection {
    fn sql<'s>(&self, text: &'s str) -> &'s str {
        text
    }
}

impl Dialect for sqlx::SqlitePool {
    fn sql<'s>(&self, text: &'s str) -> &'s str {
        text
    }
}

impl Dialect for PgConnection {
    fn sql<'s>(&self, text: &'s str) -> &'s str {
        postgres::text(text)
    }
}

impl Dialect for sqlx::PgPool {
    fn sql<'s>(&self, text: &'s str) -> &'s str {
        postgres::text(text)
    }
}

/// The PostgreSQL channel a sender notifies when it releases the sending
/// lock, so a standby takes over at once.
pub const LOCK_CHANNEL: &str = "paperpost_lock";

/// Wakes a standby when the sending lock is released: on PostgreSQL a
/// LISTEN on [`LOCK_CHANNEL`]; on SQLite (one host, where the standby's
/// poll sees a local holder die at once) never. A notification lost while
/// disconnected costs only the wait until the next poll.
pub struct LockReleases(Option<sqlx::postgres::PgListener>);

impl LockReleases {
    pub async fn listen(pool: &Pool) -> Self {
        let Pool::Postgres(p) = pool else {
            return LockReleases(None);
        };
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(p).await?;
            l.listen(LOCK_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(l) => LockReleases(Some(l)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for the sending lock's release; polling only");
                LockReleases(None)
            }
        }
    }

    /// Returns when the lock was released (or, on SQLite, never).
    pub async fn released(&mut self) {
        match &mut self.0 {
            Some(l) => {
                if l.recv().await.is_err() {
                    // Reconnecting: the poll covers the gap.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// A connection taken from a [`Pool`]; back to it when dropped.
pub enum Pooled {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Deref for Pooled {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        match self {
            Pooled::Sqlite(c) => &**c,
            Pooled::Postgres(c) => &**c,
        }
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            Pooled::Sqlite(c) => &mut **c,
            Pooled::Postgres(c) => &mut **c,
        }
    }
}

impl<DB: sqlx::Database> Db for PoolConnection<DB>
where
    DB::Connection: Db,
{
    fn kind(&mut self) -> Kind<'_> {
        (**self).kind()
    }
    fn postgres(&self) -> bool {
        (**self).postgres()
    }
}

impl Db for Pooled {
    fn kind(&mut self) -> Kind<'_> {
        (**self).kind()
    }
    fn postgres(&self) -> bool {
        (**self).postgres()
    }
}

impl Db for Tx<'_> {
    fn kind(&mut self) -> Kind<'_> {
        (**self).kind()
    }
    fn postgres(&self) -> bool {
        (**self).postgres()
    }
}

/// A transaction: committed by [`Tx::commit`], rolled back when dropped.
pub enum Tx<'c> {
    Sqlite(sqlx::Transaction<'c, Sqlite>),
    Postgres(sqlx::Transaction<'c, Postgres>),
}

impl Tx<'_> {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.rollback().await,
            Tx::Postgres(t) => t.rollback().await,
        }
    }
}

impl Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        match self {
            Tx::Sqlite(t) => &**t,
            Tx::Postgres(t) => &**t,
        }
    }
}

impl DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            Tx::Sqlite(t) => &mut **t,
            Tx::Postgres(t) => &mut **t,
        }
    }
}

impl Pool {
    pub async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => Pooled::Sqlite(p.acquire().await?),
            Pool::Postgres(p) => Pooled::Postgres(p.acquire().await?),
        })
    }

    /// A plain transaction (reads; see [`write`] for read-then-write).
    pub async fn begin(&self) -> Result<Tx<'static>, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Pool::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    pub async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Pool::Postgres(_))
    }

    /// On PostgreSQL a pool of its own of `connections` to the same server,
    /// whose statements are planned once for any parameters (generic plans):
    /// for the delivery recorder's few statements, run tens of thousands of
    /// times with arrays whose sizes change nothing in their plans. SQLite's
    /// pools are shared as they are (its writer is the process's one).
    pub fn own(&self, connections: u32) -> Pool {
        match self {
            Pool::Sqlite(p) => Pool::Sqlite(p.clone()),
            Pool::Postgres(p) => Pool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(connections)
                    .connect_lazy_with(
                        (*p.connect_options())
                            .clone()
                            .options([("plan_cache_mode", "force_generic_plan")]),
                    ),
            ),
        }
    }
}

/// A transaction inside `conn` (a savepoint when one is open already).
pub async fn begin(conn: &mut Conn) -> Result<Tx<'_>, sqlx::Error> {
    use sqlx::Connection;
    Ok(match conn.kind() {
        Kind::Sqlite(c) => Tx::Sqlite(c.begin().await?),
        Kind::Postgres(c) => Tx::Postgres(c.begin().await?),
    })
}

/// A write transaction: it takes the database's one write lock at once
/// (SQLite's `BEGIN IMMEDIATE`; on PostgreSQL a transaction-scoped advisory
/// lock, freed at commit), so two processes that read, then write (two
/// instances signing up one address) run one after the other instead of
/// failing half-way. The one way every module starts a write.
pub async fn write(pool: &Pool) -> Result<Tx<'static>, sqlx::Error> {
    match pool {
        Pool::Sqlite(p) => Ok(Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?)),
        Pool::Postgres(p) => {
            let mut tx = p.begin().await?;
            lock_writes(&mut tx).await?;
            Ok(Tx::Postgres(tx))
        }
    }
}

/// [`write`] on a connection already taken (a bulk import's).
pub async fn write_on(conn: &mut Conn) -> Result<Tx<'_>, sqlx::Error> {
    use sqlx::Connection;
    match conn.kind() {
        Kind::Sqlite(c) => Ok(Tx::Sqlite(c.begin_with("BEGIN IMMEDIATE").await?)),
        Kind::Postgres(c) => {
            let mut tx = c.begin().await?;
            lock_writes(&mut tx).await?;
            Ok(Tx::Postgres(tx))
        }
    }
}

/// PostgreSQL's stand-in for `BEGIN IMMEDIATE`: the one write lock, held
/// until the transaction ends.
async fn lock_writes(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(postgres::WRITE_LOCK)
        .execute(tx)
        .await?;
    Ok(())
}

/// The SQLite migrations in migrations/sqlite/, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
/// The same schema for PostgreSQL, version for version.
pub static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Errors a store function reports to its caller in words a user understands.
/// [`StoreError::is_busy`] tells a database held by another writer (try
/// again) from a fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The driver's error as it is ("error returned from database: ...").
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// The database was busy (held by another writer): try again.
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Db(e) if busy(e))
    }
}

/// Opens the database `settings` name (the SQLite file, created when
/// missing, or the PostgreSQL server at `database.url`) and applies pending
/// migrations unless `database.auto_migrate` is off, in which case a schema
/// older than this binary's is refused with a message saying what to run.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    let pool = open(settings).await?;
    if settings.auto_migrate {
        migrate(&pool).await?;
    } else {
        let (applied, known) = (schema_version(&pool).await?, known_version(&pool));
        anyhow::ensure!(
            applied == known,
            "the database schema is at version {applied} and this paperpost needs {known}; \
             database.auto_migrate is off, so run `paperpost migrate` as a role that may \
             change the schema"
        );
    }
    Ok(pool)
}

/// Opens the pool without migrating.
pub async fn open(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    match &settings.url {
        Some(url) => Ok(Pool::Postgres(postgres::open(settings, url).await?)),
        None => Ok(Pool::Sqlite(sqlite::open(settings).await?)),
    }
}

/// Opens an existing database to read only: no migration, no file created.
pub async fn open_read_only(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    match &settings.url {
        Some(url) => Ok(Pool::Postgres(postgres::open(settings, url).await?)),
        None => Ok(Pool::Sqlite(sqlite::open_read_only(settings).await?)),
    }
}

/// One connection for every write a process makes (the delivery engine's
/// outcomes and claims, the web endpoint's unsubscribes and sign-ups), so
/// concurrent writers queue here, in order, instead of in the database.
pub fn writer(pool: &Pool) -> Pool {
    match pool {
        Pool::Sqlite(p) => Pool::Sqlite(sqlite::writer(p)),
        Pool::Postgres(p) => Pool::Postgres(postgres::writer(p)),
    }
}

fn migrator(pool: &Pool) -> &'static sqlx::migrate::Migrator {
    match pool {
        Pool::Sqlite(_) => &MIGRATOR,
        Pool::Postgres(_) => &PG_MIGRATOR,
    }
}

/// The newest schema version this binary knows.
pub fn known_version(pool: &Pool) -> i64 {
    migrator(pool).iter().map(|m| m.version).max().unwrap_or(0)
}

/// Applies pending migrations, logging what it did. A database that a newer
/// paperpost has migrated further is refused with a clear message, untouched.
pub async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    let known = known_version(pool);
    let applied = schema_version(pool).await?;
    if applied > known {
        anyhow::bail!(
            "the database was migrated by a newer paperpost (schema version {applied}; this \
             binary knows up to {known}): run that version or a later one, or restore a \
             backup made before the upgrade"
        );
    }
    match pool {
        Pool::Sqlite(p) => sqlite::migrate(p).await?,
        Pool::Postgres(p) => PG_MIGRATOR
            .run(p)
            .await
            .context("cannot apply database migrations")?,
    }
    // An upgrade is worth a line; creating a new database is not (on a first
    // run the first line of standard error should be the error, if any).
    if applied > 0 && applied < known {
        tracing::info!(from = applied, to = known, "applied database migrations");
    } else if applied < known {
        tracing::debug!(schema = known, "created the database");
    }
    Ok(())
}

/// The newest migration applied to the database (0 for a new one).
pub async fn schema_version(pool: &Pool) -> Result<i64, StoreError> {
    let exists: bool = match pool {
        Pool::Sqlite(p) => sqlx::query_scalar(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(p)
        .await?,
        Pool::Postgres(p) => {
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(p)
                .await?
        }
    };
    if !exists {
        return Ok(0);
    }
    let sql = "SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success";
    Ok(on_pool!(pool => sqlx::query_scalar(sql).fetch_one(pool).await?))
}

/// A consistent copy of the SQLite database in `to` (which must not exist),
/// made while other processes read and write it (`VACUUM INTO`). PostgreSQL
/// has its own tools for this, and paperpost points at them.
pub async fn backup(pool: &Pool, to: &std::path::Path) -> Result<(), StoreError> {
    match pool {
        Pool::Sqlite(p) => sqlite::backup(p, to).await,
        Pool::Postgres(_) => Err(StoreError::Conflict(
            "paperpost backup copies the SQLite file; on PostgreSQL use pg_dump \
             (or the server's own base backups and point-in-time recovery)"
                .into(),
        )),
    }
}

/// Now, as stored: Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A stored time for people: RFC 3339 in UTC.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// True when SQLite said the database is locked by another connection or
/// process (SQLITE_BUSY or SQLITE_LOCKED, any extended code) anywhere in `e`'s
/// chain: worth waiting out and trying again.
pub fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<sqlx::Error>().is_some_and(busy)
            || matches!(cause.downcast_ref::<StoreError>(), Some(StoreError::Db(e)) if busy(e))
    })
}

/// The database is held by another writer past `database.busy_timeout`
/// (SQLITE_BUSY, SQLITE_LOCKED; on PostgreSQL a lock or serialization
/// conflict, a server shutting down or a connection lost), or no connection
/// came free in time: not a fault, a reason to try again shortly.
pub fn busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => match d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            Some(pg) => postgres::busy_code(pg.code()),
            None => d
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        _ => false,
    }
}

/// True when `e` is a UNIQUE constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Whether the database answers (for /healthz).
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    on_pool!(pool => {
        sqlx::query("SELECT 1").execute(pool).await?;
    });
    Ok(())
}
