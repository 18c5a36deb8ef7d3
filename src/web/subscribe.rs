//! The subscribe form with double opt-in: `GET/POST /subscribe` and
//! `GET/POST /confirm/{token}`.

use axum::{
    Form,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};

use super::{
    ClientIp, Link, UserAgent, WebState,
    error::WebError,
    pages::{self, FieldErrors, Message, Page, Subscribe, SubscribeForm},
    preferences::field,
};
use crate::{
    domain::{SubscriberEmail, SubscriberName, SubscriberStatus, Topics},
    links,
    store::{
        confirmations::{self, Confirmation},
        events::{self, Action, Channel},
        subscribers::{Profile, Subscriber},
    },
};

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

/// The same page for every address (new, pending, active, suppressed, or
/// limited), so the form tells nobody whether an address is subscribed.
fn check_inbox(state: &WebState, email: &SubscriberEmail) -> Response {
    let m = Message::new(Page::new(state, "Check your inbox"))
        .para(format!(
            "If {} is not subscribed yet, a message with a confirmation link is on its way to it. \
             Nothing more arrives until the link is clicked.",
            email.as_str()
        ))
        .para(format!(
            "Nothing within an hour? Look in the spam folder. An address removed from the list \
             before, or whose mail bounced, gets no message: write to {} to be added again.",
            state.look.sender
        ));
    pages::html(StatusCode::OK, &m)
}

/// Refuses a form a browser posts from another site's page, unless
/// `http.form_origins` allows that site. The browser's `Sec-Fetch-Site`
/// decides when it is sent (our own pages send `Origin: null`, as their
/// Referrer-Policy is no-referrer); else `Origin`. Clients that send
/// neither (not browsers) pass: they can claim any origin anyway, and the
/// limits hold them.
fn same_site(state: &WebState, headers: &HeaderMap) -> Result<(), WebError> {
    let http = &state.app.settings.http;
    let ours = http.public_url.origin();
    let allowed = |origin: &str| {
        let theirs = url::Url::parse(origin).map(|u| u.origin()).ok();
        theirs.as_ref() == Some(&ours)
            || http.form_origins.iter().any(|o| o == origin)
            || (is_loopback(&http.public_url) && theirs.is_some_and(|t| loopback_origin(&t)))
    };
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let ok = match (header("sec-fetch-site"), header("origin")) {
        (Some("same-origin" | "none"), _) => true,
        (Some(_), origin) => origin.is_some_and(allowed),
        (None, Some(origin)) => allowed(origin),
        (None, None) => true,
    };
    if ok { Ok(()) } else { Err(WebError::CrossSite) }
}

fn is_loopback(url: &url::Url) -> bool {
    matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

/// A page served from this machine: while public_url is itself local (a
/// trial run), the form may be opened as localhost or 127.0.0.1 alike.
fn loopback_origin(origin: &url::Origin) -> bool {
    matches!(origin, url::Origin::Tuple(_, host, _)
        if matches!(host.to_string().as_str(), "localhost" | "127.0.0.1" | "[::1]"))
}

pub async fn sign_up(
    State(state): State<WebState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(posted): Form<SubscribeForm>,
) -> Result<Response, WebError> {
    same_site(&state, &headers)?;
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
    // Recorded and mailed off the response path: this answer takes the
    // same work for every address.
    state
        .signups
        .submit(email.clone(), profile)
        .map_err(|_| WebError::Busy)?;
    state.app.metrics.subscriptions.inc();
    Ok(check_inbox(&state, &email))
}

/// A GET shows a button; only the POST confirms (mail scanners prefetch links).
pub async fn confirm_page(State(state): State<WebState>, link: Link) -> Result<Response, WebError> {
    let Link::Token(token) = link else {
        return Ok(pages::preview_link(&state));
    };
    let ttl = state.app.settings.subscribers.pending_ttl;
    let mut conn = state.app.pool.acquire().await?;
    let found = confirmations::find(&mut conn, &token, ttl).await?;
    match found.ok_or(WebError::NotFound)? {
        Confirmation::Open(s) => {
            let m = Message::new(Page::new(&state, "Confirm your subscription"))
                .para(format!(
                    "Send {} to {}?",
                    state.look.title,
                    s.email.masked()
                ))
                .button(pages::url(&state, links::CONFIRM, &token), "Confirm", true);
            Ok(pages::html(StatusCode::OK, &m))
        }
        other => Ok(settled_page(&state, other)),
    }
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
    // Unknown tokens are turned away with a read, before the write lock.
    let mut conn = state.app.pool.acquire().await?;
    confirmations::find(&mut conn, &token, ttl)
        .await?
        .ok_or(WebError::NotFound)?;
    drop(conn);
    let mut tx = crate::store::write(&state.app.writer).await?;
    let found = confirmations::confirm(&mut tx, &token, ttl).await?;
    let found = found.ok_or(WebError::NotFound)?;
    if let Confirmation::Open(s) = &found {
        events::record(&mut tx, s.id, Action::Confirm, Channel::Page, ua.as_deref()).await?;
    }
    tx.commit().await?;
    match found {
        Confirmation::Open(s) => {
            state.app.metrics.confirmations.inc();
            tracing::info!(subscriber = s.id, "subscription confirmed");
            Ok(subscribed_page(&state, &s))
        }
        other => Ok(settled_page(&state, other)),
    }
}

/// The page for a confirmation link that no longer confirms: used (by this
/// person a moment ago, or long since), or expired.
fn settled_page(state: &WebState, found: Confirmation) -> Response {
    let again = |m: Message| m.link(pages::url(state, links::SUBSCRIBE, ""), "Subscribe");
    let m = match found {
        Confirmation::Used(s) if s.status == SubscriberStatus::Active => {
            return subscribed_page(state, &s);
        }
        Confirmation::Used(_) => again(
            Message::new(Page::new(state, "This link has already been used"))
                .para("Each confirmation link works once. Sign up again to get a new one."),
        ),
        Confirmation::Expired | Confirmation::Open(_) => again(
            Message::new(Page::new(state, "This link has expired")).para(
                "Confirmation links work for a limited time. Sign up again to get a new one.",
            ),
        ),
    };
    pages::html(StatusCode::GONE, &m)
}

fn subscribed_page(state: &WebState, s: &Subscriber) -> Response {
    let token = state.app.keys.subscriber_token(&s.uuid);
    let m = Message::new(Page::new(state, "You are subscribed"))
        .para(format!(
            "{} goes to {}, starting with the next edition.",
            state.look.title,
            s.email.masked()
        ))
        .link(
            pages::url(state, links::PREFERENCES, &token),
            "Choose your topics and format",
        );
    pages::html(StatusCode::OK, &m)
}
