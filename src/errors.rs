//! Errors as people read them: one line, every cause said once, and a Kubernetes API error as the
//! message the API server wrote (kube's own `Display` of one appends a Rust debug dump of the
//! whole `Status`).

use std::error::Error;
use std::fmt;

/// Displays an error and its chain of causes on one line, each said once.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(self.0))
    }
}

/// The most of one text that goes into a log field: a peer-controlled string (an object's kind
/// or name in a gRPC call) must not turn one warning into megabytes of log.
pub const MAX_LOG_FIELD: usize = 256;

/// Displays a text cut to [`MAX_LOG_FIELD`] bytes (at a character boundary), saying how long the
/// original was.
pub struct Clipped<'a>(pub &'a str);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&clip(self.0))
    }
}

/// How often a warning a peer can cause again and again may be logged: one line per
/// [`WARN_EVERY`], saying how many were left out since the last.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

/// The interval of the throttled warnings.
pub const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Throttle {
    /// A throttle that lets one warning through per [`WARN_EVERY`].
    pub const fn new() -> Self {
        Self::every(WARN_EVERY)
    }

    /// A throttle that lets one warning through per `every`.
    pub const fn every(every: std::time::Duration) -> Self {
        Self { every, state: std::sync::Mutex::new((None, 0)) }
    }

    /// `Some(left out since the last one let through)` when a warning may be logged now; `None`
    /// (and one more left out) when not.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, left_out) = &mut *state;
        match last {
            Some(at) if at.elapsed() < self.every => {
                *left_out += 1;
                None
            }
            _ => {
                *last = Some(std::time::Instant::now());
                Some(std::mem::take(left_out))
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// `s` cut to [`MAX_LOG_FIELD`] bytes, with `… (N bytes)` when it was longer.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_LOG_FIELD {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = MAX_LOG_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &s[..end], s.len()))
}

/// `e` and its causes on one line, each said once (see [`Chain`]).
pub fn describe(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(status) = api_status(err) {
            parts.push(status_text(status));
            break;
        }
        let text = err.to_string();
        next = err.source();
        // Many errors end with their cause's text (`"watching: {0}"`): the cause says it.
        let own = match next.map(|n| n.to_string()) {
            Some(cause) if text.ends_with(&cause) => text[..text.len() - cause.len()].trim_end_matches([':', ' ']),
            _ => text.as_str(),
        };
        if !own.is_empty() && !parts.iter().any(|p| p.contains(own)) {
            parts.push(own.to_string());
        }
    }
    parts.join(": ")
}

/// The `Status` of a Kubernetes API error, if `e` is one.
pub fn api_status<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a kube::core::Status> {
    match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) => Some(status),
        _ => e.downcast_ref::<kube::core::Status>(),
    }
}

/// An API error as `kubectl` says it: the server's message, then its reason and code.
pub fn status_text(status: &kube::core::Status) -> String {
    let message = if status.message.is_empty() { "the API server refused the request" } else { &status.message };
    match (status.reason.as_str(), status.code) {
        ("", 0) => message.to_string(),
        ("", code) => format!("{message} ({code})"),
        (reason, 0) => format!("{message} ({reason})"),
        (reason, code) => format!("{message} ({reason}, {code})"),
    }
}

/// Whether `e` (or one of its causes) is an API error with `code`.
pub fn is_api_code(e: &(dyn Error + 'static), code: u16) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if api_status(err).is_some_and(|s| s.code == code) {
            return true;
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found() -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code: 404,
            reason: "NotFound".into(),
            message: "the server could not find the requested resource".into(),
            ..kube::core::Status::default()
        }))
    }

    #[derive(Debug, thiserror::Error)]
    #[error("watching TailscaleServices: {0}")]
    struct Wrapped(#[source] kube::Error);

    #[test]
    fn api_errors_read_as_the_servers_message_without_a_debug_dump() {
        let e = Wrapped(not_found());
        let text = describe(&e);
        assert_eq!(
            text,
            "watching TailscaleServices: the server could not find the requested resource (NotFound, 404)"
        );
        assert!(!format!("{}", Chain(&e)).contains("Status {"));
        assert!(is_api_code(&e, 404));
        assert!(!is_api_code(&e, 403));
    }

    #[test]
    fn a_throttle_lets_one_through_per_interval_and_counts_the_others() {
        let throttle = Throttle::every(std::time::Duration::from_millis(200));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(throttle.allow(), Some(2));
        assert_eq!(throttle.allow(), None);
    }

    #[test]
    fn long_texts_are_clipped_at_a_character_boundary_saying_their_length() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(1000);
        let clipped = clip(&long);
        assert!(clipped.ends_with("… (2000 bytes)"), "{clipped}");
        assert!(clipped.len() < MAX_LOG_FIELD + 20);
        assert_eq!(Clipped(&long).to_string(), clipped);
    }

    #[test]
    fn causes_are_said_once() {
        let io = std::io::Error::other("disk full");
        let e = anyhow::Error::new(io).context("writing state");
        assert_eq!(describe(e.as_ref()), "writing state: disk full");
    }
}
