//! The application context every entry point builds the same way: the command
//! line, the daemon and the web server.

use std::sync::Arc;

use chrono::NaiveDate;
use sqlx::SqlitePool;

use crate::{
    config::Settings, digest::Composer, domain::Topics, mailer::Mailer, metrics::Metrics,
    security::Keys, store, store::subscribers::Profile,
};

/// Settings, the database and the link keys; the composer and the mailer are
/// built from them on demand (commands that send nothing need neither).
#[derive(Clone)]
pub struct App {
    pub settings: Settings,
    pub pool: SqlitePool,
    /// The one connection this process writes through ([`store::writer`]).
    pub writer: SqlitePool,
    pub keys: Keys,
    /// This process's Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

impl App {
    /// Opens (and migrates) the database and loads the link secret.
    pub async fn open(settings: Settings) -> anyhow::Result<Self> {
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
