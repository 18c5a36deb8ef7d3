//! The subscribe form and double opt-in: what a sign-up sends and to whom,
//! the confirmation link, and the limits that keep the form from being
//! turned against an inbox, the list or the sender's reputation.

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use paperpost::{
    domain::{SubscriberEmail, SubscriberSource, SubscriberStatus},
    store::subscribers as subs,
};

use super::{BASE, Site, form_actions, path_of, text_of};

#[tokio::test]
async fn subscribe_confirm_and_the_same_answer_for_every_address() {
    let site = Site::new().await;
    site.subscriber("active@example.org").await;
    let r = site.get("/subscribe").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("name=\"email\""));

    let new = site
        .post_form(
            "/subscribe",
            "email=new%40example.org&name=Newt&topics=llm&website=",
        )
        .await;
    assert_eq!(new.status, StatusCode::OK);
    let s = site.get_subscriber("new@example.org").await;
    assert_eq!(s.status, SubscriberStatus::Pending);
    assert_eq!(s.profile.topics.join(","), "llm");
    let mails = site.outbox(1).await;
    assert_eq!(mails.len(), 1);
    let link = mails[0]
        .split_whitespace()
        .find(|w| w.starts_with(&format!("{BASE}/confirm/")))
        .expect("a confirmation link")
        .to_string();
    // Only the address: the posted name is nobody's word yet.
    assert!(mails[0].contains("To: new@example.org"), "{}", mails[0]);
    assert!(!mails[0].contains("Newt"), "{}", mails[0]);

    // An active address: the same page (but for the address), and no mail.
    let active = site
        .post_form("/subscribe", "email=active%40example.org")
        .await;
    assert_eq!(active.status, StatusCode::OK);
    assert_eq!(
        active.body.replace("active@example.org", "X"),
        new.body.replace("new@example.org", "X")
    );
    // Pending again within the hour: the same page, no second mail.
    let again = site
        .post_form("/subscribe", "email=new%40example.org")
        .await;
    assert_eq!(again.body, new.body);
    // The worker sends in order: once a later address's mail is there, a
    // second mail to new@ would be there too.
    site.post_form("/subscribe", "email=later%40example.org")
        .await;
    let mails = site.outbox(2).await;
    assert_eq!(mails.len(), 2, "one confirmation mail per address per hour");
    assert_eq!(
        mails
            .iter()
            .filter(|m| m.contains("To: new@example.org"))
            .count(),
        1
    );

    // GET shows a button and changes nothing; POST confirms.
    let r = site.get(path_of(&link)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(form_actions(&r.body), vec![link.clone()]);
    assert_eq!(
        site.get_subscriber("new@example.org").await.status,
        SubscriberStatus::Pending
    );
    let r = site.post_form(path_of(&link), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(text_of(&r.body).contains("You are subscribed"));
    assert_eq!(
        site.get_subscriber("new@example.org").await.status,
        SubscriberStatus::Active
    );
}

#[tokio::test]
async fn someone_who_unsubscribed_can_come_back_through_the_form_and_their_click() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    site.post_form(&format!("/unsubscribe/{token}"), "").await;
    // Their old link alone does not confirm: no request was made.
    let r = site.post_form(&format!("/confirm/{token}"), "").await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Unsubscribed
    );
    site.post_form("/subscribe", "email=ADA%40example.org")
        .await;
    assert_eq!(site.outbox(1).await.len(), 1);
    let r = site.post_form(&format!("/confirm/{token}"), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Active
    );
}

