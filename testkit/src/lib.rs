//! Test support for Quarry: a throwaway PKI, fakes of peer services, an older sa (a proxy), an in-process stack and
//! publisher, database and telemetry helpers, and, under the names the tests have always used, the ACME client and
//! the dev tools' challenge test server they drive. Only tests depend on it.

pub use quarry_acme_client as client;
pub use quarry_devtools::challtestsrv;
pub mod csr;
pub mod ctlog;
pub mod db;
pub mod fakes;
pub mod older;
pub mod otlp;
pub mod pki;
pub mod rotation;
pub mod stack;
pub mod verify;
