//! `paperpost subscribers ...` against a real SQLite file, through the real binary.

use crate::support;

use crate::support::Sandbox;

#[test]
fn add_list_edit_remove() {
    let s = Sandbox::new();
    let out = s.run(&[
        "subscribers",
        "add",
        "Ada@Example.org",
        "--name",
        "Ada Lovelace",
        "--topics",
        "llm, time series",
        "--timezone",
        "Europe/London",
        "--format",
        "text",
        "--max-papers",
        "7",
    ]);
    assert!(
        out.ok().contains("Added Ada Lovelace <Ada@Example.org>"),
        "{}",
        out.stdout
    );

    let all = s.subscribers();
    assert_eq!(all.len(), 1);
    let ada = &all[0];
    assert_eq!(ada["email"], "Ada@Example.org");
    assert_eq!(ada["name"], "Ada Lovelace");
    assert_eq!(ada["topics"], serde_json::json!(["llm", "time series"]));
    assert_eq!(ada["timezone"], "Europe/London");
    assert_eq!(ada["format"], "text");
    assert_eq!(ada["max_papers"], 7);
    assert_eq!(ada["status"], "active");
    assert_eq!(ada["source"], "cli");

    // The same address in another case is the same subscriber.
    let dup = s.run(&["subscribers", "add", "ada@EXAMPLE.org"]);
    assert!(
        dup.fails().contains("already a subscriber"),
        "{}",
        dup.stderr
    );
    assert_eq!(s.subscribers().len(), 1);

    let out = s.run(&[
        "subscribers",
        "edit",
        "ada@example.org",
        "--topics",
        "",
        "--max-papers",
        "3",
    ]);
    assert!(out.ok().starts_with("Updated"), "{}", out.stdout);
    let ada = s.subscriber("ada@example.org").unwrap();
    assert_eq!(ada["topics"], serde_json::json!([]));
    assert_eq!(ada["max_papers"], 3);
    assert_eq!(
        ada["name"], "Ada Lovelace",
        "fields not given stay as they were"
    );

    let table = s.run(&["subscribers", "list"]);
    assert!(table.ok().contains("Ada@Example.org"));
    assert!(table.stdout.contains("1 subscriber"));

    let out = s.run(&["subscribers", "remove", "ada@example.org"]);
    assert!(out.ok().contains("Unsubscribed"), "{}", out.stdout);
    let ada = s.subscriber("ada@example.org").unwrap();
    assert_eq!(ada["status"], "unsubscribed");
    assert_eq!(ada["unsubscribed_by"], "cli");
    assert_eq!(
        s.run(&["subscribers", "list", "--status", "active", "--json"])
            .ok()
            .trim(),
        "[]"
    );

    s.run(&["subscribers", "remove", "ada@example.org", "--purge"])
        .ok();
    assert!(s.subscribers().is_empty());
    let missing = s.run(&[
        "subscribers",
        "edit",
        "ada@example.org",
        "--max-papers",
        "3",
    ]);
    assert!(
        missing
            .fails()
            .contains("no subscriber with address ada@example.org")
    );
}

