//! The ACME objects every service talks about: accounts, orders, authorizations, challenges, certificates.
//!
//! Timestamps are Unix seconds ([`Timestamp`]); zero means unset.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::Problem;
use crate::identifier::Identifier;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant,)*
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)* }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// RFC 8555 §7.1.6 account states.
    AccountStatus { Valid => "valid", Deactivated => "deactivated", Revoked => "revoked", }
}

string_enum! {
    /// RFC 8555 §7.1.6 order states; derived by the sa from the order's authorizations and fields.
    OrderStatus {
        Pending => "pending",
        Ready => "ready",
        Processing => "processing",
        Valid => "valid",
        Invalid => "invalid",
    }
}

string_enum! {
    /// RFC 8555 §7.1.6 authorization states.
    AuthorizationStatus {
        Pending => "pending",
        Valid => "valid",
        Invalid => "invalid",
        Deactivated => "deactivated",
        Expired => "expired",
        Revoked => "revoked",
    }
}

string_enum! {
    /// RFC 8555 §7.1.6 challenge states.
    ChallengeStatus { Pending => "pending", Processing => "processing", Valid => "valid", Invalid => "invalid", }
}

string_enum! {
    /// The challenge types Quarry knows.
    ChallengeType { Http01 => "http-01", Dns01 => "dns-01", TlsAlpn01 => "tls-alpn-01", }
}

/// An ACME account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    /// The account key as a JSON JWK.
    pub jwk: Vec<u8>,
    pub status: AccountStatus,
    pub contact: Vec<String>,
    pub terms_of_service_agreed: bool,
    pub created_at: Timestamp,
    /// The key identifier of the external account binding it was created with (RFC 8555 §7.3.4), or empty.
    pub external_account_id: String,
}

/// What the va saw while validating: which addresses it resolved and used, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationRecord {
    pub hostname: String,
    pub port: String,
    pub addresses_resolved: Vec<String>,
    pub address_used: String,
    pub url: String,
    pub addresses_tried: Vec<String>,
    pub resolver_addresses: Vec<String>,
    pub perspective: String,
}

/// One challenge of an authorization; its id is its index within the authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub index: i64,
    pub kind: ChallengeType,
    pub status: ChallengeStatus,
    pub token: String,
    pub validated: Timestamp,
    pub error: Option<Problem>,
    pub validation_records: Vec<ValidationRecord>,
}

/// An authorization for one identifier on behalf of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub id: i64,
    pub account_id: i64,
    /// The identifier without any wildcard prefix; `wildcard` says whether the order asked for `*.` of it.
    pub identifier: Identifier,
    pub status: AuthorizationStatus,
    pub expires: Timestamp,
    pub challenges: Vec<Challenge>,
    pub wildcard: bool,
    pub profile: String,
    pub created: Timestamp,
}

/// An order for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: i64,
    pub account_id: i64,
    pub status: OrderStatus,
    pub expires: Timestamp,
    pub identifiers: Vec<Identifier>,
    pub authorization_ids: Vec<i64>,
    pub error: Option<Problem>,
    /// Hex serial of the issued certificate, empty until the order is valid.
    pub certificate_serial: String,
    pub created: Timestamp,
    pub profile: String,
    pub replaces: String,
    pub began_processing: Timestamp,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// What the sa knows that a new order depends on, read in one go (sa `GetNewOrderFacts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewOrderFacts {
    /// The account's pending or ready order for the same identifiers and profile: the answer to the new-order, so
    /// when there is one nothing else is read and the other fields are empty.
    pub reusable_order: Option<Order>,
    /// Those of the identifiers, each without its wildcard label, that the account is paused for.
    pub paused: Vec<Identifier>,
    /// Whether a certificate for exactly these identifiers was issued within the renewal window.
    pub renewal: bool,
    /// The account's valid authorizations for the identifiers that the new order may reuse.
    pub valid_authorizations: Vec<Authorization>,
}

/// The most order ids one page of an account's orders list holds: what the sa reads for one request.
pub const MAX_ORDER_PAGE: i64 = 1_000;

/// One page of an account's orders list (RFC 8555 §7.1.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderPage {
    /// The account's orders that are not invalid, by id ascending (creation order).
    pub order_ids: Vec<i64>,
    /// The next page holds only orders with a greater id than this; `None` when this page is the last.
    pub next_after_id: Option<i64>,
}

/// An issued certificate as stored by the sa.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub serial: String,
    pub account_id: i64,
    pub der: Vec<u8>,
    pub issued: Timestamp,
    pub expires: Timestamp,
    pub digest: String,
    pub issuer_id: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in ["pending", "ready", "processing", "valid", "invalid"] {
            assert_eq!(OrderStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(ChallengeType::parse("tls-alpn-01"), Some(ChallengeType::TlsAlpn01));
        assert_eq!(ChallengeType::parse("http-02"), None);
    }
}
