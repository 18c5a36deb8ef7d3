//! Issue 18: provider webhooks. Each authenticates as its provider does;
//! a refused request changes nothing; an event delivered twice counts once;
//! answers are plain text.

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use base64::Engine;
use paperpost::domain::{EndedBy, SubscriberStatus};

use super::{Reply, Site};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn post(site: &Site, uri: &str, headers: &[(&str, String)], body: String) -> Reply {
    let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    site.request(req.body(Body::from(body)).unwrap()).await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn count_reports(site: &Site) -> i64 {
    crate::on_db!(&site.app.pool, |p| sqlx::query_scalar(
        p.sql("SELECT count(*) FROM bounces")
    )
    .fetch_one(p)
    .await)
    .unwrap()
}

#[tokio::test]
async fn postmark_needs_its_basic_auth_and_counts_an_event_once() {
    let site = Site::with(&[
        ("PAPERPOST__WEBHOOKS__POSTMARK_USER", "pm"),
        ("PAPERPOST__WEBHOOKS__POSTMARK_PASSWORD", "s3cret-pass"),
    ])
    .await;
    site.subscriber("ada@example.org").await;
    site.subscriber("bob@example.org").await;
    let bounce = serde_json::json!({
        "RecordType": "Bounce", "ID": 4323372036854775807i64, "Type": "HardBounce",
        "Email": "ada@example.org", "Details": "smtp;550 5.1.1 The email account does not exist",
        "Padding": "x".repeat(40_000),
    })
    .to_string();
    let auth = |p: &str| {
        vec![(
            "authorization",
            format!("Basic {}", B64.encode(format!("pm:{p}"))),
        )]
    };
    let r = post(&site, "/webhooks/postmark", &[], bounce.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let r = post(&site, "/webhooks/postmark", &auth("wrong"), bounce.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(count_reports(&site).await, 0);
    for _ in 0..2 {
        let r = post(
            &site,
            "/webhooks/postmark",
            &auth("s3cret-pass"),
            bounce.clone(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body, "ok\n");
    }
    assert_eq!(count_reports(&site).await, 1, "a retried event counts once");
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Bounced
    );
    let complaint = serde_json::json!({
        "RecordType": "SpamComplaint", "ID": 42, "Type": "SpamComplaint", "Email": "bob@example.org",
    })
    .to_string();
    let r = post(&site, "/webhooks/postmark", &auth("s3cret-pass"), complaint).await;
    assert_eq!(r.status, StatusCode::OK);
    let bob = site.get_subscriber("bob@example.org").await;
    assert_eq!(
        (bob.status, bob.unsubscribed_by),
        (SubscriberStatus::Unsubscribed, Some(EndedBy::Complaint))
    );
}

#[tokio::test]
async fn a_webhook_without_its_credential_is_off() {
    let site = Site::new().await;
    for p in ["postmark", "mailgun", "sendgrid", "other"] {
        let r = post(&site, &format!("/webhooks/{p}"), &[], "{}".into()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}");
    }
}

fn mailgun_body(key: &str, ts: i64, token: &str, event: &str, recipient: &str, id: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{ts}{token}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    serde_json::json!({
        "signature": {"timestamp": ts.to_string(), "token": token, "signature": signature},
        "event-data": {
            "event": event, "severity": "permanent", "recipient": recipient, "id": id,
            "delivery-status": {"code": 550, "enhanced-code": "5.1.1", "message": "No such user"},
        },
    })
    .to_string()
}

#[tokio::test]
async fn mailgun_signatures_are_checked_in_time_and_used_once() {
    let key = "key-0123456789abcdef";
    let site = Site::with(&[("PAPERPOST__WEBHOOKS__MAILGUN_SIGNING_KEY", key)]).await;
    site.subscriber("ada@example.org").await;
    site.subscriber("bob@example.org").await;
    let uri = "/webhooks/mailgun";
    // Stale, forged, then good; the good one replayed is refused.
    let stale = mailgun_body(
        key,
        now() - 3600,
        "t-old",
        "failed",
        "ada@example.org",
        "e1",
    );
    assert_eq!(
        post(&site, uri, &[], stale).await.status,
        StatusCode::UNAUTHORIZED
    );
    let forged = mailgun_body(
        "another-key",
        now(),
        "t-1",
        "failed",
        "ada@example.org",
        "e1",
    );
    assert_eq!(
        post(&site, uri, &[], forged).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(count_reports(&site).await, 0);
    let good = mailgun_body(key, now(), "t-1", "failed", "ada@example.org", "e1");
    assert_eq!(
        post(&site, uri, &[], good.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        post(&site, uri, &[], good).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Bounced
    );
    let complaint = mailgun_body(key, now(), "t-2", "complained", "bob@example.org", "e2");
    assert_eq!(
        post(&site, uri, &[], complaint).await.status,
        StatusCode::OK
    );
    assert_eq!(
        site.get_subscriber("bob@example.org").await.unsubscribed_by,
        Some(EndedBy::Complaint)
    );
}

#[tokio::test]
async fn sendgrid_events_need_their_ecdsa_signature() {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // As SendGrid shows it: the SubjectPublicKeyInfo, base64.
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    spki.extend_from_slice(pair.public_key().as_ref());
    let site = Site::with(&[(
        "PAPERPOST__WEBHOOKS__SENDGRID_PUBLIC_KEY",
        B64.encode(&spki).as_str(),
    )])
    .await;
    site.subscriber("ada@example.org").await;
    site.subscriber("bob@example.org").await;
    site.subscriber("cy@example.org").await;
    let body = serde_json::json!([
        {"email": "ada@example.org", "event": "bounce", "type": "bounce", "status": "5.1.1",
         "reason": "550 5.1.1 unknown user", "sg_event_id": "sg1"},
        {"email": "bob@example.org", "event": "spamreport", "sg_event_id": "sg2"},
        {"email": "cy@example.org", "event": "bounce", "type": "blocked", "status": "5.7.1",
         "reason": "550 5.7.1 blocked", "sg_event_id": "sg3"},
        {"email": "cy@example.org", "event": "delivered", "sg_event_id": "sg4"},
    ])
    .to_string();
    let ts = now().to_string();
    let sign = |body: &str| {
        B64.encode(
            pair.sign(&rng, format!("{ts}{body}").as_bytes())
                .unwrap()
                .as_ref(),
        )
    };
    let headers = |sig: String| {
        vec![
            ("x-twilio-email-event-webhook-signature", sig),
            ("x-twilio-email-event-webhook-timestamp", ts.clone()),
        ]
    };
    let tampered = body.replace("spamreport", "delivered");
    let r = post(&site, "/webhooks/sendgrid", &headers(sign(&body)), tampered).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = post(&site, "/webhooks/sendgrid", &headers(sign(&body)), body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Bounced
    );
    assert_eq!(
        site.get_subscriber("bob@example.org").await.unsubscribed_by,
        Some(EndedBy::Complaint)
    );
    assert_eq!(
        site.get_subscriber("cy@example.org").await.status,
        SubscriberStatus::Active,
        "a block is not theirs"
    );
    assert_eq!(count_reports(&site).await, 3);
}

/// Signs `message` as SNS does (SignatureVersion 2) with the key of the
/// test certificate.
fn sns_message(kind: &str, extra: &[(&str, &str)], message: &str) -> serde_json::Value {
    let mut v = serde_json::json!({
        "Type": kind,
        "MessageId": format!("m-{}", message.len()),
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2026-12-01T05:00:00.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": CERT_URL,
    });
    for (k, val) in extra {
        v[*k] = serde_json::Value::String(val.to_string());
    }
    let fields: &[&str] = if kind == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    let mut text = String::new();
    for f in fields {
        if let Some(value) = v[*f].as_str() {
            text.push_str(&format!("{f}\n{value}\n"));
        }
    }
    let pem = std::fs::read(crate::support::fixture("dkim-rsa.pem")).unwrap();
    use rustls_pki_types::{PrivatePkcs1KeyDer, pem::PemObject};
    let der = PrivatePkcs1KeyDer::from_pem_slice(&pem).unwrap();
    let key = ring::signature::RsaKeyPair::from_der(der.secret_pkcs1_der()).unwrap();
    let mut sig = vec![0u8; key.public().modulus_len()];
    let rng = ring::rand::SystemRandom::new();
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &rng,
        text.as_bytes(),
        &mut sig,
    )
    .unwrap();
    v["Signature"] = serde_json::Value::String(B64.encode(sig));
    v
}

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-bounces";
const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";

/// SES through SNS: the subscription is confirmed, notifications signed by
/// the certificate at SNS's host are recorded, and a tampered message, one
/// from another topic, or one whose certificate is elsewhere is refused.
#[tokio::test]
async fn ses_events_need_a_valid_sns_signature_from_the_pinned_topic() {
    let site = Site::with(&[("PAPERPOST__WEBHOOKS__SES_TOPIC_ARN", TOPIC)]).await;
    site.subscriber("ada@example.org").await;
    site.subscriber("bob@example.org").await;
    let fetched = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = std::sync::Arc::clone(&fetched);
    site.state
        .set_sns_fetch(std::sync::Arc::new(move |url: url::Url| {
            seen.lock().unwrap().push(url.to_string());
            Box::pin(async move {
                if url.as_str() == CERT_URL {
                    Ok(std::fs::read(crate::support::fixture("sns-cert.pem")).unwrap())
                } else {
                    Ok(b"<ConfirmSubscriptionResponse/>".to_vec())
                }
            })
        }));
    let send = |v: serde_json::Value| post(&site, "/webhooks/ses", &[], v.to_string());
    let subscribe_url = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=t1";
    let confirm = sns_message(
        "SubscriptionConfirmation",
        &[("SubscribeURL", subscribe_url), ("Token", "t1")],
        "You have chosen to subscribe",
    );
    assert_eq!(send(confirm).await.status, StatusCode::OK);
    assert!(fetched.lock().unwrap().iter().any(|u| u == subscribe_url));

    let bounce = serde_json::json!({
        "notificationType": "Bounce",
        "bounce": {"bounceType": "Permanent", "feedbackId": "fb-1", "bouncedRecipients": [
            {"emailAddress": "ada@example.org", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]},
        "mail": {"commonHeaders": {"messageId": "<x@y>"}},
    })
    .to_string();
    let complaint = serde_json::json!({
        "notificationType": "Complaint",
        "complaint": {"feedbackId": "fb-2", "complainedRecipients": [{"emailAddress": "bob@example.org"}]},
    })
    .to_string();
    // Refused: tampered, another topic, a certificate elsewhere.
    let mut tampered = sns_message("Notification", &[], &bounce);
    tampered["Message"] = serde_json::Value::String(bounce.replace("ada@", "bob@"));
    let mut other_topic = sns_message("Notification", &[], &bounce);
    other_topic["TopicArn"] = "arn:aws:sns:us-east-1:999999999999:other".into();
    let mut elsewhere = sns_message("Notification", &[], &bounce);
    elsewhere["SigningCertURL"] = "https://sns.us-east-1.amazonaws.com.evil.example/c.pem".into();
    for refused in [tampered, other_topic, elsewhere] {
        assert_eq!(send(refused).await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(count_reports(&site).await, 0);
    for m in [&bounce, &bounce, &complaint] {
        let r = send(sns_message("Notification", &[], m)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(count_reports(&site).await, 2, "SNS's retry counts once");
    assert_eq!(
        site.get_subscriber("ada@example.org").await.status,
        SubscriberStatus::Bounced
    );
    assert_eq!(
        site.get_subscriber("bob@example.org").await.unsubscribed_by,
        Some(EndedBy::Complaint)
    );
    let certs = fetched
        .lock()
        .unwrap()
        .iter()
        .filter(|u| *u == CERT_URL)
        .count();
    assert_eq!(certs, 1, "the certificate is fetched once");
}
