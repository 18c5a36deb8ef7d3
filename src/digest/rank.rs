//! Which papers a subscriber gets, in which order: a pure function.
//!
//! Papers matching any of the subscriber's topics come first, then by upvotes,
//! then in the editor's order. Matching is case-insensitive on whole words and
//! phrases over the title, abstract and keywords: "llm" matches "LLMs" and
//! "LLM-based" but not "fullmoon"; "time series" matches "time-series".

use crate::domain::{Paper, Topics};

/// Lower-cased words of a text: maximal runs of letters and digits.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// True when `word` is `topic_word` or its plural (`s`, `es`).
fn word_matches(word: &str, topic_word: &str) -> bool {
    matches!(word.strip_prefix(topic_word), Some("" | "s" | "es"))
}

/// True when the topic's words occur consecutively in `text_words`.
pub fn phrase_in(text_words: &[String], topic_words: &[String]) -> bool {
    if topic_words.is_empty() || topic_words.len() > text_words.len() {
        return false;
    }
    text_words
        .windows(topic_words.len())
        .any(|w| w.iter().zip(topic_words).all(|(a, b)| word_matches(a, b)))
}

/// A paper prepared for matching: its words, computed once per edition.
#[derive(Debug, Clone)]
pub struct Searchable {
    words: Vec<String>,
}

impl Searchable {
    pub fn new(p: &Paper) -> Self {
        let mut words = words(&p.title);
        // A separator keeps a phrase from spanning two fields.
        words.push(String::new());
        words.extend(self::words(&p.abstract_text));
        for k in &p.keywords {
            words.push(String::new());
            words.extend(self::words(k));
        }
        Self { words }
    }
}

/// One paper of a digest: its index in the edition and the topics it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    /// Indices into the subscriber's topics, in their order.
    pub matched: Vec<usize>,
}

/// Topics split into words once per subscriber.
pub fn topic_words(topics: &Topics) -> Vec<Vec<String>> {
    topics.iter().map(|t| words(t.as_str())).collect()
}

/// Ranks the edition's papers (`papers` in the editor's order, with their
/// `upvotes`) for one subscriber and keeps at most `max`.
pub fn rank(papers: &[(&Searchable, i64)], topics: &[Vec<String>], max: usize) -> Vec<Pick> {
    let mut picks: Vec<(Pick, i64)> = papers
        .iter()
        .enumerate()
        .map(|(index, (s, upvotes))| {
            let matched = topics
                .iter()
                .enumerate()
                .filter(|(_, tw)| phrase_in(&s.words, tw))
                .map(|(i, _)| i)
                .collect();
            (Pick { index, matched }, *upvotes)
        })
        .collect();
    // Stable: ties keep the editor's order.
    picks.sort_by(|(a, ua), (b, ub)| {
        a.matched
            .is_empty()
            .cmp(&b.matched.is_empty())
            .then(ub.cmp(ua))
    });
    picks.truncate(max);
    picks.into_iter().map(|(p, _)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PaperDraft, Topics};

    fn paper(title: &str, abs: &str, upvotes: i64, keywords: &[&str]) -> Paper {
        Paper::new(PaperDraft {
            title: title.into(),
            abstract_text: abs.into(),
            upvotes,
            keywords: keywords.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn run(papers: &[Paper], topics: &str, max: usize) -> Vec<(String, Vec<String>)> {
        let topics = Topics::parse_separated(topics, ',').unwrap();
        let prepared: Vec<Searchable> = papers.iter().map(Searchable::new).collect();
        let input: Vec<(&Searchable, i64)> = prepared
            .iter()
            .zip(papers)
            .map(|(s, p)| (s, p.upvotes))
            .collect();
        let names: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
        rank(&input, &topic_words(&topics), max)
            .into_iter()
            .map(|p| {
                (
                    papers[p.index].title.clone(),
                    p.matched.iter().map(|&i| names[i].to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn whole_words_and_plurals() {
        let w = words("LLMs beat fullmoon; time-series, Transformers!");
        assert!(phrase_in(&w, &words("llm")));
        assert!(phrase_in(&w, &words("time series")));
        assert!(phrase_in(&w, &words("transformer")));
        assert!(!phrase_in(&w, &words("moon")));
        assert!(!phrase_in(&w, &words("full")));
        assert!(!phrase_in(&w, &words("series time")));
        assert!(!phrase_in(&w, &words("")));
    }

    #[test]
    fn matching_papers_first_then_upvotes_then_editor_order() {
        let papers = vec![
            paper("A: diffusion", "About images.", 10, &[]),
            paper("B: LLMs at scale", "Language.", 5, &[]),
            paper("C: robots", "Control.", 50, &[]),
            paper("D: forecasting", "We study time-series.", 1, &[]),
            paper("E: more robots", "Control.", 50, &[]),
            paper("F: keywords only", "Nothing here.", 2, &["LLM"]),
        ];
        let got = run(&papers, "llm,time series", 10);
        let titles: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            titles,
            [
                "B: LLMs at scale",
                "F: keywords only",
                "D: forecasting",
                "C: robots",
                "E: more robots",
                "A: diffusion"
            ]
        );
        assert_eq!(got[0].1, ["llm"]);
        assert_eq!(got[2].1, ["time series"]);
        assert!(got[3].1.is_empty());
    }

    #[test]
    fn no_topics_means_upvotes_then_editor_order_and_max_is_kept() {
        let papers = vec![
            paper("A", "x", 1, &[]),
            paper("B", "x", 9, &[]),
            paper("C", "x", 9, &[]),
            paper("D", "x", 3, &[]),
        ];
        let got = run(&papers, "", 3);
        let titles: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(titles, ["B", "C", "D"]);
    }

    #[test]
    fn a_paper_matching_several_topics_lists_them_all() {
        let papers = vec![paper(
            "Quantization of LLMs",
            "Post-training quantization.",
            0,
            &[],
        )];
        let got = run(&papers, "quantization,llm,robotics", 5);
        assert_eq!(got[0].1, ["quantization", "llm"]);
    }

    #[test]
    fn phrases_do_not_span_fields() {
        let papers = vec![paper("A study of time", "Series of experiments.", 0, &[])];
        assert!(run(&papers, "time series", 5)[0].1.is_empty());
    }
}
