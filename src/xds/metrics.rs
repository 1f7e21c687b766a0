//! Prometheus metrics of the extension server: calls, errors and latency per hook, so an operator
//! can see which Envoy Gateway hook is slow or receiving objects we cannot use.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `hook` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// RPC name, e.g. `PostClusterModify`.
    pub hook: &'static str,
}

/// The `hook` and `reason` labels of an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// RPC name.
    pub hook: &'static str,
    /// `unparseable`, `unknown_kind`, `invalid` or `missing_field`.
    pub reason: &'static str,
}

/// The labels of a route policy decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// Whether the request came through an ingress proxy (its identity believed).
    pub via_ingress_proxy: &'static str,
}

type HistogramCtor = fn() -> Histogram;

fn latency_histogram() -> Histogram {
    // 10 µs .. ~5 s.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

/// Handles to the extension server's metrics (cheap to clone).
#[derive(Clone, Debug)]
pub struct XdsMetrics {
    calls: Family<HookLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<HookLabels, Histogram, HistogramCtor>,
    decisions: Family<DecisionLabels, Counter>,
}

impl Default for XdsMetrics {
    /// Metrics not registered anywhere (tests, benchmarks).
    fn default() -> Self {
        Self {
            calls: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as HistogramCtor),
            decisions: Family::default(),
        }
    }
}

impl XdsMetrics {
    /// Creates the metrics and registers them: `xds_hook_calls_total`, `xds_hook_errors_total`,
    /// `xds_hook_duration_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("xds_hook_calls", "Envoy Gateway extension hook calls", m.calls.clone());
        registry.register(
            "xds_hook_errors",
            "Extension resources left unchanged because they could not be used, by hook and reason",
            m.errors.clone(),
        );
        registry.register("xds_hook_duration_seconds", "Time spent in one extension hook call", m.latency.clone());
        registry.register(
            "route_policy_decisions",
            "Requests Envoy asked about (ext_authz Check, also counted as the hook `Check`), by verdict and whether their identity was believed",
            m.decisions.clone(),
        );
        m
    }

    /// Records one finished call.
    pub fn observe(&self, hook: &'static str, elapsed: Duration) {
        self.calls.get_or_create(&HookLabels { hook }).inc();
        self.latency.get_or_create(&HookLabels { hook }).observe(elapsed.as_secs_f64());
    }

    /// Records one error.
    pub fn error(&self, hook: &'static str, reason: &'static str) {
        self.errors.get_or_create(&ErrorLabels { hook, reason }).inc();
    }

    /// Records one route policy decision.
    pub fn decision(&self, allowed: bool, via_ingress_proxy: bool) {
        let verdict = if allowed { "allowed" } else { "denied" };
        let via_ingress_proxy = if via_ingress_proxy { "true" } else { "false" };
        self.decisions.get_or_create(&DecisionLabels { verdict, via_ingress_proxy }).inc();
    }

    /// Calls so far (for tests and the benchmark).
    pub fn calls(&self, hook: &'static str) -> u64 {
        self.calls.get_or_create(&HookLabels { hook }).get()
    }

    /// Errors so far.
    pub fn errors(&self, hook: &'static str, reason: &'static str) -> u64 {
        self.errors.get_or_create(&ErrorLabels { hook, reason }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_are_encoded() {
        let mut registry = Registry::default();
        let m = XdsMetrics::register(&mut registry);
        m.observe("PostClusterModify", Duration::from_micros(50));
        m.error("PostClusterModify", "unparseable");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encoding the metrics");
        assert!(out.contains("xds_hook_calls_total{hook=\"PostClusterModify\"} 1"), "{out}");
        assert!(out.contains("xds_hook_errors_total{hook=\"PostClusterModify\",reason=\"unparseable\"} 1"), "{out}");
        assert!(out.contains("xds_hook_duration_seconds_count{hook=\"PostClusterModify\"} 1"), "{out}");
        assert_eq!(m.calls("PostClusterModify"), 1);
    }
}
