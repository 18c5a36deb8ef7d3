//! The one error type of the web endpoint, mapped to a status and a page in one
//! place. No internal text ever reaches a response: internal errors are logged
//! and the page says only that something went wrong.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{
    WebState,
    pages::{self, Message, Page},
};

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// An unknown, malformed or oversized token, or an unknown path: all look
    /// the same, so a response never tells whether an address exists.
    #[error("not found")]
    NotFound,
    #[error("too many requests")]
    TooManyRequests,
    /// A browser posted the form from another site's page.
    #[error("cross-site form")]
    CrossSite,
    /// Too much waiting already (the unsubscribe queue is full): try again.
    #[error("busy")]
    Busy,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A database held by another writer is busy (503, try again); anything
/// else is internal.
impl From<crate::store::StoreError> for WebError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_busy() {
            tracing::warn!(error = %e, "the database is busy; answered 503");
            return WebError::Busy;
        }
        WebError::Internal(e.into())
    }
}

impl From<sqlx::Error> for WebError {
    fn from(e: sqlx::Error) -> Self {
        crate::store::StoreError::Db(e).into()
    }
}

impl WebError {
    fn status(&self) -> StatusCode {
        match self {
            WebError::NotFound => StatusCode::NOT_FOUND,
            WebError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            WebError::CrossSite => StatusCode::FORBIDDEN,
            WebError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The page for this error.
    pub fn page(&self, state: &WebState) -> Response {
        let page = |title: &str| Page::new(state, title);
        let m = match self {
            WebError::NotFound => Message::new(page("Link not found")).para(
                "This link is not valid. It may be mistyped, or it was replaced by a newer one: \
                 use the links in your latest digest.",
            ),
            WebError::TooManyRequests => {
                Message::new(page("Too many requests")).para("Please wait a minute and try again.")
            }
            WebError::CrossSite => {
                let home = pages::url(state, crate::links::SUBSCRIBE, "");
                Message::new(page("Not sent from our site"))
                    .para(format!(
                        "This form can only be sent from {}.",
                        state.app.settings.http.public_url
                    ))
                    .link(home, "Subscribe there")
            }
            WebError::Busy => {
                let m = Message::new(page("Busy")).para("Please try again in a few seconds.");
                let mut r = pages::html(self.status(), &m);
                r.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("5"),
                );
                return r;
            }
            WebError::Internal(e) => {
                tracing::error!(error = %crate::telemetry::causes(e), "request failed");
                Message::new(page("Something went wrong"))
                    .para("We could not complete this request. Please try again in a few minutes.")
            }
        };
        pages::html(self.status(), &m)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        // Rendered as a page by the router's middleware (which has the state
        // the page needs), from the response's extensions.
        let status = self.status();
        let mut r = status.into_response();
        r.extensions_mut().insert(std::sync::Arc::new(self));
        r
    }
}
