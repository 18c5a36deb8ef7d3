//! The hand-edited subscriber file (`config/subscribers.toml`) and `subscribers sync`.
//!
//! The file is authoritative for the subscribers that came from it (source `file`):
//! sync adds the new ones, rewrites the listed ones, and deactivates the ones no
//! longer listed. Subscribers from anywhere else are never touched, and someone who
//! unsubscribed by link (or was removed on the command line) stays unsubscribed
//! unless named with `--resubscribe`.

use crate::domain::EndedBy;
use std::{collections::HashSet, path::Path};

use serde::Deserialize;
use toml::Spanned;

use super::InputError;
use crate::{
    domain::{
        Format, MaxPapers, SubscriberEmail, SubscriberName, SubscriberSource, SubscriberStatus,
        TimeZone, Topics,
    },
    security::Keys,
    store::subscribers::{self as store, Profile},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    subscriber: Vec<Spanned<Entry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    email: Spanned<String>,
    name: Option<Spanned<String>>,
    topics: Option<Spanned<Vec<String>>>,
    timezone: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    max_papers: Option<Spanned<i64>>,
}

/// One validated entry of the file.
#[derive(Debug, Clone)]
pub struct FileSubscriber {
    pub line: u64,
    pub email: SubscriberEmail,
    pub profile: Profile,
}

fn line_of(text: &str, offset: usize) -> u64 {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64
        + 1
}

/// Reads and validates the whole file; the first bad entry is an error naming its line.
pub fn read(path: &Path, defaults: &Profile) -> anyhow::Result<Vec<FileSubscriber>> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = line_of(
            &String::from_utf8_lossy(e.as_bytes()),
            e.utf8_error().valid_up_to(),
        );
        InputError::new(path, line, "not valid UTF-8 text")
    })?;
    parse(path, &text, defaults)
}

/// Validates the file's text; `path` names it in messages.
pub fn parse(path: &Path, text: &str, defaults: &Profile) -> anyhow::Result<Vec<FileSubscriber>> {
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        InputError::new(path, line, e.message().trim().to_string())
    })?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(doc.subscriber.len());
    for spanned in doc.subscriber {
        let line = line_of(text, spanned.span().start);
        let e = spanned.into_inner();
        // Errors point at the offending field's line.
        let at = |span: std::ops::Range<usize>, reason: String| {
            InputError::new(path, line_of(text, span.start), reason)
        };
        let email = SubscriberEmail::parse(e.email.get_ref())
            .map_err(|x| at(e.email.span(), format!("email: {x}")))?;
        if !seen.insert(email.as_str().to_lowercase()) {
            return Err(at(e.email.span(), format!("{email} is listed twice")).into());
        }
        let profile = Profile {
            name: match &e.name {
                Some(n) => SubscriberName::parse_optional(n.get_ref())
                    .map_err(|x| at(n.span(), format!("name: {x}")))?,
                None => None,
            },
            topics: match &e.topics {
                Some(t) => Topics::from_list(t.get_ref())
                    .map_err(|x| at(t.span(), format!("topics: {x}")))?,
                None => Topics::default(),
            },
            timezone: match &e.timezone {
                Some(t) => TimeZone::parse(t.get_ref())
                    .map_err(|x| at(t.span(), format!("timezone: {x}")))?,
                None => defaults.timezone,
            },
            format: match &e.format {
                Some(f) => {
                    Format::parse(f.get_ref()).map_err(|x| at(f.span(), format!("format: {x}")))?
                }
                None => defaults.format,
            },
            max_papers: match &e.max_papers {
                Some(m) => MaxPapers::new(*m.get_ref())
                    .map_err(|x| at(m.span(), format!("max_papers: {x}")))?,
                None => defaults.max_papers,
            },
        };
        out.push(FileSubscriber {
            line,
            email,
            profile,
        });
    }
    Ok(out)
}

/// What a sync did (or, for a dry run, would do).
#[derive(Debug, Default)]
pub struct SyncReport {
    pub listed: usize,
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub reactivated: Vec<String>,
    pub unchanged: usize,
    pub deactivated: Vec<String>,
    /// Listed, but unsubscribed by their own or an operator's request: (who, how).
    pub kept_unsubscribed: Vec<(String, String)>,
    /// Listed, but managed elsewhere (web, cli, import): (who, source).
    pub not_managed: Vec<(String, String)>,
    /// `--resubscribe` addresses that did not apply, with why.
    pub unused_resubscribe: Vec<(String, String)>,
    /// A dry run found a mass removal that a real sync refuses without
    /// `--force`.
    pub refused: Option<String>,
}

fn who(s: &store::Subscriber) -> String {
    match &s.profile.name {
        Some(n) => format!("{n} <{}>", s.email),
        None => s.email.to_string(),
    }
}

/// The share of the subscribers a file manages that one sync may remove
/// without `--force`: more looks like a truncated or emptied file.
pub const MAX_REMOVED_SHARE: f64 = 0.10;

/// A sync that would remove too many of the subscribers the file manages.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused: it would unsubscribe {removing} of the {managed} subscribers the file manages \
     (more than {}%, or all of them); an empty or truncated file looks like this. Nothing \
     changed. If that is what you want, apply it by hand: paperpost subscribers sync --force",
    (MAX_REMOVED_SHARE * 100.0) as u32
)]
pub struct TooManyRemoved {
    pub removing: usize,
    pub managed: usize,
}

/// Whether removing `removing` of the `managed` active subscribers a file
/// manages is too many for one sync: all of them, or more than
/// [`MAX_REMOVED_SHARE`] of them when that is more than one person.
pub fn too_many_removed(managed: usize, removing: usize) -> bool {
    removing > 0
        && (removing == managed
            || (removing > 1 && removing as f64 > managed as f64 * MAX_REMOVED_SHARE))
}

