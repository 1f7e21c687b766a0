//! A CRD's `additionalPrinterColumns` as kube-apiserver evaluates them for Tables, as plain
//! functions: the simple JSONPaths CRDs use (`.spec.x.y`, `.items[0]`, `['key']`,
//! `.status.conditions[?(@.type=="Ready")].status`) and the cell each column type makes of the
//! first result (`date` becomes an age, a missing value `<none>`).

use serde_json::Value;

use super::resources::Cell;

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// `.name` or `['name']`.
    Field(String),
    /// `[N]` (negative counts from the end).
    Index(i64),
    /// `[*]` or `.*`.
    All,
    /// `[?(@.a.b=="v")]`, `[?(@.a!="v")]` or `[?(@.a)]`: elements whose field path compares so.
    Filter { path: Vec<String>, op: FilterOp },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum FilterOp {
    Eq(String),
    Ne(String),
    Exists,
}

/// A parsed JSONPath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath(Vec<Step>);

/// A path that is not one of the simple forms supported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported JSONPath {path:?}: {reason}")]
pub struct PathError {
    path: String,
    reason: String,
}

impl JsonPath {
    /// Parses `.a.b`, `{.a.b}`, `$.a`, `.a[0]`, `.a['b.c']`, `.a[*].b`, `.a[?(@.k=="v")].b`.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let err = |reason: &str| PathError { path: path.to_string(), reason: reason.to_string() };
        let mut rest = path.trim();
        if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            rest = inner.trim();
        }
        rest = rest.strip_prefix('$').unwrap_or(rest);
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let name = &r[..end];
                match name {
                    "" => return Err(err("empty field name")),
                    "*" => steps.push(Step::All),
                    n => steps.push(Step::Field(n.to_string())),
                }
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = bracket_end(r).ok_or_else(|| err("unclosed ["))?;
                steps.push(bracket(&r[..end]).ok_or_else(|| err("unsupported [...] expression"))?);
                rest = &r[end + 1..];
            } else {
                return Err(err("expected . or ["));
            }
        }
        Ok(JsonPath(steps))
    }

    /// Every value the path reaches in `root`, in document order (missing keys reach nothing).
    pub fn find<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.0 {
            current = current.into_iter().flat_map(|v| apply(step, v)).collect();
        }
        current
    }
}

/// Where the `]` closing a bracket expression is (quotes may contain `]`).
fn bracket_end(r: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in r.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')).or_else(|| s.strip_prefix('"')?.strip_suffix('"'))
}

fn bracket(inner: &str) -> Option<Step> {
    let inner = inner.trim();
    if inner == "*" {
        return Some(Step::All);
    }
    if let Some(name) = unquote(inner) {
        return Some(Step::Field(name.to_string()));
    }
    if let Ok(i) = inner.parse::<i64>() {
        return Some(Step::Index(i));
    }
    let cond = inner.strip_prefix("?(")?.strip_suffix(')')?.trim();
    let (lhs, op) = match cond
        .split_once("==")
        .map(|(l, r)| (l, r, true))
        .or_else(|| cond.split_once("!=").map(|(l, r)| (l, r, false)))
    {
        Some((l, r, eq)) => {
            let value = unquote(r).map(str::to_string).unwrap_or_else(|| r.trim().to_string());
            (l, if eq { FilterOp::Eq(value) } else { FilterOp::Ne(value) })
        }
        None => (cond, FilterOp::Exists),
    };
    let path = lhs.trim().strip_prefix("@.")?.split('.').map(str::to_string).collect::<Vec<_>>();
    path.iter().all(|p| !p.is_empty()).then_some(Step::Filter { path, op })
}

fn apply<'a>(step: &Step, v: &'a Value) -> Vec<&'a Value> {
    match (step, v) {
        (Step::Field(name), Value::Object(o)) => o.get(name).into_iter().collect(),
        (Step::Index(i), Value::Array(a)) => {
            let at = if *i < 0 { a.len() as i64 + i } else { *i };
            usize::try_from(at).ok().and_then(|at| a.get(at)).into_iter().collect()
        }
        (Step::All, Value::Array(a)) => a.iter().collect(),
        (Step::All, Value::Object(o)) => o.values().collect(),
        (Step::Filter { path, op }, Value::Array(a)) => a.iter().filter(|e| keeps(e, path, op)).collect(),
        _ => Vec::new(),
    }
}

