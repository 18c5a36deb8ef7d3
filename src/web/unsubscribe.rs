//! `GET/POST /unsubscribe/{token}` (RFC 8058 one-click and the page) and
//! `POST /resubscribe/{token}`.

use axum::{body::Bytes, extract::State, http::StatusCode, response::Response};

use super::{
    Link, UserAgent, WebState,
    error::WebError,
    pages::{self, Message, Page},
    subscriber_for,
    unsubscriber::Applied,
};
use crate::{
    domain::SubscriberStatus,
    links,
    store::{
        events::{self, Action, Channel},
        subscribers::{self as subs, LinkUse, Subscriber},
    },
};

/// A GET never unsubscribes (mail scanners prefetch links): it shows the
/// address and one button.
pub async fn page(State(state): State<WebState>, link: Link) -> Result<Response, WebError> {
    let Link::Token(token) = link else {
        return Ok(pages::preview_link(&state));
    };
    let mut conn = state.app.pool.acquire().await?;
    let s = subscriber_for(&mut conn, &token).await?;
    if !is_receiving(&s) {
        return Ok(unsubscribed_page(&state, &s.email, &token));
    }
    let m = Message::new(Page::new(&state, "Unsubscribe"))
        .para(format!(
            "Stop sending {} to {}?",
            state.look.title,
            s.email.masked()
        ))
        .button(
            pages::url(&state, links::UNSUBSCRIBE, &token),
            "Unsubscribe",
            true,
        )
        .link(
            pages::url(&state, links::PREFERENCES, &token),
            "Change what you get instead",
        );
    Ok(pages::html(StatusCode::OK, &m))
}

/// True for a one-click body (RFC 8058): `List-Unsubscribe=One-Click`, form
/// encoded or as a multipart/form-data field.
pub fn is_one_click(body: &[u8]) -> bool {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    has(b"List-Unsubscribe=One-Click") || (has(b"name=\"List-Unsubscribe\"") && has(b"One-Click"))
}

/// Unsubscribes at once, with or without a one-click body; answers 200 with a
/// confirmation page (never a redirect), and again the same way when repeated.
pub async fn unsubscribe(
    State(state): State<WebState>,
    link: Link,
    UserAgent(ua): UserAgent,
    body: Bytes,
) -> Result<Response, WebError> {
    let Link::Token(token) = link else {
        return Ok(pages::preview_link(&state));
    };
    let channel = if is_one_click(&body) {
        Channel::OneClick
    } else {
        Channel::Page
    };
    let link = LinkUse {
        token: token.clone(),
        channel,
        user_agent: ua,
    };
    // Answered before the request's time runs out: a 408 would say it
    // failed while the unsubscribe is still applied afterwards.
    let patience = state.app.settings.http.request_timeout.mul_f64(0.75);
    let done = match state.unsubscriber.unsubscribe(link, patience).await {
        Ok(Applied::Done(Some(done))) => done,
        Ok(Applied::Done(None)) => return Err(WebError::NotFound),
        Ok(Applied::Pending) => return Ok(being_applied(&state)),
        Err(None) => return Err(WebError::Busy),
        Err(Some(e)) => return Err(WebError::Internal(e)),
    };
    Ok(unsubscribed_page(&state, &done.owner.email, &token))
}

/// 202: received, and applied as soon as the database allows (logged and
/// counted then). The mail already queued for them is cancelled with it.
fn being_applied(state: &WebState) -> Response {
    let m = Message::new(Page::new(state, "Unsubscribe received")).para(format!(
        "Your unsubscribe is being applied: {} will stop within a minute. There is no need to \
         click again.",
        state.look.title
    ));
    pages::html(StatusCode::ACCEPTED, &m)
}

/// Active and pending subscribers still get mail (or a confirmation).
fn is_receiving(s: &Subscriber) -> bool {
    matches!(
        s.status,
        SubscriberStatus::Active | SubscriberStatus::Pending
    )
}

fn unsubscribed_page(
    state: &WebState,
    email: &crate::domain::SubscriberEmail,
    token: &str,
) -> Response {
    let m = Message::new(Page::new(state, "You are unsubscribed"))
        .para(format!(
            "{} will send no more digests to {}.",
            state.look.title,
            email.masked()
        ))
        .para("Unsubscribed by mistake? You can undo it.")
        .button(
            pages::url(state, links::RESUBSCRIBE, token),
            "Resubscribe",
            false,
        )
        .link(pages::url(state, links::PREFERENCES, token), "Preferences");
    pages::html(StatusCode::OK, &m)
}

/// Undoes an unsubscribe made with this link. Someone removed by the operator,
/// or whose mail bounced, is pointed to the subscribe form instead.
pub async fn resubscribe(
    State(state): State<WebState>,
    link: Link,
    UserAgent(ua): UserAgent,
) -> Result<Response, WebError> {
    let Link::Token(token) = link else {
        return Ok(pages::preview_link(&state));
    };
    super::known_token(&state, &token).await?;
    let mut tx = crate::store::write(&state.app.writer).await?;
    let s = subscriber_for(&mut tx, &token).await?;
    let by_link = s.status == SubscriberStatus::Unsubscribed
        && s.unsubscribed_by == Some(crate::domain::EndedBy::Link);
    if by_link {
        subs::reactivate(&mut tx, s.id).await?;
        events::record(
            &mut tx,
            s.id,
            Action::Resubscribe,
            Channel::Page,
            ua.as_deref(),
        )
        .await?;
    }
    tx.commit().await?;
    if by_link {
        tracing::info!(subscriber = s.id, "resubscribed by link");
    }
    let m = if by_link || s.status == SubscriberStatus::Active {
        Message::new(Page::new(&state, "You are subscribed")).para(format!(
            "{} goes to {} again, starting with the next edition.",
            state.look.title,
            s.email.masked()
        ))
    } else if s.status == SubscriberStatus::Bounced {
        // The holder of the link owns the address: telling them is no leak.
        Message::new(Page::new(&state, "Mail to this address bounced")).para(format!(
            "Mail to {} was refused by its server, so {} stopped sending. Once the address \
             works again, write to {} to be added back.",
            s.email.masked(),
            state.look.title,
            state.look.sender
        ))
    } else {
        Message::new(Page::new(&state, "Subscribe again"))
            .para("This address cannot be resubscribed from this link. Sign up again with the form; we will send a confirmation link first.")
            .link(pages::url(&state, links::SUBSCRIBE, ""), "Subscribe")
    };
    Ok(pages::html(
        StatusCode::OK,
        &m.link(
            pages::url(&state, links::PREFERENCES, &token),
            "Preferences",
        ),
    ))
}
