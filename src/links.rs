//! The paths of the links paperpost puts in mail, defined once: the message
//! builder fills them in and the web router serves them, so a link in a mail
//! and its route cannot drift apart.

/// The one-click unsubscribe link (List-Unsubscribe and the footer).
pub const UNSUBSCRIBE: &str = "/unsubscribe/{token}";
/// Undoing an unsubscribe, offered on the confirmation page.
pub const RESUBSCRIBE: &str = "/resubscribe/{token}";
/// The subscriber's preferences page (the footer).
pub const PREFERENCES: &str = "/preferences/{token}";
/// The double opt-in link in a confirmation mail.
pub const CONFIRM: &str = "/confirm/{token}";
/// The subscribe form.
pub const SUBSCRIBE: &str = "/subscribe";

/// The token in previews' links: a preview forwarded to someone cannot
/// unsubscribe the reader it was made for. The endpoint answers it with a page
/// that says so and changes nothing.
pub const PREVIEW_TOKEN: &str = "preview";

/// `route` under `base` (no trailing slash) with `token` in place of `{token}`.
pub fn url(base: &str, route: &str, token: &str) -> String {
    format!("{base}{}", route.replace("{token}", token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_token_in() {
        assert_eq!(
            url("https://x.org", UNSUBSCRIBE, "ab12"),
            "https://x.org/unsubscribe/ab12"
        );
        assert_eq!(
            url("https://x.org", SUBSCRIBE, "ab12"),
            "https://x.org/subscribe"
        );
    }
}
