//! `/openapi/v2` as protobuf: gnostic's OpenAPI v2 `Document` message
//! (`application/com.github.proto-openapi.spec.v2.v1.0+protobuf`, asked for with `@v1.0`), which is the only form
//! kubectl before 1.29 asks for when it runs `kubectl explain`.
//!
//! The messages are our own subset of gnostic's (`proto/openapiv2.proto`, same names and field
//! numbers). [`document`] converts the JSON document of [`super::discovery::openapi_v2`] into
//! them the way gnostic does: maps become ordered (name, value) lists, `x-` keys become
//! `vendor_extension` entries, and free-form values (`default`, `example`, `enum`, extensions)
//! are carried as YAML text, which kube-openapi parses back (JSON text is valid YAML).

use prost::Message;
use serde_json::{Map, Value};

/// Generated code of our `openapi.v2` protobuf package (plain messages).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!("generated/openapi.v2.rs");
}

/// The protobuf media type, and the `Content-Type` of every protobuf answer. kube-openapi answers
/// with this spelling whichever of the two was asked for; Go's `mime` parser (which client-go
/// runs on the response) rejects the `@` of [`PROTOBUF_DEPRECATED`].
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// The older spelling, which kubectl 1.27 and 1.28 (client-go's `OpenAPISchema`) send in `Accept`.
pub const PROTOBUF_DEPRECATED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// Whether an `Accept` header asks for `/openapi/v2` as protobuf ([`PROTOBUF`]) rather than
/// JSON. The first listed range we can serve wins; an absent header, or one naming neither,
/// means JSON.
pub fn wants_protobuf(accept: Option<&str>) -> bool {
    for range in accept.unwrap_or_default().split(',') {
        let media = range.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match media.as_str() {
            m if m == PROTOBUF || m == PROTOBUF_DEPRECATED => return true,
            "application/json" | "application/*" | "*/*" => return false,
            _ => {}
        }
    }
    false
}

/// The protobuf encoding of a JSON OpenAPI v2 document (see [`document`]).
pub fn encode(doc: &Value) -> Vec<u8> {
    document(doc).encode_to_vec()
}

/// Converts a JSON OpenAPI v2 (Swagger 2.0) document into gnostic's `Document` message.
///
/// Covers what our documents use and kubectl reads: info, paths with their operations and
/// responses, definitions with the full Swagger 2.0 schema keywords, and `x-` extensions at
/// every level. Parameters, security, tags and external docs are not carried; neither is a
/// field of an unexpected JSON type (e.g. a numeric `description`).
pub fn document(v: &Value) -> pb::Document {
    let empty = Map::new();
    let o = v.as_object().unwrap_or(&empty);
    pb::Document {
        swagger: string(o, "swagger"),
        info: o.get("info").and_then(Value::as_object).map(info),
        paths: o.get("paths").and_then(Value::as_object).map(paths),
        definitions: o
            .get("definitions")
            .and_then(Value::as_object)
            .map(|d| pb::Definitions { additional_properties: named_schemas(d) }),
        vendor_extension: extensions(o),
    }
}

fn string(o: &Map<String, Value>, key: &str) -> String {
    o.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn strings(o: &Map<String, Value>, key: &str) -> Vec<String> {
    let items = o.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    items.iter().filter_map(Value::as_str).map(str::to_string).collect()
}

fn float(o: &Map<String, Value>, key: &str) -> f64 {
    o.get(key).and_then(Value::as_f64).unwrap_or_default()
}

fn int(o: &Map<String, Value>, key: &str) -> i64 {
    o.get(key).and_then(Value::as_i64).unwrap_or_default()
}

fn boolean(o: &Map<String, Value>, key: &str) -> bool {
    o.get(key).and_then(Value::as_bool).unwrap_or_default()
}

/// A free-form value as gnostic carries it: YAML text (here JSON, a subset of YAML).
fn any(v: &Value) -> pb::Any {
    pb::Any { yaml: v.to_string() }
}

/// The `x-` keys of an object, in order.
fn extensions(o: &Map<String, Value>) -> Vec<pb::NamedAny> {
    o.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| pb::NamedAny { name: k.clone(), value: Some(any(v)) })
        .collect()
}

fn info(o: &Map<String, Value>) -> pb::Info {
    pb::Info {
        title: string(o, "title"),
        version: string(o, "version"),
        description: string(o, "description"),
        vendor_extension: extensions(o),
    }
}

fn paths(o: &Map<String, Value>) -> pb::Paths {
    pb::Paths {
        vendor_extension: extensions(o),
        path: o
            .iter()
            .filter(|(k, _)| !k.starts_with("x-"))
            .filter_map(|(k, v)| Some(pb::NamedPathItem { name: k.clone(), value: Some(path_item(v.as_object()?)) }))
            .collect(),
    }
}

