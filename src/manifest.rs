//! Loading manifests from files: multi-document YAML (and JSON, and `kind: List`), nested
//! folders, each document validated with the core rules. Shared by `check` and local mode, so a
//! file `check` accepts is a file local mode loads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::API_VERSION;
use crate::core::field::FieldError;
use crate::core::resource::{ParseError, vip_service_name};
use crate::core::routes::{self, RouteKind};
use crate::core::unknown::unknown_fields;
use crate::core::validate::{ClusterView, Verdict, review};
use crate::core::{Kind, ObjectKey, Resource, field::summarize};

/// Where a document came from: file and 1-based document index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    /// File.
    pub path: PathBuf,
    /// 1-based index of the document in the file.
    pub document: usize,
    /// 1-based line of the file where the document's text starts (0 for the file as a whole).
    pub line: usize,
}

impl Source {
    /// The file as a whole.
    pub fn file(path: &Path) -> Self {
        Source { path: path.to_path_buf(), document: 0, line: 0 }
    }
}

/// An I/O error in words, without Rust's "(os error N)".
pub fn io_message(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error ") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            // The file as a whole (it could not be read).
            0 => write!(f, "{}", self.path.display()),
            n => write!(f, "{} (document {n})", self.path.display()),
        }
    }
}

/// How standard input is named in problems (`-f -`).
pub const STDIN: &str = "<stdin>";

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The document is rejected.
    Error,
    /// Accepted with a warning.
    Warning,
}

/// A problem with one document.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Where.
    pub source: Source,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, naming the field.
    pub message: String,
    /// The file's line and column the problem was found at, when known (YAML syntax errors).
    pub at: Option<(usize, usize)>,
}

impl Problem {
    /// An error with `source`.
    pub fn error(source: Source, message: impl Into<String>) -> Self {
        Problem { source, severity: Severity::Error, message: message.into(), at: None }
    }

    /// A warning about `source`.
    pub fn warning(source: Source, message: impl Into<String>) -> Self {
        Problem { source, severity: Severity::Warning, message: message.into(), at: None }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match (self.at, self.source.document) {
            // As compilers print it, so editors and terminals can jump to the place.
            (Some((line, column)), n) => {
                write!(f, "{}:{line}:{column} (document {n}): {label}: {}", self.source.path.display(), self.message)
            }
            (None, _) => write!(f, "{}: {label}: {}", self.source, self.message),
        }
    }
}

/// The outcome of loading a set of files.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid objects of ours, in file order.
    pub resources: Vec<(Source, Resource)>,
    /// Problems found (errors mean the document was skipped).
    pub problems: Vec<Problem>,
    /// Documents of other kinds, ignored (but for the routes below).
    pub foreign: usize,
    /// HTTPRoutes and GRPCRoutes found (the extension reads their backendRefs' ports and weights),
    /// with their namespace defaulted.
    pub routes: Vec<(RouteKind, Value)>,
    /// Files read.
    pub files: usize,
}

