//! Conversions between prost messages and `quarry_core` domain types, in one place.
//!
//! Decoding is strict: an unknown status or identifier type from a peer is a `serverInternal` problem,
//! because it means two services disagree about the wire format.

use quarry_core::model::{
    Account, AccountStatus, Authorization, AuthorizationStatus, Certificate, Challenge, ChallengeStatus, ChallengeType,
    NewOrderFacts, Order, OrderPage, OrderStatus, ValidationRecord,
};
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem, SubProblem};

use crate::core as pb;
use crate::sa as sapb;

fn bad_wire(what: &str, value: &str) -> Problem {
    Problem::internal(format!("peer sent an unknown {what} {value:?}"))
}

impl From<&Identifier> for pb::Identifier {
    fn from(id: &Identifier) -> Self {
        Self { r#type: id.kind.as_str().to_owned(), value: id.value.clone() }
    }
}

impl TryFrom<&pb::Identifier> for Identifier {
    type Error = Problem;
    fn try_from(id: &pb::Identifier) -> Result<Self, Problem> {
        let kind = IdentifierType::parse(&id.r#type).ok_or_else(|| bad_wire("identifier type", &id.r#type))?;
        Ok(Identifier { kind, value: id.value.clone() })
    }
}

/// Encodes a list of identifiers.
pub fn identifiers_to_pb(ids: &[Identifier]) -> Vec<pb::Identifier> {
    ids.iter().map(pb::Identifier::from).collect()
}

/// Decodes a list of identifiers.
pub fn identifiers_from_pb(ids: &[pb::Identifier]) -> Result<Vec<Identifier>, Problem> {
    ids.iter().map(Identifier::try_from).collect()
}

impl From<&Problem> for pb::Problem {
    fn from(p: &Problem) -> Self {
        Self {
            kind: p.kind.as_str().to_owned(),
            detail: p.detail.clone(),
            subproblems: p
                .subproblems
                .iter()
                .map(|s| pb::SubProblem {
                    kind: s.kind.as_str().to_owned(),
                    detail: s.detail.clone(),
                    identifier: s.identifier.as_ref().map(pb::Identifier::from),
                })
                .collect(),
        }
    }
}

impl From<&pb::Problem> for Problem {
    fn from(p: &pb::Problem) -> Self {
        let kind = |name: &str| ErrorKind::parse(name).unwrap_or(ErrorKind::ServerInternal);
        Problem::new(kind(&p.kind), p.detail.clone()).with_subproblems(
            p.subproblems
                .iter()
                .map(|s| SubProblem {
                    kind: kind(&s.kind),
                    detail: s.detail.clone(),
                    identifier: s.identifier.as_ref().and_then(|i| Identifier::try_from(i).ok()),
                })
                .collect(),
        )
    }
}

/// Encodes an optional problem.
pub fn problem_to_pb(p: &Option<Problem>) -> Option<pb::Problem> {
    p.as_ref().map(pb::Problem::from)
}

/// Decodes an optional problem.
pub fn problem_from_pb(p: &Option<pb::Problem>) -> Option<Problem> {
    p.as_ref().map(Problem::from)
}

impl From<&ValidationRecord> for pb::ValidationRecord {
    fn from(r: &ValidationRecord) -> Self {
        Self {
            hostname: r.hostname.clone(),
            port: r.port.clone(),
            addresses_resolved: r.addresses_resolved.clone(),
            address_used: r.address_used.clone(),
            url: r.url.clone(),
            addresses_tried: r.addresses_tried.clone(),
            resolver_addresses: r.resolver_addresses.clone(),
            perspective: r.perspective.clone(),
        }
    }
}

impl From<&pb::ValidationRecord> for ValidationRecord {
    fn from(r: &pb::ValidationRecord) -> Self {
        Self {
            hostname: r.hostname.clone(),
            port: r.port.clone(),
            addresses_resolved: r.addresses_resolved.clone(),
            address_used: r.address_used.clone(),
            url: r.url.clone(),
            addresses_tried: r.addresses_tried.clone(),
            resolver_addresses: r.resolver_addresses.clone(),
            perspective: r.perspective.clone(),
        }
    }
}

/// Encodes validation records.
pub fn records_to_pb(records: &[ValidationRecord]) -> Vec<pb::ValidationRecord> {
    records.iter().map(pb::ValidationRecord::from).collect()
}

/// Decodes validation records.
pub fn records_from_pb(records: &[pb::ValidationRecord]) -> Vec<ValidationRecord> {
    records.iter().map(ValidationRecord::from).collect()
}

impl From<&Account> for pb::Account {
    fn from(a: &Account) -> Self {
        Self {
            id: a.id,
            jwk: a.jwk.clone(),
            status: a.status.as_str().to_owned(),
            contact: a.contact.clone(),
            terms_of_service_agreed: a.terms_of_service_agreed,
            created_at: a.created_at,
            external_account_id: a.external_account_id.clone(),
            ..Default::default()
        }
    }
}

impl TryFrom<&pb::Account> for Account {
    type Error = Problem;
    fn try_from(a: &pb::Account) -> Result<Self, Problem> {
        Ok(Self {
            id: a.id,
            jwk: a.jwk.clone(),
            status: AccountStatus::parse(&a.status).ok_or_else(|| bad_wire("account status", &a.status))?,
            contact: a.contact.clone(),
            terms_of_service_agreed: a.terms_of_service_agreed,
            created_at: a.created_at,
            external_account_id: a.external_account_id.clone(),
        })
    }
}

impl From<&Challenge> for pb::Challenge {
    fn from(c: &Challenge) -> Self {
        Self {
            id: c.index,
            r#type: c.kind.as_str().to_owned(),
            status: c.status.as_str().to_owned(),
            token: c.token.clone(),
            validated: c.validated,
            error: problem_to_pb(&c.error),
            validation_records: records_to_pb(&c.validation_records),
        }
    }
}

impl TryFrom<&pb::Challenge> for Challenge {
    type Error = Problem;
    fn try_from(c: &pb::Challenge) -> Result<Self, Problem> {
        Ok(Self {
            index: c.id,
            kind: ChallengeType::parse(&c.r#type).ok_or_else(|| bad_wire("challenge type", &c.r#type))?,
            status: ChallengeStatus::parse(&c.status).ok_or_else(|| bad_wire("challenge status", &c.status))?,
            token: c.token.clone(),
            validated: c.validated,
            error: problem_from_pb(&c.error),
            validation_records: records_from_pb(&c.validation_records),
        })
    }
}

impl From<&Authorization> for pb::Authorization {
    fn from(a: &Authorization) -> Self {
        Self {
            id: a.id,
            account_id: a.account_id,
            identifier: Some(pb::Identifier::from(&a.identifier)),
            status: a.status.as_str().to_owned(),
            expires: a.expires,
            challenges: a.challenges.iter().map(pb::Challenge::from).collect(),
            wildcard: a.wildcard,
            profile: a.profile.clone(),
            created: a.created,
        }
    }
}

impl TryFrom<&pb::Authorization> for Authorization {
    type Error = Problem;
    fn try_from(a: &pb::Authorization) -> Result<Self, Problem> {
        let identifier = a.identifier.as_ref().ok_or_else(|| Problem::internal("authorization without identifier"))?;
        Ok(Self {
            id: a.id,
            account_id: a.account_id,
            identifier: Identifier::try_from(identifier)?,
            status: AuthorizationStatus::parse(&a.status).ok_or_else(|| bad_wire("authorization status", &a.status))?,
            expires: a.expires,
            challenges: a.challenges.iter().map(Challenge::try_from).collect::<Result<_, _>>()?,
            wildcard: a.wildcard,
            profile: a.profile.clone(),
            created: a.created,
        })
    }
}

impl From<&Order> for pb::Order {
    fn from(o: &Order) -> Self {
        Self {
            id: o.id,
            account_id: o.account_id,
            status: o.status.as_str().to_owned(),
            expires: o.expires,
            identifiers: identifiers_to_pb(&o.identifiers),
            authorization_ids: o.authorization_ids.clone(),
            error: problem_to_pb(&o.error),
            certificate_serial: o.certificate_serial.clone(),
            created: o.created,
            profile: o.profile.clone(),
            replaces: o.replaces.clone(),
            began_processing: o.began_processing,
            not_before: o.not_before,
            not_after: o.not_after,
            authorizations: Vec::new(),
            certificate_der: Vec::new(),
        }
    }
}

/// A new order as its creation is answered: with the authorizations it was created with (`Order.authorizations`,
/// which no read fills), so that the wfe can show them without asking the sa.
pub fn created_order_to_pb(order: &Order, authorizations: &[Authorization]) -> pb::Order {
    pb::Order { authorizations: authorizations.iter().map(pb::Authorization::from).collect(), ..pb::Order::from(order) }
}

impl TryFrom<&pb::Order> for Order {
    type Error = Problem;
    fn try_from(o: &pb::Order) -> Result<Self, Problem> {
        Ok(Self {
            id: o.id,
            account_id: o.account_id,
            status: OrderStatus::parse(&o.status).ok_or_else(|| bad_wire("order status", &o.status))?,
            expires: o.expires,
            identifiers: identifiers_from_pb(&o.identifiers)?,
            authorization_ids: o.authorization_ids.clone(),
            error: problem_from_pb(&o.error),
            certificate_serial: o.certificate_serial.clone(),
            created: o.created,
            profile: o.profile.clone(),
            replaces: o.replaces.clone(),
            began_processing: o.began_processing,
            not_before: o.not_before,
            not_after: o.not_after,
        })
    }
}

impl From<&Certificate> for pb::Certificate {
    fn from(c: &Certificate) -> Self {
        Self {
            serial: c.serial.clone(),
            account_id: c.account_id,
            der: c.der.clone(),
            issued: c.issued,
            expires: c.expires,
            digest: c.digest.clone(),
            issuer_id: c.issuer_id,
        }
    }
}

impl From<&pb::Certificate> for Certificate {
    fn from(c: &pb::Certificate) -> Self {
        Self {
            serial: c.serial.clone(),
            account_id: c.account_id,
            der: c.der.clone(),
            issued: c.issued,
            expires: c.expires,
            digest: c.digest.clone(),
            issuer_id: c.issuer_id,
        }
    }
}

impl From<&OrderPage> for sapb::AccountOrders {
    fn from(page: &OrderPage) -> Self {
        Self { order_ids: page.order_ids.clone(), next_after_id: page.next_after_id.unwrap_or(0) }
    }
}

impl From<&sapb::AccountOrders> for OrderPage {
    fn from(page: &sapb::AccountOrders) -> Self {
        // Ids start at 1 on both backends, so 0 can say "no next page" on the wire.
        let next_after_id = Some(page.next_after_id).filter(|id| *id > 0);
        Self { order_ids: page.order_ids.clone(), next_after_id }
    }
}

impl From<&NewOrderFacts> for sapb::NewOrderFacts {
    fn from(facts: &NewOrderFacts) -> Self {
        Self {
            reusable_order: facts.reusable_order.as_ref().map(pb::Order::from),
            paused: identifiers_to_pb(&facts.paused),
            renewal: facts.renewal,
            valid_authorizations: facts.valid_authorizations.iter().map(pb::Authorization::from).collect(),
        }
    }
}

impl TryFrom<&sapb::NewOrderFacts> for NewOrderFacts {
    type Error = Problem;

