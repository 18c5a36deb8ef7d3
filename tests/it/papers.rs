//! `paperpost papers ...` against a real SQLite file, through the real binary.

use crate::support::{Sandbox, fixture};

fn sample() -> String {
    fixture("daily_papers-2024-03-11.json")
        .display()
        .to_string()
}

fn ids(list: &[(String, String)]) -> Vec<&str> {
    list.iter().map(|(id, _)| id.as_str()).collect()
}

#[test]
fn hf_import_selects_papers_for_their_date_and_reimport_changes_nothing() {
    let s = Sandbox::new();
    let out = s.run(&["papers", "import", &sample()]);
    let text = out.ok();
    assert!(
        text.contains("5 papers (5 added, 0 updated, 0 unchanged)"),
        "{text}"
    );
    assert!(text.contains("Selected 5 papers for 2024-03-11"), "{text}");
    let day = s.papers(Some("2024-03-11"));
    assert_eq!(
        ids(&day),
        [
            "2403.06410",
            "2406.05981",
            "2006.03511",
            "2406.11944",
            "2310.01728"
        ]
    );

    let json: Vec<serde_json::Value> = serde_json::from_str(
        s.run(&["papers", "list", "--date", "2024-03-11", "--json"])
            .ok(),
    )
    .unwrap();
    let first = &json[0];
    assert_eq!(
        first["authors"],
        serde_json::json!(["First Author", "Zoë Ñúñez-Øster", "Third Author"])
    );
    assert_eq!(first["upvotes"], 42);
    assert_eq!(
        first["keywords"],
        serde_json::json!(["offline RL", "conservatism", "reverse dynamics"])
    );
    assert_eq!(
        first["github_repo"],
        "https://github.com/runamu/compositional-conservatism"
    );
    let abs = first["abstract"].as_str().unwrap();
    assert!(abs.contains("<, >, & and \"quotes\""), "{abs}");

    let again = s.run(&["papers", "import", &sample()]);
    assert!(
        again.ok().contains("0 added, 0 updated, 5 unchanged"),
        "{}",
        again.stdout
    );
    assert!(
        again
            .stdout
            .contains("Selection for 2024-03-11 unchanged (5 papers)")
    );
    assert_eq!(s.papers(Some("2024-03-11")), day);

    let table = s.run(&["papers", "list"]);
    assert!(table.ok().contains("5 papers stored"), "{}", table.stdout);
    assert!(table.stdout.contains("2024-03-11: 5 selected"));
}

#[test]
fn hf_field_precedence_and_explicit_date() {
    let s = Sandbox::new();
    let doc = serde_json::json!([
        {"paper": {"id": "2401.00001", "title": "Inner title", "summary": "Inner summary.", "upvotes": 3,
                   "authors": [], "publishedAt": "2024-01-01T10:00:00.000Z", "unknownField": {"x": 1}},
         "title": "Outer title", "summary": "Outer summary.", "publishedAt": "2024-01-02T09:00:00.000Z"},
        {"paper": {"id": "2401.00002", "title": "", "authors": [{"name": "A"}]},
         "title": "Fallback title", "summary": "Fallback summary.", "publishedAt": "2024-01-02T09:00:00.000Z"}
    ]);
    let f = s.write("day.json", doc.to_string());
    let out = s.run(&["papers", "import", f.to_str().unwrap()]);
    assert!(
        out.ok().contains("Selected 2 papers for 2024-01-02"),
        "{}",
        out.stdout
    );
    let day = s.papers(Some("2024-01-02"));
    assert_eq!(day[0], ("2401.00001".into(), "Inner title".into()));
    assert_eq!(day[1], ("2401.00002".into(), "Fallback title".into()));

    let out = s.run(&[
        "papers",
        "import",
        f.to_str().unwrap(),
        "--date",
        "2024-02-29",
    ]);
    assert!(
        out.ok().contains("Selected 2 papers for 2024-02-29"),
        "{}",
        out.stdout
    );
    assert_eq!(s.papers(Some("2024-02-29")).len(), 2);
}