#[test]
fn add_rejects_bad_values_with_their_field() {
    let s = Sandbox::new();
    let cases: &[(&[&str], &str)] = &[
        (&["not-an-address"], "invalid email address"),
        (
            &["x@example.org", "--name", "Eve\r\nBcc: all@example.org"],
            "control characters",
        ),
        (
            &["x@example.org", "--timezone", "Mars/Olympus"],
            "unknown time zone \"Mars/Olympus\"",
        ),
        (&["x@example.org", "--max-papers", "0"], "out of range"),
        (&["x@example.org", "--max-papers", "51"], "out of range"),
        (
            &["x@example.org", "--name", &"n".repeat(201)],
            "at most 200",
        ),
        (
            &[
                "x@example.org",
                "--topics",
                &(0..21)
                    .map(|i| format!("t{i}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ],
            "at most 20",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["subscribers", "add"];
        full.extend_from_slice(args);
        let out = s.run(&full);
        assert!(out.fails().contains(expected), "{args:?}: {}", out.stderr);
    }
    let bad_format = s.run(&["subscribers", "add", "x@example.org", "--format", "pdf"]);
    assert_eq!(
        bad_format.code, 2,
        "clap rejects unknown formats: {}",
        bad_format.stderr
    );
    assert!(s.subscribers().is_empty());
}

const FULL_CSV: &str = "email,name,topics,timezone,format,max_papers\n\
ada@example.org,Ada Lovelace,llm;time series,Europe/London,html,5\n\
\"grace@example.org\",\"Hopper, Grace\",compilers,America/New_York,text,20\n\
zoe@example.org,Zoë Ñúñez-Øster,,,,\n";

#[test]
fn import_applies_defaults_and_updates_instead_of_duplicating() {
    let s = Sandbox::new();
    let f = s.write("subs.csv", FULL_CSV);
    let out = s.run(&["subscribers", "import", f.to_str().unwrap()]);
    assert!(
        out.ok()
            .contains("3 rows: 3 added, 0 updated, 0 unchanged, 0 skipped"),
        "{}",
        out.stdout
    );
    let grace = s.subscriber("grace@example.org").unwrap();
    assert_eq!(grace["name"], "Hopper, Grace");
    assert_eq!(grace["format"], "text");
    assert_eq!(grace["max_papers"], 20);
    let zoe = s.subscriber("zoe@example.org").unwrap();
    assert_eq!(zoe["name"], "Zoë Ñúñez-Øster");
    assert_eq!(zoe["timezone"], "UTC", "empty cells take the defaults");
    assert_eq!(zoe["format"], "html");
    assert_eq!(zoe["max_papers"], 10);
    assert_eq!(zoe["source"], "import");

    // Re-import: nothing changes.
    let again = s.run(&["subscribers", "import", f.to_str().unwrap()]);
    assert!(
        again.ok().contains("0 added, 0 updated, 3 unchanged"),
        "{}",
        again.stdout
    );

    // Only the email column; a known address in another case updates nothing it
    // does not name, and adds no second row.
    let f2 = s.write("emails.csv", "email\nADA@example.org\nnew@example.org\n");
    let out = s.run(&["subscribers", "import", f2.to_str().unwrap()]);
    assert!(
        out.ok().contains("1 added, 0 updated, 1 unchanged"),
        "{}",
        out.stdout
    );
    assert_eq!(s.subscribers().len(), 4);
    assert_eq!(
        s.subscriber("ada@example.org").unwrap()["timezone"],
        "Europe/London"
    );

    let f3 = s.write("change.csv", "email,max_papers\nada@example.org,9\n");
    assert!(
        s.run(&["subscribers", "import", f3.to_str().unwrap()])
            .ok()
            .contains("1 updated")
    );
    assert_eq!(s.subscriber("ada@example.org").unwrap()["max_papers"], 9);
}

#[test]
fn import_never_resubscribes_and_names_who_was_skipped() {
    let s = Sandbox::new();
    s.run(&[
        "subscribers",
        "add",
        "ada@example.org",
        "--name",
        "Ada Lovelace",
    ])
    .ok();
    s.run(&["subscribers", "remove", "ada@example.org"]).ok();
    let f = s.write(
        "subs.csv",
        "email,name\nada@example.org,Ada L.\nbob@example.org,\n",
    );
    let out = s.run(&["subscribers", "import", f.to_str().unwrap()]);
    let text = out.ok();
    assert!(text.contains("1 added"), "{text}");
    assert!(
        text.contains("skipped Ada Lovelace <ada@example.org>"),
        "{text}"
    );
    let ada = s.subscriber("ada@example.org").unwrap();
    assert_eq!(ada["status"], "unsubscribed");
    assert_eq!(
        ada["name"], "Ada Lovelace",
        "a skipped subscriber is not touched"
    );
}

/// Each bad file: what its first error line must say. Nothing may change.
#[test]
fn bad_csv_rows_are_named_and_nothing_is_imported() {
    let s = Sandbox::new();
    let f = s.write("ok.csv", "email\nkeep@example.org\n");
    s.run(&["subscribers", "import", f.to_str().unwrap()]).ok();
    let before = s.subscribers();

    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "bad-email.csv",
            b"email,name\na@example.org,A\nb@example.org,B\nnot-an-email,C\n".to_vec(),
            ":4: email: invalid email address".into(),
        ),
        (
            "dup.csv",
            b"email\na@example.org\nb@example.org\nA@EXAMPLE.org\n".to_vec(),
            ":4: duplicate email A@EXAMPLE.org (first on line 2)".into(),
        ),
        (
            "ctrl.csv",
            b"email,name\na@example.org,\"Eve\nBcc: x@y.z\"\n".to_vec(),
            ":2: name:".into(),
        ),
        (
            "tz.csv",
            b"email,timezone\na@example.org,Mars/Base\n".to_vec(),
            ":2: timezone: unknown time zone \"Mars/Base\"".into(),
        ),
        (
            "max.csv",
            b"email,max_papers\na@example.org,5\nb@example.org,51\n".to_vec(),
            ":3: max_papers: max papers 51 is out of range".into(),
        ),
        (
            "format.csv",
            b"email,format\na@example.org,pdf\n".to_vec(),
            ":2: format: unknown format".into(),
        ),
        (
            "fields.csv",
            b"email,name\na@example.org,A\nb@example.org,B,extra\n".to_vec(),
            ":3: expected 2 fields like the header, found 3".into(),
        ),
        (
            "header.csv",
            b"email,nickname\na@example.org,A\n".to_vec(),
            ":1: unknown column \"nickname\"".into(),
        ),
        (
            "noemail.csv",
            b"name\nAda\n".to_vec(),
            ":1: the header has no email column".into(),
        ),
        ("empty.csv", Vec::new(), ":1: the file is empty".into()),
        (
            "latin1.csv",
            b"email,name\na@example.org,Zo\xeb\n".to_vec(),
            ":2: not valid UTF-8".into(),
        ),
        (
            "topics.csv",
            format!("email,topics\na@example.org,{}\n", "x".repeat(65)).into_bytes(),
            ":2: topics: topic".into(),
        ),
        (
            "name.csv",
            format!("email,name\na@example.org,{}\n", "n".repeat(201)).into_bytes(),
            ":2: name: name is 201 characters".into(),
        ),
    ];
    for (name, body, expected) in cases {
        let p = s.write(name, &body);
        let out = s.run(&["subscribers", "import", p.to_str().unwrap()]);
        out.fails();
        let first = out.first_error_line();
        assert!(first.starts_with(p.to_str().unwrap()), "{name}: {first}");
        assert!(
            first.contains(&expected),
            "{name}: expected {expected:?} in {first:?}"
        );
        assert_eq!(s.subscribers(), before, "{name} changed the database");
    }
}

#[test]
fn a_huge_line_is_refused_without_reading_it_all() {
    let s = Sandbox::new();
    let mut body = b"email,name\nok@example.org,Ok\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 50 * 1024 * 1024));
    let p = s.write("huge.csv", &body);
    let out = s.run(&["subscribers", "import", p.to_str().unwrap()]);
    out.fails();
    assert!(
        out.first_error_line()
            .ends_with(":3: line is longer than 64 KiB"),
        "{}",
        out.stderr
    );
    assert!(s.subscribers().is_empty());
}

#[test]
fn multi_line_quoted_fields_keep_physical_line_numbers() {
    let s = Sandbox::new();
    let p = s.write(
        "ml.csv",
        "email,name\na@example.org,\"Two\nlines\"\nbad,Eve\n",
    );
    let out = s.run(&["subscribers", "import", p.to_str().unwrap()]);
    out.fails();
    // Line 2 holds a record that spans two physical lines; the name is rejected there first.
    assert!(
        out.first_error_line().contains(":2: name:"),
        "{}",
        out.stderr
    );
}

#[test]
fn export_round_trips_through_import() {
    let s = Sandbox::new();
    let f = s.write("subs.csv", FULL_CSV);
    s.run(&["subscribers", "import", f.to_str().unwrap()]).ok();
    s.run(&["subscribers", "add", "gone@example.org"]).ok();
    s.run(&["subscribers", "remove", "gone@example.org"]).ok();
    let exported = s.run(&["subscribers", "export"]);
    let csv = exported.ok().to_string();
    assert!(
        csv.starts_with("email,name,topics,timezone,format,max_papers\n"),
        "{csv}"
    );
    assert!(
        csv.contains("ada@example.org,Ada Lovelace,llm;time series,Europe/London,html,5"),
        "{csv}"
    );
    assert!(csv.contains("\"Hopper, Grace\""), "{csv}");
    assert!(
        !csv.contains("gone@example.org"),
        "only active subscribers by default"
    );

    let other = Sandbox::new();
    let p = other.write("in.csv", &csv);
    other
        .run(&["subscribers", "import", p.to_str().unwrap()])
        .ok();
    let out = other.path("out.csv");
    other
        .run(&["subscribers", "export", out.to_str().unwrap()])
        .ok();
    assert_eq!(std::fs::read_to_string(out).unwrap(), csv);
}

const FILE_V1: &str = r#"
[[subscriber]]
email = "ada@example.org"
name = "Ada Lovelace"
topics = ["llm"]

[[subscriber]]
email = "bob@example.org"

[[subscriber]]
email = "cli@example.org"
"#;

#[tokio::test]
async fn sync_manages_only_file_subscribers_and_respects_unsubscribes() {
    let s = Sandbox::new();
    s.run(&[
        "subscribers",
        "add",
        "cli@example.org",
        "--name",
        "Cli Person",
    ])
    .ok();
    s.write("config/subscribers.toml", FILE_V1);
    let out = s.run(&["subscribers", "sync"]);
    let text = out.ok();
    assert!(text.contains("3 listed: 2 added"), "{text}");
    assert!(
        text.contains("skipped Cli Person <cli@example.org>: added by cli"),
        "{text}"
    );
    assert_eq!(s.subscriber("ada@example.org").unwrap()["source"], "file");
    assert_eq!(s.subscriber("cli@example.org").unwrap()["source"], "cli");

    // Ada unsubscribes by link; Bob is dropped from the file; Ada's topics change.
    {
        let pool = s.pool().await;
        let mut conn = pool.acquire().await.unwrap();
        let ada = paperpost::store::subscribers::get_by_email(&mut conn, "ada@example.org")
            .await
            .unwrap();
        paperpost::store::subscribers::end_subscription(
            &mut conn,
            ada.id,
            paperpost::domain::SubscriberStatus::Unsubscribed,
            paperpost::domain::EndedBy::Link,
        )
        .await
        .unwrap();
        pool.close().await;
    }
    s.write(
        "config/subscribers.toml",
        "[[subscriber]]\nemail = \"ada@example.org\"\nname = \"Ada Lovelace\"\ntopics = [\"rl\"]\n",
    );
    let out = s.run(&["subscribers", "sync", "--dry-run"]);
    assert!(
        out.ok().contains("would be deactivated bob@example.org"),
        "{}",
        out.stdout
    );
    assert_eq!(
        s.subscriber("bob@example.org").unwrap()["status"],
        "active",
        "dry run changes nothing"
    );

    assert!(
        out.stdout
            .contains("without --force, a sync would be refused"),
        "{}",
        out.stdout
    );
    // Bob is the only one the file still sends to: removing him is all of
    // them, which takes --force.
    let out = s.run(&["subscribers", "sync", "--force"]);
    let text = out.ok();
    assert!(text.contains("deactivated bob@example.org"), "{text}");
    assert!(
        text.contains(
            "skipped Ada Lovelace <ada@example.org>: unsubscribed by link; they stay unsubscribed"
        ),
        "{text}"
    );
    assert_eq!(
        s.subscriber("ada@example.org").unwrap()["status"],
        "unsubscribed"
    );
    assert_eq!(
        s.subscriber("bob@example.org").unwrap()["status"],
        "unsubscribed"
    );
    assert_eq!(
        s.subscriber("cli@example.org").unwrap()["status"],
        "active",
        "never touched"
    );

    // Listing Bob again brings him back; --resubscribe brings Ada back.
    s.write(
        "config/subscribers.toml",
        "[[subscriber]]\nemail = \"ada@example.org\"\ntopics = [\"rl\"]\n[[subscriber]]\nemail = \"bob@example.org\"\n",
    );
    let out = s.run(&["subscribers", "sync", "--resubscribe", "ada@example.org"]);
    assert!(out.ok().contains("2 resubscribed"), "{}", out.stdout);
    let ada = s.subscriber("ada@example.org").unwrap();
    assert_eq!(ada["status"], "active");
    assert_eq!(ada["topics"], serde_json::json!(["rl"]));
    assert_eq!(s.subscriber("bob@example.org").unwrap()["status"], "active");
}

#[test]
fn a_bad_subscriber_file_names_its_line() {
    let s = Sandbox::new();
    let cases = [
        (
            "[[subscriber]]\nemail = \"a@example.org\"\n\n[[subscriber]]\nemail = \"nope\"\n",
            ":5: email: invalid email address",
        ),
        (
            "[[subscriber]]\nemail = \"a@example.org\"\ncolour = \"red\"\n",
            ":3: unknown field `colour`",
        ),
        (
            "[[subscriber]]\nemail = \"a@example.org\"\n[[subscriber]]\nemail = \"A@example.org\"\n",
            ":4: A@example.org is listed twice",
        ),
        (
            "[[subscriber]]\nemail = \"a@example.org\"\nmax_papers = 99\n",
            ":3: max_papers: max papers 99 is out of range",
        ),
        ("[[subscriber]\n", ":1:"),
    ];
    for (body, expected) in cases {
        let p = s.write("config/subscribers.toml", body);
        let out = s.run(&["subscribers", "sync"]);
        out.fails();
        let first = out.first_error_line();
        assert!(
            first.starts_with(p.to_str().unwrap()) || first.starts_with("config/subscribers.toml"),
            "{first}"
        );
        assert!(
            first.contains(expected),
            "expected {expected:?} in {first:?}"
        );
    }
    assert!(s.subscribers().is_empty());
    let missing = s.run(&["subscribers", "sync", "--file", "nowhere.toml"]);
    assert!(
        missing.fails().contains("nowhere.toml: cannot read"),
        "{}",
        missing.stderr
    );
}

#[test]
fn the_database_holds_no_usable_token() {
    if crate::support::on_postgres("reads SQLite's file byte by byte") {
        return;
    }
    let s = Sandbox::new();
    s.run(&["subscribers", "add", "ada@example.org"]).ok();
    let db = std::fs::read(s.db_path()).unwrap();
    let wal = std::fs::read(s.path("data/paperpost.db-wal")).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (uuid, hash): (String, String) = rt.block_on(async {
        let pool = s.pool().await;
        crate::on_db!(&pool, |p| sqlx::query_as(
            p.sql("SELECT uuid, token_hash FROM subscribers")
        )
        .fetch_one(p)
        .await)
        .unwrap()
    });
    let keys = paperpost::security::Keys::from_bytes(support::SECRET.as_bytes());
    let token = keys.subscriber_token(&uuid);
    assert_eq!(hash, paperpost::security::token_hash(&token));
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the raw token is stored"
        );
    }
    let found = rt.block_on(async {
        let pool = s.pool().await;
        let mut conn = pool.acquire().await.unwrap();
        let by_token = paperpost::store::subscribers::find_by_token(&mut conn, &token)
            .await
            .unwrap();
        let by_hash = paperpost::store::subscribers::find_by_token(&mut conn, &hash)
            .await
            .unwrap();
        (by_token.map(|s| s.email.to_string()), by_hash.is_some())
    });
    assert_eq!(
        found,
        (Some("ada@example.org".to_string()), false),
        "the stored hash is not a token"
    );
}