fn path_item(o: &Map<String, Value>) -> pb::PathItem {
    let op = |method: &str| o.get(method).and_then(Value::as_object).map(operation);
    pb::PathItem {
        r#ref: string(o, "$ref"),
        get: op("get"),
        put: op("put"),
        post: op("post"),
        delete: op("delete"),
        options: op("options"),
        head: op("head"),
        patch: op("patch"),
        vendor_extension: extensions(o),
    }
}

fn operation(o: &Map<String, Value>) -> pb::Operation {
    pb::Operation {
        tags: strings(o, "tags"),
        summary: string(o, "summary"),
        description: string(o, "description"),
        operation_id: string(o, "operationId"),
        produces: strings(o, "produces"),
        consumes: strings(o, "consumes"),
        responses: o.get("responses").and_then(Value::as_object).map(responses),
        schemes: strings(o, "schemes"),
        deprecated: boolean(o, "deprecated"),
        vendor_extension: extensions(o),
    }
}

fn responses(o: &Map<String, Value>) -> pb::Responses {
    use pb::response_value::Oneof;
    let response_code = o
        .iter()
        .filter(|(k, _)| !k.starts_with("x-"))
        .filter_map(|(code, v)| {
            let r = v.as_object()?;
            let value = if let Some(reference) = r.get("$ref").and_then(Value::as_str) {
                Oneof::JsonReference(pb::JsonReference {
                    r#ref: reference.to_string(),
                    description: string(r, "description"),
                })
            } else {
                Oneof::Response(pb::Response {
                    description: string(r, "description"),
                    schema: r
                        .get("schema")
                        .and_then(Value::as_object)
                        .map(|s| pb::SchemaItem { oneof: Some(pb::schema_item::Oneof::Schema(schema(s))) }),
                    vendor_extension: extensions(r),
                })
            };
            Some(pb::NamedResponseValue { name: code.clone(), value: Some(pb::ResponseValue { oneof: Some(value) }) })
        })
        .collect();
    pb::Responses { response_code, vendor_extension: extensions(o) }
}

fn named_schemas(o: &Map<String, Value>) -> Vec<pb::NamedSchema> {
    o.iter()
        .filter_map(|(k, v)| Some(pb::NamedSchema { name: k.clone(), value: Some(schema(v.as_object()?)) }))
        .collect()
}

fn schemas(v: Option<&Value>) -> Vec<pb::Schema> {
    let items = v.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    items.iter().filter_map(Value::as_object).map(schema).collect()
}

