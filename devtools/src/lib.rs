//! Quarry's dev tools, kept out of the production binary and image: `quarry dev` (the whole split CA on one machine,
//! and its Pebble drop-in mode), the challenge test server, fake Certificate Transparency logs, the compose stack's
//! set-up and load balancer, and the load generator. They run the services from the production binary `quarry`,
//! never their own copy of them.

pub mod balancer;
pub mod challtestsrv;
pub mod compose;
pub mod ctlog;
pub mod dev;
pub mod loadgen;

use std::path::PathBuf;

use anyhow::Context as _;

/// The variable naming the production binary to run the services from; default: `quarry` beside this binary.
pub const QUARRY_BIN_ENV: &str = "QUARRY_BIN";

/// The production binary `quarry dev` runs every service from: `$QUARRY_BIN`, or `quarry` beside this binary (as
/// `cargo build -p quarry -p quarry-devtools` leaves them), or on the `PATH`.
pub fn quarry_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(QUARRY_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locate this binary")?;
    let beside = exe.parent().map(|dir| dir.join("quarry")).filter(|path| path.is_file());
    if let Some(path) = beside {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("quarry"))
        .find(|path| path.is_file());
    on_path.context(
        "the production binary `quarry` is not beside quarry-dev nor on the PATH (build both: cargo build -p quarry \
         -p quarry-devtools), and QUARRY_BIN is not set",
    )
}