fn keeps(element: &Value, path: &[String], op: &FilterOp) -> bool {
    let found = path.iter().try_fold(element, |v, k| v.get(k));
    match (op, found) {
        (FilterOp::Exists, found) => found.is_some(),
        (FilterOp::Eq(want), Some(v)) => text(v) == *want,
        (FilterOp::Ne(want), Some(v)) => text(v) != *want,
        (_, None) => false,
    }
}

/// A value as the JSONPath printer writes it: strings bare, everything else as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The Table cell of a printer column of `type_` whose path reached `results`, as
/// kube-apiserver's CRD table convertor makes it: the first result only; nothing found (or a
/// value that does not fit the type) is `null`; a `date` is an age, `<invalid>` when it is no
/// timestamp.
pub fn cell(type_: &str, results: &[&Value]) -> Cell<'static> {
    let Some(v) = results.first().filter(|v| !v.is_null()) else { return Cell::Null };
    match (type_, v) {
        ("string", v) => Cell::Text(text(v)),
        ("integer", Value::Number(n)) => {
            n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).map_or(Cell::Null, |i| Cell::Number(i.into()))
        }
        ("number", Value::Number(n)) => Cell::Number(n.clone()),
        ("boolean", Value::Bool(b)) => Cell::Bool(*b),
        ("date", Value::String(s)) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => Cell::Since(t),
            Err(_) => Cell::Str("<invalid>"),
        },
        _ => Cell::Null,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn find(path: &str, v: &Value) -> Vec<Value> {
        JsonPath::parse(path).expect("parsing the JSONPath").find(v).into_iter().cloned().collect()
    }

    #[test]
    fn simple_paths_reach_values() {
        let v = json!({"spec": {"proxy": {"replicas": 2}, "tags": ["a", "b"], "a.b": 1},
            "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(find(".spec.proxy.replicas", &v), vec![json!(2)]);
        assert_eq!(find("{.spec.proxy.replicas}", &v), vec![json!(2)]);
        assert_eq!(find("$.spec.tags[1]", &v), vec![json!("b")]);
        assert_eq!(find(".spec.tags[-1]", &v), vec![json!("b")]);
        assert_eq!(find(".spec.tags[*]", &v), vec![json!("a"), json!("b")]);
        assert_eq!(find(".spec['a.b']", &v), vec![json!(1)]);
        assert_eq!(find(r#".status.conditions[?(@.type=="Ready")].status"#, &v), vec![json!("True")]);
        assert_eq!(find(".status.conditions[?(@.type!='Ready')].type", &v), vec![json!("Synced")]);
        assert_eq!(find(".status.conditions[?(@.reason)]", &v), Vec::<Value>::new());
        assert_eq!(find(".spec.missing.deeper", &v), Vec::<Value>::new());
        assert_eq!(find(".spec.tags[5]", &v), Vec::<Value>::new());
        for bad in ["spec", ".spec[", ".spec..x", ".spec[?(x)]"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn cells_follow_the_column_type() {
        let (two, s, t) = (json!(2), json!("svc:web"), json!("2025-06-25T10:00:00Z"));
        assert_eq!(cell("integer", &[&two]), Cell::Number(2.into()));
        assert_eq!(cell("integer", &[&json!(2.7)]), Cell::Number(2.into()));
        assert_eq!(cell("integer", &[&s]), Cell::Null);
        assert_eq!(cell("string", &[&s, &two]), "svc:web");
        assert_eq!(cell("string", &[&two]), "2");
        assert_eq!(cell("string", &[]), Cell::Null);
        assert_eq!(cell("boolean", &[&json!(true)]), Cell::Bool(true));
        assert_eq!(cell("number", &[&json!(1.5)]), Cell::Number(serde_json::Number::from_f64(1.5).unwrap_or(0.into())));
        let now: jiff::Timestamp = "2025-06-25T10:05:00Z".parse().expect("parsing the timestamp");
        assert_eq!(cell("date", &[&t]).at(now), "5m");
        assert_eq!(cell("date", &[&s]), "<invalid>");
        assert_eq!(cell("string", &[&Value::Null]), Cell::Null);
    }
}
