//! Whole-project tests of the `quarry` binary: the full stack as separate processes, and tidiness rules.

mod architecture;
mod attacks;
mod chaos;
mod faults;
mod full_stack;
mod pebble;
mod probe;
mod tidy;
