//! The structure the compiler cannot see by itself: the pure core (`crates/core`) depends on no
//! runtime, HTTP, gRPC or Kubernetes client crate, so no I/O can creep into it; and no function
//! grows past a screenful or two without saying why.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that do I/O (or exist to): none may be a dependency of the core.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-util",
    "tokio-stream",
    "tokio-rustls",
    "hyper",
    "hyper-util",
    "axum",
    "tonic",
    "tonic-health",
    "reqwest",
    "kube",
    "kube-client",
    "kube-runtime",
    "rustls",
    "tower",
    "tracing",
];

#[test]
fn the_core_crate_depends_on_no_io_crate() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parsing cargo metadata's JSON");
    let core = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "tailscale-gateway-core")
        .expect("tailscale-gateway-core is a workspace member");
    let deps: Vec<&str> =
        core["dependencies"].as_array().into_iter().flatten().filter_map(|d| d["name"].as_str()).collect();
    assert!(deps.contains(&"kube-core"), "the core's dependencies as read: {deps:?}");
    let io: Vec<&&str> = deps.iter().filter(|d| IO_CRATES.contains(d)).collect();
    assert!(io.is_empty(), "the pure core depends on I/O crates {io:?}: move that code into a face");
}

/// The most lines a function may have without a `// long:` comment saying why (on the lines
/// just above its `fn`, among its doc comment and attributes, or in its first lines).
const MAX_FN_LINES: usize = 80;

#[test]
fn no_function_is_longer_than_80_lines_without_a_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "crates/core/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "found only {files:?}");
    let texts: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (path, text)
        })
        .collect();
    // Files that are `#[cfg(test)] mod name;` of another are tests as a whole.
    let test_modules: Vec<PathBuf> = texts.iter().flat_map(|(path, text)| test_module_files(path, text)).collect();
    let mut long = Vec::new();
    for (path, text) in &texts {
        if test_modules.iter().any(|t| path.starts_with(t) || *path == t.with_extension("rs")) {
            continue;
        }
        for f in long_functions(text) {
            let shown = path.strip_prefix(root).unwrap_or(path).display();
            long.push(format!("{shown}:{} fn {} ({} lines)", f.line, f.name, f.lines));
        }
    }
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FN_LINES} lines: split them by responsibility, or say why they are long in a \
         `// long: ...` comment just above the `fn` (or in its first lines):\n{}",
        long.join("\n")
    );
}

/// The `.rs` files under `dir`, but for `generated/` folders (protobuf code).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("reading a folder entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "generated") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A function found too long.
struct LongFunction {
    name: String,
    /// 1-based line of its `fn`.
    line: usize,
    lines: usize,
}

