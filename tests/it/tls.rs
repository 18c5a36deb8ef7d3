//! STARTTLS, implicit TLS and AUTH against the test SMTP server with a
//! certificate from a private CA (`mail.smtp.ca_file`), driving the real
//! binary: the password only ever travels encrypted.

use crate::support;

use crate::support::{
    Run, Sandbox,
    child::{DATE, run, setup, smtp_env},
    smtp::{SmtpServer, Tls},
};

fn env(server: &SmtpServer, tls: &str, password: &str, ca: bool) -> Vec<(String, String)> {
    let mut env = smtp_env(server.port(), 2);
    let ca_file = if ca {
        support::fixture("smtp-ca.pem").display().to_string()
    } else {
        String::new()
    };
    for (k, v) in [
        // The certificate names localhost.
        ("PAPERPOST__MAIL__SMTP__HOST", "localhost"),
        ("PAPERPOST__MAIL__SMTP__TLS", tls),
        ("PAPERPOST__MAIL__SMTP__USERNAME", "digest"),
        ("PAPERPOST__MAIL__SMTP__PASSWORD", password),
        ("PAPERPOST__MAIL__SMTP__CA_FILE", &ca_file),
        ("PAPERPOST__MAIL__RETRY__MAX_AGE", "1s"),
    ] {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// `send` of the sample edition, which must end with `summary` ("3 sent, 0 failed").
async fn send(s: &Sandbox, env: &[(String, String)], summary: &str) -> Run {
    let out = run(s, env, &["send", "--date", DATE]).await;
    assert!(out.ok().contains(summary), "{}\n{}", out.stdout, out.stderr);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_auth_deliver_with_the_password_encrypted() {
    let server = SmtpServer::start_secure(Tls::Starttls, Some(("digest", "s3cret"))).await;
    let s = setup(3);
    send(
        &s,
        &env(&server, "starttls", "s3cret", true),
        "3 sent, 0 failed",
    )
    .await;
    let logins = server.logins();
    assert!(!logins.is_empty());
    assert!(
        logins.iter().all(|l| l.encrypted && l.accepted),
        "{logins:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_and_auth_deliver() {
    let server = SmtpServer::start_secure(Tls::Implicit, Some(("digest", "s3cret"))).await;
    let s = setup(3);
    send(&s, &env(&server, "tls", "s3cret", true), "3 sent, 0 failed").await;
    assert!(server.logins().iter().all(|l| l.encrypted && l.accepted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_nobody_vouches_for_is_refused_before_the_password() {
    let server = SmtpServer::start_secure(Tls::Starttls, Some(("digest", "s3cret"))).await;
    let s = setup(2);
    // Without mail.smtp.ca_file the private CA is not trusted.
    let out = send(
        &s,
        &env(&server, "starttls", "s3cret", false),
        "0 sent, 2 failed",
    )
    .await;
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );
    assert!(server.logins().is_empty(), "{:?}", server.logins());
    assert!(server.accepted().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_required_but_not_offered_sends_no_password() {
    // A plain server (no STARTTLS) that would take a password in clear.
    let server = SmtpServer::start_secure(Tls::None, Some(("digest", "s3cret"))).await;
    let s = setup(2);
    send(
        &s,
        &env(&server, "starttls", "s3cret", true),
        "0 sent, 2 failed",
    )
    .await;
    assert!(server.logins().is_empty(), "{:?}", server.logins());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_without_suppressing_anyone() {
    let server = SmtpServer::start_secure(Tls::Starttls, Some(("digest", "s3cret"))).await;
    let s = setup(2);
    send(
        &s,
        &env(&server, "starttls", "wrong", true),
        "0 sent, 2 failed",
    )
    .await;
    let logins = server.logins();
    assert!(!logins.is_empty() && logins.iter().all(|l| l.encrypted && !l.accepted));
    for sub in s.subscribers() {
        assert_eq!(sub["status"], "active", "{sub}");
    }
}

#[test]
fn a_ca_file_that_holds_no_certificate_stops_start_up_naming_the_key() {
    let s = Sandbox::with_sample_papers();
    s.write("bad.pem", "not a certificate");
    let bad = s.path("bad.pem").display().to_string();
    let out = s.run_env(
        &[
            ("PAPERPOST__MAIL__TRANSPORT", "smtp"),
            ("PAPERPOST__MAIL__SMTP__CA_FILE", &bad),
        ],
        &["send", "--date", DATE],
    );
    assert!(
        out.first_error_line().contains("mail.smtp.ca_file"),
        "{}",
        out.stderr
    );
}
