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
        Self::with_keys(&[(selector, record.to_string())])
    }

    /// Publishes each (selector, record).
    fn with_keys(keys: &[(&str, String)]) -> Self {
        let dns = Dns(Mutex::new(HashMap::new()));
        for (selector, record) in keys {
            let key = DomainKey::parse(record.as_bytes()).expect("a DKIM key record");
            let name = format!("{selector}._domainkey.news.example.org.");
            dns.insert(
                name.into_boxed_str(),
                key.into(),
                Instant::now() + Duration::from_secs(3600),
            );
        }
        dns
    }
}

/// The DNS record of a fixture's public key.
fn record(kind: &str, pub_file: &str) -> String {
    let public = std::fs::read_to_string(support::fixture(pub_file)).unwrap();
    format!("v=DKIM1; k={kind}; p={}", public.trim())
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
    send_signed_by("pp2026", algorithm, &[key_file])
}

/// `send_signed` with one key per selector (comma-separated) and file.
fn send_signed_by(selectors: &str, algorithms: &str, key_files: &[&str]) -> Vec<Vec<u8>> {
    let s = Sandbox::with_sample_papers();
    s.run(&["subscribers", "add", "ada@example.org"]).ok();
    s.run(&["subscribers", "add", "bob@example.org", "--format", "text"])
        .ok();
    let keys: Vec<String> = key_files
        .iter()
        .map(|k| support::fixture(k).display().to_string())
        .collect();
    let keys = keys.join(", ");
    let env = [
        (
            "PAPERPOST__MAIL__FROM",
            "Paperpost <digest@news.example.org>",
        ),
        ("PAPERPOST__MAIL__DKIM__SELECTOR", selectors),
        ("PAPERPOST__MAIL__DKIM__ALGORITHM", algorithms),
        ("PAPERPOST__MAIL__DKIM__KEY_FILE", keys.as_str()),
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

/// Issue 17 item 3: an RSA and an Ed25519 key (RFC 8463) sign each message
/// once each; a receiver verifies both, and with only one of the records
/// published, that one.
#[tokio::test]
async fn dual_signatures_verify_with_each_key() {
    let both = Dns::with_keys(&[
        ("pp2026r", record("rsa", "dkim-rsa.pub")),
        ("pp2026e", record("ed25519", "dkim-ed25519.pub")),
    ]);
    let rsa_only = Dns::with_keys(&[("pp2026r", record("rsa", "dkim-rsa.pub"))]);
    let files = ["dkim-rsa.pem", "dkim-ed25519.key"];
    for raw in send_signed_by("pp2026r, pp2026e", "rsa, ed25519", &files) {
        let text = String::from_utf8_lossy(&raw);
        assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
        assert!(text.contains("a=rsa-sha256") && text.contains("a=ed25519-sha256"));
        assert_eq!(
            verify(&both, &raw).await,
            vec![DkimResult::Pass, DkimResult::Pass]
        );
        let one = verify(&rsa_only, &raw).await;
        assert_eq!(
            one.iter().filter(|r| **r == DkimResult::Pass).count(),
            1,
            "{one:?}"
        );
    }
}

/// Issue 17 item 6: during a rotation the old and the new RSA selector both
/// sign, so a receiver still holding either record verifies.
#[tokio::test]
async fn a_rotation_signs_with_the_old_and_the_new_key() {
    let files = ["dkim-rsa.pem", "dkim-rsa-2.pem"];
    let raws = send_signed_by("old2026, new2026", "rsa", &files);
    let old = Dns::with_keys(&[("old2026", record("rsa", "dkim-rsa.pub"))]);
    let new = Dns::with_keys(&[("new2026", record("rsa", "dkim-rsa-2.pub"))]);
    // Each record verifies its own signature, and only its own.
    let swapped = Dns::with_keys(&[("new2026", record("rsa", "dkim-rsa.pub"))]);
    for raw in raws {
        for dns in [&old, &new] {
            let results = verify(dns, &raw).await;
            assert!(results.contains(&DkimResult::Pass), "{results:?}");
        }
        let results = verify(&swapped, &raw).await;
        assert!(!results.contains(&DkimResult::Pass), "{results:?}");
    }
}

/// Issue 17 item 3: a key that cannot sign stops start-up, naming its file.
#[test]
fn a_bad_key_stops_start_up_naming_its_file() {
    let s = Sandbox::with_sample_papers();
    let cases = [
        ("rsa", "missing.pem".to_string(), "cannot read"),
        (
            "rsa",
            support::fixture("dkim-ed25519.key").display().to_string(),
            "not a PEM RSA",
        ),
        (
            "rsa",
            support::fixture("dkim-rsa-1024.pem").display().to_string(),
            "2048",
        ),
        (
            "ed25519",
            support::fixture("dkim-rsa.pem").display().to_string(),
            "Ed25519",
        ),
    ];
    for (algorithm, file, why) in cases {
        let env = [
            ("PAPERPOST__MAIL__DKIM__SELECTOR", "pp2026"),
            ("PAPERPOST__MAIL__DKIM__ALGORITHM", algorithm),
            ("PAPERPOST__MAIL__DKIM__KEY_FILE", file.as_str()),
        ];
        let out = s.run_env(&env, &["send", "--date", "2024-03-11"]);
        let err = out.fails();
        assert!(
            err.contains("mail.dkim.key_file") && err.contains(&file),
            "{err}"
        );
        assert!(err.contains(why), "{why}: {err}");
    }
    let env = [
        ("PAPERPOST__MAIL__DKIM__SELECTOR", "a, b"),
        ("PAPERPOST__MAIL__DKIM__KEY_FILE", "one.pem"),
    ];
    let out = s.run_env(&env, &["send", "--date", "2024-03-11"]);
    assert!(
        out.fails().contains("2 selectors, 1 key files"),
        "{}",
        out.stderr
    );
}

/// A DNS server on loopback UDP: TXT answers from `records` (lower-case
/// names with the final dot), NXDOMAIN for anything else.
fn stub_dns(records: HashMap<String, String>) -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(answer) = dns_answer(&buf[..n], &records) {
                let _ = socket.send_to(&answer, from);
            }
        }
    });
    addr
}

