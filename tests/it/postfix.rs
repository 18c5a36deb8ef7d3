//! End to end through a real MTA: `paperpost send` hands an edition to Postfix
//! on loopback, which delivers it into a Maildir; every message must arrive
//! once, with the right headers.
//!
//! `.ci/postfix.sh` installs and starts Postfix and prints the two variables
//! this test reads (PAPERPOST_POSTFIX_SMTP, PAPERPOST_POSTFIX_MAILDIR). Without
//! them the test is skipped with a message, except under CI, where it fails.

use crate::support;

use std::collections::HashMap;

use crate::support::{Sandbox, postfix::Postfix};
use mail_parser::MessageParser;

/// Messages in the Maildir delivered to one of `wanted`, by recipient.
fn delivered(maildir: &std::path::Path, wanted: &[String]) -> HashMap<String, Vec<Vec<u8>>> {
    let mut out: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(raw) = std::fs::read(e.path()) else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..raw.len().min(4096)]).to_string();
            let Some(to) = head
                .lines()
                .find_map(|l| l.strip_prefix("Delivered-To: "))
                .map(|s| s.trim().to_string())
            else {
                continue;
            };
            if wanted.contains(&to) {
                out.entry(to).or_default().push(raw);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edition_through_postfix_arrives_once_per_subscriber() {
    let Some(postfix) = Postfix::require(false) else {
        return;
    };
    let s = Sandbox::with_sample_papers();
    // Addresses unique to this run: the Maildir keeps earlier runs' mail.
    let run_id = format!("{:x}", chrono::Utc::now().timestamp_micros());
    let emails: Vec<String> = (0..25)
        .map(|i| format!("pp{run_id}-{i}@example.org"))
        .collect();
    let mut csv = String::from("email,name,topics,format\n");
    for (i, e) in emails.iter().enumerate() {
        let format = if i % 4 == 0 { "text" } else { "html" };
        csv.push_str(&format!("{e},Lector Ñandú {i},llm,{format}\n"));
    }
    let f = s.write("subs.csv", csv);
    s.run(&["subscribers", "import", f.to_str().unwrap()]).ok();

    let mut env = postfix.env();
    env.push(("PAPERPOST__MAIL__CONCURRENCY".into(), "4".into()));
    env.push((
        "PAPERPOST__HTTP__PUBLIC_URL".into(),
        "https://papers.example.net/pp".into(),
    ));
    let out = s.run_env(&env, &["send", "--date", "2024-03-11"]);
    assert!(
        out.ok().contains("25 sent, 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    // Postfix delivers asynchronously: wait until every message is in and
    // its queue is empty, so a duplicate would have landed too.
    postfix.wait_drained("every message", || {
        delivered(&postfix.maildir, &emails).len() == emails.len()
    });
    let got = delivered(&postfix.maildir, &emails);
    assert_eq!(
        got.len(),
        emails.len(),
        "missing: {:?}",
        emails
            .iter()
            .filter(|e| !got.contains_key(*e))
            .collect::<Vec<_>>()
    );

    let rows: Vec<serde_json::Value> = serde_json::from_str(
        s.run(&["deliveries", "--date", "2024-03-11", "--json"])
            .ok(),
    )
    .unwrap();
    for (i, email) in emails.iter().enumerate() {
        let copies = &got[email];
        assert_eq!(copies.len(), 1, "{email} got {} copies", copies.len());
        let m = MessageParser::default().parse(&copies[0]).unwrap();
        assert_eq!(
            m.to().unwrap().first().unwrap().address(),
            Some(email.as_str())
        );
        assert_eq!(
            m.to().unwrap().first().unwrap().name(),
            Some(format!("Lector Ñandú {i}").as_str())
        );
        assert_eq!(
            m.from().unwrap().first().unwrap().address(),
            Some("digest@paperpost.example.org")
        );
        assert!(
            m.subject()
                .unwrap()
                .starts_with("Paperpost Daily, 11 Mar 2024: "),
            "{:?}",
            m.subject()
        );
        let unsub = m.header_raw("List-Unsubscribe").unwrap();
        assert!(
            unsub.contains("<https://papers.example.net/pp/unsubscribe/"),
            "{unsub}"
        );
        assert_eq!(
            m.header_raw("List-Unsubscribe-Post").unwrap().trim(),
            "List-Unsubscribe=One-Click"
        );
        assert!(
            m.header_raw("List-Id")
                .unwrap()
                .contains("<daily.paperpost.example.org>")
        );
        let row = rows.iter().find(|r| r["email"] == email.as_str()).unwrap();
        assert_eq!(row["status"], "sent");
        assert_eq!(
            Some(row["message_id"].as_str().unwrap().trim_matches(['<', '>'])),
            m.message_id()
        );
        assert!(
            row["smtp_reply"].as_str().unwrap().starts_with("250"),
            "{row}"
        );
        let html = m.body_html(0);
        if i % 4 == 0 {
            assert!(!support::has_html_part(&m), "format=text has no HTML part");
        } else {
            assert!(support::has_html_part(&m), "format=html has an HTML part");
            assert!(html.unwrap().contains("Hello Lector Ñandú"));
        }
        assert!(
            m.body_text(0)
                .unwrap()
                .contains(&format!("Hello Lector Ñandú {i},"))
        );
    }
}

/// Issue 18 end to end: an edition through Postfix with signed VERP; the
/// mailboxes that do not exist, are full, fail for now or refuse by policy
/// come back later as Postfix's own delivery status notifications, to the
/// VERP addresses, in the bounce domain's Maildir; `bounces ingest
/// --maildir` reads them. Exactly the missing mailboxes end bounced; the
/// full and the busy one are soft (and active), the blocked one a block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_from_postfix_reach_exactly_their_subscribers() {
    let Some(postfix) = Postfix::require(false) else {
        return;
    };
    let bounces = std::path::PathBuf::from(
        std::env::var("PAPERPOST_POSTFIX_BOUNCES").expect("PAPERPOST_POSTFIX_BOUNCES"),
    );
    let s = Sandbox::with_sample_papers();
    let run_id = format!("{:x}", chrono::Utc::now().timestamp_micros());
    let mut emails: Vec<String> = (0..14)
        .map(|i| format!("ok{run_id}-{i}@example.org"))
        .collect();
    let special = [
        "g0@ghost.test",
        "g1@ghost.test",
        "g2@ghost.test",
        "f@full.test",
        "b@busy.test",
        "x@blocked.test",
    ];
    emails.extend(special.iter().map(|e| format!("{run_id}{e}")));
    let mut csv = String::from("email\n");
    for e in &emails {
        csv.push_str(&format!("{e}\n"));
    }
    let f = s.write("subs.csv", csv);
    s.run(&["subscribers", "import", f.to_str().unwrap()]).ok();
    // Earlier runs' reports stay in the Maildir: set them aside first (each
    // run waited for its own to land).
    let _ = std::fs::create_dir_all(bounces.join("cur"));
    for e in std::fs::read_dir(bounces.join("new"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::rename(e.path(), bounces.join("cur").join(e.file_name()));
    }
    let mut env = postfix.env();
    for (k, v) in [
        ("PAPERPOST__MAIL__BOUNCE__VERP_DOMAIN", "bounces.test"),
        (
            "PAPERPOST__MAIL__FROM",
            "Paperpost <digest@news.example.org>",
        ),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    let out = s.run_env(&env, &["send", "--date", "2024-03-11"]);
    assert!(
        out.ok().contains("20 sent, 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let reports = || std::fs::read_dir(bounces.join("new")).map_or(0, |d| d.count());
    postfix.wait_drained("six reports", || reports() >= 6);

    let dir = bounces.to_str().unwrap();
    let out = s.run_env(&env, &["bounces", "ingest", "--maildir", dir]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let status = |e: &str| {
        s.subscriber(e).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for e in &emails {
        let want = if e.contains("@ghost.test") {
            "bounced"
        } else {
            "active"
        };
        assert_eq!(status(e), want, "{e}");
    }
    let listed = s.run_env(&env, &["bounces", "list", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(listed.ok()).unwrap();
    let kind_of = |suffix: &str| {
        listed
            .iter()
            .filter(|r| r["email"].as_str().is_some_and(|e| e.ends_with(suffix)))
            .map(|r| {
                (
                    r["kind"].as_str().unwrap().to_string(),
                    r["matched_by"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kind_of("@ghost.test"),
        vec![("hard".to_string(), "verp".to_string()); 3],
        "{listed:#?}"
    );
    assert_eq!(
        kind_of("@full.test"),
        vec![("soft".to_string(), "verp".to_string())]
    );
    assert_eq!(
        kind_of("@busy.test"),
        vec![("soft".to_string(), "verp".to_string())]
    );
    assert_eq!(
        kind_of("@blocked.test"),
        vec![("block".to_string(), "verp".to_string())]
    );
    assert_eq!(listed.len(), 6, "{listed:#?}");
}