impl Loaded {
    /// Whether any document was rejected.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

/// The most a manifest file may hold: larger ones are refused unread (a link to `/dev/zero` or a
/// log file named `*.yaml` must not fill memory).
pub const MAX_MANIFEST_BYTES: u64 = 8 * 1024 * 1024;

/// What a walk over the manifest paths found.
#[derive(Debug, Default)]
pub struct Collected {
    /// Regular files to read, in a stable order: shallower first, then by path.
    pub files: Vec<PathBuf>,
    /// Paths that could not be looked at (a dangling link, a folder that vanished, no
    /// permission), with why: their last valid objects are kept.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Paths skipped on purpose (FIFOs, devices, sockets), with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Manifest files under `paths` (folders are walked recursively), deduplicated, in a stable
/// order: shallower files first, then by path. Where two documents conflict (a VIP name claimed
/// twice), the top-level manifests of a folder win over those in its subfolders. A path that
/// cannot be read is reported and the walk goes on; only regular files are read.
pub fn collect_files(paths: &[PathBuf]) -> Collected {
    let mut found = BTreeSet::new();
    let mut out = Collected::default();
    for p in paths {
        walk(p, true, &mut found, &mut out);
    }
    out.files = found.into_iter().collect();
    out.files.sort_by_key(|p| p.components().count());
    out
}

fn walk(p: &Path, explicit: bool, found: &mut BTreeSet<PathBuf>, out: &mut Collected) {
    let manifest_name = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
    // Following links, as reading does.
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) => return out.unreadable.push((p.to_path_buf(), io_message(&e))),
    };
    if meta.is_dir() {
        let entries = match std::fs::read_dir(p) {
            Ok(entries) => entries,
            Err(e) => return out.unreadable.push((p.to_path_buf(), io_message(&e))),
        };
        for entry in entries {
            match entry {
                Ok(entry) if entry.file_name().to_string_lossy().starts_with('.') => {}
                Ok(entry) => walk(&entry.path(), false, found, out),
                Err(e) => out.unreadable.push((p.to_path_buf(), io_message(&e))),
            }
        }
    } else if (explicit || manifest_name) && meta.is_file() {
        found.insert(p.to_path_buf());
    } else if explicit || manifest_name {
        out.skipped.push((p.to_path_buf(), format!("not a regular file ({}): skipped", file_type(&meta))));
    }
}

fn file_type(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    let _ = meta;
    "not a file or folder"
}

/// Reads a manifest file of at most [`MAX_MANIFEST_BYTES`].
pub fn read_manifest(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| io_message(&e))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(|e| io_message(&e))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!("larger than the limit of {MAX_MANIFEST_BYTES} bytes for a manifest: not read"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// One document of a YAML stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Document {
    /// 1-based index in the stream (empty documents count, so indexes match what an editor shows).
    pub index: usize,
    /// 1-based line of the stream where the document's text starts.
    pub line: usize,
    /// The document's text.
    pub text: String,
}

/// Splits a YAML stream into documents at `---` lines; empty documents are dropped but still
/// counted, so indexes match what an editor shows.
pub fn split_documents(text: &str) -> Vec<Document> {
    fn has_content(body: &str) -> bool {
        body.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    }
    let mut docs = Vec::new();
    let mut current = String::new();
    let (mut index, mut start) = (1, 1);
    for (n, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") || line.starts_with("---\t") {
            let leading = index == 1 && docs.is_empty() && !has_content(&current);
            if !leading {
                let body = std::mem::take(&mut current);
                if has_content(&body) {
                    docs.push(Document { index, line: start, text: body });
                }
                index += 1;
            }
            current.clear();
            // The next document's text starts on the line after this marker.
            start = n + 2;
            continue;
        }
        if line == "..." {
            // Kept as an empty line, so lines within the document stay the file's lines.
            current.push('\n');
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    if has_content(&current) {
        docs.push(Document { index, line: start, text: current });
    }
    docs
}

/// Parses one file into JSON documents (expanding `kind: List`).
pub fn parse_file(path: &Path, text: &str) -> Vec<Result<(Source, Value), Problem>> {
    let mut out = Vec::new();
    for doc in split_documents(text) {
        let source = Source { path: path.to_path_buf(), document: doc.index, line: doc.line };
        match serde_saphyr::from_str::<Value>(&doc.text) {
            Ok(Value::Null) => {}
            Ok(Value::Object(mut o)) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                if let Some(Value::Array(items)) = o.remove("items") {
                    out.extend(items.into_iter().map(|v| Ok((source.clone(), v))));
                }
            }
            Ok(v @ Value::Object(_)) => out.push(Ok((source, v))),
            Ok(other) => out.push(Err(Problem::error(
                source,
                format!("want a Kubernetes object (a YAML mapping), got {}", type_name(&other)),
            ))),
            Err(e) => out.push(Err(yaml_problem(source, &e))),
        }
    }
    out
}

