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
use crate::support;

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
    let mails = site.outbox(1).await;
    let s = site.get_subscriber("new@example.org").await;
    assert_eq!(s.status, SubscriberStatus::Pending);
    assert_eq!(s.profile.topics.join(","), "llm");
    assert_eq!(mails.len(), 1);
    let link = confirm_link(&mails[0]);
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
    site.post_form("/subscribe", "email=ADA%40example.org")
        .await;
    let link = confirm_link(&site.outbox(1).await[0]);
    let r = site.post_form(path_of(&link), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Active
    );
    // Their links are the ones they had.
    let r = site.get(&format!("/preferences/{token}")).await;
    assert_eq!(r.status, StatusCode::OK);
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
    let mails = site.outbox(2).await;
    let link = |who: &str| {
        confirm_link(
            mails
                .iter()
                .find(|m| m.contains(&format!("To: {who}@")))
                .unwrap(),
        )
    };
    let (late, resent) = (link("late"), link("resent"));
    let mut conn = site.app.pool.acquire().await.unwrap();
    // Both signed up 8 days ago; only resent@ asked again (today) and got a
    // new mail, so its link works for the whole TTL, as the mail says.
    crate::on_db!(&site.app.pool, |p| {
        sqlx::query("UPDATE subscribers SET created_at = created_at - 8 * 86400000")
            .execute(p)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE confirmations SET created_at = created_at - 8 * 86400000 \
             WHERE subscriber_id = (SELECT id FROM subscribers WHERE email = 'late@example.org')",
        )
        .execute(p)
        .await
        .unwrap();
    });
    let r = site.post_form(path_of(&late), "").await;
    assert_eq!(r.status, StatusCode::GONE);
    let ttl = site.app.settings.subscribers.pending_ttl;
    assert_eq!(subs::expire_pending(&mut conn, ttl).await.unwrap(), 1);
    assert!(
        subs::find_by_email(&mut conn, "late@example.org")
            .await
            .unwrap()
            .is_none()
    );
    let r = site.post_form(path_of(&resent), "").await;
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

/// Client address number `i`, none of them loopback: each has its own limit.
fn ip(i: u32) -> std::net::IpAddr {
    std::net::Ipv4Addr::from(0xc612_0000 + i).into()
}

/// The confirmation link in a mail.
fn confirm_link(mail: &str) -> String {
    mail.split_whitespace()
        .find(|w| w.starts_with(&format!("{BASE}/confirm/")))
        .expect("a confirmation link")
        .to_string()
}

/// The last path segment of a link: its token.
fn token_of(link: &str) -> &str {
    link.rsplit('/').next().unwrap()
}

/// Issue 16 item 3: the confirmation link was the permanent link token, so
/// an old digest's link confirmed a sign-up someone else made. A
/// confirmation is its own random value, and it works once.
#[tokio::test]
async fn old_links_never_confirm_and_a_confirmation_works_once() {
    let site = Site::new().await;
    let token = site.subscriber("ada@example.org").await;
    site.post_form(&format!("/unsubscribe/{token}"), "").await;
    site.post_from(ip(1), "/subscribe", "email=ada%40example.org", &[])
        .await;
    let link = confirm_link(&site.outbox(1).await[0]);
    assert_ne!(
        token_of(&link),
        token,
        "the mailed link is not the link token"
    );
    // The old link confirms nothing, though a sign-up is waiting.
    let r = site.post_form(&format!("/confirm/{token}"), "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Unsubscribed
    );
    let r = site.post_form(path_of(&link), "").await;
    assert!(
        text_of(&r.body).contains("You are subscribed"),
        "{}",
        r.body
    );
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Active
    );
    // Used once: after she leaves again, the same link brings nobody back.
    site.post_form(&format!("/unsubscribe/{token}"), "").await;
    let r = site.post_form(path_of(&link), "").await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.body);
    assert!(text_of(&r.body).contains("already been used"), "{}", r.body);
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Unsubscribed
    );
}

/// Issue 16 item 3: an address the operator removed, whose mail bounced,
/// or that reported our mail as spam (issue 18) is suppressed: a sign-up
/// for it sends nothing (the page is the one everyone gets, so it tells
/// nobody which addresses are suppressed).
#[tokio::test]
async fn removed_and_bounced_addresses_get_no_confirmation_mail() {
    let site = Site::new().await;
    let mut conn = site.app.pool.acquire().await.unwrap();
    for (who, by) in [
        ("carol", paperpost::domain::EndedBy::Cli),
        ("spam", paperpost::domain::EndedBy::Complaint),
    ] {
        site.subscriber(&format!("{who}@example.org")).await;
        let s = site.get_subscriber(&format!("{who}@example.org")).await;
        subs::end_subscription(&mut conn, s.id, SubscriberStatus::Unsubscribed, by)
            .await
            .unwrap();
    }
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
    let mut pages = Vec::new();
    for (i, who) in ["carol", "gone", "spam", "new"].iter().enumerate() {
        let form = format!("email={who}%40example.org");
        let r = site.post_from(ip(i as u32), "/subscribe", &form, &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        pages.push(r.body.replace(&format!("{who}@example.org"), "X"));
    }
    assert!(pages.iter().all(|p| *p == pages[3]), "one page for all");
    assert!(
        text_of(&pages[0]).contains("removed from the list"),
        "{}",
        pages[0]
    );
    // Mails go in order: new@'s is there, so one to the others would be.
    let mails = site.outbox(1).await;
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("To: new@example.org"), "{}", mails[0]);
    for who in ["carol@example.org", "spam@example.org"] {
        assert_eq!(
            site.get_subscriber(who).await.status,
            SubscriberStatus::Unsubscribed
        );
    }
}

