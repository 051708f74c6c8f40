//! Fault points: the places where a test makes a service die, to prove that a crash there loses nothing.
//!
//! Compiled in only with the `fault-points` feature, which only the tests turn on (a release build has none). A
//! process arms the point named by `QUARRY_FAULT_POINT` (a comma-separated list); when it reaches an armed point it
//! aborts at once, as a SIGKILL would stop it: no destructor runs, no answer is sent. With `QUARRY_FAULT_ONCE=PATH`
//! the point fires only for the first process that creates PATH, so a restarted or sibling replica carries on.

/// Aborts the process here if the tests armed `name`.
#[cfg(feature = "fault-points")]
pub fn point(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("QUARRY_FAULT_POINT")
            .map(|names| names.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect())
            .unwrap_or_default()
    });
    if !armed.iter().any(|armed| armed == name) {
        return;
    }
    if let Some(marker) = std::env::var_os("QUARRY_FAULT_ONCE") {
        let marker = std::path::Path::new(&marker).with_extension(name);
        if std::fs::OpenOptions::new().write(true).create_new(true).open(&marker).is_err() {
            return;
        }
    }
    eprintln!("fault point {name}: aborting");
    std::process::abort();
}

/// Fault points are compiled out of builds without the `fault-points` feature.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub fn point(_name: &str) {}
