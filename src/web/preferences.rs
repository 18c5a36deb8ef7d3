//! `GET/POST /preferences/{token}`: name, topics, format, papers per digest
//! and time zone, checked by the same parsers as the command line.

use axum::{Form, extract::State, response::Response};

use super::{
    Link, UserAgent, WebState,
    error::WebError,
    pages::{self, FieldErrors, Page, Preferences, PreferencesForm},
    subscriber_for,
};
use crate::{
    domain::{Format, MaxPapers, SubscriberName, TimeZone, Topics},
    links,
    store::{
        events::{self, Action, Channel},
        subscribers::{self as subs, Profile, Subscriber},
    },
};

impl From<&Profile> for PreferencesForm {
    fn from(p: &Profile) -> Self {
        PreferencesForm {
            name: p
                .name
                .as_ref()
                .map(|n| n.as_str().to_string())
                .unwrap_or_default(),
            topics: p.topics.join(", "),
            format: p.format.as_str().to_string(),
            max_papers: p.max_papers.get().to_string(),
            timezone: p.timezone.name().to_string(),
        }
    }
}

/// Keeps a field's value, or its error for display beside the field.
pub fn field<T, E: std::fmt::Display>(
    errors: &mut FieldErrors,
    name: &'static str,
    r: Result<T, E>,
) -> Option<T> {
    r.map_err(|e| errors.insert(name, e.to_string())).ok()
}

/// Parses every field, collecting each one's error.
pub fn parse(p: &PreferencesForm) -> Result<Profile, FieldErrors> {
    let mut e = FieldErrors::new();
    let name = field(&mut e, "name", SubscriberName::parse_optional(&p.name));
    let topics = field(&mut e, "topics", Topics::parse_separated(&p.topics, ','));
    let format = field(
        &mut e,
        "format",
        Format::parse(p.format.trim()).map_err(|_| "choose HTML or plain text"),
    );
    let max_papers = field(
        &mut e,
        "max_papers",
        p.max_papers
            .trim()
            .parse::<i64>()
            .map_err(|_| "enter a whole number from 1 to 50".to_string())
            .and_then(|n| MaxPapers::new(n).map_err(|e| e.to_string())),
    );
    let timezone = field(&mut e, "timezone", TimeZone::parse(p.timezone.trim()));
    match (name, topics, format, max_papers, timezone) {
        (Some(name), Some(topics), Some(format), Some(max_papers), Some(timezone)) => Ok(Profile {
            name,
            topics,
            timezone,
            format,
            max_papers,
        }),
        _ => Err(e),
    }
}

fn form_page(
    state: &WebState,
    s: &Subscriber,
    token: &str,
    form: PreferencesForm,
    errors: FieldErrors,
    saved: bool,
) -> Response {
    let status = pages::form_status(&errors);
    let page = Preferences {
        page: Page::new(state, "Your preferences"),
        masked: s.email.masked(),
        action: pages::url(state, links::PREFERENCES, token),
        unsubscribe_action: pages::url(state, links::UNSUBSCRIBE, token),
        form,
        errors,
        saved,
        zones: pages::zones(),
    };
    pages::html(status, &page)
}

pub async fn page(State(state): State<WebState>, link: Link) -> Result<Response, WebError> {
    let Link::Token(token) = link else {
        return Ok(pages::preview_link(&state));
    };
    let mut conn = state.app.pool.acquire().await?;
    let s = subscriber_for(&mut conn, &token).await?;
    Ok(form_page(
        &state,
        &s,
        &token,
        (&s.profile).into(),
        FieldErrors::new(),
        false,
    ))
}

pub async fn save(
    State(state): State<WebState>,
    link: Link,
    UserAgent(ua): UserAgent,
    Form(posted): Form<PreferencesForm>,
) -> Result<Response, WebError> {
    let Link::Token(token) = link else {
        return Ok(pages::preview_link(&state));
    };
    super::known_token(&state, &token).await?;
    let mut tx = crate::store::write(&state.app.writer).await?;
    let s = subscriber_for(&mut tx, &token).await?;
    let profile = match parse(&posted) {
        Ok(p) => p,
        Err(errors) => return Ok(form_page(&state, &s, &token, posted, errors, false)),
    };
    let changed = subs::update_profile(&mut tx, s.id, &profile).await?;
    if changed {
        events::record(
            &mut tx,
            s.id,
            Action::Preferences,
            Channel::Page,
            ua.as_deref(),
        )
        .await?;
    }
    tx.commit().await?;
    if changed {
        tracing::info!(subscriber = s.id, "preferences changed by link");
    }
    Ok(form_page(
        &state,
        &s,
        &token,
        (&profile).into(),
        FieldErrors::new(),
        true,
    ))
}
