//! The HTML digest in a real browser (headless Chromium): it must not overflow
//! horizontally at 600 px (desktop clients) or 375 px (phones). Screenshots are
//! written to target/tmp/screenshots for a look.
//!
//! Needs Debian's `chromium` (installed by .ci/run). Without it the test is
//! skipped with a message, except under CI (CI=true), where it fails.

use crate::support;

use std::{path::PathBuf, process::Command};

use paperpost::{
    config::Settings,
    digest::{Composer, Edition, Reader},
    domain::{Format, MaxPapers, Paper, PaperDraft, SubscriberEmail, SubscriberName, Topics},
    ingest::papers::{PaperFormat, parse},
    security::Keys,
};

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var("PAPERPOST_CHROMIUM").ok(),
        Some("/usr/bin/chromium".into()),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; .ci/run must install Debian's chromium package"
        );
        eprintln!("SKIPPED: chromium not found (install Debian's chromium to run this test)");
    }
    found
}

fn chrome(bin: &PathBuf, dir: &std::path::Path, extra: &[&str], url: &str) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loads `html` into iframes 600 and 375 px wide and returns, per width, the
/// document's scroll width and client width.
fn measure(bin: &PathBuf, dir: &std::path::Path, name: &str, html: &str) -> Vec<(u32, u32, u32)> {
    let escaped = html.replace('&', "&amp;").replace('"', "&quot;");
    let frames: String = [600, 375]
        .iter()
        .map(|w| format!(r#"<iframe id="f{w}" style="width:{w}px;height:3000px;border:0" srcdoc="{escaped}"></iframe>"#))
        .collect();
    let page = format!(
        r#"<!DOCTYPE html><html><body>{frames}<script>
window.addEventListener("load", function () {{
  var out = [];
  [600, 375].forEach(function (w) {{
    var d = document.getElementById("f" + w).contentDocument.documentElement;
    out.push(w + ":" + d.scrollWidth + ":" + d.clientWidth);
  }});
  document.body.setAttribute("data-result", out.join(","));
}});
</script></body></html>"#
    );
    let path = dir.join(format!("{name}-measure.html"));
    std::fs::write(&path, page).unwrap();
    let dom = chrome(
        bin,
        dir,
        &["--window-size=1300,900", "--dump-dom"],
        &format!("file://{}", path.display()),
    );
    let result = dom
        .split("data-result=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no measurement in the page for {name}"));
    result
        .split(',')
        .map(|m| {
            let v: Vec<u32> = m.split(':').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

fn settings() -> Settings {
    support::settings(&[])
}

fn render(papers: Vec<Paper>, max: i64) -> String {
    let composer =
        Composer::new(&settings(), Keys::from_bytes(support::SECRET.as_bytes())).unwrap();
    let edition = Edition::new(
        chrono::NaiveDate::from_ymd_opt(2024, 3, 11).unwrap(),
        papers,
        true,
    );
    let email = SubscriberEmail::parse("ada@example.org").unwrap();
    let name = SubscriberName::parse("Ada Lovelace-Byron, Countess of Lovelace").unwrap();
    let topics = Topics::parse_separated("llm,time series", ',').unwrap();
    let reader = Reader {
        uuid: "00000000-0000-4000-8000-000000000001",
        email: &email,
        name: Some(&name),
        topics: &topics,
        format: Format::Html,
        max_papers: MaxPapers::new(max).unwrap(),
    };
    composer.render(&edition, &reader).unwrap().html.unwrap()
}

#[test]
fn digest_does_not_overflow_at_600_or_375_px() {
    let Some(bin) = chromium() else { return };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();

    // The harness must be able to see an overflow, or its passes mean nothing.
    let wide = measure(
        &bin,
        &dir,
        "control",
        r#"<html><body><div style="width:900px">wide</div></body></html>"#,
    );
    assert!(
        wide.iter().all(|&(_, scroll, client)| scroll > client),
        "control not detected: {wide:?}"
    );

    let bytes = std::fs::read(support::fixture("daily_papers-2024-03-11.json")).unwrap();
    let mut papers: Vec<Paper> = parse(std::path::Path::new("s.json"), bytes, PaperFormat::Auto)
        .unwrap()
        .into_iter()
        .map(|r| r.paper)
        .collect();
    // Hostile layout: unbroken long words and URLs in every field.
    papers.push(
        Paper::new(PaperDraft {
            id: Some("2401.99999".into()),
            title: format!("Supercalifragilistic{} LLM", "x".repeat(120)),
            abstract_text: format!(
                "See https://example.org/{} and {}.",
                "a/".repeat(80),
                "y".repeat(300)
            ),
            authors: vec![format!("Author{}", "z".repeat(100))],
            github_repo: Some(format!("https://github.com/{}", "r".repeat(150))),
            upvotes: 1000,
            ..Default::default()
        })
        .unwrap(),
    );
    let sample = render(papers.clone(), 10);
    let many: Vec<Paper> = (0..50)
        .map(|i| {
            let mut p = papers[i % papers.len()].clone();
            p.id = paperpost::domain::PaperId::parse(&format!("2402.{i:05}")).unwrap();
            p
        })
        .collect();
    let long = render(many, 50);

    for (name, html) in [("sample", &sample), ("fifty", &long)] {
        let file = dir.join(format!("{name}.html"));
        std::fs::write(&file, html).unwrap();
        for (width, scroll, client) in measure(&bin, &dir, name, html) {
            assert!(
                scroll <= client,
                "{name} overflows at {width}px: content is {scroll}px wide in a {client}px viewport"
            );
        }
        for width in [600, 375] {
            let shot = dir.join(format!("{name}-{width}.png"));
            chrome(
                &bin,
                &dir,
                &[
                    &format!("--window-size={width},2400"),
                    &format!("--screenshot={}", shot.display()),
                ],
                &format!("file://{}", file.display()),
            );
            assert!(
                std::fs::metadata(&shot)
                    .map(|m| m.len() > 10_000)
                    .unwrap_or(false),
                "no screenshot {shot:?}"
            );
        }
    }
}