#[test]
fn importing_a_date_replaces_its_selection_in_file_order() {
    let s = Sandbox::new();
    s.run(&["papers", "import", &sample()]).ok();
    let mut records: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("daily_papers-2024-03-11.json")).unwrap(),
    )
    .unwrap();
    records.truncate(3);
    records.reverse();
    let f = s.write("three.json", serde_json::to_string(&records).unwrap());
    let out = s.run(&["papers", "import", f.to_str().unwrap()]);
    assert!(
        out.ok().contains("Selected 3 papers for 2024-03-11"),
        "{}",
        out.stdout
    );
    assert_eq!(
        ids(&s.papers(Some("2024-03-11"))),
        ["2006.03511", "2406.05981", "2403.06410"]
    );
    assert_eq!(s.papers(None).len(), 5, "papers stay stored");
}

const TEXT: &str = "Attention Is All You Need\n\nThe dominant sequence transduction models are based on\ncomplex recurrent networks.\n\n\nDeep Residual Learning\n\nDeeper neural networks are more difficult to train.\n";

#[test]
fn text_papers_get_stable_ids_from_their_titles() {
    let s = Sandbox::new();
    let f = s.write("papers.txt", TEXT);
    let out = s.run(&[
        "papers",
        "import",
        f.to_str().unwrap(),
        "--date",
        "2024-05-01",
    ]);
    assert!(out.ok().contains("2 papers (2 added"), "{}", out.stdout);
    let day = s.papers(Some("2024-05-01"));
    assert_eq!(day[0].1, "Attention Is All You Need");
    assert!(day[0].0.starts_with("t-"), "{:?}", day[0]);

    // Same titles, other case and spacing: the same papers.
    let f2 = s.write(
        "again.txt",
        TEXT.replace("Attention Is All You Need", "attention is  all you need"),
    );
    let out = s.run(&[
        "papers",
        "import",
        f2.to_str().unwrap(),
        "--date",
        "2024-05-01",
    ]);
    assert!(
        out.ok().contains("0 added, 1 updated, 1 unchanged"),
        "{}",
        out.stdout
    );
    assert_eq!(ids(&s.papers(Some("2024-05-01"))), ids(&day));

    // Without --date: today's edition.
    let out = s.run(&["papers", "import", f.to_str().unwrap()]);
    let today = chrono::Utc::now().date_naive().to_string();
    assert!(out.ok().contains(&format!("for {today}")), "{}", out.stdout);
    assert!(out.stderr.contains("no dates"), "{}", out.stderr);
}

