//! The JSON the wfe shows clients for accounts, orders, authorizations and challenges (RFC 8555 §7.1).

use quarry_core::model::{Account, Authorization, Challenge, ChallengeStatus, Order, OrderStatus, ValidationRecord};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::problem::problem_json;

/// RFC 3339 in UTC, whole seconds.
pub fn timestamp(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// The URLs of the wfe's resources, built from its configured base URL.
#[derive(Debug, Clone)]
pub struct Urls {
    pub base: String,
}

impl Urls {
    pub fn directory(&self) -> String {
        format!("{}/directory", self.base)
    }
    pub fn account(&self, id: i64) -> String {
        format!("{}/acme/acct/{id}", self.base)
    }
    /// The first page of the account's orders list; later pages add `?cursor=`.
    pub fn account_orders(&self, id: i64) -> String {
        format!("{}/acme/acct/{id}/orders", self.base)
    }
    pub fn order(&self, id: i64) -> String {
        format!("{}/acme/order/{id}", self.base)
    }
    pub fn finalize(&self, id: i64) -> String {
        format!("{}/acme/finalize/{id}", self.base)
    }
    pub fn authorization(&self, id: i64) -> String {
        format!("{}/acme/authz/{id}", self.base)
    }
    pub fn challenge(&self, authz: i64, index: i64) -> String {
        format!("{}/acme/chall/{authz}/{index}", self.base)
    }
    pub fn certificate(&self, serial: &str) -> String {
        format!("{}/acme/cert/{serial}", self.base)
    }
}

pub fn account(urls: &Urls, account: &Account) -> Value {
    let key: Value = serde_json::from_slice(&account.jwk).unwrap_or(Value::Null);
    let mut doc = json!({
        "status": account.status.as_str(),
        "key": key,
        "createdAt": timestamp(account.created_at),
        "orders": urls.account_orders(account.id),
    });
    if !account.contact.is_empty() {
        doc["contact"] = json!(account.contact);
    }
    doc
}

pub fn order(urls: &Urls, order: &Order) -> Value {
    let identifiers: Vec<Value> =
        order.identifiers.iter().map(|i| json!({ "type": i.kind.as_str(), "value": i.value })).collect();
    let mut doc = json!({
        "status": order.status.as_str(),
        "expires": timestamp(order.expires),
        "identifiers": identifiers,
        "authorizations": order.authorization_ids.iter().map(|id| urls.authorization(*id)).collect::<Vec<_>>(),
        "finalize": urls.finalize(order.id),
    });
    if !order.replaces.is_empty() {
        doc["replaces"] = json!(order.replaces);
    }
    if !order.profile.is_empty() {
        doc["profile"] = json!(order.profile);
    }
    if order.status == OrderStatus::Valid && !order.certificate_serial.is_empty() {
        doc["certificate"] = json!(urls.certificate(&order.certificate_serial));
    }
    if let Some(error) = &order.error {
        doc["error"] = problem_json(error, None);
    }
    doc
}

pub fn authorization(urls: &Urls, authz: &Authorization) -> Value {
    let mut doc = json!({
        "identifier": { "type": authz.identifier.kind.as_str(), "value": authz.identifier.value },
        "status": authz.status.as_str(),
        "expires": timestamp(authz.expires),
        "challenges": authz.challenges.iter().map(|c| challenge(urls, authz.id, c)).collect::<Vec<_>>(),
    });
    if authz.wildcard {
        doc["wildcard"] = json!(true);
    }
    doc
}

pub fn challenge(urls: &Urls, authz_id: i64, challenge: &Challenge) -> Value {
    let mut doc = json!({
        "type": challenge.kind.as_str(),
        "url": urls.challenge(authz_id, challenge.index),
        "status": challenge.status.as_str(),
        "token": challenge.token,
    });
    if challenge.status == ChallengeStatus::Valid && challenge.validated != 0 {
        doc["validated"] = json!(timestamp(challenge.validated));
    }
    if let Some(error) = &challenge.error {
        doc["error"] = problem_json(error, None);
    }
    if !challenge.validation_records.is_empty() {
        doc["validationRecord"] = challenge.validation_records.iter().map(validation_record).collect();
    }
    doc
}

fn validation_record(record: &ValidationRecord) -> Value {
    let mut doc = json!({ "hostname": record.hostname });
    let mut set = |key: &str, value: &str| {
        if !value.is_empty() {
            doc[key] = json!(value);
        }
    };
    set("port", &record.port);
    set("url", &record.url);
    set("addressUsed", &record.address_used);
    if !record.addresses_resolved.is_empty() {
        doc["addressesResolved"] = json!(record.addresses_resolved);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