#[tokio::test]
async fn bad_addresses_the_honeypot_and_the_rate_limit() {
    let site = Site::with(&[("PAPERPOST__HTTP__SUBSCRIBE_PER_MINUTE", "3")]).await;
    let r = site
        .post_form("/subscribe", "email=not-an-address&name=X")
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"email-error\""));
    assert!(r.body.contains("value=\"X\""), "the name typed is kept");

    let r = site
        .post_form(
            "/subscribe",
            "email=bot%40example.org&website=http%3A%2F%2Fspam",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "a bot sees success");
    let mut conn = site.app.pool.acquire().await.unwrap();
    assert!(
        subs::find_by_email(&mut conn, "bot@example.org")
            .await
            .unwrap()
            .is_none()
    );

    site.post_form("/subscribe", "email=c%40example.org").await;
    let r = site.post_form("/subscribe", "email=d%40example.org").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        subs::find_by_email(&mut conn, "d@example.org")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn expired_sign_ups_are_forgotten_and_links_last_from_the_latest_mail() {
    let site = Site::new().await;
    site.post_form("/subscribe", "email=late%40example.org")
        .await;
    site.post_form("/subscribe", "email=resent%40example.org")
        .await;
    let mut conn = site.app.pool.acquire().await.unwrap();
    // Both signed up 8 days ago; only resent@ asked again (today) and got a new mail.
    sqlx::query(
        "UPDATE subscribers SET created_at = created_at - 8 * 86400000, \
         confirm_sent_at = CASE email WHEN 'late@example.org' \
           THEN confirm_sent_at - 8 * 86400000 ELSE confirm_sent_at END",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let token_of = |s: subs::Subscriber| site.app.keys.subscriber_token(&s.uuid);
    let late = token_of(site.get_subscriber("late@example.org").await);
    let resent = token_of(site.get_subscriber("resent@example.org").await);
    let r = site.post_form(&format!("/confirm/{late}"), "").await;
    assert_eq!(r.status, StatusCode::GONE);
    let ttl = site.app.settings.subscribers.pending_ttl;
    assert_eq!(subs::expire_pending(&mut conn, ttl).await.unwrap(), 1);
    assert!(
        subs::find_by_email(&mut conn, "late@example.org")
            .await
            .unwrap()
            .is_none()
    );
    // The link in the latest mail works for the whole TTL, as the mail says.
    let r = site.post_form(&format!("/confirm/{resent}"), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        site.get_subscriber("resent@example.org").await.status,
        SubscriberStatus::Active
    );
}

/// Issue 16 item 4 (the text): anyone can post anyone's address with any
/// name; the name must not ride in the confirmation mail (in its greeting
/// or its To), or the form mails spam text to a stranger under our DKIM.
#[tokio::test]
async fn the_posted_name_stays_out_of_the_confirmation_mail() {
    let site = Site::new().await;
    let spam = "You won $5000! Claim at https://evil.example/win";
    let form = format!(
        "email=target%40example.org&name={}&topics=",
        spam.replace(' ', "+")
            .replace('$', "%24")
            .replace(':', "%3A")
            .replace('/', "%2F")
    );
    let r = site.post_form("/subscribe", &form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mail = site.outbox(1).await.remove(0);
    assert!(!mail.contains("evil.example"), "{mail}");
    assert!(!mail.contains("You won"), "{mail}");
    assert!(mail.contains("Hello,"), "{mail}");
}

/// Issue 16 item 5: behind the README's proxy every client is the proxy, so
/// one client could use up everyone's sign-ups. X-Forwarded-For counts only
/// from `http.trusted_proxies`; IPv6 clients are limited by /64.
#[tokio::test]
async fn the_sign_up_limit_is_per_client_behind_a_trusted_proxy() {
    let site = Site::with(&[("PAPERPOST__HTTP__TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")]).await;
    let post = |peer: [u8; 4], forwarded: String, i: usize| {
        let mut req = Request::post("/subscribe")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("x-forwarded-for", forwarded)
            .body(Body::from(format!("email=p{i}%40example.org")))
            .unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                peer, 5000,
            ))));
        site.request(req)
    };
    // Ten clients through the proxy: nobody is limited.
    for i in 0..10 {
        let r = post([127, 0, 0, 1], format!("203.0.113.{i}"), i).await;
        assert_eq!(r.status, StatusCode::OK, "client {i}");
    }
    // One client through two proxies, seven times: the seventh is limited.
    let statuses: Vec<u16> = futures_util::future::join_all(
        (0..7).map(|i| post([10, 1, 2, 3], "198.51.100.9, 10.0.0.5".into(), 100 + i)),
    )
    .await
    .iter()
    .map(|r| r.status.as_u16())
    .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    // A client that is not a trusted proxy cannot choose its address.
    let mut limited = 0;
    for i in 0..7 {
        let r = post([192, 0, 2, 1], format!("203.0.113.{}", 50 + i), 200 + i).await;
        limited += usize::from(r.status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(limited, 1);
}

/// IPv6 clients are limited by their /64: one host has all of it.
#[tokio::test]
async fn ipv6_clients_are_limited_per_64() {
    let site = Site::new().await;
    let mut limited = 0;
    for i in 0..7u16 {
        let mut req = Request::post("/subscribe")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("email=v{i}%40example.org")))
            .unwrap();
        let peer = std::net::SocketAddr::from(([0x2001, 0xdb8, 0, 7, 0, 0, 0, i + 1], 5000));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        limited += usize::from(site.request(req).await.status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(limited, 1);
}

/// Issue 16 item 7: a sign-up for an address whose mail bounced sends it
/// nothing (a confirmation mail to a dead or trap address hurts the
/// sender's reputation); the page is the same as for anyone.
#[tokio::test]
async fn a_bounced_address_gets_no_confirmation_mail() {
    let site = Site::new().await;
    let mut conn = site.app.pool.acquire().await.unwrap();
    subs::insert(
        &mut conn,
        &site.app.keys,
        &SubscriberEmail::parse("gone@example.org").unwrap(),
        &site.app.defaults(),
        SubscriberStatus::Bounced,
        SubscriberSource::Cli,
    )
    .await
    .unwrap();
    drop(conn);
    let bounced = site
        .post_form("/subscribe", "email=gone%40example.org")
        .await;
    let fresh = site
        .post_form("/subscribe", "email=new%40example.org")
        .await;
    assert_eq!(
        bounced.body.replace("gone@example.org", "X"),
        fresh.body.replace("new@example.org", "X")
    );
    // The worker sends in order: the later address's mail is there, so a
    // mail to the bounced one would be too.
    let mails = site.outbox(1).await;
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("To: new@example.org"), "{}", mails[0]);
    assert_eq!(
        site.get_subscriber("gone@example.org").await.status,
        SubscriberStatus::Bounced
    );
}