/// The functions of `text` longer than [`MAX_FN_LINES`] without a `// long:` reason, outside
/// items marked `#[cfg(test)]`.
fn long_functions(text: &str) -> Vec<LongFunction> {
    let code = code_only(text);
    let bytes = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let tests = test_items(&code);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("fn ") {
        let at = from + found;
        from = at + 3;
        if at > 0 && is_ident(bytes[at - 1]) {
            continue;
        }
        let name: String = code[at + 3..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if name.is_empty() || tests.iter().any(|r| r.contains(&at)) {
            continue;
        }
        // The body starts at the first `{` after the name; a `;` first means no body.
        let Some(open) = code[at..].find(['{', ';']).map(|i| at + i).filter(|i| bytes[*i] == b'{') else { continue };
        let Some(close) = matching_brace(bytes, open) else { continue };
        let (first, last) = (line_of(at), line_of(close));
        let length = last - first + 1;
        if length > MAX_FN_LINES && !has_reason(&lines, first) {
            out.push(LongFunction { name, line: first, lines: length });
        }
    }
    out
}

/// Whether a `// long:` comment sits among the doc comments and attributes just above line
/// `first` (1-based), or on it or the three lines after it.
fn has_reason(lines: &[&str], first: usize) -> bool {
    let above = lines[..first - 1]
        .iter()
        .rev()
        .take_while(|l| l.trim_start().starts_with("//") || l.trim_start().starts_with("#["));
    let opening = lines.iter().skip(first - 1).take(4);
    above.chain(opening).any(|l| l.contains("// long:"))
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The index of the `}` closing the `{` at `open`.
fn matching_brace(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The byte ranges of the items marked `#[cfg(test)]` (a module, a function) in `code`.
fn test_items(code: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("#[cfg(test)]") {
        let Some(end) = code[at..].find(['{', ';']).map(|i| at + i) else { continue };
        if code.as_bytes()[end] == b'{'
            && let Some(close) = matching_brace(code.as_bytes(), end)
        {
            out.push(at..close + 1);
        }
    }
    out
}

/// The files of the modules `path` declares as `#[cfg(test)] mod name;` (without extension:
/// `dir/name` stands for `dir/name.rs` and everything under `dir/name/`).
fn test_module_files(path: &Path, text: &str) -> Vec<PathBuf> {
    let code = code_only(text);
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let parent = path.parent().unwrap_or(Path::new(""));
    let dir = match stem {
        "mod" | "lib" | "main" => parent.to_path_buf(),
        _ => parent.join(stem),
    };
    let mut out = Vec::new();
    for (at, attr) in code.match_indices("#[cfg(test)]") {
        let rest = code[at + attr.len()..].trim_start();
        let Some(decl) = rest.strip_prefix("mod ").or_else(|| rest.strip_prefix("pub mod ")) else { continue };
        let name: String = decl.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if decl.trim_start()[name.len()..].trim_start().starts_with(';') {
            out.push(dir.join(name));
        }
    }
    out
}

/// `text` with comments and string and character literals blanked out (newlines kept, so lines
/// still match), so that the braces left are the code's.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident = |i: usize| i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    if depth == 0 {
                        out.push_str("  ");
                        i += 2;
                        break;
                    }
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == 'r' && (!ident(i) || (c[i - 1] == 'b' && !ident(i - 1))) && raw_hashes(&c, i + 1).is_some() {
            // A raw string: r"…", r#"…"#, br"…".
            let hashes = raw_hashes(&c, i + 1).unwrap_or_default();
            let closing: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let body = i + 2 + hashes;
            let end = c[body..]
                .windows(closing.len())
                .position(|w| w.iter().copied().eq(closing.chars()))
                .map_or(c.len(), |p| body + p + closing.len());
            while i < end {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '"' {
            blank(&mut out, c[i]);
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            if i < c.len() {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A character literal ('{', '\n', '\''), not a lifetime.
            let start = i;
            i += if next == Some('\\') { 3 } else { 2 };
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            for &ch in &c[start..(i + 1).min(c.len())] {
                blank(&mut out, ch);
            }
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// After an `r`: how many `#` come before the opening `"` of a raw string, if one opens here.
fn raw_hashes(c: &[char], from: usize) -> Option<usize> {
    let hashes = c[from.min(c.len())..].iter().take_while(|ch| **ch == '#').count();
    (c.get(from + hashes) == Some(&'"')).then_some(hashes)
}

#[test]
fn the_scanner_counts_code_braces_only_and_skips_tests_and_reasons() {
    let body = |n: usize| "    let _ = 1;\n".repeat(n);
    let long = format!("fn long() {{\n    let s = \"}}}}\"; let c = '}}'; // }}\n{}}}\n", body(85));
    assert_eq!(long_functions(&long).iter().map(|f| (f.name.as_str(), f.line)).collect::<Vec<_>>(), [("long", 1)]);
    let raw = format!("fn raw<'a>(x: &'a str) {{\n    let r = r#\"}}\"#;\n{}}}\n", body(85));
    assert_eq!(long_functions(&raw).len(), 1, "a raw string and lifetimes");
    let reason = format!("/// Doc.\n// long: a flat table.\n#[inline]\n{long}");
    assert!(long_functions(&reason).is_empty());
    let tested = format!("#[cfg(test)]\nmod tests {{\n{long}}}\n");
    assert!(long_functions(&tested).is_empty());
    assert!(long_functions(&format!("fn short() {{\n{}}}\n", body(70))).is_empty());
}
