//! Prometheus metrics. Each face registers its families into one registry at start-up; the
//! HTTPS server exposes it on `/metrics` in the text format.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of admission request counters and latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `validate` or `mutate`.
    pub webhook: &'static str,
    /// Object kind (`TailscaleServices`, ...; `other` for kinds we do not own, `-` for bad requests).
    pub kind: &'static str,
    /// `allowed`, `denied`, `patched` or `error`.
    pub verdict: &'static str,
}

/// Histogram buckets from 50 µs to ~1.6 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16)
}

fn new_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Label values of the admission metrics, each with its position in a dense numbering so a
/// label set maps to a slot without hashing.
pub mod admission_labels {
    /// `webhook` values.
    pub const WEBHOOKS: [&str; 2] = ["validate", "mutate"];
    /// `kind` values: our kinds in [`crate::core::Kind::ALL`] order, then `other` and `-`.
    pub const KINDS: [&str; 7] = [
        "TailscaleTailnet",
        "TailscaleEndpoints",
        "TailscaleServices",
        "TailscaleGateway",
        "TailscaleRoutePolicy",
        "other",
        "-",
    ];
    /// `verdict` values.
    pub const VERDICTS: [&str; 4] = ["allowed", "denied", "patched", "error"];

    /// Position of `validate` in [`WEBHOOKS`].
    pub const VALIDATE: usize = 0;
    /// Position of `mutate` in [`WEBHOOKS`].
    pub const MUTATE: usize = 1;
    /// Position of `other` (a kind we do not own) in [`KINDS`].
    pub const KIND_OTHER: usize = 5;
    /// Position of `-` (a request too broken to name its kind) in [`KINDS`].
    pub const KIND_NONE: usize = 6;
    /// Position of `allowed` in [`VERDICTS`].
    pub const ALLOWED: usize = 0;
    /// Position of `denied` in [`VERDICTS`].
    pub const DENIED: usize = 1;
    /// Position of `patched` in [`VERDICTS`].
    pub const PATCHED: usize = 2;
    /// Position of `error` in [`VERDICTS`].
    pub const ERROR: usize = 3;
}

const ADMISSION_SERIES: usize =
    admission_labels::WEBHOOKS.len() * admission_labels::KINDS.len() * admission_labels::VERDICTS.len();

/// One label set's request counter and (once it has a latency) histogram.
type Series = (Counter, OnceLock<Histogram>);

/// Admission webhook metrics.
#[derive(Clone)]
pub struct AdmissionMetrics {
    /// Requests by webhook, kind and verdict.
    pub requests: Family<AdmissionLabels, Counter>,
    /// Latency by webhook, kind and verdict.
    pub duration: Family<AdmissionLabels, Histogram, fn() -> Histogram>,
    /// Handles of the label sets seen so far, so the hot path neither hashes labels nor takes
    /// the families' locks (the handles share their values with the families).
    resolved: Arc<[OnceLock<Series>; ADMISSION_SERIES]>,
}

impl AdmissionMetrics {
    /// Registers the families under `admission_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(new_histogram as fn() -> Histogram),
            resolved: Arc::new(std::array::from_fn(|_| OnceLock::new())),
        };
        let sub = registry.sub_registry_with_prefix("admission");
        sub.register("requests", "Admission reviews answered, by webhook, kind and verdict", m.requests.clone());
        sub.register("request_duration_seconds", "Time to answer an admission review", m.duration.clone());
        m
    }

    /// Counts one review, and its latency when given. Indexes are positions in
    /// [`admission_labels`]; out-of-range ones are clamped to the last value.
    pub fn observe(&self, webhook: usize, kind: usize, verdict: usize, seconds: Option<f64>) {
        use admission_labels::{KINDS, VERDICTS, WEBHOOKS};
        let (w, k, v) = (webhook.min(WEBHOOKS.len() - 1), kind.min(KINDS.len() - 1), verdict.min(VERDICTS.len() - 1));
        let slot = (w * KINDS.len() + k) * VERDICTS.len() + v;
        let Some(cell) = self.resolved.get(slot) else { return };
        let labels = || AdmissionLabels { webhook: WEBHOOKS[w], kind: KINDS[k], verdict: VERDICTS[v] };
        let (requests, duration) =
            cell.get_or_init(|| (self.requests.get_or_create(&labels()).clone(), OnceLock::new()));
        requests.inc();
        if let Some(seconds) = seconds {
            // Created on first use: label sets that only count errors get no latency series.
            duration.get_or_init(|| self.duration.get_or_create(&labels()).clone()).observe(seconds);
        }
    }
}

