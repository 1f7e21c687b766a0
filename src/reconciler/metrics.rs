//! Reconciler metrics: how often each controller runs, how often it fails and how long it takes.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `tailnet`, `endpoints` or `services`.
    pub controller: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Controller name.
    pub controller: String,
    /// Short error class (see `Error::metric_label`).
    pub error: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Reconcile counters and durations per controller, registered into the server's registry so
/// `/metrics` shows whether the reconciler keeps up and why it fails.
#[derive(Clone)]
pub struct ReconcilerMetrics {
    /// Reconciles started.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconciles failed, by error class.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
}

impl Default for ReconcilerMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl ReconcilerMetrics {
    /// New metrics registered under `tailscale_gateway_reconcile_*`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("tailscale_gateway_reconcile");
        sub.register("runs", "Reconciles started per controller", m.reconciles.clone());
        sub.register("errors", "Reconciles failed per controller and error class", m.errors.clone());
        sub.register("duration_seconds", "Reconcile duration per controller", m.duration.clone());
        m
    }

    /// Starts timing one reconcile of `controller`.
    pub fn start(&self, controller: &'static str) -> ReconcileTimer<'_> {
        let labels = ControllerLabels { controller: controller.to_string() };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer { metrics: self, labels, start: Instant::now() }
    }
}

/// Records the duration when dropped; [`ReconcileTimer::fail`] counts an error.
pub struct ReconcileTimer<'a> {
    metrics: &'a ReconcilerMetrics,
    labels: ControllerLabels,
    start: Instant,
}

impl ReconcileTimer<'_> {
    /// Counts a failure of class `error`.
    pub fn fail(&self, error: &str) {
        self.metrics
            .errors
            .get_or_create(&ErrorLabels { controller: self.labels.controller.clone(), error: error.to_string() })
            .inc();
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.duration.get_or_create(&self.labels).observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_registered_and_counted() {
        let mut registry = Registry::default();
        let m = ReconcilerMetrics::new(&mut registry);
        {
            let t = m.start("endpoints");
            t.fail("kube");
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encoding the metrics");
        assert!(out.contains("tailscale_gateway_reconcile_runs_total{controller=\"endpoints\"} 1"), "{out}");
        assert!(
            out.contains("tailscale_gateway_reconcile_errors_total{controller=\"endpoints\",error=\"kube\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("tailscale_gateway_reconcile_duration_seconds_count{controller=\"endpoints\"} 1"),
            "{out}"
        );
    }
}
