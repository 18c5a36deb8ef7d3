//! Personalized digest throughput on one core: `cargo bench --bench digest`.
//!
//! For a 20-paper edition, ranks, renders (HTML + text) and builds the complete
//! message (headers, MIME encoding, serialized bytes) for readers with varied
//! names, topics and formats, on one thread. Target: at least 20,000 digests/s.

use std::{hint::black_box, time::Instant};

use paperpost::{
    config::Settings,
    digest::{Composer, Edition, Reader},
    domain::{Format, MaxPapers, Paper, PaperDraft, SubscriberEmail, SubscriberName, Topics},
    security::Keys,
};

const TOPICS: [&str; 8] = [
    "llm",
    "time series",
    "diffusion",
    "robotics",
    "quantization",
    "reinforcement learning",
    "vision",
    "agents",
];

fn edition() -> Edition {
    let words = [
        "model",
        "learning",
        "diffusion",
        "LLMs",
        "robotics",
        "time-series",
        "vision",
        "agents",
        "data",
    ];
    let papers = (0..20)
        .map(|i| {
            let abstract_text: String = (0..160)
                .map(|w| words[(w * 7 + i) % words.len()])
                .collect::<Vec<_>>()
                .join(" ");
            Paper::new(PaperDraft {
                id: Some(format!("2403.{:05}", 10_000 + i)),
                title: format!(
                    "Paper {i}: Scaling {} for {}",
                    words[i % 9],
                    words[(i + 3) % 9]
                ),
                abstract_text,
                authors: (0..6).map(|a| format!("Author Ñame {a}")).collect(),
                upvotes: (i as i64 * 37) % 150,
                keywords: vec![words[i % 9].to_string()],
                github_repo: Some(format!("https://github.com/example/repo{i}")),
                ..Default::default()
            })
            .unwrap()
        })
        .collect();
    Edition::new(
        chrono::NaiveDate::from_ymd_opt(2024, 3, 11).unwrap(),
        papers,
        false,
    )
}

struct Person {
    uuid: String,
    email: SubscriberEmail,
    name: Option<SubscriberName>,
    topics: Topics,
    format: Format,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let count = if quick { 500 } else { 20_000 };
    let settings = Settings::load_from(None, Some(Default::default())).unwrap();
    let composer = Composer::new(
        &settings,
        Keys::from_bytes(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    let edition = edition();
    let people: Vec<Person> = (0..1000)
        .map(|i| Person {
            uuid: format!("00000000-0000-4000-8000-{i:012}"),
            email: SubscriberEmail::parse(&format!("reader{i}@example.org")).unwrap(),
            name: (i % 3 != 0).then(|| SubscriberName::parse(&format!("Reader Zoë {i}")).unwrap()),
            topics: Topics::from_list(&TOPICS[i % 5..i % 5 + i % 4]).unwrap(),
            format: if i % 5 == 0 {
                Format::Text
            } else {
                Format::Html
            },
        })
        .collect();

    let mut bytes = 0usize;
    let start = Instant::now();
    for n in 0..count {
        let p = &people[n % people.len()];
        let reader = Reader {
            uuid: &p.uuid,
            email: &p.email,
            name: p.name.as_ref(),
            topics: &p.topics,
            format: p.format,
            max_papers: MaxPapers::new(20).unwrap(),
        };
        let message = composer.compose(&edition, &reader).unwrap();
        let raw = message.formatted();
        bytes += raw.len();
        black_box(raw);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "digest: {count} personalized 20-paper digests in {secs:.2} s on one thread: {:.0} digests/s, {:.1} KB average message",
        count as f64 / secs,
        bytes as f64 / count as f64 / 1024.0
    );
}
