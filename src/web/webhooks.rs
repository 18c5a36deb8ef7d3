//! `POST /webhooks/{provider}`: bounce and complaint events from a mail
//! provider, each authenticated as that provider specifies (Postmark: Basic
//! auth; Mailgun: an HMAC of a timestamp and a one-time token; SendGrid: an
//! ECDSA P-256 signature of the timestamp and the body). Answers are plain
//! text; a provider retries anything but a 2xx, and an event seen before
//! (by its id, on any instance) changes nothing.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::WebState;
use crate::{
    bounce::{Kind, Report, classify, ingest},
    store::{self, StoreError},
};

/// The largest webhook body read (SendGrid batches events; SES via SNS
/// sends up to 256 KiB).
pub const MAX_WEBHOOK_BODY: usize = 256 * 1024;

/// A signed request is accepted this long after (or before) its timestamp.
const WINDOW_SECS: i64 = 300;

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = (status, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    r
}

/// Why a request is refused.
enum Refused {
    Off,
    Unauthorized,
    Bad,
    Busy(StoreError),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Off => plain(StatusCode::NOT_FOUND, "not found\n"),
            Refused::Unauthorized => plain(StatusCode::UNAUTHORIZED, "unauthorized\n"),
            Refused::Bad => plain(
                StatusCode::BAD_REQUEST,
                "not a payload this endpoint reads\n",
            ),
            Refused::Busy(e) => {
                tracing::warn!(error = %e, "cannot record a webhook event; the provider will retry");
                plain(StatusCode::SERVICE_UNAVAILABLE, "busy, try again\n")
            }
        }
    }
}

pub async fn receive(
    State(state): State<WebState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let events = match provider.as_str() {
        "postmark" => postmark(&state, &headers, &body),
        "mailgun" => mailgun(&state, &body).await,
        "sendgrid" => sendgrid(&state, &headers, &body),
        "ses" => ses_events(&state, &body).await,
        _ => Err(Refused::Off),
    };
    let events = match events {
        Ok(e) => e,
        Err(refused) => {
            state.app.metrics.webhooks_refused.inc();
            return refused.into_response();
        }
    };
    for report in &events {
        if let Err(e) = ingest::provider_event(&state.app, &provider, report).await {
            return Refused::Busy(e).into_response();
        }
    }
    plain(StatusCode::OK, "ok\n")
}

/// Postmark: Basic auth with the configured user and password; one bounce
/// or spam complaint event per request.
fn postmark(state: &WebState, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Report>, Refused> {
    let w = &state.app.settings.webhooks;
    let password = w.postmark_password.expose_secret();
    if w.postmark_user.is_empty() || password.is_empty() {
        return Err(Refused::Off);
    }
    let expected = format!("{}:{password}", w.postmark_user);
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .unwrap_or_default();
    if !same(&given, expected.as_bytes()) {
        return Err(Refused::Unauthorized);
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| Refused::Bad)?;
    let kind = match (v["RecordType"].as_str(), v["Type"].as_str()) {
        (Some("SpamComplaint"), _) | (_, Some("SpamComplaint")) => Kind::Complaint,
        (Some("Bounce"), Some("HardBounce" | "BadEmailAddress")) => {
            classified(v["Details"].as_str(), Kind::Hard)
        }
        (Some("Bounce"), Some("SoftBounce" | "Transient" | "DnsError")) => Kind::Soft,
        (Some("Bounce"), Some("Blocked" | "ChallengeVerification")) => Kind::Block,
        (Some("Bounce"), Some("AutoResponder")) => return Ok(vec![]),
        (Some("Bounce"), _) => Kind::Unknown,
        _ => return Err(Refused::Bad),
    };
    let id = v["ID"]
        .as_i64()
        .map(|i| i.to_string())
        .or(v["ID"].as_str().map(str::to_string));
    Ok(vec![report(
        kind,
        v["Email"].as_str(),
        None,
        v["Details"].as_str().or(v["Description"].as_str()),
        None,
        id.ok_or(Refused::Bad)?,
    )])
}

/// Mailgun: HMAC-SHA256 under the signing key of timestamp and token, the
/// timestamp within 5 minutes, the token never seen before.
async fn mailgun(state: &WebState, body: &[u8]) -> Result<Vec<Report>, Refused> {
    let key = state
        .app
        .settings
        .webhooks
        .mailgun_signing_key
        .expose_secret();
    if key.is_empty() {
        return Err(Refused::Off);
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| Refused::Bad)?;
    let sig = &v["signature"];
    let (Some(ts), Some(token), Some(given)) = (
        sig["timestamp"].as_str(),
        sig["token"].as_str(),
        sig["signature"].as_str(),
    ) else {
        return Err(Refused::Unauthorized);
    };
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(ts.as_bytes());
    mac.update(token.as_bytes());
    let ours = hex::encode(mac.finalize().into_bytes());
    if !same(ours.as_bytes(), given.to_ascii_lowercase().as_bytes()) || !recent(ts) {
        return Err(Refused::Unauthorized);
    }
    let mut conn = state
        .app
        .writer
        .acquire()
        .await
        .map_err(|e| Refused::Busy(e.into()))?;
    let fresh = store::bounces::take_token(&mut conn, "mailgun", token)
        .await
        .map_err(Refused::Busy)?;
    if !fresh {
        return Err(Refused::Unauthorized);
    }
    let e = &v["event-data"];
    let status = e["delivery-status"]["enhanced-code"].as_str();
    let diagnostic = e["delivery-status"]["message"]
        .as_str()
        .or(e["delivery-status"]["description"].as_str());
    let kind = match (e["event"].as_str(), e["severity"].as_str()) {
        (Some("complained"), _) => Kind::Complaint,
        (Some("failed"), Some("permanent")) => failed(status, diagnostic),
        (Some("failed"), _) => Kind::Soft,
        (Some(_), _) => return Ok(vec![]),
        _ => return Err(Refused::Bad),
    };
    let message_id = e["message"]["headers"]["message-id"]
        .as_str()
        .map(|m| format!("<{}>", m.trim_matches(['<', '>'])));
    let id = e["id"].as_str().ok_or(Refused::Bad)?.to_string();
    Ok(vec![report(
        kind,
        e["recipient"].as_str(),
        status,
        diagnostic,
        message_id,
        id,
    )])
}

/// SendGrid: an ECDSA P-256 signature (base64 DER) of the timestamp header
/// followed by the body, under the configured verification key; a JSON
/// array of events.
fn sendgrid(state: &WebState, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Report>, Refused> {
    let key = state.app.settings.webhooks.sendgrid_public_key.trim();
    if key.is_empty() {
        return Err(Refused::Off);
    }
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(sig), Some(ts)) = (
        h("x-twilio-email-event-webhook-signature"),
        h("x-twilio-email-event-webhook-timestamp"),
    ) else {
        return Err(Refused::Unauthorized);
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(sig), Some(point)) = (b64.decode(sig.trim()), ec_point(key)) else {
        return Err(Refused::Unauthorized);
    };
    let signed = [ts.as_bytes(), body].concat();
    let verifier =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point);
    if verifier.verify(&signed, &sig).is_err() || !recent(ts) {
        return Err(Refused::Unauthorized);
    }
    let events: Vec<Value> = serde_json::from_slice(body).map_err(|_| Refused::Bad)?;
    let mut out = Vec::new();
    for e in &events {
        let status = e["status"].as_str();
        let diagnostic = e["reason"].as_str();
        let kind = match (e["event"].as_str(), e["type"].as_str()) {
            (Some("spamreport"), _) => Kind::Complaint,
            (Some("bounce"), Some("blocked")) => Kind::Block,
            (Some("bounce"), _) => failed(status, diagnostic),
            (Some("deferred"), _) => Kind::Delayed,
            _ => continue,
        };
        let Some(id) = e["sg_event_id"].as_str() else {
            continue;
        };
        let message_id = e["smtp-id"].as_str().map(str::to_string);
        out.push(report(
            kind,
            e["email"].as_str(),
            status,
            diagnostic,
            message_id,
            id.to_string(),
        ));
    }
    Ok(out)
}

