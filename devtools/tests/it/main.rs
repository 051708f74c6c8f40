//! The testkit's integration tests: its servers on loopback, driven as their real clients drive them.

mod challtestsrv;