/// A YAML error worded for manifest authors (no Rust type names or API hints), at the file's line
/// and column.
fn yaml_problem(source: Source, e: &serde_saphyr::Error) -> Problem {
    let mut options = serde_saphyr::RenderOptions::new(&serde_saphyr::UserMessageFormatter);
    options.snippets = serde_saphyr::SnippetMode::Off;
    let message = e.render_with_options(options);
    // The location is said by `at`; drop the formatter's own "at line N column M" suffix.
    let message = match message.rfind(" at line ") {
        Some(i) if e.location().is_some() => message[..i].to_string(),
        _ => message,
    };
    let at = e.location().map(|l| (source.line + l.line() as usize - 1, l.column() as usize));
    Problem { at, ..Problem::error(source, format!("YAML: {message}")) }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// What the other documents of the set say, for cross-object rules.
struct SetView {
    tailnets: BTreeSet<String>,
    claims: BTreeMap<String, Vec<ObjectKey>>,
}

impl ClusterView for SetView {
    fn tailnet_exists(&self, name: &str) -> bool {
        // A set without tailnets is checked on its own: do not warn about every reference.
        self.tailnets.is_empty() || self.tailnets.contains(name)
    }

    fn vip_claimants(&self, vip: &str) -> Vec<ObjectKey> {
        self.claims.get(vip).cloned().unwrap_or_default()
    }
}

/// Reads, parses and validates every manifest under `paths`. Objects without a namespace go to
/// `default_namespace`. When two TailscaleServices claim one VIP name, the first (in file order)
/// wins and the others are rejected.
pub fn load(paths: &[PathBuf], default_namespace: &str) -> Loaded {
    load_keeping(paths, default_namespace, &BTreeMap::new())
}

/// The last valid object read from each document (file and index): what [`load_keeping`] falls
/// back to.
pub type LastGood = BTreeMap<(PathBuf, usize), Resource>;

/// [`load`], except that a document which fails to read, parse or validate but had a valid
/// version in `previous` keeps that version (an error is still reported, saying so), as a cluster
/// keeps the stored object when an update is rejected. Local mode reloads this way.
pub fn load_keeping(paths: &[PathBuf], default_namespace: &str, previous: &LastGood) -> Loaded {
    let mut loaded = Loaded::default();
    let texts = read_texts(paths, &mut loaded);
    let mut parsed = Parsed::new(previous);
    for (path, text) in &texts {
        match text {
            Err(e) => parsed.unreadable(&mut loaded, path, e),
            Ok(text) => {
                for doc in parse_file(path, text) {
                    match doc {
                        Err(problem) => parsed.unparsable(&mut loaded, problem),
                        Ok((source, value)) => parsed.document(&mut loaded, source, value, default_namespace),
                    }
                }
            }
        }
    }
    parsed.validate(&mut loaded);
    loaded
}

/// Every file under `paths` (and standard input for `-`) with its text or why it could not be
/// read; skipped paths become warnings and `loaded.files` counts the files read.
fn read_texts(paths: &[PathBuf], loaded: &mut Loaded) -> Vec<(PathBuf, Result<String, String>)> {
    let mut collected = Collected::default();
    let mut stdin = false;
    for path in paths {
        if path.as_os_str() == "-" {
            stdin = true;
            continue;
        }
        // Every path on its own, so one that does not exist is named and the others still load.
        let one = collect_files(std::slice::from_ref(path));
        collected.files.extend(one.files);
        collected.unreadable.extend(one.unreadable);
        collected.skipped.extend(one.skipped);
    }
    let mut files: Vec<PathBuf> = collected.files.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
    files.sort_by_key(|p| p.components().count());
    for (path, why) in collected.skipped {
        loaded.problems.push(Problem::warning(Source::file(&path), why));
    }
    let mut texts: Vec<(PathBuf, Result<String, String>)> = Vec::with_capacity(files.len() + 1);
    if stdin {
        texts.push((PathBuf::from(STDIN), std::io::read_to_string(std::io::stdin()).map_err(|e| io_message(&e))));
    }
    // A path that could not be looked at is treated as an unreadable file: what was under it keeps
    // its last valid version.
    texts.extend(collected.unreadable.into_iter().map(|(p, why)| (p, Err(why))));
    texts.extend(files.into_iter().map(|p| {
        let text = read_manifest(&p);
        (p, text)
    }));
    loaded.files = texts.iter().filter(|(_, t)| t.is_ok()).count();
    texts
}

/// What an error says when the document's last valid version is served in its place.
const STILL_SERVING: &str = "; still serving its last valid version";

/// The objects parsed from a set of documents, in file order, and the last valid versions
/// (from `previous`) that stand in for documents that failed: what [`load_keeping`] keeps, and
/// how its errors say so.
struct Parsed<'a> {
    previous: &'a LastGood,
    objects: Vec<(Source, Resource)>,
    /// Where `objects` holds last valid versions kept for documents that no longer say which
    /// object they are (unreadable file, broken YAML). They keep their place (and so their VIP
    /// claims), but a fresh copy of the same object anywhere wins and the kept one quietly goes.
    fallbacks: BTreeSet<usize>,
}

