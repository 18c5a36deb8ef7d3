//! The pages: askama templates in templates/web/, all on one layout, no
//! JavaScript, styled by one stylesheet served from here.

use std::collections::BTreeMap;

use askama::Template;
use axum::{
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use super::WebState;
use crate::links;

/// What every page shows in its frame.
pub struct Page {
    pub title: String,
    pub site: String,
    /// The public base URL, without a trailing slash.
    pub base: String,
}

impl Page {
    pub fn new(state: &WebState, title: impl Into<String>) -> Self {
        Page {
            title: title.into(),
            site: state.look.title.clone(),
            base: state.look.base_url.clone(),
        }
    }
}

/// A button that posts an empty form to `action`.
pub struct Button {
    pub action: String,
    pub label: String,
    pub primary: bool,
}

#[derive(Template)]
#[template(path = "web/message.html")]
pub struct Message {
    pub page: Page,
    pub paragraphs: Vec<String>,
    pub buttons: Vec<Button>,
    pub links: Vec<(String, String)>,
}

impl Message {
    pub fn new(page: Page) -> Self {
        Message {
            page,
            paragraphs: Vec::new(),
            buttons: Vec::new(),
            links: Vec::new(),
        }
    }

    pub fn para(mut self, text: impl Into<String>) -> Self {
        self.paragraphs.push(text.into());
        self
    }

    pub fn button(mut self, action: String, label: impl Into<String>, primary: bool) -> Self {
        self.buttons.push(Button {
            action,
            label: label.into(),
            primary,
        });
        self
    }

    pub fn link(mut self, href: String, label: impl Into<String>) -> Self {
        self.links.push((href, label.into()));
        self
    }
}

/// Field errors, by field name, shown next to the field.
pub type FieldErrors = BTreeMap<&'static str, String>;

/// 200 for a form shown clean, 422 for one shown with errors.
pub fn form_status(errors: &FieldErrors) -> StatusCode {
    if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    }
}

/// The preferences form: what was stored, or what was posted (every field
/// text until parsed).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct PreferencesForm {
    pub name: String,
    pub topics: String,
    pub format: String,
    pub max_papers: String,
    pub timezone: String,
}

#[derive(Template)]
#[template(path = "web/preferences.html")]
pub struct Preferences<'a> {
    pub page: Page,
    pub masked: String,
    pub action: String,
    pub unsubscribe_action: String,
    pub form: PreferencesForm,
    pub errors: FieldErrors,
    pub saved: bool,
    pub zones: &'a [&'static str],
}

/// The subscribe form as posted, and shown again after an error.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct SubscribeForm {
    pub email: String,
    pub name: String,
    pub topics: String,
    /// The honeypot: hidden from people, filled in by naive bots.
    pub website: String,
}

#[derive(Template)]
#[template(path = "web/subscribe.html")]
pub struct Subscribe {
    pub page: Page,
    pub action: String,
    pub form: SubscribeForm,
    pub errors: FieldErrors,
}

/// Renders a template as an HTML response with `status`.
pub fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// The stylesheet every page links to.
pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../templates/web/style.css"),
    )
        .into_response()
}

/// The page for a link from a preview: it does nothing.
pub fn preview_link(state: &WebState) -> Response {
    let m = Message::new(Page::new(state, "This link is from a preview"))
        .para("Links in a digest preview do nothing, so a forwarded preview cannot change anyone's subscription.");
    html(StatusCode::OK, &m)
}

/// Every IANA zone name, for the preferences form's list.
pub fn zones() -> &'static [&'static str] {
    static ZONES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
        let mut z: Vec<&'static str> = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()).collect();
        z.sort_unstable();
        z
    });
    &ZONES
}

/// The absolute URL of a link route with `token` filled in.
pub fn url(state: &WebState, route: &str, token: &str) -> String {
    links::url(&state.look.base_url, route, token)
}