    fn try_from(facts: &sapb::NewOrderFacts) -> Result<Self, Problem> {
        Ok(Self {
            reusable_order: facts.reusable_order.as_ref().map(Order::try_from).transpose()?,
            paused: identifiers_from_pb(&facts.paused)?,
            renewal: facts.renewal,
            valid_authorizations: facts
                .valid_authorizations
                .iter()
                .map(Authorization::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Order {
        Order {
            id: 7,
            account_id: 3,
            status: OrderStatus::Ready,
            expires: 100,
            identifiers: vec![Identifier::dns("a.example"), Identifier::dns("*.b.example")],
            authorization_ids: vec![1, 2],
            error: Some(Problem::malformed("x")),
            certificate_serial: String::new(),
            created: 50,
            profile: "classic".into(),
            replaces: String::new(),
            began_processing: 0,
            not_before: 0,
            not_after: 0,
        }
    }

    #[test]
    fn orders_round_trip() {
        let order = order();
        assert_eq!(Order::try_from(&pb::Order::from(&order)).unwrap(), order);
    }

    #[test]
    fn new_order_facts_round_trip_with_and_without_a_reusable_order() {
        let authorization = Authorization {
            id: 4,
            account_id: 3,
            identifier: Identifier::dns("b.example"),
            status: AuthorizationStatus::Valid,
            expires: 200,
            challenges: Vec::new(),
            wildcard: true,
            profile: "classic".into(),
            created: 20,
        };
        for facts in [
            NewOrderFacts { reusable_order: Some(order()), ..Default::default() },
            NewOrderFacts {
                reusable_order: None,
                paused: vec![Identifier::dns("a.example")],
                renewal: true,
                valid_authorizations: vec![authorization],
            },
            NewOrderFacts::default(),
        ] {
            assert_eq!(NewOrderFacts::try_from(&sapb::NewOrderFacts::from(&facts)).unwrap(), facts);
        }
    }

    #[test]
    fn order_pages_round_trip_with_and_without_a_next_page() {
        for page in [
            OrderPage { order_ids: vec![3, 5, 8], next_after_id: Some(8) },
            OrderPage { order_ids: vec![13], next_after_id: None },
            OrderPage::default(),
        ] {
            assert_eq!(OrderPage::from(&sapb::AccountOrders::from(&page)), page);
        }
    }

    #[test]
    fn unknown_statuses_are_refused() {
        let wire = pb::Order { status: "bogus".into(), ..Default::default() };
        assert_eq!(Order::try_from(&wire).unwrap_err().kind, ErrorKind::ServerInternal);
    }
}
