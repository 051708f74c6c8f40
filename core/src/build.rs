//! Which build of Quarry a process runs: set once by the binary, which knows its git commit, and read by the
//! `quarry_build_info` metric, the gRPC servers' `quarry-version` response header and the wfe's health answer.

use std::sync::OnceLock;

/// A build's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// The crate version (`0.1.0`).
    pub version: &'static str,
    /// The git commit it was built from (12 hex digits), or `unknown` outside a checkout.
    pub commit: &'static str,
    /// That commit's date (`YYYY-MM-DD`): reproducible, unlike the moment of the build.
    pub date: &'static str,
}

impl BuildInfo {
    /// `0.1.0 (commit 0123456789ab, 2026-12-04)`.
    pub fn describe(&self) -> String {
        format!("{} (commit {}, {})", self.version, self.commit, self.date)
    }
}

static BUILD: OnceLock<BuildInfo> = OnceLock::new();

/// Records this process's build; the first call wins.
pub fn set(info: BuildInfo) {
    let _ = BUILD.set(info);
}

/// This process's build: what [`set`] recorded, else the library's version with an unknown commit (tests).
pub fn get() -> BuildInfo {
    *BUILD.get_or_init(|| BuildInfo { version: env!("CARGO_PKG_VERSION"), commit: "unknown", date: "unknown" })
}
