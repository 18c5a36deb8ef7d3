//! `paperpost db ...`: moving an installation from SQLite to PostgreSQL.

use anyhow::Context;
use clap::Subcommand;

use crate::{
    config::{DatabaseUrl, Settings},
    lock::Lock,
    store,
};

#[derive(Debug, Subcommand)]
pub enum DbCmd {
    /// Copy this SQLite installation into an empty PostgreSQL database, in
    /// one snapshot, verified table by table (row count and SHA-256); the
    /// SQLite file is then marked as moved, so nothing sends from it again.
    /// Stop the sending paperpost first (this takes the sending lock).
    CopyTo {
        /// postgres://user:password@host/database (the same as database.url).
        url: String,
    },
}

pub async fn run(settings: Settings, cmd: DbCmd) -> anyhow::Result<()> {
    match cmd {
        DbCmd::CopyTo { url } => copy_to(&settings, &url).await,
    }
}

async fn copy_to(settings: &Settings, url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.database.url.is_none(),
        "db copy-to copies the SQLite file at database.path, but database.url is set"
    );
    let target = DatabaseUrl::parse(url).map_err(|e| anyhow::anyhow!("the target URL {e}"))?;
    let from = store::connect(&settings.database).await?;
    let lock = Lock::acquire(&from, settings.database.lock_ttl)
        .await
        .context("db copy-to holds the sending lock while it copies")?;
    let mut to_settings = settings.database.clone();
    to_settings.url = Some(target.clone());
    let to = store::open(&to_settings).await?;
    let copied = store::copy::copy_to(&from, &to, &target.to_string()).await;
    lock.release().await;
    let copied = copied?;
    println!("{:<20} {:>9}  SUM OF THE ROWS' SHA-256", "TABLE", "ROWS");
    for c in &copied {
        println!("{:<20} {:>9}  {}", c.table, c.rows, c.sha256);
    }
    println!(
        "Copied {} to {target}; every table verified. {} is marked as moved: set \
         database.url to the new database (with the same secret) and start paperpost there.",
        settings.database.path.display(),
        settings.database.path.display()
    );
    to.close().await;
    from.close().await;
    Ok(())
}
