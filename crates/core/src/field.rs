//! Field-level errors formatted the way kube-apiserver formats them, so a denial reads like
//! `spec.vipService.ports[1]: Invalid value: "http:80": want "tcp:PORT", ...`.

use std::fmt;

/// A path to a field, e.g. `spec.vipService.ports[1]`, built as a chain of borrowed segments
/// on the stack: validating a valid object allocates nothing for paths; text is only rendered
/// when an error is reported.
#[derive(Clone, Copy, Debug)]
pub struct FieldPath<'a> {
    parent: Option<&'a FieldPath<'a>>,
    segment: Segment<'a>,
}

#[derive(Clone, Copy, Debug)]
enum Segment<'a> {
    Name(&'a str),
    Index(usize),
    Key(&'a str),
}

impl<'a> FieldPath<'a> {
    /// A root path such as `spec` or `metadata` (may itself contain dots).
    pub const fn new(root: &'a str) -> Self {
        Self { parent: None, segment: Segment::Name(root) }
    }

    /// `self.name`.
    pub fn child<'b>(&'b self, name: &'b str) -> FieldPath<'b> {
        FieldPath { parent: Some(self), segment: Segment::Name(name) }
    }

    /// `self[i]`.
    pub fn index(&self, i: usize) -> FieldPath<'_> {
        FieldPath { parent: Some(self), segment: Segment::Index(i) }
    }

    /// `self[key]` for map entries.
    pub fn key<'b>(&'b self, key: &'b str) -> FieldPath<'b> {
        FieldPath { parent: Some(self), segment: Segment::Key(key) }
    }

    /// The path as text.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent {
            parent.fmt(f)?;
        }
        match self.segment {
            Segment::Name(n) if self.parent.is_some() => write!(f, ".{n}"),
            Segment::Name(n) => f.write_str(n),
            Segment::Index(i) => write!(f, "[{i}]"),
            Segment::Key(k) => write!(f, "[{k}]"),
        }
    }
}

/// The kind of a field error (the `field.ErrorType` vocabulary of Kubernetes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// A required field is missing.
    Required,
    /// The value is malformed.
    Invalid,
    /// The value repeats an earlier one.
    Duplicate,
    /// The value is not in the supported set.
    NotSupported,
    /// The value is well-formed but not allowed here (conflicts, immutability).
    Forbidden,
    /// Too many items.
    TooMany,
    /// A field the schema does not declare (what strict field validation rejects).
    Unknown,
}

impl ErrorType {
    fn label(self) -> &'static str {
        match self {
            ErrorType::Required => "Required value",
            ErrorType::Invalid => "Invalid value",
            ErrorType::Duplicate => "Duplicate value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::TooMany => "Too many",
            ErrorType::Unknown => "Unknown field",
        }
    }
}

/// One bad field, with what was found and what is expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Where, e.g. `spec.vipService.ports[1]`.
    pub path: String,
    /// What kind of problem.
    pub kind: ErrorType,
    /// The offending value, when there is one to show.
    pub value: Option<String>,
    /// What is expected.
    pub detail: String,
}

impl FieldError {
    /// A missing field.
    pub fn required(path: &FieldPath<'_>, detail: impl Into<String>) -> Self {
        Self { path: path.render(), kind: ErrorType::Required, value: None, detail: detail.into() }
    }

    /// A malformed value.
    pub fn invalid(path: &FieldPath<'_>, value: impl fmt::Display, detail: impl Into<String>) -> Self {
        Self { path: path.render(), kind: ErrorType::Invalid, value: Some(value.to_string()), detail: detail.into() }
    }

    /// A repeated value.
    pub fn duplicate(path: &FieldPath<'_>, value: impl fmt::Display, detail: impl Into<String>) -> Self {
        Self { path: path.render(), kind: ErrorType::Duplicate, value: Some(value.to_string()), detail: detail.into() }
    }

    /// A value outside a fixed set.
    pub fn not_supported(path: &FieldPath<'_>, value: impl fmt::Display, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            path: path.render(),
            kind: ErrorType::NotSupported,
            value: Some(value.to_string()),
            detail: format!("supported values: {}", list.join(", ")),
        }
    }

    /// A value that is not allowed here.
    pub fn forbidden(path: &FieldPath<'_>, detail: impl Into<String>) -> Self {
        Self { path: path.render(), kind: ErrorType::Forbidden, value: None, detail: detail.into() }
    }

    /// A field the schema does not declare, at its rendered path (e.g. `spec.prots`).
    pub fn unknown(path: String, detail: impl Into<String>) -> Self {
        Self { path, kind: ErrorType::Unknown, value: None, detail: detail.into() }
    }

    /// Too many items.
    pub fn too_many(path: &FieldPath<'_>, count: usize, max: usize) -> Self {
        Self {
            path: path.render(),
            kind: ErrorType::TooMany,
            value: Some(count.to_string()),
            detail: format!("must have at most {max} items"),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.kind.label())?;
        match (&self.value, self.kind) {
            (Some(v), ErrorType::TooMany) => write!(f, ": {v}")?,
            (Some(v), _) => write!(f, ": {v:?}")?,
            (None, _) => {}
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Joins errors the way kube-apiserver does: `Kind "name" is invalid: [a, b]`.
pub fn summarize(kind: &str, name: &str, errors: &[FieldError]) -> String {
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let body = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
    format!("{kind} {name:?} is invalid: {body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_kube_apiserver() {
        let spec = FieldPath::new("spec");
        let vip = spec.child("vipService");
        let ports = vip.child("ports");
        let p = ports.index(1);
        let e = FieldError::invalid(&p, "http:80", "want \"tcp:PORT\"");
        assert_eq!(e.to_string(), r#"spec.vipService.ports[1]: Invalid value: "http:80": want "tcp:PORT""#);
        let r = FieldError::required(&spec.child("tailnet"), "must name a TailscaleTailnet");
        assert_eq!(r.to_string(), "spec.tailnet: Required value: must name a TailscaleTailnet");
        let s = FieldError::not_supported(&FieldPath::new("x"), "foo", &["a", "b"]);
        assert_eq!(s.to_string(), r#"x: Unsupported value: "foo": supported values: "a", "b""#);
        assert_eq!(
            summarize("TailscaleServices", "web", &[r.clone(), s.clone()]),
            format!("TailscaleServices \"web\" is invalid: [{r}, {s}]")
        );
        assert_eq!(summarize("K", "n", std::slice::from_ref(&r)), format!("K \"n\" is invalid: {r}"));
    }
}
