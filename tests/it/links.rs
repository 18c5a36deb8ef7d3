//! The links in a real sent message, against a real `paperpost run` over a real
//! socket: the List-Unsubscribe URL is taken from the .eml and POSTed as a
//! mailbox provider would (RFC 8058), and the next edition skips the reader.

use crate::support::{Sandbox, child::never_fires, daemon::TestDaemon, http};

/// The List-Unsubscribe URL of the message written for `email`.
pub fn list_unsubscribe(s: &Sandbox, email: &str) -> String {
    for e in std::fs::read_dir(s.path("data/outbox")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        if !text
            .lines()
            .any(|l| l.starts_with("To:") && l.contains(email))
        {
            continue;
        }
        let line = text
            .lines()
            .find(|l| l.starts_with("List-Unsubscribe:"))
            .expect("List-Unsubscribe header");
        let start = line.find('<').unwrap() + 1;
        let end = line[start..].find('>').unwrap() + start;
        return line[start..end].to_string();
    }
    panic!("no message to {email}");
}

fn outbox_count(s: &Sandbox) -> usize {
    std::fs::read_dir(s.path("data/outbox")).map_or(0, |d| d.count())
}

#[test]
fn one_click_from_a_sent_message_unsubscribes_and_the_next_edition_skips_them() {
    let s = Sandbox::with_sample_papers();
    s.run(&["subscribers", "add", "ada@example.org"]).ok();
    s.run(&["subscribers", "add", "bob@example.org"]).ok();
    let port = http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = [
        ("PAPERPOST__HTTP__BIND", addr.clone()),
        ("PAPERPOST__HTTP__PUBLIC_URL", format!("http://{addr}")),
    ];
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    s.run_env(&envs, &["send", "--date", "2024-03-11"]).ok();
    assert_eq!(outbox_count(&s), 2);
    let url = list_unsubscribe(&s, "ada@example.org");
    let path = url
        .strip_prefix(&format!("http://{addr}"))
        .expect("our base URL");

    let daemon = TestDaemon::spawn(&s, &never_fires(env), &["run"]);
    http::wait_healthy(&addr);
    let r = http::request(
        &addr,
        "POST",
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"List-Unsubscribe=One-Click",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body.contains("You are unsubscribed"));

    let ada = s.subscriber("ada@example.org").unwrap();
    assert_eq!(ada["status"], "unsubscribed");
    assert_eq!(ada["unsubscribed_by"], "link");
    assert_eq!(s.subscriber("bob@example.org").unwrap()["status"], "active");

    // SIGTERM: the daemon and its web endpoint stop, exit 0.
    let out = daemon.stop_blocking();
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The next edition goes to Bob only.
    let papers = s.write(
        "next.txt",
        "A later paper\n\nAn abstract for the next day.\n",
    );
    s.run(&[
        "papers",
        "import",
        papers.to_str().unwrap(),
        "--date",
        "2024-03-12",
    ])
    .ok();
    let out = s.run(&["send", "--date", "2024-03-12"]);
    assert!(out.ok().contains("1 sent"), "{}", out.stdout);
    assert_eq!(outbox_count(&s), 3);
}