#[test]
fn own_json_export_round_trips() {
    let s = Sandbox::new();
    s.run(&["papers", "import", &sample()]).ok();
    let exported = s
        .run(&["papers", "export", "--date", "2024-03-11"])
        .ok()
        .to_string();
    let other = Sandbox::new();
    let f = other.write("export.json", &exported);
    let out = other.run(&["papers", "import", f.to_str().unwrap()]);
    assert!(
        out.ok().contains("Selected 5 papers for 2024-03-11"),
        "{}",
        out.stdout
    );
    let a: serde_json::Value = serde_json::from_str(
        s.run(&["papers", "list", "--date", "2024-03-11", "--json"])
            .ok(),
    )
    .unwrap();
    let b: serde_json::Value = serde_json::from_str(
        other
            .run(&["papers", "list", "--date", "2024-03-11", "--json"])
            .ok(),
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(
        other
            .run(&["papers", "export", "--date", "2024-03-11"])
            .ok(),
        exported
    );
    let forced = other.run(&[
        "papers",
        "import",
        f.to_str().unwrap(),
        "--format",
        "json",
        "--date",
        "2024-03-12",
    ]);
    assert!(forced.ok().contains("Selected 5 papers for 2024-03-12"));
}

#[test]
fn select_curates_a_day_by_hand() {
    let s = Sandbox::new();
    s.run(&["papers", "import", &sample()]).ok();
    let out = s.run(&[
        "papers",
        "select",
        "--date",
        "2024-03-12",
        "2310.01728",
        "2403.06410",
    ]);
    assert!(
        out.ok().contains("Selected 2 papers for 2024-03-12"),
        "{}",
        out.stdout
    );
    assert_eq!(
        ids(&s.papers(Some("2024-03-12"))),
        ["2310.01728", "2403.06410"]
    );

    let bad = s.run(&[
        "papers",
        "select",
        "--date",
        "2024-03-12",
        "2310.01728",
        "9999.99999",
    ]);
    assert!(
        bad.fails().contains("no paper with id 9999.99999"),
        "{}",
        bad.stderr
    );
    let dup = s.run(&[
        "papers",
        "select",
        "--date",
        "2024-03-12",
        "2310.01728",
        "2310.01728",
    ]);
    assert!(dup.fails().contains("listed twice"), "{}", dup.stderr);
    assert_eq!(
        ids(&s.papers(Some("2024-03-12"))),
        ["2310.01728", "2403.06410"],
        "unchanged after errors"
    );
}

#[test]
fn bad_paper_files_are_named_and_nothing_is_stored() {
    let s = Sandbox::new();
    let good = serde_json::json!({"paper": {"id": "2401.00001", "title": "Good", "summary": "Fine."},
                                  "publishedAt": "2024-01-01T00:00:00Z"});
    let no_title = serde_json::json!({"paper": {"id": "2401.00002", "summary": "No title."}});
    let bad_type = serde_json::json!({"paper": {"id": "2401.00003", "title": "T", "summary": "S", "upvotes": "many"}});
    let evil_id =
        serde_json::json!({"paper": {"id": "../../etc/passwd", "title": "T", "summary": "S"}});
    let huge = serde_json::json!({"paper": {"id": "2401.00004", "title": "T", "summary": "a ".repeat(60_000)}});
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "title.json",
            serde_json::to_vec(&[&good, &no_title]).unwrap(),
            ":2: record 2: paper.title is missing or empty",
        ),
        (
            "dup.json",
            serde_json::to_vec(&[&good, &good.clone()]).unwrap(),
            ":2: paper 2401.00001 appears twice (first at 1)",
        ),
        (
            "upvotes.json",
            serde_json::to_vec(&[&good, &bad_type]).unwrap(),
            ":2: record 2: paper.upvotes: invalid type",
        ),
        (
            "id.json",
            serde_json::to_vec(&[&evil_id]).unwrap(),
            ":1: record 1: paper id \"../../etc/passwd\"",
        ),
        (
            "huge.json",
            serde_json::to_vec(&[&good, &huge]).unwrap(),
            ":2: record 2: the abstract is 118 KB",
        ),
        (
            "syntax.json",
            b"[\n  {\"paper\": {\"id\": \"1\",}\n]\n".to_vec(),
            ":2: invalid JSON",
        ),
        (
            "object.json",
            b"{\"hello\": 1}".to_vec(),
            ":1: expected a JSON array",
        ),
        ("empty.json", b"  \n".to_vec(), ":1: the file is empty"),
        (
            "latin1.txt",
            b"Title\n\nAbstract with caf\xe9.\n".to_vec(),
            ":3: not valid UTF-8",
        ),
        (
            "noabs.txt",
            b"Title one\n\nAbstract one.\n\nTitle two\n".to_vec(),
            ":5: paper \"Title two\" has no abstract",
        ),
        (
            "twoline.txt",
            b"Title one\nstill title\n\nAbstract.\n".to_vec(),
            ":1: expected a title on one line",
        ),
    ];
    for (name, body, expected) in cases {
        let p = s.write(name, &body);
        let out = s.run(&[
            "papers",
            "import",
            p.to_str().unwrap(),
            "--date",
            "2024-01-01",
        ]);
        out.fails();
        let first = out.first_error_line();
        assert!(first.starts_with(p.to_str().unwrap()), "{name}: {first}");
        assert!(
            first.contains(expected),
            "{name}: expected {expected:?} in {first:?}"
        );
        assert!(s.papers(None).is_empty(), "{name} stored something");
    }
}

#[test]
fn an_oversized_paper_file_is_refused_before_reading() {
    let s = Sandbox::new();
    let p = s.path("big.txt");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(50 * 1024 * 1024).unwrap();
    let out = s.run(&["papers", "import", p.to_str().unwrap()]);
    assert!(
        out.fails().contains("paper files over 32 MB are refused"),
        "{}",
        out.stderr
    );
}
