//! `watch=true`: a stream of newline-delimited events pushed by the cache's change channel.
//!
//! A watch starts either from "now" (no `resourceVersion`, or `0`: the current objects as ADDED
//! events first) or from a revision still in the cache's event log (`410 Gone` when it is not).
//! Events of the other kind or another namespace are skipped; with label or field selectors an
//! object that stops matching is sent as DELETED and one that starts matching as ADDED, which
//! needs the set of keys this watcher has sent (kept only when a selector is given).

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::render::{bookmark_line, error_line, event_line};
use super::request::{Format, ListOptions};
use super::resources::View;
use crate::cache::{Cache, Event, EventType, Stored};
use crate::core::ObjectKey;

/// Buffered event lines per watcher before the writer waits for the client.
const CHANNEL_DEPTH: usize = 256;

/// A watch that cannot start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    /// `resourceVersion` is not a revision.
    #[error("invalid resourceVersion {0:?}")]
    BadVersion(String),
    /// The revision is older than the event log.
    #[error("{0}")]
    Gone(String),
}

impl WatchError {
    /// HTTP status for the error.
    pub fn status(&self) -> StatusCode {
        match self {
            WatchError::BadVersion(_) => StatusCode::BAD_REQUEST,
            WatchError::Gone(_) => StatusCode::GONE,
        }
    }
}

/// Decides which event type (if any) a watcher sends for a change, given its selectors.
struct Filter {
    namespace: Option<String>,
    opts: ListOptions,
    /// Keys sent and not deleted; only tracked when selectors may hide objects.
    known: Option<HashSet<ObjectKey>>,
}

impl Filter {
    fn new(namespace: Option<String>, opts: ListOptions) -> Self {
        let known = opts.filters().then(HashSet::new);
        Self { namespace, opts, known }
    }

    fn in_scope<T: View>(&self, obj: &T) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == obj.namespace())
    }

    fn remember<T: View>(&mut self, obj: &T) {
        if let Some(k) = &mut self.known {
            k.insert(ObjectKey::new(obj.namespace(), obj.name()));
        }
    }

    /// The event type to send for a change, or `None` to skip it.
    fn decide<T: View>(&mut self, kind: EventType, obj: &T) -> Option<&'static str> {
        if !self.in_scope(obj) {
            return None;
        }
        let matches = self.opts.matches(obj);
        let Some(known) = &mut self.known else {
            return Some(match kind {
                EventType::Added => "ADDED",
                EventType::Modified => "MODIFIED",
                EventType::Deleted => "DELETED",
            });
        };
        let key = ObjectKey::new(obj.namespace(), obj.name());
        let was = known.contains(&key);
        match (kind, matches, was) {
            (EventType::Deleted, _, true) => {
                known.remove(&key);
                Some("DELETED")
            }
            (EventType::Deleted, _, false) => None,
            (_, true, true) => Some("MODIFIED"),
            (_, true, false) => {
                known.insert(key);
                Some("ADDED")
            }
            (_, false, true) => {
                known.remove(&key);
                Some("DELETED")
            }
            (_, false, false) => None,
        }
    }
}

/// Settings for one watch stream.
pub struct WatchSpec {
    /// Namespace, or all.
    pub namespace: Option<String>,
    /// Selectors, resume point, bookmarks, timeout.
    pub opts: ListOptions,
    /// Representation of event objects.
    pub format: Format,
    /// How often to send a BOOKMARK when the client allows them.
    pub bookmark_every: Duration,
    /// Server shutdown.
    pub stop: CancellationToken,
}

/// Starts a watch of `T`: validates the resume point now (so errors are a proper HTTP status),
/// then streams event lines from a task until the client goes away, the timeout passes, or the
/// server stops.
pub fn start<T: View>(cache: &Cache, spec: WatchSpec) -> Result<mpsc::Receiver<Result<Bytes, Infallible>>, WatchError> {
    // Subscribe before reading, so no change between the snapshot and the loop is missed.
    let changes = cache.subscribe();
    let mut filter = Filter::new(spec.namespace.clone(), spec.opts.clone());
    let (initial, pending, revision) = {
        let index = cache.read();
        match spec.opts.resource_version.as_deref() {
            None | Some("0") => {
                let objects: Vec<Stored<T>> = T::list(&index, spec.namespace.as_deref())
                    .into_iter()
                    .filter(|s| spec.opts.matches(&*s.object))
                    .collect();
                (objects, Vec::new(), index.revision())
            }
            Some(rv) => {
                let rv: u64 = rv.parse().map_err(|_| WatchError::BadVersion(rv.to_string()))?;
                let events = index.events_since(rv).map_err(|g| WatchError::Gone(g.to_string()))?;
                // Resuming with selectors: assume the client holds what matches now and what the
                // pending events touch, so a change out of the selection is sent as DELETED.
                if filter.known.is_some() {
                    for s in T::list(&index, spec.namespace.as_deref()) {
                        if spec.opts.matches(&*s.object) {
                            filter.remember(&*s.object);
                        }
                    }
                    for e in &events {
                        if let Some(o) = T::of_event(&e.object) {
                            filter.remember(&**o);
                        }
                    }
                }
                (Vec::new(), events, index.revision().max(rv))
            }
        }
    };
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(run::<T>(cache.clone(), changes, tx, spec, filter, initial, pending, revision));
    Ok(rx)
}