impl<'a> Parsed<'a> {
    fn new(previous: &'a LastGood) -> Self {
        Parsed { previous, objects: Vec::new(), fallbacks: BTreeSet::new() }
    }

    /// The last valid object read from the document at `source`.
    fn kept(&self, source: &Source) -> Option<Resource> {
        self.previous.get(&(source.path.clone(), source.document)).cloned()
    }

    /// `message`, saying so when the document at `source` had a valid version.
    fn keeping(&self, message: String, source: &Source) -> String {
        match self.previous.contains_key(&(source.path.clone(), source.document)) {
            true => format!("{message}{STILL_SERVING}"),
            false => message,
        }
    }

    /// Stands `object` in for a document that failed and no longer says which object it is.
    fn fall_back(&mut self, source: Source, object: Resource) {
        self.fallbacks.insert(self.objects.len());
        self.objects.push((source, object));
    }

    /// A file that could not be read (or everything that was under a folder that could not be
    /// read): its documents keep their last valid versions.
    fn unreadable(&mut self, loaded: &mut Loaded, path: &Path, error: &str) {
        let from_file: Vec<(Source, Resource)> = self
            .previous
            .iter()
            .filter(|((p, _), _)| p.starts_with(path))
            .map(|((p, document), r)| (Source { path: p.clone(), document: *document, line: 0 }, r.clone()))
            .collect();
        let message = match from_file.len() {
            0 => error.to_string(),
            n => format!("{error}; still serving the last valid version of its {n} object(s)"),
        };
        loaded.problems.push(Problem::error(Source::file(path), message));
        for (source, object) in from_file {
            self.fall_back(source, object);
        }
    }

    /// A document that is not YAML (or not a mapping): it keeps its last valid version.
    fn unparsable(&mut self, loaded: &mut Loaded, mut problem: Problem) {
        problem.message = self.keeping(problem.message, &problem.source);
        if let Some(r) = self.kept(&problem.source) {
            self.fall_back(problem.source.clone(), r);
        }
        loaded.problems.push(problem);
    }

    /// A document that names an object but does not fit its type or schema: rejected, keeping
    /// the last valid version of that same object if there is one.
    fn reject(&mut self, loaded: &mut Loaded, source: Source, message: String, kind: &str, ns_name: &str) {
        let (ns, name) = ns_name.split_once('/').unwrap_or(("", ns_name));
        let same = self.kept(&source).filter(|prev| {
            let key = prev.key();
            prev.kind().name() == kind && key.name == name && (key.namespace.is_empty() || key.namespace == ns)
        });
        let message = match same {
            Some(prev) => {
                self.objects.push((source.clone(), prev));
                format!("{message}{STILL_SERVING}")
            }
            None => message,
        };
        loaded.problems.push(Problem::error(source, message));
    }

