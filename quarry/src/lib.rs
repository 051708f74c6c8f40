//! The operator's side of the `quarry` binary, as a library the binary and the dev tools share: environment
//! configurations and their check (`env`, `envcheck`), the operator's commands (`admin`, `orphans`), readiness
//! checks (`health`), the prober (`probe`) and the stack file that tells client tools where a stack is
//! (`stack_file`). Nothing here is a dev or test tool: those live in `quarry-devtools`, which this never depends on.

pub mod admin;
pub mod env;
pub mod envcheck;
pub mod health;
pub mod orphans;
pub mod probe;
pub mod stack_file;

/// `quarry --version` (and `quarry-dev --version`): the version, the git commit and its date (stamped by build.rs).
pub const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("QUARRY_GIT_COMMIT"), ", ", env!("QUARRY_GIT_DATE"), ")");

/// This binary's build, for the metric, the gRPC header and the health answer.
pub const BUILD: quarry_core::build::BuildInfo = quarry_core::build::BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("QUARRY_GIT_COMMIT"),
    date: env!("QUARRY_GIT_DATE"),
};
