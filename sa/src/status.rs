//! Order and authorization statuses are derived on read from what is stored, as Boulder does, so no write can
//! leave a stale status behind.

use quarry_core::clock::Timestamp;
use quarry_core::model::{AuthorizationStatus, OrderStatus};

/// An authorization's status: a stored pending or valid one that has expired reads as expired.
pub fn authorization_status(stored: AuthorizationStatus, expires: Timestamp, now: Timestamp) -> AuthorizationStatus {
    match stored {
        AuthorizationStatus::Pending | AuthorizationStatus::Valid if expires <= now => AuthorizationStatus::Expired,
        other => other,
    }
}

/// What an order's status is, given its own fields and its authorizations' (already derived) statuses.
pub struct OrderFacts<'a> {
    pub has_error: bool,
    pub expires: Timestamp,
    pub began_processing: bool,
    pub has_certificate: bool,
    pub authorizations: &'a [AuthorizationStatus],
}

/// RFC 8555 §7.1.6, decided in Boulder's order — errors and expiry first, then the authorizations, then issuance —
/// except that an order with its certificate is valid first of all.
pub fn order_status(facts: &OrderFacts<'_>, now: Timestamp) -> OrderStatus {
    use AuthorizationStatus as A;
    // A stored certificate makes its order valid whatever else was recorded: it is the subscriber's.
    if facts.has_certificate {
        return OrderStatus::Valid;
    }
    if facts.has_error {
        return OrderStatus::Invalid;
    }
    if facts.expires <= now {
        return OrderStatus::Invalid;
    }
    if facts.authorizations.iter().any(|s| matches!(s, A::Invalid | A::Deactivated | A::Expired | A::Revoked)) {
        return OrderStatus::Invalid;
    }
    if facts.authorizations.contains(&A::Pending) {
        return OrderStatus::Pending;
    }
    if facts.began_processing {
        return OrderStatus::Processing;
    }
    OrderStatus::Ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use AuthorizationStatus as A;

    #[test]
    fn order_statuses() {
        let now = 1_000;
        type Case = (bool, Timestamp, bool, bool, &'static [A], OrderStatus);
        let cases: &[Case] = &[
            (false, 2_000, false, false, &[A::Pending, A::Valid], OrderStatus::Pending),
            (false, 2_000, false, false, &[A::Valid, A::Valid], OrderStatus::Ready),
            (false, 2_000, true, false, &[A::Valid], OrderStatus::Processing),
            (false, 2_000, true, true, &[A::Valid], OrderStatus::Valid),
            (true, 2_000, true, false, &[A::Valid], OrderStatus::Invalid),
            (true, 2_000, true, true, &[A::Valid], OrderStatus::Valid),
            (false, 500, false, false, &[A::Valid], OrderStatus::Invalid),
            (false, 2_000, false, false, &[A::Valid, A::Invalid], OrderStatus::Invalid),
            (false, 2_000, false, false, &[A::Pending, A::Deactivated], OrderStatus::Invalid),
            (false, 2_000, false, false, &[A::Expired], OrderStatus::Invalid),
            // A finished order stays valid after its own expiry, so its certificate URL keeps working.
            (false, 500, true, true, &[A::Expired], OrderStatus::Valid),
        ];
        for (has_error, expires, began_processing, has_certificate, authorizations, expected) in cases {
            let facts = OrderFacts {
                has_error: *has_error,
                expires: *expires,
                began_processing: *began_processing,
                has_certificate: *has_certificate,
                authorizations,
            };
            assert_eq!(order_status(&facts, now), *expected, "{authorizations:?}");
        }
    }

    #[test]
    fn expired_authorizations() {
        assert_eq!(authorization_status(A::Pending, 10, 10), A::Expired);
        assert_eq!(authorization_status(A::Valid, 11, 10), A::Valid);
        assert_eq!(authorization_status(A::Invalid, 1, 10), A::Invalid);
    }
}
