//! Prometheus metrics. Each face registers its families into one registry at start-up; the
//! HTTPS server exposes it on `/metrics` in the text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

/// Admission webhook metrics.
#[derive(Clone)]
pub struct AdmissionMetrics {
    /// Requests by webhook, kind and verdict.
    pub requests: Family<AdmissionLabels, Counter>,
    /// Latency by webhook, kind and verdict.
    pub duration: Family<AdmissionLabels, Histogram, fn() -> Histogram>,
}

impl AdmissionMetrics {
    /// Registers the families under `admission_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(new_histogram as fn() -> Histogram),
        };
        let sub = registry.sub_registry_with_prefix("admission");
        sub.register("requests", "Admission reviews answered, by webhook, kind and verdict", m.requests.clone());
        sub.register("request_duration_seconds", "Time to answer an admission review", m.duration.clone());
        m
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