#[allow(clippy::too_many_arguments)]
async fn run<T: View>(
    cache: Cache,
    mut changes: tokio::sync::watch::Receiver<u64>,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    spec: WatchSpec,
    mut filter: Filter,
    initial: Vec<Stored<T>>,
    pending: Vec<Event>,
    mut last: u64,
) {
    let format = spec.format;
    let include = spec.opts.include;
    let mut first = true;
    let send = |line: Vec<u8>| {
        let tx = tx.clone();
        async move { tx.send(Ok(Bytes::from(line))).await.is_ok() }
    };
    for s in &initial {
        filter.remember(&*s.object);
        if !send(event_line("ADDED", s, format, include, first, jiff::Timestamp::now())).await {
            return;
        }
        first = false;
    }
    if spec.opts.send_initial_events && spec.opts.allow_bookmarks && !send(bookmark_line::<T>(last, true)).await {
        return;
    }
    if !send_events::<T>(&pending, &mut filter, &tx, format, include, &mut first).await {
        return;
    }
    let deadline = tokio::time::Instant::now() + spec.opts.timeout.unwrap_or(super::request::MAX_WATCH);
    let mut bookmarks = tokio::time::interval(spec.bookmark_every);
    bookmarks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    bookmarks.tick().await;
    loop {
        tokio::select! {
            _ = spec.stop.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = bookmarks.tick(), if spec.opts.allow_bookmarks => {
                if !send(bookmark_line::<T>(last, false)).await {
                    return;
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let events = {
                    let index = cache.read();
                    match index.events_since(last) {
                        Ok(events) => {
                            last = index.revision();
                            Ok(events)
                        }
                        Err(gone) => Err(gone.to_string()),
                    }
                };
                match events {
                    Ok(events) => {
                        if !send_events::<T>(&events, &mut filter, &tx, format, include, &mut first).await {
                            return;
                        }
                    }
                    Err(message) => {
                        tracing::info!(reason = %message, "watcher fell behind the event log");
                        let _ = send(error_line(StatusCode::GONE, &message)).await;
                        return;
                    }
                }
            }
        }
    }
}

async fn send_events<T: View>(
    events: &[Event],
    filter: &mut Filter,
    tx: &mpsc::Sender<Result<Bytes, Infallible>>,
    format: Format,
    include: super::request::IncludeObject,
    first: &mut bool,
) -> bool {
    let now = jiff::Timestamp::now();
    for e in events {
        let Some(obj) = T::of_event(&e.object) else { continue };
        let Some(type_) = filter.decide(e.kind, &**obj) else { continue };
        let stored = Stored { object: obj.clone(), revision: e.revision, memo: e.memo.clone() };
        if tx.send(Ok(Bytes::from(event_line(type_, &stored, format, include, *first, now)))).await.is_err() {
            return false;
        }
        *first = false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::selector::Selector;
    use crate::core::views::Device;

    #[test]
    fn selectors_turn_changes_into_added_and_deleted() {
        let opts = ListOptions {
            labels: Selector::parse("env=prod").expect("parsing the label selector"),
            ..ListOptions::default()
        };
        let mut f = Filter::new(Some("default".into()), opts);
        let mut dev = Device { namespace: "default".into(), name: "d".into(), ..Device::default() };
        assert_eq!(f.decide(EventType::Added, &dev), None);
        dev.labels.insert("env".into(), "prod".into());
        assert_eq!(f.decide(EventType::Modified, &dev), Some("ADDED"));
        assert_eq!(f.decide(EventType::Modified, &dev), Some("MODIFIED"));
        dev.labels.clear();
        assert_eq!(f.decide(EventType::Modified, &dev), Some("DELETED"));
        assert_eq!(f.decide(EventType::Deleted, &dev), None);
        let other = Device { namespace: "other".into(), name: "d".into(), ..Device::default() };
        assert_eq!(f.decide(EventType::Added, &other), None);
    }

    #[test]
    fn without_selectors_events_pass_through() {
        let mut f = Filter::new(None, ListOptions::default());
        assert!(f.known.is_none());
        let dev = Device::default();
        assert_eq!(f.decide(EventType::Deleted, &dev), Some("DELETED"));
        assert_eq!(f.decide(EventType::Modified, &dev), Some("MODIFIED"));
    }
}