/// Issue 16 item 4: +tags, Gmail's dots and case all reach one inbox; it
/// gets one confirmation mail an hour, whoever posts and from wherever.
#[tokio::test]
async fn one_inbox_gets_one_confirmation_however_its_address_is_written() {
    let site = Site::new().await;
    let spellings = [
        "target@gmail.com",
        "target+1@gmail.com",
        "t.arget@gmail.com",
        "TA.rget@googlemail.com",
        "bob@example.org",
        "Bob+news@example.org",
        "last@example.org",
    ];
    for (i, email) in spellings.iter().enumerate() {
        let form = format!("email={}", email.replace('@', "%40").replace('+', "%2B"));
        let r = site.post_from(ip(i as u32), "/subscribe", &form, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{email}");
    }
    let mails = site.outbox(3).await;
    // In order: last@'s mail is there, so any other would be too.
    assert!(mails.iter().any(|m| m.contains("To: last@example.org")));
    let to: Vec<&str> = mails
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("To: ")))
        .collect();
    assert_eq!(to.len(), 3, "{to:?}");
}

/// Issue 16 item 4: many addresses from many clients (a botnet) are held to
/// `subscribers.confirmations_per_hour` mails in all, and the operator
/// hears of it in `status` and in /metrics.
#[tokio::test]
async fn the_hourly_limit_on_confirmation_mails_raises_an_alert() {
    let site = Site::with(&[("PAPERPOST__SUBSCRIBERS__CONFIRMATIONS_PER_HOUR", "3")]).await;
    for i in 0..5 {
        let form = format!("email=n{i}%40example.org");
        let r = site.post_from(ip(i), "/subscribe", &form, &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    site.wait_metric("paperpost_signups_limited_total{limit=\"hourly\"} 2")
        .await;
    assert_eq!(site.outbox(3).await.len(), 3);
    let mut conn = site.app.pool.acquire().await.unwrap();
    let alerts = paperpost::store::alerts::current(&mut conn).await.unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a.message.contains("subscribers.confirmations_per_hour")),
        "{alerts:?}"
    );
}

