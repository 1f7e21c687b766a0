//! Serializing what the handlers answer, generically over both kinds: lists with paging, Tables
//! (with `includeObject`), metadata-only forms, and watch events. Pure functions from cache
//! snapshots to bytes.
//!
//! Responses are written into one buffer from per-object [`Pieces`] (the JSON of the metadata, of
//! the body, and of the table cells with holes for the ages), serialized once per object revision
//! and kept in the cache entry's memo. Per request only the age cells are rendered, so a list of
//! 10,000 objects is mostly copying.

use std::sync::{Arc, OnceLock};

use serde::Serialize;

use super::request::{Format, IncludeObject, ListOptions, encode_continue};
use super::resources::{Cell, Column, Meta, View, age_since};
use crate::cache::Stored;
use crate::core::ObjectKey;

/// One page of a list.
pub struct Page<T> {
    /// Objects on this page.
    pub items: Vec<Stored<T>>,
    /// Token for the next page.
    pub continue_token: Option<String>,
    /// Matching objects after this page.
    pub remaining: Option<usize>,
}

/// Applies selectors, `continue` and `limit` to a snapshot ordered by namespace and name.
pub fn select_page<T: View>(all: Vec<Stored<T>>, opts: &ListOptions) -> Page<T> {
    let after = opts.continue_after.as_ref();
    let mut matching = all.into_iter().filter(|s| {
        after.is_none_or(|a| {
            let (ns, name) = (s.object.namespace(), s.object.name());
            (ns, name) > (a.namespace.as_str(), a.name.as_str())
        }) && opts.matches(&*s.object)
    });
    if opts.limit == 0 {
        return Page { items: matching.collect(), continue_token: None, remaining: None };
    }
    let items: Vec<Stored<T>> = matching.by_ref().take(opts.limit).collect();
    let remaining = matching.count();
    let continue_token = match items.last() {
        Some(last) if remaining > 0 => {
            Some(encode_continue(&ObjectKey::new(last.object.namespace(), last.object.name())))
        }
        _ => None,
    };
    Page { items, continue_token, remaining: (remaining > 0).then_some(remaining) }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: String,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    continue_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_item_count: Option<usize>,
}

impl ListMeta {
    fn of<T>(page: Option<&Page<T>>, revision: u64) -> Self {
        ListMeta {
            resource_version: revision.to_string(),
            continue_token: page.and_then(|p| p.continue_token.clone()),
            remaining_item_count: page.and_then(|p| p.remaining),
        }
    }
}

/// Appends the JSON of `value`; `null` if it cannot be serialized (none of ours fail: no maps
/// with non-string keys, no unrendered age cells), so the output stays well-formed.
fn write_json<S: Serialize + ?Sized>(out: &mut Vec<u8>, value: &S) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

fn to_json<S: Serialize + ?Sized>(value: &S) -> Box<[u8]> {
    let mut out = Vec::with_capacity(256);
    write_json(&mut out, value);
    out.into()
}

/// Table cells serialized once: the JSON array with a hole at each offset in `ages`, where the
/// age (at render time) of the timestamp recorded there goes.
#[derive(Debug, PartialEq)]
pub struct Cells {
    json: Box<[u8]>,
    ages: Box<[(usize, Option<jiff::Timestamp>)]>,
}

impl Cells {
    /// Serializes `cells`, leaving a hole for each [`Cell::Age`].
    pub fn new(cells: &[Cell<'_>]) -> Self {
        let mut json = Vec::with_capacity(128);
        let mut ages = Vec::new();
        json.push(b'[');
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            match cell {
                Cell::Age(t) => ages.push((json.len(), t.and_then(|t| t.parse::<jiff::Timestamp>().ok()))),
                Cell::Since(t) => ages.push((json.len(), Some(*t))),
                c => write_json(&mut json, c),
            }
        }
        json.push(b']');
        Cells { json: json.into(), ages: ages.into() }
    }

