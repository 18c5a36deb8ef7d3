//! Prometheus metrics (`GET /metrics`), one set per process. Counters and
//! histograms are moved where things happen; gauges that describe the database
//! (queue depth, subscribers by status) are read from it at scrape time.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BounceLabels {
    pub source: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// A route template ("/unsubscribe/{token}"), or "unmatched": never a
    /// path.
    pub route: String,
    /// GET, HEAD, POST or other ([`method_label`]).
    pub method: &'static str,
    pub status: u16,
}

/// A request method as a label value from a fixed set: anyone can send any
/// method, and a label value per method would grow /metrics without bound.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        _ => "other",
    }
}

/// Every metric paperpost exports.
pub struct Metrics {
    registry: Registry,
    /// Delivery outcomes recorded by this process, by outcome; `delivered`
    /// holds each outcome's counter, resolved once (no lookup per message).
    deliveries: Family<OutcomeLabel, Counter>,
    pub delivered: Outcomes,
    /// Time from the start of an SMTP transaction (or file write) to its answer.
    pub send_seconds: Histogram,
    /// Rows waiting to be sent.
    pub queue_depth: Gauge,
    /// 1 while the circuit breaker holds sending back.
    pub breaker_open: Gauge,
    /// Subscribers by status.
    pub subscribers: Family<StatusLabel, Gauge>,
    /// Unsubscribes by channel (one-click, page).
    pub unsubscribes: Family<ChannelLabel, Counter>,
    /// Subscribe form posts accepted (new, pending or known addresses alike).
    pub subscriptions: Counter,
    /// Confirmation clicks that activated someone.
    pub confirmations: Counter,
    /// Confirmation mails by outcome (sent, failed).
    pub confirmation_mails: Family<OutcomeLabel, Counter>,
    /// Bounce and complaint reports recorded, by source and kind (read from
    /// the database at each scrape: `bounces ingest` runs in processes of its own).
    pub bounce_reports: Family<BounceLabels, Gauge>,
    /// Complaints per message sent of the newest edition with reports.
    pub complaint_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Connections answered 503 and closed at `http.max_connections`.
    pub http_shed: Counter,
    /// Webhook requests refused (off, unauthenticated, unreadable, busy).
    pub webhooks_refused: Counter,
    /// Sign-ups that got no mail because of a limit (inbox, hourly).
    pub signups_limited: Family<LimitLabel, Counter>,
    /// HTTP requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP request latency by route.
    pub http_seconds: Family<RouteLabel, Histogram>,
    /// Fetches of a day's papers by outcome (ok, failed).
    pub fetches: Family<OutcomeLabel, Counter>,
    /// When a fetch last succeeded (Unix seconds; 0 = never).
    pub fetch_success_time: Gauge,
}

/// The counter of each delivery outcome.
pub struct Outcomes {
    pub sent: Counter,
    pub failed: Counter,
    pub cancelled: Counter,
    pub retried: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 0.5 ms to about 33 s.
    exponential_buckets(0.0005, 2.0, 17)
}

impl Metrics {
    pub fn new() -> Self {
        let deliveries = Family::<OutcomeLabel, Counter>::default();
        let outcome = |outcome| deliveries.get_or_create(&OutcomeLabel { outcome }).clone();
        let delivered = Outcomes {
            sent: outcome("sent"),
            failed: outcome("failed"),
            cancelled: outcome("cancelled"),
            retried: outcome("retried"),
        };
        let mut m = Metrics {
            registry: Registry::with_prefix("paperpost"),
            deliveries,
            delivered,
            send_seconds: Histogram::new(latency_buckets()),
            queue_depth: Gauge::default(),
            breaker_open: Gauge::default(),
            subscribers: Family::default(),
            unsubscribes: Family::default(),
            subscriptions: Counter::default(),
            confirmations: Counter::default(),
            confirmation_mails: Family::default(),
            signups_limited: Family::default(),
            http_shed: Counter::default(),
            webhooks_refused: Counter::default(),
            bounce_reports: Family::default(),
            complaint_rate: Gauge::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            fetches: Family::default(),
            fetch_success_time: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "deliveries",
            "Delivery outcomes recorded by this process",
            m.deliveries.clone(),
        );
        r.register(
            "send_seconds",
            "Time to hand one message to the mail server",
            m.send_seconds.clone(),
        );
        r.register(
            "queue_depth",
            "Deliveries waiting to be sent",
            m.queue_depth.clone(),
        );
        r.register(
            "breaker_open",
            "1 while the circuit breaker pauses sending",
            m.breaker_open.clone(),
        );
        r.register(
            "subscribers",
            "Subscribers by status",
            m.subscribers.clone(),
        );
        r.register(
            "unsubscribes",
            "Unsubscribes through links, by channel",
            m.unsubscribes.clone(),
        );
        r.register(
            "subscriptions",
            "Subscribe form posts accepted",
            m.subscriptions.clone(),
        );
        r.register(
            "confirmations",
            "Confirmation clicks that activated a subscriber",
            m.confirmations.clone(),
        );
        r.register(
            "confirmation_mails",
            "Confirmation mails by outcome",
            m.confirmation_mails.clone(),
        );
        r.register(
            "signups_limited",
            "Sign-ups that got no confirmation mail because of a limit: inbox (one an hour) or hourly (subscribers.confirmations_per_hour)",
            m.signups_limited.clone(),
        );
        r.register(
            "bounce_reports",
            "Bounce and complaint reports recorded, by source and kind",
            m.bounce_reports.clone(),
        );
        r.register(
            "last_edition_complaint_rate",
            "Complaints per message sent of the newest edition with reports (Gmail and Yahoo want under 0.003)",
            m.complaint_rate.clone(),
        );
        r.register(
            "webhooks_refused",
            "Webhook requests refused: off, unauthenticated, replayed, unreadable or busy",
            m.webhooks_refused.clone(),
        );
        r.register(
            "http_connections_shed",
            "Connections answered 503 and closed because http.max_connections were open",
            m.http_shed.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.http_requests.clone(),
        );
        r.register(
            "paper_fetches",
            "Fetches of a day's papers from papers.source_url, by outcome",
            m.fetches.clone(),
        );
        r.register(
            "paper_fetch_success_time_seconds",
            "When a fetch of a day's papers last succeeded (Unix time)",
            m.fetch_success_time.clone(),
        );
        r.register(
            "http_request_seconds",
            "HTTP request latency by route",
            m.http_seconds.clone(),
        );
        m
    }

    /// The text exposition format (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_metrics_and_their_labels() {
        let m = Metrics::new();
        m.delivered.sent.inc();
        m.delivered.sent.inc();
        m.unsubscribes
            .get_or_create(&ChannelLabel {
                channel: "one-click",
            })
            .inc();
        m.queue_depth.set(7);
        let text = m.encode();
        assert!(
            text.contains("paperpost_deliveries_total{outcome=\"sent\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("paperpost_deliveries_total{outcome=\"failed\"} 0"),
            "every outcome is exported from the start: {text}"
        );
        assert!(
            text.contains("paperpost_unsubscribes_total{channel=\"one-click\"} 1"),
            "{text}"
        );
        assert!(text.contains("paperpost_queue_depth 7"), "{text}");
        assert!(
            text.contains("# TYPE paperpost_send_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
