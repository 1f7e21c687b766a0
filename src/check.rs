//! `tailscale-gateway check -f PATH...`: validate manifests offline with the webhook's rules, for
//! CI pipelines. Prints one line per problem and exits 1 when any document is rejected.

use std::io::Write;
use std::path::PathBuf;

use crate::manifest::{self, Severity};

/// Checks `paths` and writes a report to `out`. Returns the process exit code.
pub fn run(paths: &[PathBuf], namespace: &str, out: &mut dyn Write) -> std::io::Result<i32> {
    let loaded = manifest::load(paths, namespace);
    for p in &loaded.problems {
        writeln!(out, "{p}")?;
    }
    let errors = loaded.problems.iter().filter(|p| p.severity == Severity::Error).count();
    let warnings = loaded.problems.len() - errors;
    writeln!(
        out,
        "{} file(s): {} valid object(s), {errors} rejected, {warnings} warning(s), {} other document(s) ignored",
        loaded.files,
        loaded.resources.len(),
        loaded.foreign
    )?;
    Ok(if errors > 0 || loaded.files == 0 { 1 } else { 0 })
}