    /// Appends the cells as rendered at `now`.
    pub fn write(&self, out: &mut Vec<u8>, now: jiff::Timestamp) {
        let mut from = 0;
        for &(at, since) in &self.ages {
            out.extend_from_slice(&self.json[from..at]);
            write_json(out, &age_since(since, now));
            from = at;
        }
        out.extend_from_slice(&self.json[from..]);
    }
}

/// The members of a serialized body after `metadata`: `{"spec":…}` becomes `,"spec":…}`, and
/// `{}` becomes `}`, to follow `…,"metadata":{…}` in the object.
pub fn body_tail(body: &[u8]) -> Box<[u8]> {
    match body.strip_prefix(b"{") {
        Some(b"}") | None => Box::from(&b"}"[..]),
        Some(members) => [&b","[..], members].concat().into(),
    }
}

/// The serialized pieces of one object at one revision, each built on first use and kept in the
/// cache entry's memo.
#[derive(Default)]
pub struct Pieces {
    metadata: OnceLock<Box<[u8]>>,
    body_tail: OnceLock<Box<[u8]>>,
    cells: OnceLock<Cells>,
}

/// A stored object with its pieces.
struct Item<'a, T> {
    stored: &'a Stored<T>,
    pieces: Arc<Pieces>,
}

impl<'a, T: View> Item<'a, T> {
    fn new(stored: &'a Stored<T>) -> Self {
        Item { stored, pieces: stored.memo.get_or_init(Pieces::default) }
    }

    fn metadata(&self) -> &[u8] {
        self.pieces.metadata.get_or_init(|| to_json(&Meta::of(&*self.stored.object, self.stored.revision)))
    }

    fn body_tail(&self) -> &[u8] {
        self.pieces.body_tail.get_or_init(|| body_tail(&to_json(&self.stored.object.body())))
    }

    fn cells(&self) -> &Cells {
        self.pieces.cells.get_or_init(|| Cells::new(&self.stored.object.cells()))
    }
}

/// The start of an object or list, up to its metadata: `{"apiVersion":…,"kind":…,"metadata":`.
fn head(api_version: &str, kind: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"apiVersion\":");
    write_json(&mut out, api_version);
    out.extend_from_slice(b",\"kind\":");
    write_json(&mut out, kind);
    out.extend_from_slice(b",\"metadata\":");
    out
}

/// What each object of a response becomes.
#[derive(Clone, Copy)]
enum Form {
    /// The full object.
    Object,
    /// `PartialObjectMetadata`.
    Metadata,
    /// A Table row, with the object as `includeObject` says.
    Row(IncludeObject),
}

/// Writes objects in one [`Form`], with the object heads serialized once per response.
struct Writer {
    form: Form,
    now: jiff::Timestamp,
    object_head: Vec<u8>,
    metadata_head: Vec<u8>,
}

impl Writer {
    fn new<T: View>(form: Form, now: jiff::Timestamp) -> Self {
        Writer {
            form,
            now,
            object_head: head(T::info().api_version, &T::info().kind),
            metadata_head: head("meta.k8s.io/v1", "PartialObjectMetadata"),
        }
    }

    fn object<T: View>(&self, out: &mut Vec<u8>, item: &Item<'_, T>) {
        out.extend_from_slice(&self.object_head);
        out.extend_from_slice(item.metadata());
        out.extend_from_slice(item.body_tail());
    }

    fn partial<T: View>(&self, out: &mut Vec<u8>, item: &Item<'_, T>) {
        out.extend_from_slice(&self.metadata_head);
        out.extend_from_slice(item.metadata());
        out.push(b'}');
    }

    fn item<T: View>(&self, out: &mut Vec<u8>, stored: &Stored<T>) {
        let item = Item::new(stored);
        match self.form {
            Form::Object => self.object(out, &item),
            Form::Metadata => self.partial(out, &item),
            Form::Row(include) => {
                out.extend_from_slice(b"{\"cells\":");
                item.cells().write(out, self.now);
                match include {
                    IncludeObject::None => {}
                    IncludeObject::Metadata => {
                        out.extend_from_slice(b",\"object\":");
                        self.partial(out, &item);
                    }
                    IncludeObject::Object => {
                        out.extend_from_slice(b",\"object\":");
                        self.object(out, &item);
                    }
                }
                out.push(b'}');
            }
        }
    }

