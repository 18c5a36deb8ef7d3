//! `paperpost secret`: the link secret.

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::{app::App, config::Settings, security::Keys, store};

#[derive(Debug, clap::Subcommand)]
pub enum SecretCmd {
    /// Start over with a new link secret: a new random one in
    /// security.secret_file (or the configured security.secret as it is
    /// now), every subscriber's links re-made from it. Links in mail
    /// already sent stop working. Also the way out after a lost secret.
    Rotate,
}

pub async fn run(settings: Settings, cmd: SecretCmd) -> anyhow::Result<()> {
    match cmd {
        SecretCmd::Rotate => rotate(settings).await,
    }
}

async fn rotate(settings: Settings) -> anyhow::Result<()> {
    let app = App::open_unchecked(settings).await?;
    let security = &app.settings.security;
    // A configured secret is the operator's to change; a file one is made here.
    let keys = if security.secret.expose_secret().is_empty() {
        Keys::replace_file(&security.secret_file)?
    } else {
        app.keys.clone()
    };
    // The file is replaced first: if this fails now, the next command
    // refuses (the database has the old fingerprint) and this can run again.
    let mut tx = crate::store::write(&app.pool).await?;
    let n = store::secret::rekey(&mut tx, &keys)
        .await
        .context("cannot re-make the subscribers' links")?;
    tx.commit().await?;
    crate::security::take_new_secret();
    println!(
        "Link secret rotated ({}): {n} subscribers' links re-made from it; links in mail already \
         sent no longer work",
        app.secret_source()
    );
    Ok(())
}