/// Labels of aggregated API request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AggregatedLabels {
    /// Kubernetes verb (`get`, `list`, `watch`, ...), or the lower-cased HTTP method of
    /// discovery and OpenAPI requests; anything else is `other`.
    pub verb: &'static str,
    /// `tailscaledevices`, `selectedendpoints`, or `-` (discovery, OpenAPI, unknown paths).
    pub resource: &'static str,
    /// HTTP status code.
    pub code: u16,
}

/// Labels of the aggregated API latency histogram and open-watch gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AggregatedLatencyLabels {
    /// As in [`AggregatedLabels`].
    pub verb: &'static str,
    /// As in [`AggregatedLabels`].
    pub resource: &'static str,
}

const AGGREGATED_VERBS: [&str; 12] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "head",
    "post",
    "put",
    "options",
];

/// Aggregated API metrics, after kube-apiserver's `apiserver_request_total`,
/// `apiserver_request_duration_seconds` (watches excluded) and `apiserver_longrunning_requests`.
/// Unregistered until [`AggregatedMetrics::register`]; the default counts into the void.
#[derive(Clone)]
pub struct AggregatedMetrics {
    /// Requests by verb, resource and status code.
    pub requests: Family<AggregatedLabels, Counter>,
    /// Time to answer, by verb and resource (not for watches: they last as long as the client).
    pub duration: Family<AggregatedLatencyLabels, Histogram, fn() -> Histogram>,
    /// Watches open now, by resource.
    pub watches: Family<AggregatedLatencyLabels, Gauge>,
}

impl Default for AggregatedMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(new_histogram as fn() -> Histogram),
            watches: Family::default(),
        }
    }
}

impl AggregatedMetrics {
    /// Registers the families under `aggregated_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("aggregated");
        sub.register("requests", "Aggregated API requests answered, by verb, resource and code", m.requests.clone());
        sub.register(
            "request_duration_seconds",
            "Time to answer an aggregated API request (watches excluded)",
            m.duration.clone(),
        );
        sub.register("watches", "Aggregated API watches open now", m.watches.clone());
        m
    }

    /// The verb as a label value from a fixed set.
    pub fn verb_label(verb: &str) -> &'static str {
        AGGREGATED_VERBS.iter().find(|v| **v == verb).copied().unwrap_or("other")
    }

    /// Counts one answered request, with its latency unless it is a watch.
    pub fn observe(&self, verb: &'static str, resource: &'static str, code: u16, seconds: f64) {
        self.requests.get_or_create(&AggregatedLabels { verb, resource, code }).inc();
        if verb != "watch" {
            self.duration.get_or_create(&AggregatedLatencyLabels { verb, resource }).observe(seconds);
        }
    }

    /// Counts an open watch of `resource` until the returned guard is dropped.
    pub fn watch_opened(&self, resource: &'static str) -> WatchGuard {
        let gauge = self.watches.get_or_create(&AggregatedLatencyLabels { verb: "watch", resource }).clone();
        gauge.inc();
        WatchGuard(gauge)
    }
}

/// One open watch in [`AggregatedMetrics::watches`]; dropping it closes the count.
#[derive(Debug)]
pub struct WatchGuard(Gauge);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Encodes the registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(%error, "encoding metrics failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_series_carry_their_labels() {
        let mut registry = Registry::with_prefix("tailscale_gateway");
        let m = AdmissionMetrics::register(&mut registry);
        m.observe(0, 2, 1, Some(0.001));
        m.observe(0, 2, 1, Some(0.001));
        m.observe(1, admission_labels::KIND_NONE, 3, None);
        m.observe(9, 9, 9, None); // clamped: mutate / - / error
        let text = encode(&registry);
        for want in [
            r#"tailscale_gateway_admission_requests_total{webhook="validate",kind="TailscaleServices",verdict="denied"} 2"#,
            r#"tailscale_gateway_admission_requests_total{webhook="mutate",kind="-",verdict="error"} 2"#,
            r#"tailscale_gateway_admission_request_duration_seconds_count{webhook="validate",kind="TailscaleServices",verdict="denied"} 2"#,
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        assert!(!text.contains(r#"duration_seconds_count{webhook="mutate""#), "errors carry no latency:\n{text}");
    }

    #[test]
    fn named_positions_match_the_label_values() {
        use admission_labels::*;
        assert_eq!((WEBHOOKS[VALIDATE], WEBHOOKS[MUTATE]), ("validate", "mutate"));
        assert_eq!((KINDS[KIND_OTHER], KINDS[KIND_NONE]), ("other", "-"));
        assert_eq!(
            [VERDICTS[ALLOWED], VERDICTS[DENIED], VERDICTS[PATCHED], VERDICTS[ERROR]],
            ["allowed", "denied", "patched", "error"]
        );
    }

    #[test]
    fn kind_labels_follow_the_kind_order() {
        for (i, kind) in crate::core::Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i);
            assert_eq!(admission_labels::KINDS[i], kind.name());
        }
    }
}
