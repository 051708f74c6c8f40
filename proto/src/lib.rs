//! Quarry's wire format: the generated gRPC code of every service and the conversions between its
//! messages and `quarry_core` domain types. Business logic never handles these prost types directly.

pub mod client;
pub mod convert;

/// The generated code, nested as the protobuf packages are (`quarry.<service>.v1`).
#[allow(clippy::all, unused_qualifications)]
pub mod quarry {
    pub mod core {
        pub mod v1 {
            tonic::include_proto!("quarry.core.v1");
        }
    }
    pub mod sa {
        pub mod v1 {
            tonic::include_proto!("quarry.sa.v1");
        }
    }
    pub mod ra {
        pub mod v1 {
            tonic::include_proto!("quarry.ra.v1");
        }
    }
    pub mod ca {
        pub mod v1 {
            tonic::include_proto!("quarry.ca.v1");
        }
    }
    pub mod va {
        pub mod v1 {
            tonic::include_proto!("quarry.va.v1");
        }
    }
    pub mod nonce {
        pub mod v1 {
            tonic::include_proto!("quarry.nonce.v1");
        }
    }
    pub mod publisher {
        pub mod v1 {
            tonic::include_proto!("quarry.publisher.v1");
        }
    }
}

/// The certificate authority's service.
pub use quarry::ca::v1 as ca;
/// Shared messages: identifiers, accounts, orders, authorizations, challenges, problems.
pub use quarry::core::v1 as core;
/// The nonce service.
pub use quarry::nonce::v1 as nonce;
/// The Certificate Transparency publisher.
pub use quarry::publisher::v1 as publisher;
/// The registration authority's service.
pub use quarry::ra::v1 as ra;
/// The storage authority's read-only and read-write services.
pub use quarry::sa::v1 as sa;
/// The validation authority's service.
pub use quarry::va::v1 as va;