fn schema(o: &Map<String, Value>) -> pb::Schema {
    use pb::additional_properties_item::Oneof;
    let additional_properties = match o.get("additionalProperties") {
        Some(Value::Bool(b)) => Some(Oneof::Boolean(*b)),
        Some(Value::Object(s)) => Some(Oneof::Schema(Box::new(schema(s)))),
        _ => None,
    }
    .map(|oneof| Box::new(pb::AdditionalPropertiesItem { oneof: Some(oneof) }));
    let r#type = match o.get("type") {
        Some(Value::String(t)) => Some(pb::TypeItem { value: vec![t.clone()] }),
        Some(Value::Array(_)) => Some(pb::TypeItem { value: strings(o, "type") }),
        _ => None,
    };
    let items = match o.get("items") {
        Some(Value::Object(s)) => Some(pb::ItemsItem { schema: vec![schema(s)] }),
        v @ Some(Value::Array(_)) => Some(pb::ItemsItem { schema: schemas(v) }),
        _ => None,
    };
    pb::Schema {
        r#ref: string(o, "$ref"),
        format: string(o, "format"),
        title: string(o, "title"),
        description: string(o, "description"),
        default: o.get("default").map(any),
        multiple_of: float(o, "multipleOf"),
        maximum: float(o, "maximum"),
        exclusive_maximum: boolean(o, "exclusiveMaximum"),
        minimum: float(o, "minimum"),
        exclusive_minimum: boolean(o, "exclusiveMinimum"),
        max_length: int(o, "maxLength"),
        min_length: int(o, "minLength"),
        pattern: string(o, "pattern"),
        max_items: int(o, "maxItems"),
        min_items: int(o, "minItems"),
        unique_items: boolean(o, "uniqueItems"),
        max_properties: int(o, "maxProperties"),
        min_properties: int(o, "minProperties"),
        required: strings(o, "required"),
        r#enum: o.get("enum").and_then(Value::as_array).map(|e| e.iter().map(any).collect()).unwrap_or_default(),
        additional_properties,
        r#type,
        items,
        all_of: schemas(o.get("allOf")),
        properties: o
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| pb::Properties { additional_properties: named_schemas(p) }),
        discriminator: string(o, "discriminator"),
        read_only: boolean(o, "readOnly"),
        example: o.get("example").map(any),
        vendor_extension: extensions(o),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::aggregated::discovery::openapi_v2;

    /// The inverse of [`document`] for what our documents use, so a round trip shows nothing
    /// was dropped. Zero values read as absent, as in proto3.
    fn to_json(d: &pb::Document) -> Value {
        let mut o = Map::new();
        put_str(&mut o, "swagger", &d.swagger);
        if let Some(i) = &d.info {
            let mut m = Map::new();
            put_str(&mut m, "title", &i.title);
            put_str(&mut m, "version", &i.version);
            put_str(&mut m, "description", &i.description);
            put_ext(&mut m, &i.vendor_extension);
            o.insert("info".into(), Value::Object(m));
        }
        if let Some(p) = &d.paths {
            let mut m = Map::new();
            for item in &p.path {
                let v = item.value.as_ref().map(path_item_json).unwrap_or_default();
                m.insert(item.name.clone(), v);
            }
            put_ext(&mut m, &p.vendor_extension);
            o.insert("paths".into(), Value::Object(m));
        }
        if let Some(defs) = &d.definitions {
            o.insert("definitions".into(), Value::Object(named_json(&defs.additional_properties)));
        }
        put_ext(&mut o, &d.vendor_extension);
        Value::Object(o)
    }

    fn put_str(o: &mut Map<String, Value>, k: &str, v: &str) {
        if !v.is_empty() {
            o.insert(k.into(), v.into());
        }
    }

    fn put_ext(o: &mut Map<String, Value>, ext: &[pb::NamedAny]) {
        for e in ext {
            let yaml = e.value.as_ref().map(|a| a.yaml.as_str()).unwrap_or_default();
            o.insert(e.name.clone(), serde_json::from_str(yaml).unwrap_or_default());
        }
    }

    fn path_item_json(p: &pb::PathItem) -> Value {
        let mut o = Map::new();
        if let Some(get) = &p.get {
            let mut m = Map::new();
            put_str(&mut m, "description", &get.description);
            put_str(&mut m, "operationId", &get.operation_id);
            let mut rs = Map::new();
            for r in get.responses.iter().flat_map(|r| &r.response_code) {
                let Some(pb::ResponseValue { oneof: Some(pb::response_value::Oneof::Response(resp)) }) = &r.value
                else {
                    panic!("response {} is not inline", r.name)
                };
                let mut rm = Map::new();
                put_str(&mut rm, "description", &resp.description);
                if let Some(pb::SchemaItem { oneof: Some(pb::schema_item::Oneof::Schema(s)) }) = &resp.schema {
                    rm.insert("schema".into(), schema_json(s));
                }
                rs.insert(r.name.clone(), Value::Object(rm));
            }
            m.insert("responses".into(), Value::Object(rs));
            put_ext(&mut m, &get.vendor_extension);
            o.insert("get".into(), Value::Object(m));
        }
        Value::Object(o)
    }

    fn named_json(named: &[pb::NamedSchema]) -> Map<String, Value> {
        named.iter().map(|n| (n.name.clone(), n.value.as_ref().map(schema_json).unwrap_or_default())).collect()
    }

    fn schema_json(s: &pb::Schema) -> Value {
        let mut o = Map::new();
        put_str(&mut o, "$ref", &s.r#ref);
        put_str(&mut o, "format", &s.format);
        put_str(&mut o, "description", &s.description);
        if !s.required.is_empty() {
            o.insert("required".into(), json!(s.required));
        }
        match s.additional_properties.as_deref() {
            Some(pb::AdditionalPropertiesItem { oneof: Some(pb::additional_properties_item::Oneof::Schema(a)) }) => {
                o.insert("additionalProperties".into(), schema_json(a));
            }
            Some(pb::AdditionalPropertiesItem { oneof: Some(pb::additional_properties_item::Oneof::Boolean(b)) }) => {
                o.insert("additionalProperties".into(), json!(b));
            }
            _ => {}
        }
        if let Some(t) = &s.r#type {
            let [one] = t.value.as_slice() else { panic!("one type expected: {:?}", t.value) };
            o.insert("type".into(), json!(one));
        }
        if let Some(items) = &s.items {
            let [one] = items.schema.as_slice() else { panic!("one items schema expected") };
            o.insert("items".into(), schema_json(one));
        }
        if let Some(p) = &s.properties {
            o.insert("properties".into(), Value::Object(named_json(&p.additional_properties)));
        }
        if !s.r#enum.is_empty() {
            let values = s.r#enum.iter().map(|a| serde_json::from_str(&a.yaml).unwrap_or_default()).collect();
            o.insert("enum".into(), Value::Array(values));
        }
        put_ext(&mut o, &s.vendor_extension);
        Value::Object(o)
    }

    #[test]
    fn our_document_round_trips_through_the_wire_encoding() {
        let doc = openapi_v2(&[crate::aggregated::request::ApiGroup::Tailnet]);
        let bytes = encode(&doc);
        let decoded = pb::Document::decode(bytes.as_slice()).expect("decoding our encoded document");
        assert_eq!(to_json(&decoded), doc);

        let defs = decoded.definitions.unwrap_or_default().additional_properties;
        let dev = defs
            .iter()
            .find(|d| d.name == "com.tailscale.gateway.tailnet.v1alpha1.TailscaleDevice")
            .and_then(|d| d.value.as_ref())
            .unwrap_or_else(|| panic!("no TailscaleDevice definition"));
        let gvk = dev.vendor_extension.iter().find(|e| e.name == "x-kubernetes-group-version-kind");
        let yaml = gvk.and_then(|e| e.value.as_ref()).map(|a| a.yaml.as_str()).unwrap_or_default();
        let gvk: Value = serde_json::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
        assert_eq!(
            gvk,
            json!([{"group": "tailnet.gateway.tailscale.com", "version": "v1alpha1", "kind": "TailscaleDevice"}])
        );
        let prop = |s: &pb::Schema, name: &str| {
            s.properties
                .as_ref()
                .and_then(|p| p.additional_properties.iter().find(|n| n.name == name))
                .and_then(|n| n.value.clone())
                .unwrap_or_else(|| panic!("no property {name}"))
        };
        let online = prop(&prop(dev, "status"), "online");
        assert_eq!(online.r#type.map(|t| t.value), Some(vec!["boolean".to_string()]));
        assert!(!online.description.is_empty());
        assert_eq!(prop(dev, "metadata").r#ref, "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
    }

    #[test]
    fn field_numbers_are_gnostics() {
        // Hand-encoded: Document.swagger = 1, Document.definitions = 9, Definitions.additional_properties = 1,
        // NamedSchema.name = 1 / value = 2, Schema.type = 22, TypeItem.value = 1, Schema.vendor_extension = 31,
        // NamedAny.name = 1 / value = 2, Any.yaml = 2.
        let doc = json!({"swagger": "2.0", "definitions": {"A": {"type": "object", "x-a": 1}}});
        let schema: &[u8] = &[
            0xb2, 0x01, 8, 0x0a, 6, b'o', b'b', b'j', b'e', b'c', b't', 0xfa, 0x01, 10, 0x0a, 3, b'x', b'-', b'a',
            0x12, 3, 0x12, 1, b'1',
        ];
        let mut named = vec![0x0a, 1, b'A', 0x12, schema.len() as u8];
        named.extend_from_slice(schema);
        let mut defs = vec![0x0a, named.len() as u8];
        defs.extend_from_slice(&named);
        let mut want = vec![0x0a, 3, b'2', b'.', b'0', 0x4a, defs.len() as u8];
        want.extend_from_slice(&defs);
        assert_eq!(encode(&doc), want);
    }

    #[test]
    fn schema_keywords_and_extensions_are_carried() {
        let s = schema(
            json!({"type": ["string", "null"], "enum": ["a", "b"], "default": "a", "maxLength": 3, "minimum": 1.5,
                "additionalProperties": false, "items": [{"type": "integer"}], "allOf": [{"$ref": "#/definitions/X"}],
                "x-kubernetes-list-type": "map", "description": 7})
            .as_object()
            .unwrap_or_else(|| panic!("object")),
        );
        assert_eq!(s.r#type.map(|t| t.value), Some(vec!["string".to_string(), "null".to_string()]));
        assert_eq!(s.r#enum.iter().map(|a| a.yaml.as_str()).collect::<Vec<_>>(), ["\"a\"", "\"b\""]);
        assert_eq!(s.default.map(|a| a.yaml), Some("\"a\"".to_string()));
        assert_eq!((s.max_length, s.minimum), (3, 1.5));
        assert_eq!(
            s.additional_properties.and_then(|a| a.oneof),
            Some(pb::additional_properties_item::Oneof::Boolean(false))
        );
        assert_eq!(s.items.map(|i| i.schema.len()), Some(1));
        assert_eq!(s.all_of[0].r#ref, "#/definitions/X");
        assert_eq!(s.vendor_extension[0].name, "x-kubernetes-list-type");
        assert_eq!(s.description, "", "a non-string description is dropped");
        // Not an object at all: an empty document rather than a panic.
        assert_eq!(document(&json!([1, 2])), pb::Document::default());
    }

    #[test]
    fn accept_picks_protobuf_only_when_asked() {
        assert!(wants_protobuf(Some(PROTOBUF_DEPRECATED)));
        assert!(wants_protobuf(Some(&format!("{PROTOBUF}; q=0.9, application/json"))));
        assert!(!wants_protobuf(Some(&format!("application/json, {PROTOBUF_DEPRECATED}"))));
        assert!(!wants_protobuf(Some("text/html")));
        assert!(!wants_protobuf(None));
    }
}