fn dns_answer(query: &[u8], records: &HashMap<String, String>) -> Option<Vec<u8>> {
    let mut i = 12;
    let mut name = String::new();
    while *query.get(i)? != 0 {
        let len = query[i] as usize;
        name.push_str(&String::from_utf8_lossy(query.get(i + 1..i + 1 + len)?).to_lowercase());
        name.push('.');
        i += 1 + len;
    }
    let question_end = i + 5;
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let text = records.get(&name).filter(|_| qtype == 16);
    let mut out = query[..2].to_vec();
    out.extend_from_slice(&[0x81, if text.is_some() { 0x80 } else { 0x83 }]);
    out.extend_from_slice(&[0, 1, 0, u8::from(text.is_some()), 0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    if let Some(text) = text {
        let mut rdata = Vec::new();
        for chunk in text.as_bytes().chunks(255) {
            rdata.push(chunk.len() as u8);
            rdata.extend_from_slice(chunk);
        }
        out.extend_from_slice(&[0xc0, 0x0c, 0, 16, 0, 1, 0, 0, 0, 60]);
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}

/// The record text in `dkim keygen`'s zone line (its quoted strings joined).
fn keygen_record(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.contains("._domainkey.") && l.contains("IN TXT"))
        .expect("a zone line");
    line.split('"').skip(1).step_by(2).collect()
}

/// Issue 17 item 4: `dkim keygen` writes a private key and prints its
/// record; `dkim check` finds the published records the same (through a
/// stub DNS server), or says which differs; and mail signed with the new
/// keys verifies against the printed records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_then_check_then_sign() {
    let s = Sandbox::new();
    let from = (
        "PAPERPOST__MAIL__FROM",
        "Paperpost <digest@news.example.org>",
    );
    let rsa = s.path("dkim-rsa.pem");
    let ed = s.path("dkim-ed.pem");
    let keygen = |sel: &str, alg: &str, out: &std::path::Path| {
        s.run_env(
            &[from],
            &[
                "dkim",
                "keygen",
                "--selector",
                sel,
                "--algorithm",
                alg,
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    let rsa_out = keygen("k1", "rsa", &rsa);
    let rsa_record = keygen_record(rsa_out.ok());
    assert!(
        rsa_out.stdout.contains("k1._domainkey.news.example.org."),
        "{}",
        rsa_out.stdout
    );
    assert!(
        rsa_record.starts_with("v=DKIM1; k=rsa; p=MII"),
        "{rsa_record}"
    );
    let ed_record = keygen_record(keygen("k2", "ed25519", &ed).ok());
    assert!(
        ed_record.starts_with("v=DKIM1; k=ed25519; p="),
        "{ed_record}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&rsa).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        keygen("k1", "rsa", &rsa)
            .fails()
            .contains("never overwritten")
    );

    let keys = format!("{}, {}", rsa.display(), ed.display());
    let env = [
        from,
        ("PAPERPOST__MAIL__DKIM__SELECTOR", "k1, k2"),
        ("PAPERPOST__MAIL__DKIM__ALGORITHM", "rsa, ed25519"),
        ("PAPERPOST__MAIL__DKIM__KEY_FILE", keys.as_str()),
    ];
    let name = |sel: &str| format!("{sel}._domainkey.news.example.org.");
    let published = HashMap::from([
        (name("k1"), rsa_record.clone()),
        (name("k2"), ed_record.clone()),
    ]);
    let dns = stub_dns(published).to_string();
    let out = s.run_env(&env, &["dkim", "check", "--resolver", &dns]);
    assert_eq!(
        out.ok().matches("publishes the configured").count(),
        2,
        "{}",
        out.stdout
    );

    // Another key under k1, and nothing under k2: both said, exit 1.
    let other = record("rsa", "dkim-rsa.pub");
    let dns = stub_dns(HashMap::from([(name("k1"), other)])).to_string();
    let out = s.run_env(&env, &["dkim", "check", "--resolver", &dns]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("k1._domainkey.news.example.org.: DIFFERS"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("k2._domainkey.news.example.org.: NO RECORD"),
        "{}",
        out.stdout
    );

    // The printed records verify the mail the new keys sign.
    let both = Dns::with_keys(&[("k1", rsa_record), ("k2", ed_record)]);
    let (rsa, ed) = (rsa.to_str().unwrap(), ed.to_str().unwrap());
    for raw in send_signed_by("k1, k2", "rsa, ed25519", &[rsa, ed]) {
        assert_eq!(
            verify(&both, &raw).await,
            vec![DkimResult::Pass, DkimResult::Pass]
        );
    }
}

/// Over SMTP the signatures are made while the transaction opens and go in
/// front of the body after the server's 354: what the server receives
/// verifies, with both keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_over_smtp_carry_signatures_that_verify() {
    let server = crate::support::smtp::SmtpServer::start().await;
    let s = Sandbox::with_sample_papers();
    for i in 0..6 {
        s.run(&["subscribers", "add", &format!("r{i}@example.org")])
            .ok();
    }
    let keys = format!(
        "{}, {}",
        support::fixture("dkim-rsa.pem").display(),
        support::fixture("dkim-ed25519.key").display()
    );
    let mut env = crate::support::child::smtp_env(server.port(), 3);
    for (k, v) in [
        (
            "PAPERPOST__MAIL__FROM",
            "Paperpost <digest@news.example.org>",
        ),
        ("PAPERPOST__MAIL__DKIM__SELECTOR", "pp2026r, pp2026e"),
        ("PAPERPOST__MAIL__DKIM__ALGORITHM", "rsa, ed25519"),
        ("PAPERPOST__MAIL__DKIM__KEY_FILE", keys.as_str()),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    let out =
        tokio::task::spawn_blocking(move || s.run_env(&env, &["send", "--date", "2024-03-11"]))
            .await
            .unwrap();
    out.ok();
    let both = Dns::with_keys(&[
        ("pp2026r", record("rsa", "dkim-rsa.pub")),
        ("pp2026e", record("ed25519", "dkim-ed25519.pub")),
    ]);
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 6);
    for m in accepted {
        assert_eq!(
            verify(&both, &m.data).await,
            vec![DkimResult::Pass, DkimResult::Pass],
            "{}",
            m.to
        );
    }
}
