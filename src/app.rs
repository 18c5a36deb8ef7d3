//! The application context every entry point builds the same way: the command
//! line, the daemon and the web server.

use std::sync::Arc;

use secrecy::ExposeSecret;

use chrono::NaiveDate;

use crate::{
    config::Settings, digest::Composer, domain::Topics, mailer::Mailer, metrics::Metrics,
    security::Keys, store, store::subscribers::Profile,
};

/// Settings, the database and the link keys; the composer and the mailer are
/// built from them on demand (commands that send nothing need neither).
#[derive(Clone)]
pub struct App {
    pub settings: Settings,
    pub pool: crate::store::Pool,
    /// The one connection this process writes through ([`store::writer`]).
    pub writer: crate::store::Pool,
    pub keys: Keys,
    /// This process's Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

/// The link secret is not the one the database's links were made with.
#[derive(Debug, thiserror::Error)]
#[error(
    "the link secret ({origin}) is not the one this database's links were made with{note}: every \
     unsubscribe and preferences link already mailed would answer 404, and so would the next \
     edition's. Nothing was done. Restore the secret from the backup that goes with this database \
     ({origin}); or, to start over with a new secret on purpose (every link already mailed stops \
     working), run: paperpost secret rotate"
)]
pub struct WrongSecret {
    /// Where the secret came from: the file, or `security.secret`.
    pub origin: String,
    /// Why, when known (there was no secret file).
    pub note: String,
}

impl App {
    /// Opens (and migrates) the database and loads the link secret, which
    /// must be the one the database's links were made with ([`WrongSecret`]).
    pub async fn open(settings: Settings) -> anyhow::Result<Self> {
        let app = Self::open_unchecked(settings).await?;
        app.check_secret().await?;
        Ok(app)
    }

    /// Where the link secret comes from, for messages.
    pub fn secret_source(&self) -> String {
        let s = &self.settings.security;
        if s.secret.expose_secret().is_empty() {
            format!("the file {}", s.secret_file.display())
        } else {
            "security.secret".to_string()
        }
    }

    /// Records the secret's fingerprint on first use; refuses another
    /// secret. A database from before fingerprints is checked against a
    /// subscriber's token instead. A secret file made by this very process
    /// (the old one was missing) is removed again when refused.
    async fn check_secret(&self) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mine = self.keys.fingerprint();
        let recorded = store::secret::fingerprint(&mut conn).await?;
        let matches = match &recorded {
            Some(fp) => *fp == mine,
            None => match store::secret::sample_token(&mut conn).await? {
                Some((uuid, hash)) => self.keys.subscriber_token_hash(&uuid) == hash,
                None => true,
            },
        };
        if matches {
            if recorded.is_none() {
                store::secret::record(&mut conn, &mine).await?;
            }
            return Ok(());
        }
        let note = match crate::security::take_new_secret() {
            Some(path) => {
                let _ = std::fs::remove_file(&path);
                format!(
                    " (there was no secret file at {}; the one made just now was removed)",
                    path.display()
                )
            }
            None => String::new(),
        };
        Err(WrongSecret {
            origin: self.secret_source(),
            note,
        }
        .into())
    }

    /// Opens the database and loads the link secret without checking that
    /// they belong together (`paperpost secret rotate` makes them).
    pub async fn open_unchecked(settings: Settings) -> anyhow::Result<Self> {
        let pool = store::connect(&settings.database).await?;
        let keys = Keys::load(&settings.security)?;
        Ok(Self {
            settings,
            writer: store::writer(&pool),
            pool,
            keys,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// A composer for other (reloaded) settings, with this process's keys.
    pub fn composer_for(&self, settings: &Settings) -> anyhow::Result<Composer> {
        Composer::new(settings, self.keys.clone())
    }

    /// Renders and builds messages with the configured look, headers and keys.
    pub fn composer(&self) -> anyhow::Result<Composer> {
        Composer::new(&self.settings, self.keys.clone())
    }

    /// The day a fetch without a date fetches: `papers.fetch_days_ago` days
    /// before today.
    pub fn fetch_date(&self) -> NaiveDate {
        self.today() - chrono::Duration::days(i64::from(self.settings.papers.fetch_days_ago))
    }

    /// The configured transport (SMTP or the outbox folder) and rate limit.
    pub fn mailer(&self) -> anyhow::Result<Arc<Mailer>> {
        Mailer::from_settings(&self.settings.mail)
    }

    /// The delivery engine for this process, with its own writer connection.
    /// It claims and sends only while `fence` is up.
    pub fn engine(
        &self,
        fence: crate::lock::Fence,
    ) -> anyhow::Result<Arc<crate::delivery::Engine>> {
        Ok(crate::delivery::Engine::new(
            &self.settings,
            self.pool.clone(),
            self.writer.clone(),
            self.composer()?,
            self.mailer()?,
            Arc::clone(&self.metrics),
            fence,
        ))
    }

    /// What a new subscriber gets for anything they did not choose.
    pub fn defaults(&self) -> Profile {
        let s = &self.settings.subscribers;
        Profile {
            name: None,
            topics: Topics::default(),
            timezone: s.default_timezone,
            format: s.default_format,
            max_papers: s.default_max_papers,
        }
    }

    /// Today in the schedule's time zone.
    pub fn today(&self) -> NaiveDate {
        chrono::Utc::now()
            .with_timezone(&self.settings.schedule.timezone.0)
            .date_naive()
    }
}
