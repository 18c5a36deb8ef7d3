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
