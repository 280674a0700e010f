//! Records the git commit psa-train is built from as `PSA_GIT_COMMIT` (read by `record::GIT_COMMIT`), when it is
//! built inside a git checkout; elsewhere (a crates.io build) nothing is set.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

/// Asks cargo to rerun this script when `path` changes (only for files that exist: a missing one reruns it always).
fn watch(path: Option<String>) {
    if let Some(path) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Some(commit) = git(&["rev-parse", "HEAD"]) else { return };
    println!("cargo:rustc-env=PSA_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: the HEAD file, the branch it names, and packed refs.
    let path = |p: &str| git(&["rev-parse", "--path-format=absolute", "--git-path", p]);
    watch(path("HEAD"));
    watch(git(&["symbolic-ref", "-q", "HEAD"]).and_then(|branch| path(&branch)));
    watch(path("packed-refs"));
}