/// Amazon SES through SNS ([`super::ses`]).
async fn ses_events(state: &WebState, body: &[u8]) -> Result<Vec<Report>, Refused> {
    let topic = &state.app.settings.webhooks.ses_topic_arn;
    if topic.is_empty() {
        return Err(Refused::Off);
    }
    let fetch = state.sns_fetch.read().expect("sns fetch lock").clone();
    match super::ses::receive(body, topic, &fetch, &state.sns_certs).await {
        Ok(super::ses::Sns::Events(reports)) => Ok(reports),
        Ok(_) => Ok(Vec::new()),
        Err(super::ses::SnsRefusal::Unauthorized(why)) => {
            tracing::info!(why, "an SNS message was refused");
            Err(Refused::Unauthorized)
        }
        Err(super::ses::SnsRefusal::Bad) => Err(Refused::Bad),
    }
}

/// The uncompressed P-256 point of a verification key: SubjectPublicKeyInfo
/// DER in base64 (as SendGrid shows it), or the bare point.
fn ec_point(key: &str) -> Option<Vec<u8>> {
    let der = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    let point = der.get(der.len().checked_sub(65)?..)?;
    (point[0] == 4).then(|| point.to_vec())
}

/// A failed delivery's kind from its status, else its diagnostic.
fn failed(status: Option<&str>, diagnostic: Option<&str>) -> Kind {
    classify(
        "failed",
        status,
        diagnostic.map(|d| format!("smtp; {d}")).as_deref(),
    )
    .unwrap_or(Kind::Unknown)
}

/// A hard bounce stays hard only if its details do not say otherwise.
fn classified(details: Option<&str>, default: Kind) -> Kind {
    match failed(None, details) {
        Kind::Unknown => default,
        k => k,
    }
}

fn report(
    kind: Kind,
    recipient: Option<&str>,
    status: Option<&str>,
    diagnostic: Option<&str>,
    message_id: Option<String>,
    event_key: String,
) -> Report {
    Report {
        kind,
        status: status.map(str::to_string),
        diagnostic: diagnostic.map(str::to_string),
        recipient: recipient.map(str::to_string),
        message_id,
        link_token: None,
        addressed_to: Vec::new(),
        event_key,
    }
}

/// A Unix timestamp (seconds) within [`WINDOW_SECS`] of now.
fn recent(ts: &str) -> bool {
    ts.trim()
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= WINDOW_SECS)
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
