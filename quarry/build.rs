//! Stamps the binary with the git commit it is built from (`quarry --version`, the `quarry_build_info` metric):
//! `QUARRY_GIT_COMMIT` and `QUARRY_GIT_DATE`, `unknown` outside a git checkout (a source tarball, an image build
//! without `.git`). Only this crate is rebuilt when the commit changes.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let date = git(&["log", "-1", "--format=%cs"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=QUARRY_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=QUARRY_GIT_DATE={date}");
    // Rebuilt when HEAD moves: a new commit on the branch, or another branch checked out.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{branch}");
        }
        println!("cargo:rerun-if-changed={git_dir}/packed-refs");
    }
}
