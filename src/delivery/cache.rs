//! The editions being sent, prepared once each.

use super::*;

/// An edition's prepared papers, as last loaded.
pub(super) struct Cached {
    edition: Option<Arc<Edition>>,
    /// [`store::papers::selection_version`] when loaded.
    version: String,
    /// When the version was last compared with the database's.
    checked: Instant,
}

/// How often a cached edition is compared with its selection (an editor may
/// change it while the edition is sent).
pub(super) const EDITION_RECHECK: Duration = Duration::from_secs(1);

/// Editions cached at most: the oldest checked is dropped to make room.
pub(super) const EDITIONS_CACHED: usize = 4;

/// The editions being sent, prepared once each, up to [`EDITIONS_CACHED`].
#[derive(Default)]
pub(super) struct EditionCache(HashMap<NaiveDate, Cached>);

impl EditionCache {
    /// The cached edition if it was compared with the database lately.
    pub(super) fn fresh(&self, date: NaiveDate) -> Option<Option<Arc<Edition>>> {
        let c = self.0.get(&date)?;
        (c.checked.elapsed() < EDITION_RECHECK).then(|| c.edition.clone())
    }

    /// The cached edition if its selection is still `version`.
    pub(super) fn confirm(
        &mut self,
        date: NaiveDate,
        version: &str,
    ) -> Option<Option<Arc<Edition>>> {
        let c = self.0.get_mut(&date).filter(|c| c.version == version)?;
        c.checked = Instant::now();
        Some(c.edition.clone())
    }

    /// Caches a (re)loaded edition; the least lately checked other one goes
    /// when the cache is full. True if `date` was cached before (it changed).
    pub(super) fn put(
        &mut self,
        date: NaiveDate,
        version: String,
        edition: Option<Arc<Edition>>,
    ) -> bool {
        if self.0.len() >= EDITIONS_CACHED && !self.0.contains_key(&date) {
            let oldest = self
                .0
                .iter()
                .min_by_key(|(_, c)| c.checked)
                .map(|(d, _)| *d);
            self.0.retain(|d, _| Some(*d) != oldest);
        }
        let checked = Instant::now();
        let cached = Cached {
            edition,
            version,
            checked,
        };
        self.0.insert(date, cached).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_edition_cache_rechecks_and_keeps_the_editions_lately_used() {
        let mut cache = EditionCache::default();
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        let edition = |d| Some(Arc::new(Edition::new(day(d), vec![], false)));
        assert!(!cache.put(day(1), "v1".into(), edition(1)));
        assert!(cache.fresh(day(1)).is_some());
        tokio::time::sleep(EDITION_RECHECK).await;
        assert!(
            cache.fresh(day(1)).is_none(),
            "compared again after a while"
        );
        assert!(cache.confirm(day(1), "v2").is_none(), "a changed selection");
        assert!(cache.put(day(1), "v2".into(), edition(1)), "reloaded");
        assert!(cache.confirm(day(1), "v2").is_some());
        for d in 2..=4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cache.put(day(d), "v".into(), edition(d));
        }
        // Day 1 is confirmed again; day 2 is now the least lately checked.
        cache.confirm(day(1), "v2");
        cache.put(day(5), "v".into(), edition(5));
        assert_eq!(cache.0.len(), EDITIONS_CACHED);
        assert!(!cache.0.contains_key(&day(2)), "evicted");
        assert!(cache.0.contains_key(&day(1)));
    }
}
