//! Whole-project tests of the `quarry` binary: the full stack as separate processes (`quarry dev`, handed to the
//! `quarry-dev` binary beside it, which `cargo test --workspace` builds), the crate map and tidiness rules.

mod architecture;
mod attacks;
mod chaos;
mod crates;
mod faults;
mod full_stack;
mod pebble;
mod probe;
mod tidy;

/// The dev tools' binary beside the `quarry` under test: `quarry dev` hands itself to it.
pub fn quarry_dev() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_quarry")).with_file_name("quarry-dev");
    assert!(
        path.is_file(),
        "{} is missing: cargo build -p quarry-devtools (cargo test --workspace builds it)",
        path.display()
    );
    path
}
