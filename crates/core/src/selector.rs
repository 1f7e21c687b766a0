//! Label selectors: validating a `LabelSelector` with every bad field named, and parsing the
//! string form kubectl sends (`-l env=prod,tier in (a,b),!canary`), both into kube-core's
//! [`Selector`](kube_core::Selector), which does the matching.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_core::{Expression, SelectorExt};

use super::{FieldError, FieldPath, names};

/// A compiled selector: all requirements must hold. An empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(kube_core::Selector);

/// Operators a `matchExpressions` entry may use.
pub const OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];

impl Selector {
    /// A selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.0.selects_all()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.matches(labels)
    }

    /// Compiles a `LabelSelector`, reporting every invalid key, value and operator under `path`.
    pub fn from_label_selector(sel: &LabelSelector, path: &FieldPath<'_>) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        validate_label_selector(sel, path, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        // Validated above, so kube-core's conversion (which checks only the operators) holds.
        kube_core::Selector::try_from(sel.clone())
            .map(Self)
            .map_err(|e| vec![FieldError::invalid(path, "", e.to_string())])
    }

    /// Parses the string form used in `?labelSelector=` (kubectl `-l`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut exprs = Vec::new();
        for term in split_terms(s)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            exprs.push(parse_term(term)?);
        }
        Ok(Self(exprs.into_iter().collect()))
    }
}

/// Checks a `LabelSelector` without compiling it: label key and value syntax, known operators,
/// and values present exactly when the operator needs them.
pub fn validate_label_selector(sel: &LabelSelector, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
    if let Some(ml) = &sel.match_labels {
        let p = path.child("matchLabels");
        for (k, v) in ml {
            if let Err(e) = names::label_key(k) {
                errs.push(FieldError::invalid(&p, k, e));
            }
            if let Err(e) = names::label_value(v) {
                errs.push(FieldError::invalid(&p.key(k), v, e));
            }
        }
    }
    let exprs_path = path.child("matchExpressions");
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let p = exprs_path.index(i);
        if let Err(e) = names::label_key(&expr.key) {
            errs.push(FieldError::invalid(&p.child("key"), &expr.key, e));
        }
        let values: &[String] = expr.values.as_deref().unwrap_or_default();
        let vp = p.child("values");
        for (j, v) in values.iter().enumerate() {
            if let Err(e) = names::label_value(v) {
                errs.push(FieldError::invalid(&vp.index(j), v, e));
            }
        }
        match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                errs.push(FieldError::required(&vp, format!("must be non-empty when operator is {}", expr.operator)))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => errs
                .push(FieldError::forbidden(&vp, format!("may not be specified when operator is {}", expr.operator))),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::not_supported(&p.child("operator"), other, OPERATORS)),
        }
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in selector {s:?}"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in selector {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn checked_key(k: &str) -> Result<String, String> {
    let k = k.trim();
    names::label_key(k).map_err(|e| format!("invalid label key {k:?}: {e}"))?;
    Ok(k.to_string())
}

fn checked_value(v: &str) -> Result<String, String> {
    let v = v.trim();
    names::label_value(v).map_err(|e| format!("invalid label value {v:?}: {e}"))?;
    Ok(v.to_string())
}

fn parse_set(rest: &str) -> Result<BTreeSet<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("want a parenthesised value list, got {rest:?}"))?;
    let values = inner.split(',').map(checked_value).collect::<Result<BTreeSet<_>, _>>()?;
    if values.is_empty() {
        return Err("value list must not be empty".into());
    }
    Ok(values)
}

fn parse_term(term: &str) -> Result<Expression, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(checked_key(key)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Expression::NotEqual(checked_key(k)?, checked_value(v)?));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Expression::Equal(checked_key(k)?, checked_value(v)?));
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim_start();
    if let Some(set) = rest.strip_prefix("notin") {
        return Ok(Expression::NotIn(checked_key(key)?, parse_set(set)?));
    }
    if let Some(set) = rest.strip_prefix("in") {
        return Ok(Expression::In(checked_key(key)?, parse_set(set)?));
    }
    if rest.is_empty() {
        return Ok(Expression::Exists(checked_key(key)?));
    }
    Err(format!("cannot parse selector term {term:?}"))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selector_matches_and_validates() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("env", "prod")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "region".into(),
                    operator: "In".into(),
                    values: Some(vec!["east".into(), "west".into()]),
                },
                LabelSelectorRequirement { key: "canary".into(), operator: "DoesNotExist".into(), values: None },
            ]),
        };
        let s = Selector::from_label_selector(&sel, &FieldPath::new("spec").child("selector"))
            .expect("building the selector from a LabelSelector");
        assert!(s.matches(&labels(&[("env", "prod"), ("region", "east")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("region", "north")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("region", "east"), ("canary", "")])));

        let bad = LabelSelector {
            match_labels: Some(labels(&[("bad key", "v"), ("ok", "bad value")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement { key: "a".into(), operator: "In".into(), values: None },
                LabelSelectorRequirement { key: "b".into(), operator: "Exists".into(), values: Some(vec!["x".into()]) },
                LabelSelectorRequirement { key: "c".into(), operator: "Like".into(), values: None },
            ]),
        };
        let errs =
            Selector::from_label_selector(&bad, &FieldPath::new("spec").child("selector")).err().unwrap_or_default();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 5, "{text:#?}");
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.selector.matchExpressions[2].operator: Unsupported value: \"Like\""))
        );
        assert!(text.iter().any(|t| t.starts_with("spec.selector.matchExpressions[0].values: Required value")));
    }

    #[test]
    fn parses_kubectl_selectors() {
        let s = Selector::parse("env=prod, tier in (web, api),!canary,zone,owner!=bob")
            .expect("parsing a kubectl selector");
        assert!(s.matches(&labels(&[("env", "prod"), ("tier", "web"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("tier", "db"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("tier", "web"), ("zone", "a"), ("owner", "bob")])));
        assert!(Selector::parse("").unwrap_or_default().is_empty());
        assert!(Selector::parse("env==prod").is_ok());
        assert!(Selector::parse("tier notin (a)").is_ok());
        assert!(Selector::parse("tier in (a").is_err());
        assert!(Selector::parse("bad key=1").is_err());
    }
}