/// Issue 16 item 4: a page on another site cannot post the form in its
/// visitors' browsers (each visitor a fresh address to the per-client
/// limit); the operator's own pages that embed it can be allowed.
#[tokio::test]
async fn a_form_posted_from_another_site_is_refused() {
    let site = Site::with(&[("PAPERPOST__HTTP__FORM_ORIGINS", "https://blog.example.net")]).await;
    let refused: [&[(&str, &str)]; 4] = [
        &[
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
        &[("sec-fetch-site", "cross-site")],
    ];
    for (i, headers) in refused.iter().enumerate() {
        let r = site
            .post_from(ip(i as u32), "/subscribe", "email=x%40example.org", headers)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert!(text_of(&r.body).contains(BASE), "{}", r.body);
    }
    let allowed: [&[(&str, &str)]; 5] = [
        &[("origin", BASE), ("sec-fetch-site", "same-origin")],
        // What Chromium sends from our own page (its Referrer-Policy is
        // no-referrer, which makes the Origin of a form post "null").
        &[("origin", "null"), ("sec-fetch-site", "same-origin")],
        &[
            ("origin", "https://blog.example.net"),
            ("sec-fetch-site", "cross-site"),
        ],
        &[("sec-fetch-site", "none")],
        &[],
    ];
    for (i, headers) in allowed.iter().enumerate() {
        let form = format!("email=ok{i}%40example.org");
        let r = site
            .post_from(ip(10 + i as u32), "/subscribe", &form, headers)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{headers:?}");
    }
    let mails = site.outbox(5).await;
    assert_eq!(mails.len(), 5);
    assert!(mails.iter().all(|m| !m.contains("To: x@example.org")));
}

/// Issue 16 item 7: with the mail queue full, the page said the mail was on
/// its way and the address was locked out for an hour, though nothing was
/// sent. A full queue is answered 503 (try again), and records nothing.
#[tokio::test]
async fn a_full_mail_queue_is_said_and_locks_nobody_out() {
    let server = support::smtp::SmtpServer::start().await;
    server.hold_at(0);
    let env = support::child::smtp_env(server.port(), 1);
    let mut extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    extra.push(("PAPERPOST__SUBSCRIBERS__CONFIRMATIONS_PER_HOUR", "100000"));
    let site = Site::with(&extra).await;
    let mut busy = None;
    let mut accepted = 0;
    for i in 0..3000u32 {
        let form = format!("email=q{i}%40example.org");
        let r = site.post_from(ip(i), "/subscribe", &form, &[]).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            busy = Some((i, r));
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        accepted += 1;
    }
    let (i, r) = busy.expect("a full queue is said");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert!(!text_of(&r.body).contains("on its way"), "{}", r.body);
    server.release();
    support::child::wait_for("the queued mails", || server.accepted().len() == accepted).await;
    // The refused address may ask again at once, and gets its mail.
    let form = format!("email=q{i}%40example.org");
    let r = site.post_from(ip(i), "/subscribe", &form, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let to = format!("q{i}@example.org");
    support::child::wait_for("its mail", || server.accepted().iter().any(|m| m.to == to)).await;
}

/// Issue 16 item 7: a confirmation mail the server refused is not counted
/// against the address: asking again sends it.
#[tokio::test]
async fn a_refused_confirmation_mail_locks_nobody_out() {
    let server = support::smtp::SmtpServer::start().await;
    server.refuse_mail(1, 451, "try later");
    let env = support::child::smtp_env(server.port(), 1);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let site = Site::with(&extra).await;
    site.post_from(ip(1), "/subscribe", "email=ada%40example.org", &[])
        .await;
    site.wait_metric("paperpost_confirmation_mails_total{outcome=\"failed\"} 1")
        .await;
    assert!(server.accepted().is_empty());
    site.post_from(ip(1), "/subscribe", "email=ada%40example.org", &[])
        .await;
    support::child::wait_for("the second mail", || server.accepted().len() == 1).await;
}

/// Issue 16 item 9: a known address wrote nothing and answered faster than a
/// new one. The answer now waits for no database work at all: with another
/// process holding the database, both answer at once, with one page.
#[tokio::test]
async fn the_sign_up_answer_waits_for_no_database_work() {
    let site = Site::new().await;
    site.subscriber("known@example.org").await;
    let lock = support::WriteLock::take(&site.app.pool).await;
    let mut pages = Vec::new();
    for (i, who) in ["known", "new"].iter().enumerate() {
        let form = format!("email={who}%40example.org");
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            site.post_from(ip(i as u32), "/subscribe", &form, &[]),
        )
        .await
        .expect("answered while the database is held");
        assert_eq!(r.status, StatusCode::OK);
        pages.push(r.body.replace(&format!("{who}@example.org"), "X"));
    }
    assert_eq!(pages[0], pages[1]);
    lock.release().await;
    assert_eq!(
        site.outbox(1).await.len(),
        1,
        "the new address's mail, later"
    );
}

/// Two instances on one database take sign-ups for the same new addresses
/// at the same moment: every answer is 200, each address is recorded once
/// and gets one confirmation mail between them (their read-then-write
/// transactions take turns, on PostgreSQL as on SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_signing_up_one_address_at_once_send_one_mail() {
    let a = Site::with(&[("PAPERPOST__HTTP__SUBSCRIBE_PER_MINUTE", "1000")]).await;
    let b = a.beside().await;
    let emails: Vec<String> = (0..20).map(|i| format!("race{i}@example.org")).collect();
    for email in &emails {
        let form = format!("email={}", email.replace('@', "%40"));
        let (ra, rb) = tokio::join!(
            a.post_form("/subscribe", &form),
            b.post_form("/subscribe", &form)
        );
        assert_eq!(
            (ra.status, rb.status),
            (StatusCode::OK, StatusCode::OK),
            "{email}"
        );
    }
    // Each worker handles its queue in order: once these are mailed,
    // everything posted before them has been handled.
    a.post_form("/subscribe", "email=last-a%40example.org")
        .await;
    b.post_form("/subscribe", "email=last-b%40example.org")
        .await;
    let mut mails = Vec::new();
    for _ in 0..500 {
        mails = a.outbox(0).await;
        mails.extend(b.outbox(0).await);
        let seen = |who: &str| mails.iter().any(|m| m.contains(&format!("To: {who}")));
        if seen("last-a@example.org") && seen("last-b@example.org") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for email in &emails {
        let n = mails
            .iter()
            .filter(|m| m.contains(&format!("To: {email}")))
            .count();
        assert_eq!(n, 1, "{email}: {n} confirmation mails");
        assert_eq!(
            a.get_subscriber(email).await.status,
            SubscriberStatus::Pending
        );
    }
}
