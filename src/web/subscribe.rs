//! The subscribe form with double opt-in: `GET/POST /subscribe` and
//! `GET/POST /confirm/{token}`.

use axum::{Form, extract::State, http::StatusCode, response::Response};

use super::{
    ClientIp, Link, UserAgent, WebState,
    error::WebError,
    pages::{self, FieldErrors, Message, Page, Subscribe, SubscribeForm},
    preferences::field,
    subscriber_for,
};
use crate::{
    domain::{SubscriberEmail, SubscriberName, SubscriberStatus, Topics},
    links,
    store::{
        events::{self, Action, Channel},
        subscribers::{self as subs, Confirmed, Profile, SignUp},
    },
};

/// At most one confirmation mail per address per this long: the form cannot
/// be used to flood someone's inbox.
pub const RESEND_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

fn form_page(state: &WebState, form: SubscribeForm, errors: FieldErrors) -> Response {
    let status = pages::form_status(&errors);
    let page = Subscribe {
        page: Page::new(state, format!("Subscribe to {}", state.look.title)),
        action: pages::url(state, links::SUBSCRIBE, ""),
        form,
        errors,
    };
    pages::html(status, &page)
}

pub async fn page(State(state): State<WebState>) -> Response {
    form_page(&state, SubscribeForm::default(), FieldErrors::new())
}

/// The same page for a new, pending or active address, so the form does not
/// tell whether an address is subscribed.
fn check_inbox(state: &WebState, email: &SubscriberEmail) -> Response {
    let m = Message::new(Page::new(state, "Check your inbox")).para(format!(
        "If {} is not subscribed yet, a message with a confirmation link is on its way to it. \
         Nothing more arrives until the link is clicked.",
        email.as_str()
    ));
    pages::html(StatusCode::OK, &m)
}

pub async fn sign_up(
    State(state): State<WebState>,
    ClientIp(ip): ClientIp,
    Form(posted): Form<SubscribeForm>,
) -> Result<Response, WebError> {
    if state
        .subscribe_limit
        .check_key(&super::limit_key(ip))
        .is_err()
    {
        return Err(WebError::TooManyRequests);
    }
    let mut errors = FieldErrors::new();
    let email = field(&mut errors, "email", SubscriberEmail::parse(&posted.email));
    let name = field(
        &mut errors,
        "name",
        SubscriberName::parse_optional(&posted.name),
    );
    let topics = field(
        &mut errors,
        "topics",
        Topics::parse_separated(&posted.topics, ','),
    );
    let (Some(email), Some(name), Some(topics)) = (email, name, topics) else {
        return Ok(form_page(&state, posted, errors));
    };
    if !posted.website.is_empty() {
        tracing::info!(%ip, "subscribe form honeypot filled in; ignored");
        return Ok(check_inbox(&state, &email));
    }
    let profile = Profile {
        name,
        topics,
        ..state.app.defaults()
    };
    let mut tx = state.app.writer.begin_with("BEGIN IMMEDIATE").await?;
    let outcome = subs::sign_up(&mut tx, &state.app.keys, &email, &profile, RESEND_AFTER).await?;
    tx.commit().await?;
    state.app.metrics.subscriptions.inc();
    if let SignUp::Confirm(s) = outcome {
        state.confirmations.send(&state.app.keys, &s);
    }
    Ok(check_inbox(&state, &email))
}

/// A GET shows a button; only the POST confirms (mail scanners prefetch links).
pub async fn confirm_page(State(state): State<WebState>, link: Link) -> Result<Response, WebError> {
    let Link::Token(token) = link else {
        return Ok(pages::preview_link(&state));
    };
    let mut conn = state.app.pool.acquire().await?;
    let s = subscriber_for(&mut conn, &token).await?;
    if s.status == SubscriberStatus::Active {
        return Ok(subscribed_page(&state, &s.email, &token));
    }
    let m = Message::new(Page::new(&state, "Confirm your subscription"))
        .para(format!(
            "Send {} to {}?",
            state.look.title,
            s.email.masked()
        ))
        .button(pages::url(&state, links::CONFIRM, &token), "Confirm", true);
    Ok(pages::html(StatusCode::OK, &m))
}

pub async fn confirm(
    State(state): State<WebState>,
    link: Link,
    UserAgent(ua): UserAgent,
) -> Result<Response, WebError> {
    let Link::Token(token) = link else {
        return Ok(pages::preview_link(&state));
    };
    let ttl = state.app.settings.subscribers.pending_ttl;
    super::known_token(&state, &token).await?;
    let mut tx = state.app.writer.begin_with("BEGIN IMMEDIATE").await?;
    let s = subscriber_for(&mut tx, &token).await?;
    let outcome = subs::confirm(&mut tx, &s, ttl).await?;
    if outcome == Confirmed::Activated {
        events::record(&mut tx, s.id, Action::Confirm, Channel::Page, ua.as_deref()).await?;
    }
    tx.commit().await?;
    match outcome {
        Confirmed::Activated => {
            state.app.metrics.confirmations.inc();
            tracing::info!(subscriber = s.id, "subscription confirmed");
            Ok(subscribed_page(&state, &s.email, &token))
        }
        Confirmed::AlreadyActive => Ok(subscribed_page(&state, &s.email, &token)),
        Confirmed::Expired => {
            let m = Message::new(Page::new(&state, "This link has expired"))
                .para("Confirmation links work for a limited time. Sign up again to get a new one.")
                .link(pages::url(&state, links::SUBSCRIBE, ""), "Subscribe");
            Ok(pages::html(StatusCode::GONE, &m))
        }
    }
}

fn subscribed_page(state: &WebState, email: &SubscriberEmail, token: &str) -> Response {
    let m = Message::new(Page::new(state, "You are subscribed"))
        .para(format!(
            "{} goes to {}, starting with the next edition.",
            state.look.title,
            email.masked()
        ))
        .link(
            pages::url(state, links::PREFERENCES, token),
            "Choose your topics and format",
        );
    pages::html(StatusCode::OK, &m)
}