    /// A JSON array of `items`; the buffer grows once, by the first item's size times the rest.
    fn items<T: View>(&self, out: &mut Vec<u8>, items: &[Stored<T>]) {
        out.push(b'[');
        for (i, stored) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let start = out.len();
            self.item(out, stored);
            if i == 0 {
                let per_item = out.len() - start + 1;
                out.reserve((per_item + per_item / 8) * (items.len() - 1) + 2);
            }
        }
        out.push(b']');
    }
}

/// A list: `{"apiVersion","kind","metadata","items"}`.
fn write_list<T: View>(
    out: &mut Vec<u8>,
    api_version: &str,
    kind: &str,
    meta: &ListMeta,
    items: &[Stored<T>],
    w: &Writer,
) {
    out.extend_from_slice(&head(api_version, kind));
    write_json(out, meta);
    out.extend_from_slice(b",\"items\":");
    w.items(out, items);
    out.push(b'}');
}

/// A Table: `{"kind","apiVersion","metadata","columnDefinitions","rows"}` (column definitions
/// left empty when `with_columns` is false).
fn write_table<T: View>(
    out: &mut Vec<u8>,
    version: &str,
    meta: &ListMeta,
    with_columns: bool,
    rows: &[Stored<T>],
    w: &Writer,
) {
    out.extend_from_slice(b"{\"kind\":\"Table\",\"apiVersion\":");
    write_json(out, &format!("meta.k8s.io/{version}"));
    out.extend_from_slice(b",\"metadata\":");
    write_json(out, meta);
    out.extend_from_slice(b",\"columnDefinitions\":");
    write_json(out, if with_columns { T::info().columns.as_slice() } else { &[] as &[Column] });
    out.extend_from_slice(b",\"rows\":");
    w.items(out, rows);
    out.push(b'}');
}

/// Writes `s` as `format` asks: the object, its metadata, or a one-row Table.
fn write_one<T: View>(
    out: &mut Vec<u8>,
    s: &Stored<T>,
    format: Format,
    include: IncludeObject,
    with_columns: bool,
    now: jiff::Timestamp,
) {
    match format {
        Format::Json => Writer::new::<T>(Form::Object, now).item(out, s),
        Format::Metadata(_) => Writer::new::<T>(Form::Metadata, now).item(out, s),
        Format::Table(v) => {
            let meta = ListMeta::of::<T>(None, s.revision);
            let w = Writer::new::<T>(Form::Row(include), now);
            write_table(out, v, &meta, with_columns, std::slice::from_ref(s), &w);
        }
    }
}

fn to_bytes<S: Serialize>(value: &S) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write_json(&mut out, value);
    out
}

/// A list response: plain list, Table or `PartialObjectMetadataList`.
pub fn list_body<T: View>(
    page: &Page<T>,
    revision: u64,
    format: Format,
    include: IncludeObject,
    now: jiff::Timestamp,
) -> Vec<u8> {
    let meta = ListMeta::of(Some(page), revision);
    let mut out = Vec::with_capacity(512);
    match format {
        Format::Json => {
            let w = Writer::new::<T>(Form::Object, now);
            write_list(&mut out, T::info().api_version, &T::info().list_kind, &meta, &page.items, &w);
        }
        Format::Table(v) => {
            write_table(&mut out, v, &meta, true, &page.items, &Writer::new::<T>(Form::Row(include), now))
        }
        Format::Metadata(_) => {
            let w = Writer::new::<T>(Form::Metadata, now);
            write_list(&mut out, "meta.k8s.io/v1", "PartialObjectMetadataList", &meta, &page.items, &w);
        }
    }
    out
}