#[tokio::test]
async fn unbounce_brings_back_subscribers_bounced_since_a_time_or_by_address() {
    let s = Sandbox::new();
    for e in ["recent@example.org", "old@example.org", "gone@example.org"] {
        s.run(&["subscribers", "add", e]).ok();
    }
    let pool = s.pool().await;
    for e in ["recent@example.org", "old@example.org"] {
        let mut conn = pool.acquire().await.unwrap();
        let sub = paperpost::store::subscribers::get_by_email(&mut conn, e)
            .await
            .unwrap();
        paperpost::store::subscribers::end_subscription(
            &mut conn,
            sub.id,
            paperpost::domain::SubscriberStatus::Bounced,
            paperpost::domain::EndedBy::Bounce,
        )
        .await
        .unwrap();
    }
    crate::on_db!(&pool, |p| sqlx::query(p.sql("UPDATE subscribers SET unsubscribed_at = unsubscribed_at - 3 * 86400000 WHERE email = 'old@example.org'"))
        .execute(p)
        .await.map(|r| r.rows_affected()))
        .unwrap();
    s.run(&["subscribers", "remove", "gone@example.org"]).ok();

    let out = s.run(&["subscribers", "unbounce", "--since", "1day"]);
    assert!(
        out.ok().contains("1 subscriber is active again"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("recent@example.org"));
    assert_eq!(
        s.subscriber("recent@example.org").unwrap()["status"],
        "active"
    );
    assert_eq!(
        s.subscriber("old@example.org").unwrap()["status"],
        "bounced"
    );

    let out = s.run(&[
        "subscribers",
        "unbounce",
        "old@example.org",
        "gone@example.org",
    ]);
    assert!(
        out.ok().contains("1 subscriber is active again"),
        "{}",
        out.stdout
    );
    assert_eq!(s.subscriber("old@example.org").unwrap()["status"], "active");
    assert_eq!(
        s.subscriber("gone@example.org").unwrap()["status"],
        "unsubscribed",
        "an unsubscribe is never undone by unbounce"
    );

    assert_eq!(s.run(&["subscribers", "unbounce"]).code, 2, "say whom");
    let bad = s.run(&["subscribers", "unbounce", "--since", "last tuesday"]);
    assert!(bad.fails().contains("--since"), "{}", bad.stderr);
}

/// Issue 8, item 7: removing someone a sync had deactivated sticks: a later
/// sync that lists them again does not bring them back.
#[test]
fn remove_sticks_for_someone_a_sync_had_deactivated() {
    let s = Sandbox::new();
    s.write(
        "config/subscribers.toml",
        "[[subscriber]]\nemail = \"bob@example.org\"\n",
    );
    s.run(&["subscribers", "sync"]).ok();
    s.write("config/subscribers.toml", "");
    // Removing everyone the file manages takes --force.
    s.run(&["subscribers", "sync", "--force"]).ok();
    assert_eq!(
        s.subscriber("bob@example.org").unwrap()["unsubscribed_by"],
        "sync"
    );

    let out = s.run(&["subscribers", "remove", "bob@example.org"]);
    assert!(
        out.ok().contains("Unsubscribed bob@example.org"),
        "{}",
        out.stdout
    );
    assert_eq!(
        s.subscriber("bob@example.org").unwrap()["unsubscribed_by"],
        "cli"
    );

    s.write(
        "config/subscribers.toml",
        "[[subscriber]]\nemail = \"bob@example.org\"\n",
    );
    let out = s.run(&["subscribers", "sync"]);
    assert!(
        out.ok().contains("removed on the command line"),
        "{}",
        out.stdout
    );
    assert_eq!(
        s.subscriber("bob@example.org").unwrap()["status"],
        "unsubscribed"
    );
}

/// Issue 8, item 13: a CRLF file (what spreadsheets export) reports the bad
/// row's own line, as an LF file does.
#[test]
fn crlf_files_report_the_right_line() {
    let s = Sandbox::new();
    for (name, eol) in [("lf.csv", "\n"), ("crlf.csv", "\r\n")] {
        let body = [
            "email,name",
            "a@example.org,A",
            "b@example.org,\"Smith, B\"",
            "c@example.org,C",
            "not-an-email,D",
            "",
        ]
        .join(eol);
        let f = s.write(name, body);
        let out = s.run(&["subscribers", "import", f.to_str().unwrap()]);
        let first = out.first_error_line().to_string();
        assert!(
            first.ends_with(&format!(
                "{name}:5: email: invalid email address \"not-an-email\": Missing domain or user"
            )),
            "{first}"
        );
    }
    let f = s.write("ok.csv", "email,name\r\nok@example.org,\"Smith, J\"\r\n");
    s.run(&["subscribers", "import", f.to_str().unwrap()]).ok();
    assert_eq!(
        s.subscriber("ok@example.org").unwrap()["name"],
        "Smith, J",
        "no CR kept"
    );
}

/// Issue 8, item 13: on a first run the error is the first line of standard
/// error; the note about the new secret comes after it.
#[test]
fn on_a_first_run_the_error_comes_first() {
    let s = Sandbox::new();
    let f = s.write("bad.csv", "email\nnot-an-email\n");
    let out = support::output_within(
        s.command()
            .env_remove("PAPERPOST__SECURITY__SECRET")
            .env("PAPERPOST__LOG__LEVEL", "info")
            .args(["subscribers", "import", f.to_str().unwrap()]),
        support::RUN_LIMIT,
    );
    assert!(
        out.first_error_line().contains("bad.csv:2: email"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("created a new secret"),
        "{}",
        out.stderr
    );
    assert!(s.path("data/secret.key").exists());
}

/// Issue 16 item 3: a removed address stays off the list until the operator
/// says otherwise; `subscribers add --again` is that word (a sign-up on the
/// web cannot bring it back, see web::signup).
#[test]
fn an_operator_removal_is_lifted_only_by_add_again() {
    let s = Sandbox::new();
    s.run(&["subscribers", "add", "carol@example.org"]).ok();
    s.run(&["subscribers", "remove", "carol@example.org"]).ok();
    let out = s.run(&["subscribers", "add", "carol@example.org"]);
    assert!(out.fails().contains("--again"), "{}", out.stderr);
    assert_eq!(
        s.subscriber("carol@example.org").unwrap()["status"],
        "unsubscribed"
    );
    let out = s.run(&[
        "subscribers",
        "add",
        "carol@example.org",
        "--again",
        "--max-papers",
        "3",
    ]);
    assert!(
        out.ok().contains("Added again: carol@example.org"),
        "{}",
        out.stdout
    );
    let carol = s.subscriber("carol@example.org").unwrap();
    assert_eq!(carol["status"], "active");
    assert_eq!(carol["max_papers"], 3);
    let out = s.run(&["subscribers", "add", "carol@example.org", "--again"]);
    assert!(
        out.fails().contains("already a subscriber (active)"),
        "{}",
        out.stderr
    );
}

/// Issue 18: `sync --resubscribe` does not bring back someone who reported
/// our mail as spam, unless `--include-complaints` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_resubscribe_needs_include_complaints_for_a_complainer() {
    let s = Sandbox::new();
    s.write(
        "config/subscribers.toml",
        "[[subscriber]]\nemail = \"cy@example.org\"\n",
    );
    s.run(&["subscribers", "sync"]).ok();
    let pool = s.pool().await;
    crate::on_db!(&pool, |p| sqlx::query(p.sql(
        "UPDATE subscribers SET status = 'unsubscribed', unsubscribed_by = 'complaint'"
    ))
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    pool.close().await;
    let out = s.run(&["subscribers", "sync", "--resubscribe", "cy@example.org"]);
    assert!(
        out.ok().contains("reported our mail as spam"),
        "{}",
        out.stdout
    );
    assert_eq!(
        s.subscriber("cy@example.org").unwrap()["status"],
        "unsubscribed"
    );
    let out = s.run(&[
        "subscribers",
        "sync",
        "--resubscribe",
        "cy@example.org",
        "--include-complaints",
    ]);
    out.ok();
    assert_eq!(s.subscriber("cy@example.org").unwrap()["status"], "active");
}
