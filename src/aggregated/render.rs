//! Serializing what the handlers answer, generically over both kinds: lists with paging, Tables
//! (with `includeObject`), metadata-only forms, and watch events. Pure functions from cache
//! snapshots to bytes.

use serde::Serialize;

use super::request::{Format, IncludeObject, ListOptions, encode_continue};
use super::resources::{Cell, Column, GROUP_VERSION, Object, PartialObject, View};
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<I: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    metadata: ListMeta,
    items: Vec<I>,
}

#[derive(Serialize)]
#[serde(untagged, bound = "")]
enum RowObject<'a, T: View> {
    Metadata(PartialObject<'a>),
    Full(Object<'a, T>),
}

#[derive(Serialize)]
#[serde(bound = "")]
struct Row<'a, T: View> {
    cells: Vec<Cell<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<RowObject<'a, T>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase", bound = "")]
struct Table<'a, T: View> {
    kind: &'static str,
    api_version: String,
    metadata: ListMeta,
    column_definitions: &'static [Column],
    rows: Vec<Row<'a, T>>,
}

fn row<'a, T: View>(s: &'a Stored<T>, include: IncludeObject, now: jiff::Timestamp) -> Row<'a, T> {
    let object = match include {
        IncludeObject::None => None,
        IncludeObject::Metadata => Some(RowObject::Metadata(PartialObject::new(&*s.object, s.revision))),
        IncludeObject::Object => Some(RowObject::Full(Object::new(&*s.object, s.revision))),
    };
    Row { cells: s.object.cells(now), object }
}

fn table<'a, T: View>(
    rows: &'a [Stored<T>],
    meta: ListMeta,
    version: &str,
    include: IncludeObject,
    with_columns: bool,
    now: jiff::Timestamp,
) -> Table<'a, T> {
    Table {
        kind: "Table",
        api_version: format!("meta.k8s.io/{version}"),
        metadata: meta,
        column_definitions: if with_columns { T::COLUMNS } else { &[] },
        rows: rows.iter().map(|s| row(s, include, now)).collect(),
    }
}

fn to_bytes<S: Serialize>(value: &S) -> Vec<u8> {
    to_bytes_sized(value, 512)
}

/// Serializes into a buffer pre-sized for `hint` bytes (large lists avoid repeated regrowth).
fn to_bytes_sized<S: Serialize>(value: &S, hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(hint);
    // Serializing our own structs into memory cannot fail (no maps with non-string keys).
    if serde_json::to_writer(&mut out, value).is_err() {
        out.clear();
    }
    out
}

/// Rough bytes per listed object, to pre-size list buffers.
const BYTES_PER_ITEM: usize = 600;

/// A list response: plain list, Table or `PartialObjectMetadataList`.
pub fn list_body<T: View>(
    page: &Page<T>,
    revision: u64,
    format: Format,
    include: IncludeObject,
    now: jiff::Timestamp,
) -> Vec<u8> {
    let meta = ListMeta::of(Some(page), revision);
    let hint = 256 + page.items.len() * BYTES_PER_ITEM;
    match format {
        Format::Json => to_bytes_sized(
            &List {
                api_version: GROUP_VERSION,
                kind: T::LIST_KIND,
                metadata: meta,
                items: page.items.iter().map(|s| Object::new(&*s.object, s.revision)).collect(),
            },
            hint,
        ),
        Format::Table(v) => to_bytes_sized(&table(&page.items, meta, v, include, true, now), hint),
        Format::Metadata(_) => to_bytes_sized(
            &List {
                api_version: "meta.k8s.io/v1",
                kind: "PartialObjectMetadataList",
                metadata: meta,
                items: page.items.iter().map(|s| PartialObject::new(&*s.object, s.revision)).collect(),
            },
            hint,
        ),
    }
}

/// A single-object response (a one-row Table when a Table was asked for).
pub fn object_body<T: View>(s: &Stored<T>, format: Format, include: IncludeObject, now: jiff::Timestamp) -> Vec<u8> {
    match format {
        Format::Json => to_bytes(&Object::new(&*s.object, s.revision)),
        Format::Table(v) => {
            let meta = ListMeta::of::<T>(None, s.revision);
            to_bytes(&table(std::slice::from_ref(s), meta, v, include, true, now))
        }
        Format::Metadata(_) => to_bytes(&PartialObject::new(&*s.object, s.revision)),
    }
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
    let mut out = match format {
        Format::Json => to_bytes(&WatchEvent { type_, object: Object::new(&*s.object, s.revision) }),
        Format::Table(v) => {
            let meta = ListMeta::of::<T>(None, s.revision);
            to_bytes(&WatchEvent { type_, object: table(std::slice::from_ref(s), meta, v, include, first, now) })
        }
        Format::Metadata(_) => to_bytes(&WatchEvent { type_, object: PartialObject::new(&*s.object, s.revision) }),
    };
    out.push(b'\n');
    out
}

/// A BOOKMARK event line at `revision`; `initial_end` marks the end of `sendInitialEvents`.
pub fn bookmark_line<T: View>(revision: u64, initial_end: bool) -> Vec<u8> {
    let mut metadata = serde_json::json!({"resourceVersion": revision.to_string()});
    if initial_end {
        metadata["annotations"] = serde_json::json!({"k8s.io/initial-events-end": "true"});
    }
    let object = serde_json::json!({"apiVersion": GROUP_VERSION, "kind": T::KIND, "metadata": metadata});
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
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;
    use crate::core::selector::Selector;
    use crate::core::views::Device;

    fn stored(ns: &str, name: &str, online: bool, rev: u64) -> Stored<Device> {
        let d = Device { namespace: ns.into(), name: name.into(), online, ..Device::default() };
        Stored { object: Arc::new(d), revision: rev }
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
            .map(|t| super::super::request::decode_continue(t).unwrap_or_else(|e| panic!("{e}")));
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