/// How a sync applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncMode {
    /// Show what would change without changing anything.
    pub dry_run: bool,
    /// Apply even a mass removal ([`too_many_removed`]).
    pub force: bool,
    /// `--resubscribe` may bring back someone who reported our mail as spam.
    pub include_complaints: bool,
}

/// Applies the file's entries in one transaction.
pub async fn sync(
    pool: &crate::store::Pool,
    keys: &Keys,
    entries: &[FileSubscriber],
    resubscribe: &[SubscriberEmail],
    mode: SyncMode,
) -> anyhow::Result<SyncReport> {
    let mut report = SyncReport {
        listed: entries.len(),
        ..Default::default()
    };
    let wanted: HashSet<String> = resubscribe
        .iter()
        .map(|e| e.as_str().to_lowercase())
        .collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut tx = crate::store::write(pool).await?;
    for entry in entries {
        let key = entry.email.as_str().to_lowercase();
        listed.insert(key.clone());
        let resubscribing = wanted.contains(&key);
        let resubscribing = (resubscribing, mode.include_complaints);
        if apply_entry(&mut tx, keys, entry, resubscribing, &mut report).await? {
            used.insert(key);
        }
    }
    let receiving: Vec<_> = store::list_by_source(&mut tx, SubscriberSource::File)
        .await?
        .into_iter()
        .filter(|s| {
            matches!(
                s.status,
                SubscriberStatus::Active | SubscriberStatus::Pending
            )
        })
        .collect();
    let leaving: Vec<_> = receiving
        .iter()
        .filter(|s| !listed.contains(&s.email.as_str().to_lowercase()))
        .collect();
    if too_many_removed(receiving.len(), leaving.len()) && !mode.force {
        let refusal = TooManyRemoved {
            removing: leaving.len(),
            managed: receiving.len(),
        };
        if !mode.dry_run {
            tx.rollback().await?;
            return Err(refusal.into());
        }
        report.refused = Some(refusal.to_string());
    }
    for s in leaving {
        store::end_subscription(&mut tx, s.id, SubscriberStatus::Unsubscribed, EndedBy::Sync)
            .await?;
        report.deactivated.push(s.email.to_string());
    }
    for e in resubscribe {
        let key = e.as_str().to_lowercase();
        if !used.contains(&key) {
            let why = if listed.contains(&key) {
                "it is not unsubscribed, or is not managed by the file"
            } else {
                "it is not listed in the file"
            };
            report
                .unused_resubscribe
                .push((e.to_string(), why.to_string()));
        }
    }
    if mode.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(report)
}

/// Applies one listed subscriber: adds, updates, or (if a sync ended them,
/// or `resubscribing`) reactivates them; anyone else's decision is kept.
/// True if `resubscribing` was used.
async fn apply_entry(
    tx: &mut crate::store::Conn,
    keys: &Keys,
    entry: &FileSubscriber,
    (resubscribing, include_complaints): (bool, bool),
    report: &mut SyncReport,
) -> anyhow::Result<bool> {
    let Some(existing) = store::find_by_email(&mut *tx, entry.email.as_str()).await? else {
        let (email, profile) = (&entry.email, &entry.profile);
        let (active, file) = (SubscriberStatus::Active, SubscriberSource::File);
        store::insert(&mut *tx, keys, email, profile, active, file).await?;
        report.added.push(entry.email.to_string());
        return Ok(false);
    };
    if existing.source != SubscriberSource::File {
        let source = existing.source.as_str().to_string();
        report.not_managed.push((who(&existing), source));
        return Ok(false);
    }
    if matches!(
        existing.status,
        SubscriberStatus::Active | SubscriberStatus::Pending
    ) {
        if store::update_profile(&mut *tx, existing.id, &entry.profile).await? {
            report.updated.push(entry.email.to_string());
        } else {
            report.unchanged += 1;
        }
        return Ok(false);
    }
    let by = existing.unsubscribed_by;
    let resubscribing = resubscribing && (by != Some(EndedBy::Complaint) || include_complaints);
    if by == Some(EndedBy::Sync) || resubscribing {
        store::update_profile(&mut *tx, existing.id, &entry.profile).await?;
        store::reactivate(&mut *tx, existing.id).await?;
        report.reactivated.push(entry.email.to_string());
        return Ok(resubscribing);
    }
    let how = match (existing.status, by) {
        (SubscriberStatus::Bounced, _) => "mail to them bounced".to_string(),
        (_, Some(EndedBy::Link)) => "unsubscribed by link".to_string(),
        (_, Some(EndedBy::Cli)) => "removed on the command line".to_string(),
        (_, Some(EndedBy::Complaint)) => {
            "they reported our mail as spam (--resubscribe needs --include-complaints)".to_string()
        }
        (_, other) => format!("unsubscribed ({})", other.map_or("unknown", |b| b.as_str())),
    };
    report.kept_unsubscribed.push((who(&existing), how));
    Ok(false)
}

#[cfg(test)]
mod mass_removal_tests {
    use super::too_many_removed;

    #[test]
    fn removing_all_or_more_than_a_tenth_is_too_many() {
        for (managed, removing, too_many) in [
            (0, 0, false),
            (1, 0, false),
            (1, 1, true),
            (3, 1, false),
            (3, 2, true),
            (3, 3, true),
            (20, 2, false),
            (20, 3, true),
            (1000, 100, false),
            (1000, 101, true),
        ] {
            assert_eq!(
                too_many_removed(managed, removing),
                too_many,
                "{removing} of {managed}"
            );
        }
    }
}
