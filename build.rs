//! Build script: stamps the version that `sigrelay --version`, the man page and the start-up
//! banner print with the git commit when built from a checkout ("0.1.0 (3f2c1ab)"), so a bug
//! report from an installed package names the exact source. Outside a checkout (a crates.io
//! tarball, no git installed) it is the plain package version.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let full = match &commit {
        Some(commit) => format!("{version} ({commit})"),
        None => version,
    };
    println!("cargo:rustc-env=SIGRELAY_BUILD_VERSION={full}");

    // Re-run when HEAD moves: HEAD itself (a branch switch) and the branch it names (a commit).
    // Only files that exist are named: a missing one would make cargo re-run this every build.
    // `git rev-parse --git-path` resolves both, in a worktree (where .git is a file) too.
    let mut watched = Vec::new();
    if commit.is_some() {
        watched.extend(git(&["rev-parse", "--git-path", "HEAD"]));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.extend(git(&["rev-parse", "--git-path", &branch]));
        }
        watched.extend(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    let mut any = false;
    for path in watched.into_iter().map(PathBuf::from) {
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
            any = true;
        }
    }
    if !any {
        // Without this line cargo would re-run the script whenever any file in the package
        // changes; nothing but git state feeds it.
        println!("cargo:rerun-if-changed=build.rs");
    }
}

/// One line of git's output, or None when git is missing, this is not a checkout, or it fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!line.is_empty()).then_some(line)
}