/// A single-object response (a one-row Table when a Table was asked for).
pub fn object_body<T: View>(s: &Stored<T>, format: Format, include: IncludeObject, now: jiff::Timestamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_one(&mut out, s, format, include, true, now);
    out
}

#[derive(Serialize)]
struct WatchEvent<O: Serialize> {
    #[serde(rename = "type")]
    type_: &'static str,
    object: O,
}

/// One watch event line (with its trailing newline). Table watches carry one-row Tables, with
/// column definitions only on the first event, as kube-apiserver sends them.
pub fn event_line<T: View>(
    type_: &'static str,
    s: &Stored<T>,
    format: Format,
    include: IncludeObject,
    first: bool,
    now: jiff::Timestamp,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"type\":");
    write_json(&mut out, type_);
    out.extend_from_slice(b",\"object\":");
    write_one(&mut out, s, format, include, first, now);
    out.extend_from_slice(b"}\n");
    out
}

/// A BOOKMARK event line at `revision`; `initial_end` marks the end of `sendInitialEvents`.
pub fn bookmark_line<T: View>(revision: u64, initial_end: bool) -> Vec<u8> {
    let mut metadata = serde_json::json!({"resourceVersion": revision.to_string()});
    if initial_end {
        metadata["annotations"] = serde_json::json!({"k8s.io/initial-events-end": "true"});
    }
    let object = serde_json::json!({"apiVersion": T::info().api_version, "kind": T::info().kind, "metadata": metadata});
    let mut out = to_bytes(&WatchEvent { type_: "BOOKMARK", object });
    out.push(b'\n');
    out
}

