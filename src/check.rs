//! `tailscale-gateway check -f PATH...`: validate manifests offline with the webhook's rules, for
//! CI pipelines. Prints one line per problem and exits 1 when any document is rejected.

use std::io::Write;
use std::path::PathBuf;

use crate::manifest::{self, Severity};

/// Checks `paths` and writes a report to `out`. Returns the process exit code, also when the
/// reader of `out` went away (`check ... | head`): the verdict does not depend on who reads it.
pub fn run(paths: &[PathBuf], namespace: &str, out: &mut dyn Write) -> std::io::Result<i32> {
    let loaded = manifest::load(paths, namespace);
    let errors = loaded.problems.iter().filter(|p| p.severity == Severity::Error).count();
    let code = if errors > 0 || loaded.files == 0 { 1 } else { 0 };
    match report(&loaded, errors, out) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(code),
    }
}

fn report(loaded: &manifest::Loaded, errors: usize, out: &mut dyn Write) -> std::io::Result<()> {
    for p in &loaded.problems {
        writeln!(out, "{p}")?;
    }
    // Paths that could not be read are errors, but not rejected documents.
    let unreadable = loaded.problems.iter().filter(|p| p.severity == Severity::Error && p.source.document == 0).count();
    let warnings = loaded.problems.len() - errors;
    let mut summary = format!(
        "{} file(s): {} valid object(s), {} rejected, {warnings} warning(s), {} other document(s) ignored",
        loaded.files,
        loaded.resources.len(),
        errors - unreadable,
        loaded.foreign
    );
    if unreadable > 0 {
        summary.push_str(&format!(", {unreadable} path(s) not read"));
    }
    writeln!(out, "{summary}")?;
    out.flush()
}
