//! DKIM signatures verified as a receiver would (mail-auth), RSA and Ed25519,
//! with the public keys served by a DNS stub: the messages `send` writes are
//! signed over the headers the README names, List-Id included.

use crate::support;

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::support::Sandbox;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
    common::{parse::TxtRecordParser, verify::DomainKey},
};

/// The DNS stub: the TXT records it knows (as a resolver cache that is
/// never empty for them), and nothing else.
struct Dns(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Dns {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _: Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

impl Dns {
    /// Publishes `record` as the DKIM key of `selector` in the sender's domain.
    fn with_key(selector: &str, record: &str) -> Self {
        let dns = Dns(Mutex::new(HashMap::new()));
        let key = DomainKey::parse(record.as_bytes()).expect("a DKIM key record");
        let name = format!("{selector}._domainkey.news.example.org.");
        dns.insert(
            name.into_boxed_str(),
            key.into(),
            Instant::now() + Duration::from_secs(3600),
        );
        dns
    }
}

/// The DKIM results for `raw` with the stub's keys.
async fn verify(dns: &Dns, raw: &[u8]) -> Vec<DkimResult> {
    let authenticator = MessageAuthenticator::new(
        mail_auth::hickory_resolver::config::ResolverConfig::default(),
        Default::default(),
    )
    .unwrap();
    let message = AuthenticatedMessage::parse(raw).expect("a message");
    authenticator
        .verify_dkim(Parameters::new(&message).with_txt_cache(dns))
        .await
        .into_iter()
        .map(|o| o.result().clone())
        .collect()
}

/// The signed header names, lower case.
fn signed_headers(raw: &[u8]) -> Vec<String> {
    let message = AuthenticatedMessage::parse(raw).unwrap();
    let sig = &message
        .dkim_headers
        .first()
        .expect("a DKIM-Signature")
        .header;
    sig.h.iter().map(|h| h.to_ascii_lowercase()).collect()
}

/// Sends the sample edition to two readers with DKIM on; the .eml files.
fn send_signed(algorithm: &str, key_file: &str) -> Vec<Vec<u8>> {
    let s = Sandbox::with_sample_papers();
    s.run(&["subscribers", "add", "ada@example.org"]).ok();
    s.run(&["subscribers", "add", "bob@example.org", "--format", "text"])
        .ok();
    let key = support::fixture(key_file);
    let env = [
        (
            "PAPERPOST__MAIL__FROM",
            "Paperpost <digest@news.example.org>",
        ),
        ("PAPERPOST__MAIL__DKIM__SELECTOR", "pp2026"),
        ("PAPERPOST__MAIL__DKIM__ALGORITHM", algorithm),
        ("PAPERPOST__MAIL__DKIM__KEY_FILE", key.to_str().unwrap()),
    ];
    s.run_env(&env, &["send", "--date", "2024-03-11"]).ok();
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(s.path("data/outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    files
}

async fn check(algorithm: &str, key_file: &str, record: String) {
    let dns = Dns::with_key("pp2026", &record);
    for raw in send_signed(algorithm, key_file) {
        assert_eq!(verify(&dns, &raw).await, vec![DkimResult::Pass]);
        let signed = signed_headers(&raw);
        for needed in [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "list-id",
        ] {
            assert!(signed.iter().any(|h| h == needed), "{needed}: {signed:?}");
        }
        // A changed List-Id or body no longer verifies: the check can fail.
        let text = String::from_utf8(raw.clone()).unwrap();
        for tampered in [
            text.replacen("List-Id: ", "List-Id: x", 1),
            text.replacen("Hello", "Hallo", 1),
        ] {
            assert_ne!(tampered, text);
            let results = verify(&dns, tampered.as_bytes()).await;
            assert!(
                !results.contains(&DkimResult::Pass),
                "a tampered message verified"
            );
        }
    }
}

#[tokio::test]
async fn ed25519_signatures_verify() {
    let public = std::fs::read_to_string(support::fixture("dkim-ed25519.pub")).unwrap();
    let record = format!("v=DKIM1; k=ed25519; p={}", public.trim());
    check("ed25519", "dkim-ed25519.key", record).await;
}

#[tokio::test]
async fn rsa_signatures_verify() {
    let public = std::fs::read_to_string(support::fixture("dkim-rsa.pub")).unwrap();
    let record = format!("v=DKIM1; k=rsa; p={}", public.trim());
    check("rsa", "dkim-rsa.pem", record).await;
}
