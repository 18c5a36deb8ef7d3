//! When editions go out: the cron schedule in its time zone, catch-up after
//! downtime, and which edition a fire time sends. Pure functions; the daemon
//! supplies the clock.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::ScheduleSettings;

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    tz: Tz,
    catch_up: Duration,
    max_age_days: i64,
    per_subscriber_timezone: bool,
}

/// Why a fire time sends nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoEdition {
    /// No papers are selected for any date in the allowed window.
    NothingSelected { today: NaiveDate, oldest: NaiveDate },
    /// The newest selected edition has been sent already.
    AlreadySent(NaiveDate),
    /// The newest unsent edition is older than `schedule.max_edition_age`.
    TooOld(NaiveDate),
}

impl std::fmt::Display for NoEdition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoEdition::NothingSelected { today, oldest } => {
                write!(
                    f,
                    "no papers are selected for any date from {oldest} to {today}"
                )
            }
            NoEdition::AlreadySent(d) => {
                write!(f, "the newest edition, {d}, has been sent already")
            }
            NoEdition::TooOld(d) => {
                write!(
                    f,
                    "the newest unsent edition, {d}, is older than schedule.max_edition_age"
                )
            }
        }
    }
}

impl Schedule {
    pub fn from_settings(s: &ScheduleSettings) -> Self {
        Schedule {
            cron: s.cron.schedule.clone(),
            tz: s.timezone.0,
            catch_up: s.catch_up,
            max_age_days: (s.max_edition_age.as_secs() / 86_400) as i64,
            per_subscriber_timezone: s.per_subscriber_timezone,
        }
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_in(self.tz, t)
    }

    /// The first fire time in zone `tz` strictly after `t`. The cron is read
    /// on the wall clock: a time the clocks skip (02:30 on a spring-forward
    /// night) fires at the first instant after the gap, a time they repeat
    /// fires once, at its first occurrence.
    fn next_in(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Wall-clock candidates after the wall clock at `t`, as if the zone had
        // no gaps; the first that lands after `t` (in a repeated hour, the
        // earlier occurrences of candidates land before it). No candidate
        // before that wall clock can land after `t`: the wall clock at `t` is
        // never inside a gap.
        let start = t.with_timezone(&tz).naive_local();
        self.cron
            .after(&Utc.from_utc_datetime(&start))
            .take(10_000)
            .filter_map(|wall| wall_clock(tz, wall.naive_utc()))
            .find(|at| *at > t)
    }

    /// The latest fire time in the catch-up window `(now - catch_up, now]`: a
    /// fire that downtime may have missed and that is still fresh enough.
    pub fn missed(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let since = now - chrono::Duration::from_std(self.catch_up).ok()?;
        let mut last = None;
        let mut t = since;
        while let Some(next) = self.next_after(t) {
            if next > now {
                break;
            }
            last = Some(next);
            t = next;
        }
        last
    }

    /// True while a fire at `fire_time` may still be sent at `now`.
    pub fn within_catch_up(&self, fire_time: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        chrono::Duration::from_std(self.catch_up).is_ok_and(|w| now - fire_time <= w)
    }

    /// Today's date in the schedule's time zone.
    pub fn today(&self, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.tz).date_naive()
    }

    /// When subscribers in time zone `zone` get an edition started at `now`
    /// (Unix ms): at once, or with `per_subscriber_timezone` at the schedule's
    /// next wall-clock fire time in their own zone.
    pub fn send_at(&self, zone: &str, now: DateTime<Utc>) -> i64 {
        if !self.per_subscriber_timezone {
            return now.timestamp_millis();
        }
        let tz: Tz = zone.parse().unwrap_or(self.tz);
        // A fire that happened in the last minute still counts as now.
        self.next_in(tz, now - chrono::Duration::minutes(1))
            .map(|t| t.timestamp_millis().max(now.timestamp_millis()))
            .unwrap_or(now.timestamp_millis())
    }

    /// The edition a fire time sends: the newest date with papers selected, on
    /// or before `today`, newer than every edition already started, and no older
    /// than `max_edition_age`.
    pub fn due_edition(
        &self,
        today: NaiveDate,
        selected: &[NaiveDate],
        started: &[NaiveDate],
    ) -> Result<NaiveDate, NoEdition> {
        due_edition(today, self.max_age_days, selected, started)
    }
}

pub fn due_edition(
    today: NaiveDate,
    max_age_days: i64,
    selected: &[NaiveDate],
    started: &[NaiveDate],
) -> Result<NaiveDate, NoEdition> {
    let oldest = today - chrono::Duration::days(max_age_days);
    let Some(newest) = selected.iter().copied().filter(|d| *d <= today).max() else {
        return Err(NoEdition::NothingSelected { today, oldest });
    };
    if started.iter().any(|s| *s >= newest) {
        return Err(NoEdition::AlreadySent(
            *started.iter().max().expect("not empty"),
        ));
    }
    if newest < oldest {
        return Err(NoEdition::TooOld(newest));
    }
    Ok(newest)
}