/// An ERROR event line carrying a `Status`.
pub fn error_line(code: http::StatusCode, message: &str) -> Vec<u8> {
    let object = crate::server::status::status_body(code, message);
    let mut out = to_bytes(&WatchEvent { type_: "ERROR", object });
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;
    use crate::aggregated::resources::{Object, PartialObject};
    use crate::core::selector::Selector;
    use crate::core::views::{Device, SelectedEndpoint, Selection};

    /// The renderers as they were before per-object pieces: serde structs over fresh views.
    mod reference {
        use super::*;

        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        pub struct List<I: Serialize> {
            pub api_version: &'static str,
            pub kind: &'static str,
            pub metadata: ListMeta,
            pub items: Vec<I>,
        }

        #[derive(Serialize)]
        #[serde(untagged, bound = "")]
        pub enum RowObject<'a, T: View> {
            Metadata(PartialObject<'a>),
            Full(Object<'a, T>),
        }

        #[derive(Serialize)]
        #[serde(bound = "")]
        pub struct Row<'a, T: View> {
            pub cells: Vec<Cell<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub object: Option<RowObject<'a, T>>,
        }

        #[derive(Serialize)]
        #[serde(rename_all = "camelCase", bound = "")]
        pub struct Table<'a, T: View> {
            pub kind: &'static str,
            pub api_version: String,
            pub metadata: ListMeta,
            pub column_definitions: &'static [Column],
            pub rows: Vec<Row<'a, T>>,
        }

        pub fn table<'a, T: View>(
            rows: &'a [Stored<T>],
            meta: ListMeta,
            version: &str,
            include: IncludeObject,
            with_columns: bool,
            now: jiff::Timestamp,
        ) -> Table<'a, T> {
            let row = |s: &'a Stored<T>| Row {
                cells: s.object.cells().into_iter().map(|c| c.at(now)).collect(),
                object: match include {
                    IncludeObject::None => None,
                    IncludeObject::Metadata => Some(RowObject::Metadata(PartialObject::new(&*s.object, s.revision))),
                    IncludeObject::Object => Some(RowObject::Full(Object::new(&*s.object, s.revision))),
                },
            };
            Table {
                kind: "Table",
                api_version: format!("meta.k8s.io/{version}"),
                metadata: meta,
                column_definitions: if with_columns { &T::info().columns } else { &[] },
                rows: rows.iter().map(row).collect(),
            }
        }

        pub fn list_body<T: View>(
            page: &Page<T>,
            revision: u64,
            format: Format,
            include: IncludeObject,
            now: jiff::Timestamp,
        ) -> Vec<u8> {
            let meta = ListMeta::of(Some(page), revision);
            match format {
                Format::Json => to_bytes(&List {
                    api_version: T::info().api_version,
                    kind: &T::info().list_kind,
                    metadata: meta,
                    items: page.items.iter().map(|s| Object::new(&*s.object, s.revision)).collect(),
                }),
                Format::Table(v) => to_bytes(&table(&page.items, meta, v, include, true, now)),
                Format::Metadata(_) => to_bytes(&List {
                    api_version: "meta.k8s.io/v1",
                    kind: "PartialObjectMetadataList",
                    metadata: meta,
                    items: page.items.iter().map(|s| PartialObject::new(&*s.object, s.revision)).collect(),
                }),
            }
        }

        pub fn event_line<T: View>(
            type_: &'static str,
            s: &Stored<T>,
            format: Format,
            include: IncludeObject,
            first: bool,
            now: jiff::Timestamp,
        ) -> Vec<u8> {
            let mut out = match format {
                Format::Json => to_bytes(&WatchEvent { type_, object: Object::new(&*s.object, s.revision) }),
                Format::Table(v) => {
                    let meta = ListMeta::of::<T>(None, s.revision);
                    to_bytes(&WatchEvent {
                        type_,
                        object: table(std::slice::from_ref(s), meta, v, include, first, now),
                    })
                }
                Format::Metadata(_) => {
                    to_bytes(&WatchEvent { type_, object: PartialObject::new(&*s.object, s.revision) })
                }
            };
            out.push(b'\n');
            out
        }
    }

    fn full_device(ns: &str, name: &str, rev: u64) -> Stored<Device> {
        let d = Device {
            namespace: ns.into(),
            name: name.into(),
            endpoints: "web \"quoted\"".into(),
            tailnet: "corp\u{e9}\t".into(),
            addresses: vec!["fd7a::1".into(), "100.64.0.1".into()],
            fqdn: Some("web-0.tail1.ts.net".into()),
            node_id: Some("n1".into()),
            online: true,
            connected: false,
            last_seen: Some("2025-06-25T10:30:00Z".into()),
            tags: vec!["tag:a".into(), "tag:<b>".into()],
            os: Some("linux".into()),
            client_version: Some("1.84.2".into()),
            pod: Some("web-0".into()),
            created: Some("2025-06-25T10:00:00Z".into()),
            labels: BTreeMap::from([("env".into(), "prod".into()), ("a/b".into(), "\\".into())]),
        };
        Stored::new(Arc::new(d), rev)
    }

    fn selections() -> Vec<Stored<Selection>> {
        let with_vip = Selection {
            namespace: "default".into(),
            name: "web".into(),
            vip_service: Some("svc:web".into()),
            vip_addresses: vec!["100.100.0.1".into()],
            vip_dns_name: Some("web.tail1.ts.net".into()),
            endpoints: vec![SelectedEndpoint { name: "east".into(), machines: vec!["e-0".into()], healthy: 1 }],
            created: Some("2024-01-01T00:00:00Z".into()),
            labels: BTreeMap::from([("app".into(), "web".into())]),
        };
        let bare = Selection { namespace: "default".into(), name: "empty".into(), ..Selection::default() };
        vec![Stored::new(Arc::new(with_vip), 5), Stored::new(Arc::new(bare), 6)]
    }

    const FORMATS: [Format; 5] = [
        Format::Json,
        Format::Table("v1"),
        Format::Table("v1beta1"),
        Format::Metadata("v1"),
        Format::Metadata("v1beta1"),
    ];
    const INCLUDES: [IncludeObject; 3] = [IncludeObject::None, IncludeObject::Metadata, IncludeObject::Object];

    fn same_bytes_as_reference<T: View>(all: Vec<Stored<T>>, now: jiff::Timestamp) {
        let paged = ListOptions { limit: 1, ..ListOptions::default() };
        for opts in [ListOptions::default(), paged] {
            let page = select_page(all.clone(), &opts);
            for format in FORMATS {
                for include in INCLUDES {
                    // Twice: the second time from the memoized pieces.
                    for _ in 0..2 {
                        let got = list_body(&page, 42, format, include, now);
                        let want = reference::list_body(&page, 42, format, include, now);
                        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
                        for s in &page.items {
                            for first in [true, false] {
                                let got = event_line("MODIFIED", s, format, include, first, now);
                                let want = reference::event_line("MODIFIED", s, format, include, first, now);
                                assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
                            }
                            let got = object_body(s, format, include, now);
                            let mut want = reference::event_line("X", s, format, include, true, now);
                            want.truncate(want.len() - 2);
                            want.drain(..br#"{"type":"X","object":"#.len());
                            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn responses_match_the_serde_rendering_byte_for_byte() {
        let now: jiff::Timestamp = "2025-06-25T12:00:00Z".parse().expect("parsing the timestamp");
        let mut devices = snapshot();
        devices.push(full_device("c", "web-0", 7));
        same_bytes_as_reference(devices, now);
        same_bytes_as_reference(selections(), now);
        same_bytes_as_reference(Vec::<Stored<Device>>::new(), now);
    }

    #[test]
    fn cached_cells_equal_freshly_rendered_ones_at_any_time() {
        let dev = full_device("a", "d", 1);
        let cells = Cells::new(&dev.object.cells());
        // AGE, and LAST SEEN unless the device is online ("now").
        assert_eq!(cells.ages.len(), if dev.object.online { 1 } else { 2 });
        for now in ["2025-06-25T10:35:00Z", "2026-01-01T00:00:00Z", "2020-01-01T00:00:00Z"] {
            let now: jiff::Timestamp = now.parse().expect("parsing the timestamp");
            let mut got = Vec::new();
            cells.write(&mut got, now);
            let fresh: Vec<Cell<'_>> = dev.object.cells().into_iter().map(|c| c.at(now)).collect();
            assert_eq!(got, serde_json::to_vec(&fresh).unwrap_or_default());
        }
        let unknown = Cells::new(&[Cell::Age(Some("not a time")), Cell::Int(3), Cell::Age(None)]);
        let mut got = Vec::new();
        unknown.write(&mut got, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(got, br#"["<unknown>",3,"<unknown>"]"#);
    }

    #[test]
    fn body_tails_follow_metadata() {
        assert_eq!(&*body_tail(br#"{"spec":{"a":1},"status":{}}"#), br#","spec":{"a":1},"status":{}}"#);
        assert_eq!(&*body_tail(b"{}"), b"}");
        assert_eq!(&*body_tail(b""), b"}");
    }

    #[test]
    fn pieces_are_memoized_per_entry() {
        let s = full_device("a", "d", 1);
        let first = object_body(&s, Format::Json, IncludeObject::Metadata, jiff::Timestamp::UNIX_EPOCH);
        let pieces = s.memo.get_or_init(Pieces::default);
        assert!(pieces.metadata.get().is_some() && pieces.body_tail.get().is_some());
        assert!(pieces.cells.get().is_none(), "cells are built only when a Table asks");
        assert_eq!(object_body(&s.clone(), Format::Json, IncludeObject::Metadata, jiff::Timestamp::UNIX_EPOCH), first);
    }

    #[test]
    fn unserializable_values_write_null() {
        let mut out = b"[".to_vec();
        write_json(&mut out, &Cell::Age(None));
        assert_eq!(out, b"[null");
    }

    fn stored(ns: &str, name: &str, online: bool, rev: u64) -> Stored<Device> {
        let d = Device { namespace: ns.into(), name: name.into(), online, ..Device::default() };
        Stored::new(Arc::new(d), rev)
    }

    fn snapshot() -> Vec<Stored<Device>> {
        vec![
            stored("a", "d1", true, 1),
            stored("a", "d2", false, 2),
            stored("b", "d1", true, 3),
            stored("b", "d3", true, 4),
        ]
    }

    #[test]
    fn pages_follow_limit_and_continue() {
        let mut opts = ListOptions { limit: 2, ..ListOptions::default() };
        let p1 = select_page(snapshot(), &opts);
        assert_eq!(p1.items.len(), 2);
        assert_eq!(p1.remaining, Some(2));
        opts.continue_after = p1
            .continue_token
            .as_deref()
            .map(|t| super::super::request::decode_continue(t).expect("decoding the continue token"));
        let p2 = select_page(snapshot(), &opts);
        assert_eq!(p2.items.iter().map(|s| s.revision).collect::<Vec<_>>(), vec![3, 4]);
        assert!(p2.continue_token.is_none());
    }

    #[test]
    fn pages_apply_selectors() {
        let opts = ListOptions {
            fields: super::super::request::FieldSelector::parse("status.online=false").unwrap_or_default(),
            labels: Selector::everything(),
            ..ListOptions::default()
        };
        let p = select_page(snapshot(), &opts);
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].object.name, "d2");
    }

    #[test]
    fn table_lists_carry_columns_rows_and_metadata() {
        let page = select_page(snapshot(), &ListOptions::default());
        let body = list_body(&page, 9, Format::Table("v1"), IncludeObject::Metadata, jiff::Timestamp::UNIX_EPOCH);
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["kind"], "Table");
        assert_eq!(v["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(v["metadata"]["resourceVersion"], "9");
        assert_eq!(v["columnDefinitions"][0]["format"], "name");
        assert_eq!(v["rows"].as_array().map(Vec::len), Some(4));
        assert_eq!(v["rows"][2]["object"]["metadata"]["namespace"], "b");
        assert_eq!(v["rows"][2]["object"]["kind"], "PartialObjectMetadata");
        let full = list_body(&page, 9, Format::Table("v1"), IncludeObject::Object, jiff::Timestamp::UNIX_EPOCH);
        let v: Value = serde_json::from_slice(&full).unwrap_or_default();
        assert_eq!(v["rows"][0]["object"]["kind"], "TailscaleDevice");
        let none = list_body(&page, 9, Format::Table("v1"), IncludeObject::None, jiff::Timestamp::UNIX_EPOCH);
        let v: Value = serde_json::from_slice(&none).unwrap_or_default();
        assert!(v["rows"][0].get("object").is_none());
    }

    #[test]
    fn json_lists_and_events() {
        let page = select_page(snapshot(), &ListOptions::default());
        let v: Value = serde_json::from_slice(&list_body(
            &page,
            9,
            Format::Json,
            IncludeObject::Metadata,
            jiff::Timestamp::UNIX_EPOCH,
        ))
        .unwrap_or_default();
        assert_eq!(v["kind"], "TailscaleDeviceList");
        assert_eq!(v["items"][3]["metadata"]["resourceVersion"], "4");
        let line = event_line(
            "ADDED",
            &page.items[0],
            Format::Json,
            IncludeObject::Metadata,
            true,
            jiff::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(line.last(), Some(&b'\n'));
        let e: Value = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(e["type"], "ADDED");
        assert_eq!(e["object"]["metadata"]["name"], "d1");
        let later = event_line(
            "MODIFIED",
            &page.items[0],
            Format::Table("v1"),
            IncludeObject::Metadata,
            false,
            jiff::Timestamp::UNIX_EPOCH,
        );
        let e: Value = serde_json::from_slice(&later).unwrap_or_default();
        assert_eq!(e["object"]["columnDefinitions"].as_array().map(Vec::len), Some(0));
        let b: Value = serde_json::from_slice(&bookmark_line::<Device>(12, true)).unwrap_or_default();
        assert_eq!(b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    }
}