    /// One parsed document: an object of ours (checked for unknown fields and its schema), a
    /// route (kept whole, namespace defaulted), or another kind (counted).
    fn document(&mut self, loaded: &mut Loaded, source: Source, value: Value, default_namespace: &str) {
        let kind_hint = value.get("kind").and_then(Value::as_str).unwrap_or("object").to_string();
        let name_hint = format!(
            "{}/{}",
            value.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_namespace),
            value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
        );
        let unknown = unknown_fields_of(&kind_hint, &value);
        // Routes are kept whole (`from_value` consumes the document).
        let mut original_route = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|v| RouteKind::of(v, &kind_hint))
            .map(|_| value.clone());
        // Routes Envoy Gateway would not hand to us, naming our kinds.
        let mut original_refused = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(|v| routes::refused_backend_refs(v, &kind_hint, &value));
        match Resource::from_value(value) {
            Ok(r) if !unknown.is_empty() => {
                let key = {
                    let mut r = r;
                    r.default_namespace(default_namespace);
                    r.key()
                };
                let message = summarize(&kind_hint, &key.to_string(), &unknown);
                self.reject(loaded, source, message, &kind_hint, &name_hint);
            }
            Ok(mut r) => {
                r.default_namespace(default_namespace);
                self.objects.push((source, r));
            }
            Err(ParseError::NotOurs { api_version, kind }) => {
                let refused = original_refused.take().unwrap_or_default();
                if !refused.is_empty() {
                    let message = summarize(&kind_hint, &name_hint, &refused);
                    return self.reject(loaded, source, message, &kind_hint, &name_hint);
                }
                loaded.foreign += 1;
                if let Some(route_kind) = RouteKind::of(&api_version, &kind) {
                    let route = with_namespace(original_route.take().unwrap_or_default(), default_namespace);
                    loaded.routes.push((route_kind, route));
                }
            }
            Err(ParseError::Invalid(e)) => {
                let message = summarize(&kind_hint, &name_hint, &[e]);
                self.reject(loaded, source, message, &kind_hint, &name_hint);
            }
        }
    }

    /// Drops duplicates (and fallbacks a fresh copy replaced), then reviews each object against
    /// the rest of the set in file order: a VIP name claimed twice goes to the first. An object
    /// that fails keeps its last valid version if that still passes.
    fn validate(mut self, loaded: &mut Loaded) {
        let objects = std::mem::take(&mut self.objects);
        let mut view = SetView {
            tailnets: objects.iter().filter(|(_, r)| r.kind() == Kind::Tailnet).map(|(_, r)| r.key().name).collect(),
            claims: BTreeMap::new(),
        };
        let fresh: BTreeSet<(Kind, ObjectKey)> = objects
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.fallbacks.contains(i))
            .map(|(_, (_, r))| (r.kind(), r.key()))
            .collect();
        let mut seen: BTreeSet<(Kind, ObjectKey)> = BTreeSet::new();
        for (i, (source, res)) in objects.into_iter().enumerate() {
            let key = res.key();
            if self.fallbacks.contains(&i) && fresh.contains(&(res.kind(), key.clone())) {
                continue;
            }
            if !seen.insert((res.kind(), key.clone())) {
                let message = format!("{} {key} is defined more than once; this copy is ignored", res.kind());
                loaded.problems.push(Problem::error(source, message));
                continue;
            }
            let Some((res, verdict)) = self.review_keeping(loaded, &source, res, &view) else { continue };
            for w in verdict.warnings {
                loaded.problems.push(Problem::warning(source.clone(), format!("{} {key}: {w}", res.kind())));
            }
            if let Resource::Services(s) = &res
                && let Some(vip) = vip_service_name(s)
            {
                view.claims.entry(vip).or_default().push(key);
            }
            loaded.resources.push((source, res));
        }
    }

    /// `res` reviewed against `view`; when it fails, the version of this object that passed last
    /// time, if it still passes (and is not this one), with an error saying so. `None` when
    /// neither passes (the error is reported). A document that now names another object gets no
    /// fallback.
    fn review_keeping(
        &self,
        loaded: &mut Loaded,
        source: &Source,
        res: Resource,
        view: &SetView,
    ) -> Option<(Resource, Verdict)> {
        let verdict = review(&res, None, view);
        if verdict.errors.is_empty() {
            return Some((res, verdict));
        }
        let key = res.key();
        let message = summarize(res.kind().name(), &key.to_string(), &verdict.errors);
        let same_object = |prev: &Resource| prev.kind() == res.kind() && prev.key() == key && *prev != res;
        let fallback = self.kept(source).filter(same_object).and_then(|prev| {
            let v = review(&prev, None, view);
            v.errors.is_empty().then_some((prev, v))
        });
        match fallback {
            Some(fallback) => {
                loaded.problems.push(Problem::error(source.clone(), format!("{message}{STILL_SERVING}")));
                Some(fallback)
            }
            None => {
                loaded.problems.push(Problem::error(source.clone(), message));
                None
            }
        }
    }
}

