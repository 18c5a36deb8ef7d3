//! `paperpost preview` through the real binary.

use crate::support;

use crate::support::Sandbox;
use mail_parser::MessageParser;

fn setup() -> Sandbox {
    let s = Sandbox::with_sample_papers();
    s.run(&[
        "subscribers",
        "add",
        "zoe@example.org",
        "--name",
        "Zoë",
        "--topics",
        "quantization",
        "--format",
        "text",
    ])
    .ok();
    s
}

#[tokio::test]
async fn preview_renders_without_touching_delivery_state() {
    let s = setup();
    let html = s.run(&["preview", "--date", "2024-03-11"]);
    let doc = scraper::Html::parse_document(html.ok());
    let h2 = scraper::Selector::parse("h2").unwrap();
    assert_eq!(doc.select(&h2).count(), 5);
    assert!(
        html.stdout.contains("Hello,"),
        "a neutral greeting without a subscriber"
    );

    let text = s.run(&[
        "preview",
        "--date",
        "2024-03-11",
        "--subscriber",
        "ZOE@example.org",
    ]);
    let t = text.ok();
    assert!(
        t.starts_with("Paperpost Daily - Monday, 11 March 2024"),
        "{t}"
    );
    assert!(t.contains("Hello Zoë,"));
    assert!(
        t.contains(" 1. ShiftAddLLM"),
        "the matching paper first: {t}"
    );
    assert!(t.contains("matches: quantization"));
    assert!(
        t.contains("/unsubscribe/preview"),
        "previews carry no real token"
    );

    let eml = s.path("zoe.eml");
    let out = s.run(&[
        "preview",
        "--date",
        "2024-03-11",
        "--subscriber",
        "zoe@example.org",
        "--format",
        "eml",
        "--out",
        eml.to_str().unwrap(),
    ]);
    out.ok();
    assert!(
        out.stderr
            .contains("Wrote the 2024-03-11 digest for zoe@example.org"),
        "{}",
        out.stderr
    );
    let raw = std::fs::read(&eml).unwrap();
    let m = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(
        m.to().unwrap().first().unwrap().address(),
        Some("zoe@example.org")
    );
    assert!(
        m.subject()
            .unwrap()
            .starts_with("Paperpost Daily, 11 Mar 2024: ShiftAddLLM")
    );
    assert!(!support::has_html_part(&m), "format=text has no HTML part");

    let pool = s.pool().await;
    let (editions,): (i64,) = crate::on_db!(&pool, |p| sqlx::query_as(
        p.sql("SELECT count(*) FROM editions")
    )
    .fetch_one(p)
    .await)
    .unwrap();
    let (deliveries,): (i64,) = crate::on_db!(&pool, |p| sqlx::query_as(
        p.sql("SELECT count(*) FROM deliveries")
    )
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(
        (editions, deliveries),
        (0, 0),
        "preview changes no delivery state"
    );
}

#[test]
fn preview_errors_are_clear() {
    let s = setup();
    let none = s.run(&["preview", "--date", "2024-03-12"]);
    assert!(
        none.fails().contains("no papers selected for 2024-03-12"),
        "{}",
        none.stderr
    );
    let who = s.run(&[
        "preview",
        "--date",
        "2024-03-11",
        "--subscriber",
        "nobody@example.org",
    ]);
    assert!(
        who.fails()
            .contains("no subscriber with address nobody@example.org"),
        "{}",
        who.stderr
    );
}