/// A wall-clock time in `tz` as an instant: the earlier of a repeated time;
/// for a time the clocks skip, the first instant after the gap.
fn wall_clock(tz: Tz, wall: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
    use chrono::{LocalResult, Timelike};
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => Some(d.with_timezone(&Utc)),
        LocalResult::None => {
            let minute = wall.with_second(0)?.with_nanosecond(0)?;
            (1..=24 * 60)
                .map(|m| minute + chrono::Duration::minutes(m))
                .find_map(|w| tz.from_local_datetime(&w).earliest())
                .map(|d| d.with_timezone(&Utc))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn schedule(pairs: &[(&str, &str)]) -> Schedule {
        let env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Schedule::from_settings(&Settings::load_from(None, Some(env)).unwrap().schedule)
    }

    #[test]
    fn monday_evening_papers_go_out_tuesday_morning() {
        // Imported Monday evening for Monday; Tuesday's fire sends them.
        assert_eq!(
            due_edition(d("2026-11-24"), 2, &[d("2026-11-23")], &[]),
            Ok(d("2026-11-23"))
        );
        // Papers for tomorrow wait for tomorrow.
        assert_eq!(
            due_edition(d("2026-11-24"), 2, &[d("2026-11-25")], &[]),
            Err(NoEdition::NothingSelected {
                today: d("2026-11-24"),
                oldest: d("2026-11-22")
            })
        );
    }

    #[test]
    fn never_twice_never_stale_never_backwards() {
        assert_eq!(
            due_edition(d("2026-11-24"), 2, &[d("2026-11-24")], &[d("2026-11-24")]),
            Err(NoEdition::AlreadySent(d("2026-11-24")))
        );
        assert_eq!(
            due_edition(d("2026-11-24"), 2, &[d("2026-11-21")], &[]),
            Err(NoEdition::TooOld(d("2026-11-21")))
        );
        assert_eq!(
            due_edition(d("2026-11-24"), 2, &[d("2026-11-22")], &[]),
            Ok(d("2026-11-22"))
        );
        // Monday unsent, Tuesday sent: Wednesday does not go back to Monday.
        assert_eq!(
            due_edition(
                d("2026-11-25"),
                2,
                &[d("2026-11-23"), d("2026-11-24")],
                &[d("2026-11-24")]
            ),
            Err(NoEdition::AlreadySent(d("2026-11-24")))
        );
        assert_eq!(
            due_edition(
                d("2026-11-25"),
                2,
                &[d("2026-11-23"), d("2026-11-25")],
                &[d("2026-11-23")]
            ),
            Ok(d("2026-11-25"))
        );
    }

    #[test]
    fn fire_times_follow_the_time_zone() {
        let s = schedule(&[
            ("PAPERPOST__SCHEDULE__CRON", "0 0 7 * * Mon-Fri"),
            ("PAPERPOST__SCHEDULE__TIMEZONE", "Europe/Berlin"),
        ]);
        // Friday 2026-11-27 06:00 UTC = 07:00 Berlin.
        assert_eq!(
            s.next_after(t("2026-11-26T12:00:00Z")),
            Some(t("2026-11-27T06:00:00Z"))
        );
        // Then Monday (weekends skipped).
        assert_eq!(
            s.next_after(t("2026-11-27T06:00:00Z")),
            Some(t("2026-11-30T06:00:00Z"))
        );
        assert_eq!(
            s.today(t("2026-11-26T23:30:00Z")),
            d("2026-11-27"),
            "already Friday in Berlin"
        );
    }

    #[test]
    fn catch_up_only_within_the_window() {
        let s = schedule(&[
            ("PAPERPOST__SCHEDULE__CRON", "0 0 7 * * *"),
            ("PAPERPOST__SCHEDULE__CATCH_UP", "6h"),
        ]);
        assert_eq!(
            s.missed(t("2026-11-26T09:00:00Z")),
            Some(t("2026-11-26T07:00:00Z"))
        );
        assert_eq!(
            s.missed(t("2026-11-26T07:00:00Z")),
            Some(t("2026-11-26T07:00:00Z"))
        );
        assert_eq!(
            s.missed(t("2026-11-26T13:30:00Z")),
            None,
            "7 hours late: skipped"
        );
        assert_eq!(s.missed(t("2026-11-26T06:59:00Z")), None);
    }

    #[test]
    fn a_fire_time_the_clocks_skip_fires_when_the_gap_ends() {
        let s = schedule(&[
            ("PAPERPOST__SCHEDULE__CRON", "0 30 2 * * *"),
            ("PAPERPOST__SCHEDULE__TIMEZONE", "Europe/Berlin"),
        ]);
        // 2026-03-29: Berlin skips from 02:00 to 03:00 (01:00 UTC).
        assert_eq!(
            s.next_after(t("2026-03-28T12:00:00Z")),
            Some(t("2026-03-29T01:00:00Z")),
            "03:00 CEST, the first instant after the gap"
        );
        assert_eq!(
            s.next_after(t("2026-03-29T01:00:00Z")),
            Some(t("2026-03-30T00:30:00Z"))
        );
        // 2026-10-25: 02:30 happens twice; it fires once, the first time.
        assert_eq!(
            s.next_after(t("2026-10-24T12:00:00Z")),
            Some(t("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            s.next_after(t("2026-10-25T00:30:00Z")),
            Some(t("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn per_subscriber_time_zones() {
        let s = schedule(&[
            ("PAPERPOST__SCHEDULE__CRON", "0 0 7 * * *"),
            ("PAPERPOST__SCHEDULE__PER_SUBSCRIBER_TIMEZONE", "true"),
        ]);
        let now = t("2026-11-26T07:00:00Z");
        assert_eq!(s.send_at("UTC", now), now.timestamp_millis());
        assert_eq!(
            s.send_at("America/New_York", now),
            t("2026-11-26T12:00:00Z").timestamp_millis()
        );
        assert_eq!(
            s.send_at("Asia/Tokyo", now),
            t("2026-11-26T22:00:00Z").timestamp_millis()
        );
        let plain = schedule(&[]);
        assert_eq!(plain.send_at("Asia/Tokyo", now), now.timestamp_millis());
    }
}