/// Strict field validation, as `kubectl apply` has by default: a misspelt field of one of our
/// kinds is an error, not silently dropped.
fn unknown_fields_of(kind_hint: &str, value: &Value) -> Vec<FieldError> {
    Kind::from_name(kind_hint)
        .filter(|_| value.get("apiVersion").and_then(Value::as_str) == Some(API_VERSION))
        .map(|k| unknown_fields(k, value))
        .unwrap_or_default()
        .into_iter()
        .map(|path| FieldError::unknown(path, format!("{kind_hint} {API_VERSION} has no such field")))
        .collect()
}

/// `object` with `metadata.namespace` set to `namespace` when it has metadata but no namespace.
fn with_namespace(mut object: Value, namespace: &str) -> Value {
    if object.pointer("/metadata/namespace").is_none()
        && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("namespace".into(), Value::String(namespace.into()));
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use crate::core::Kind;

    fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
            if path.is_dir() {
                yaml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }

    /// Every example and invalid manifest, parsed as local mode parses them, uses only fields the
    /// schemas know (the one about misspelt fields aside).
    #[test]
    fn examples_have_no_unknown_fields() {
        let mut files = Vec::new();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        yaml_files(&root.join("examples"), &mut files);
        yaml_files(&root.join("tests/manifests/invalid"), &mut files);
        let mut kinds = BTreeSet::new();
        // The one example that is about misspelt fields.
        files.retain(|p| !p.ends_with("invalid/unknown-field.yaml"));
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for doc in parse_file(&path, &text) {
                let (source, value) = doc.expect("parsing an example document");
                if value.get("apiVersion").and_then(Value::as_str) != Some(crate::api::API_VERSION) {
                    continue;
                }
                let name = value.get("kind").and_then(Value::as_str).unwrap_or_default();
                let kind = Kind::from_name(name).unwrap_or_else(|| panic!("{source}: unknown kind {name}"));
                kinds.insert(kind);
                assert_eq!(crate::core::unknown::unknown_fields(kind, &value), Vec::<String>::new(), "{source}");
            }
        }
        assert_eq!(kinds, Kind::ALL.into_iter().collect(), "the examples should cover every kind");
    }

    #[test]
    fn splits_documents_keeping_indexes() {
        let docs = split_documents("a: 1\n---\n# only a comment\n---\nb: 2\n...\n--- \nc: 3\n");
        let idx: Vec<(usize, usize)> = docs.iter().map(|d| (d.index, d.line)).collect();
        assert_eq!(idx, vec![(1, 1), (3, 5), (4, 8)]);
        let leading = split_documents("---\na: 1\n");
        assert_eq!(leading.len(), 1);
    }

    #[test]
    fn parses_lists_and_reports_scalars() {
        let docs = parse_file(
            Path::new("x.yaml"),
            "kind: List\nitems:\n- {kind: A}\n- {kind: B}\n---\njust a string\n---\n: bad: [\n",
        );
        assert_eq!(docs.iter().filter(|d| d.is_ok()).count(), 2);
        let errs: Vec<String> = docs.iter().filter_map(|d| d.as_ref().err()).map(ToString::to_string).collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("x.yaml (document 2): error: want a Kubernetes object"), "{errs:?}");
    }
}
