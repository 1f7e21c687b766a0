//! Status helpers shared by every controller: conditions that keep their `lastTransitionTime`
//! while their status is unchanged, and the "observed contains desired" comparison that lets a
//! reconcile skip writes when nothing changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// Condition type every resource reports.
pub const READY: &str = "Ready";
/// Condition type of a TailscaleServices' VIP service.
pub const VIP_SERVICE_READY: &str = "VIPServiceReady";
/// Condition type: the VIP is published from this cluster (its `spec.serve` is served).
pub const PUBLISHED: &str = "Published";

/// `now`, truncated to whole seconds as the API server stores `metav1.Time`, so a condition
/// written and read back compares equal to the one we built.
pub fn now_seconds() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// A condition in the shape we want it, before the transition time is decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired<'a> {
    /// Condition type.
    pub type_: &'a str,
    /// Whether it holds.
    pub ok: bool,
    /// CamelCase reason.
    pub reason: &'a str,
    /// Human readable message.
    pub message: String,
}

/// Builds a condition, keeping the previous `lastTransitionTime` when the status did not flip
/// (so an unchanged world produces an identical status and no write).
pub fn condition(desired: Desired<'_>, generation: Option<i64>, now: Timestamp, previous: &[Condition]) -> Condition {
    let status = if desired.ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == desired.type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: desired.type_.to_string(),
        status: status.to_string(),
        reason: desired.reason.to_string(),
        message: desired.message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Whether `observed` already holds every field of `desired` with the same value.
///
/// Objects may carry more fields than we asked for (server defaults, other managers); lists must
/// have the same length with each element containing ours. A field we want empty (null, `{}`,
/// `[]`) that the server dropped counts as present.
pub fn contains(observed: &Value, desired: &Value) -> bool {
    match (observed, desired) {
        (Value::Object(o), Value::Object(d)) => d.iter().all(|(k, dv)| match o.get(k) {
            Some(ov) => contains(ov, dv),
            None => is_empty(dv),
        }),
        (Value::Array(o), Value::Array(d)) => o.len() == d.len() && o.iter().zip(d).all(|(a, b)| contains(a, b)),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Null, d) => is_empty(d),
        (o, d) => o == d,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("parsing the timestamp")
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let t0 = ts("2025-06-25T10:00:00Z");
        let t1 = ts("2025-06-25T11:00:00Z");
        let first = condition(
            Desired { type_: READY, ok: false, reason: "WaitingForDevices", message: "0/2".into() },
            Some(1),
            t0,
            &[],
        );
        assert_eq!(first.last_transition_time, Time(t0));
        assert_eq!(first.status, "False");
        // Same status, new message: the time stays.
        let second = condition(
            Desired { type_: READY, ok: false, reason: "WaitingForDevices", message: "1/2".into() },
            Some(1),
            t1,
            std::slice::from_ref(&first),
        );
        assert_eq!(second.last_transition_time, Time(t0));
        assert_eq!(second.message, "1/2");
        // Flip: the time moves.
        let third = condition(
            Desired { type_: READY, ok: true, reason: "DevicesReady", message: "2/2".into() },
            Some(2),
            t1,
            &[second],
        );
        assert_eq!(third.last_transition_time, Time(t1));
        assert_eq!(third.observed_generation, Some(2));
    }

    #[test]
    fn contains_ignores_server_additions_but_not_changes() {
        let observed = json!({"metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}},
            "spec": {"replicas": 2, "list": [{"a": 1, "default": true}], "empty": null}});
        assert!(contains(&observed, &json!({"metadata": {"labels": {"x": "1"}}, "spec": {"list": [{"a": 1}]}})));
        assert!(contains(&observed, &json!({"spec": {"missing": [], "empty": {}}})));
        assert!(!contains(&observed, &json!({"spec": {"replicas": 3}})));
        assert!(!contains(&observed, &json!({"spec": {"list": [{"a": 1}, {"a": 2}]}})));
        assert!(!contains(&observed, &json!({"metadata": {"labels": {"z": "3"}}})));
        assert!(contains(&json!({"n": 2.0}), &json!({"n": 2})));
    }
}
