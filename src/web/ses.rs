//! Amazon SES events through an SNS topic (`POST /webhooks/ses`): the SNS
//! message signature (SignatureVersion 2, RSA SHA-256) checked against the
//! certificate SNS serves, fetched only from `https://sns.REGION.amazonaws.com`
//! and kept; the topic pinned to `webhooks.ses_topic_arn`; a subscription
//! confirmed by fetching its SubscribeURL (from the same hosts only).

use std::{collections::HashMap, sync::Arc};

use base64::Engine;
use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::bounce::{Kind, Report, classify};

/// Fetches an https URL's body (a certificate, a subscription confirmation).
/// Injected, so tests serve their own certificate.
pub type Fetch = Arc<dyn Fn(url::Url) -> BoxFuture<'static, anyhow::Result<Vec<u8>>> + Send + Sync>;

/// The largest body fetched.
const MAX_FETCH: usize = 64 * 1024;

/// The real fetch: an HTTPS GET with a 10 s limit.
pub fn https_fetch() -> Fetch {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    Arc::new(move |url: url::Url| {
        let client = client.clone();
        Box::pin(async move {
            let body = client
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            anyhow::ensure!(body.len() <= MAX_FETCH, "the answer is too large");
            Ok(body.to_vec())
        })
    })
}

/// The certificates fetched so far, by URL.
#[derive(Default)]
pub struct Certificates(std::sync::Mutex<HashMap<String, Arc<Vec<u8>>>>);

/// Why an SNS message is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SnsRefusal {
    Unauthorized(&'static str),
    Bad,
}

/// What a verified SNS message asks for.
pub enum Sns {
    /// Events to record.
    Events(Vec<Report>),
    /// A subscription to confirm (its SubscribeURL fetched).
    Confirmed,
    /// Nothing to do (an unsubscribe confirmation).
    Nothing,
}

/// Checks an SNS message and reads it.
pub async fn receive(
    body: &[u8],
    topic: &str,
    fetch: &Fetch,
    certs: &Certificates,
) -> Result<Sns, SnsRefusal> {
    let v: Value = serde_json::from_slice(body).map_err(|_| SnsRefusal::Bad)?;
    let field = |k: &str| v[k].as_str();
    if field("TopicArn") != Some(topic) {
        return Err(SnsRefusal::Unauthorized("another topic"));
    }
    if field("SignatureVersion") != Some("2") {
        return Err(SnsRefusal::Unauthorized("SignatureVersion is not 2"));
    }
    let cert_url = field("SigningCertURL")
        .and_then(sns_url)
        .ok_or(SnsRefusal::Unauthorized("certificate URL"))?;
    let cert = certificate(&cert_url, fetch, certs)
        .await
        .map_err(|_| SnsRefusal::Unauthorized("certificate"))?;
    let signed = string_to_sign(&v).ok_or(SnsRefusal::Bad)?;
    let signature = field("Signature")
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or(SnsRefusal::Unauthorized("signature"))?;
    verify(&cert, signed.as_bytes(), &signature)
        .map_err(|_| SnsRefusal::Unauthorized("signature"))?;
    match field("Type") {
        Some("SubscriptionConfirmation") => {
            let url = field("SubscribeURL")
                .and_then(sns_url)
                .ok_or(SnsRefusal::Bad)?;
            fetch(url).await.map_err(|_| SnsRefusal::Bad)?;
            tracing::info!(topic, "confirmed the SNS subscription for SES events");
            Ok(Sns::Confirmed)
        }
        Some("Notification") => Ok(Sns::Events(events(field("Message").unwrap_or("")))),
        Some("UnsubscribeConfirmation") => Ok(Sns::Nothing),
        _ => Err(SnsRefusal::Bad),
    }
}

/// `text` as a URL on an SNS host: https, `sns.REGION.amazonaws.com`.
fn sns_url(text: &str) -> Option<url::Url> {
    let url = url::Url::parse(text).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    let region = host.strip_prefix("sns.")?.strip_suffix(".amazonaws.com")?;
    let ok = url.scheme() == "https"
        && url.port().is_none()
        && !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(url)
}

async fn certificate(
    url: &url::Url,
    fetch: &Fetch,
    certs: &Certificates,
) -> anyhow::Result<Arc<Vec<u8>>> {
    if let Some(c) = certs.0.lock().expect("certificates lock").get(url.as_str()) {
        return Ok(Arc::clone(c));
    }
    let pem = fetch(url.clone()).await?;
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| anyhow::anyhow!("{e}"))?;
    let der = Arc::new(der.to_vec());
    let mut known = certs.0.lock().expect("certificates lock");
    known.insert(url.to_string(), Arc::clone(&der));
    Ok(der)
}

fn verify(cert: &[u8], message: &[u8], signature: &[u8]) -> anyhow::Result<()> {
    let der = rustls_pki_types::CertificateDer::from(cert);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
    cert.verify_signature(webpki::ring::RSA_PKCS1_2048_8192_SHA256, message, signature)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The text SNS signs: the message's fields, by name, each followed by its
/// value, one per line, in this order.
fn string_to_sign(v: &Value) -> Option<String> {
    let fields: &[&str] = match v["Type"].as_str()? {
        "Notification" => &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ],
        _ => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
    };
    let mut out = String::new();
    for f in fields {
        match v[*f].as_str() {
            Some(value) => out.push_str(&format!("{f}\n{value}\n")),
            None if *f == "Subject" => {}
            None => return None,
        }
    }
    Some(out)
}

/// The reports in an SES event notification (bounce or complaint).
fn events(message: &str) -> Vec<Report> {
    let Ok(m) = serde_json::from_str::<Value>(message) else {
        return Vec::new();
    };
    let kind_of = m["notificationType"].as_str().or(m["eventType"].as_str());
    let message_id = m["mail"]["commonHeaders"]["messageId"]
        .as_str()
        .map(str::to_string);
    let (list, feedback, kind): (&Value, &Value, Option<Kind>) = match kind_of {
        Some("Bounce") => {
            let b = &m["bounce"];
            let kind = match b["bounceType"].as_str() {
                Some("Transient") => Some(Kind::Soft),
                Some("Permanent") => None,
                _ => Some(Kind::Unknown),
            };
            (&b["bouncedRecipients"], &b["feedbackId"], kind)
        }
        Some("Complaint") => {
            let c = &m["complaint"];
            (
                &c["complainedRecipients"],
                &c["feedbackId"],
                Some(Kind::Complaint),
            )
        }
        _ => return Vec::new(),
    };
    let feedback = feedback.as_str().unwrap_or("");
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let email = r["emailAddress"].as_str()?;
            let (status, diagnostic) = (r["status"].as_str(), r["diagnosticCode"].as_str());
            let kind = kind.unwrap_or_else(|| {
                // Permanent: hard unless its status says otherwise.
                match classify("failed", status, diagnostic) {
                    Some(Kind::Unknown) | None => Kind::Hard,
                    Some(k) => k,
                }
            });
            Some(Report {
                kind,
                status: status.map(str::to_string),
                diagnostic: diagnostic.map(str::to_string),
                recipient: Some(email.to_string()),
                message_id: message_id.clone(),
                link_token: None,
                addressed_to: Vec::new(),
                event_key: format!("{feedback}/{email}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_over_https() {
        assert!(
            sns_url("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem")
                .is_some()
        );
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://sqs.us-east-1.amazonaws.com/x.pem",
        ] {
            assert!(sns_url(bad).is_none(), "{bad}");
        }
    }
}
