//! New orders (RFC 8555 §7.4): the profile and identifier checks, reuse of the account's unfinished order for the
//! same names, pausing and rate limits (with the renewal and replacement exemptions), and creation with the
//! account's valid authorizations reused. What the sa knows for all of it comes in one call (`GetNewOrderFacts`),
//! so that a new order costs two sa calls: that read and the creation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use quarry_core::clock::now;
use quarry_core::identifier::is_public_unicast;
use quarry_core::model::{Authorization, NewOrderFacts, Order};
use quarry_core::policy::IdentifierPolicy;
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem, SubProblem};
use quarry_proto::convert::{identifiers_from_pb, identifiers_to_pb};
use quarry_proto::ra::NewOrderRequest;
use quarry_proto::sa as sapb;

use crate::ValidationProfile;
use crate::authorizations::offered_challenges;
use crate::limits::Exemption;
use crate::registrar::Registrar;

/// An order for exactly the identifiers of a certificate issued this recently is a renewal (Boulder's 120 days).
const RENEWAL_WINDOW_SECS: i64 = 120 * 86_400;

/// Since when a certificate for exactly an order's identifiers makes the order a renewal.
pub(crate) fn renewal_since() -> i64 {
    now() - RENEWAL_WINDOW_SECS
}

/// A reused valid authorization must stay valid for an eighth of the order's lifetime, between one hour and one day
/// (Boulder's rule), so that the order can still be finalized.
fn reuse_margin(order_lifetime: i64) -> i64 {
    (order_lifetime / 8).clamp(3_600, 86_400)
}

impl Registrar {
    /// The order, new or reused, and the authorizations a new one was created with, as the sa recorded them (none
    /// for a reused order: its authorizations may be under validation, and the wfe reads them).
    pub(crate) async fn new_order(
        &self,
        req: NewOrderRequest,
        deadline: Option<Instant>,
    ) -> Result<(Order, Vec<Authorization>), Problem> {
        let inner = &self.inner;
        if req.not_before != 0 || req.not_after != 0 {
            return Err(Problem::malformed("NotBefore and NotAfter are not supported"));
        }
        let profile_name = if req.profile.is_empty() { inner.default_profile.clone() } else { req.profile.clone() };
        let profile = inner.profiles.get(&profile_name).ok_or_else(|| {
            let offered: Vec<&String> = inner.profiles.keys().collect();
            Problem::new(
                ErrorKind::InvalidProfile,
                format!("profile {profile_name:?} is not offered; choose one of {offered:?}"),
            )
        })?;
        let identifiers: BTreeSet<Identifier> =
            identifiers_from_pb(&req.identifiers)?.iter().map(Identifier::normalized).collect();
        let identifiers: Vec<Identifier> = identifiers.into_iter().collect();
        if identifiers.is_empty() {
            return Err(Problem::malformed("NewOrder request did not specify any identifiers"));
        }
        if identifiers.len() > profile.max_names {
            return Err(Problem::malformed(format!(
                "order cannot contain more than {} identifiers (profile {profile_name:?})",
                profile.max_names
            )));
        }
        check_identifiers(&identifiers, profile, &profile_name, inner.allow_non_public_ip, &inner.policy)?;

        // Everything the sa knows that this order depends on, in one read. A replacement order is always new, so
        // that the replaced certificate is linked to exactly this order: the sa looks for no reusable order then.
        let now = now();
        let question = sapb::NewOrderFactsRequest {
            account_id: req.account_id,
            identifiers: identifiers_to_pb(&identifiers),
            profile: profile_name.clone(),
            replacement: !req.replaces_serial.is_empty(),
            renewal_since: now - RENEWAL_WINDOW_SECS,
            valid_until: now + reuse_margin(profile.order_lifetime_secs),
        };
        let facts = self.new_order_facts(question, &identifiers, deadline).await?;
        if let Some(order) = facts.reusable_order {
            return Ok((order, Vec::new()));
        }

        let limited: Vec<Identifier> = identifiers.iter().map(Identifier::without_wildcard).collect();
        check_not_paused(req.account_id, &facts.paused)?;
        let exemption = if req.replacement_in_window && !req.replaces_serial.is_empty() {
            Exemption::Replacement
        } else if facts.renewal {
            Exemption::Renewal
        } else {
            Exemption::None
        };
        let spent = inner.limits.new_order(req.account_id, &limited, exemption).await?;
        let reusable = facts.valid_authorizations;
        let created = self.create_order(req, &identifiers, profile, profile_name, reusable, deadline).await;
        if created.is_err() {
            inner.limits.refund(&spent).await;
        }
        created
    }

    /// What the sa knows that a new order depends on, in one read; an sa that predates it (during a rolling update)
    /// is asked the reads it replaces, in the order the one read answers them.
    async fn new_order_facts(
        &self,
        question: sapb::NewOrderFactsRequest,
        identifiers: &[Identifier],
        deadline: Option<Instant>,
    ) -> Result<NewOrderFacts, Problem> {
        let sa = &self.inner.sa;
        if let Some(facts) = sa.get_new_order_facts(question.clone(), deadline).await? {
            return Ok(facts);
        }
        if !question.replacement {
            let reuse = sapb::GetOrderForNamesRequest {
                account_id: question.account_id,
                identifiers: question.identifiers.clone(),
                profile: question.profile.clone(),
            };
            match sa.get_order_for_names(reuse, deadline).await {
                Ok(order) => return Ok(NewOrderFacts { reusable_order: Some(order), ..NewOrderFacts::default() }),
                Err(problem) if problem.kind == ErrorKind::NotFound => {}
                Err(problem) => return Err(problem),
            }
        }
        let limited: Vec<Identifier> = identifiers.iter().map(Identifier::without_wildcard).collect();
        let paused = sapb::PausedIdentifiersRequest {
            account_id: question.account_id,
            identifiers: identifiers_to_pb(&limited),
        };
        let paused = identifiers_from_pb(&sa.check_identifiers_paused(paused, deadline).await?)?;
        let renewal = sapb::FqdnSetIssuanceTimesRequest {
            identifiers: question.identifiers.clone(),
            since: question.renewal_since,
        };
        let renewal = !sa.fqdn_set_issuance_times(renewal, deadline).await?.is_empty();
        let valid = sapb::GetValidAuthorizationsRequest {
            account_id: question.account_id,
            identifiers: question.identifiers,
            valid_until: question.valid_until,
            profile: question.profile,
        };
        let valid_authorizations = sa.get_valid_authorizations(valid, deadline).await?;
        Ok(NewOrderFacts { reusable_order: None, paused, renewal, valid_authorizations })
    }

    /// Whether a certificate for exactly `identifiers` was issued within the renewal window: such an order is a
    /// renewal, exempt from the new-order and per-domain limits.
    pub(crate) async fn is_renewal(
        &self,
        identifiers: &[Identifier],
        deadline: Option<Instant>,
    ) -> Result<bool, Problem> {
        let request =
            sapb::FqdnSetIssuanceTimesRequest { identifiers: identifiers_to_pb(identifiers), since: renewal_since() };
        Ok(!self.inner.sa.fqdn_set_issuance_times(request, deadline).await?.is_empty())
    }

    /// Creates the order and its new authorizations, reusing the account's valid ones (`valid`, as the sa found
    /// them for this order).
    async fn create_order(
        &self,
        req: NewOrderRequest,
        identifiers: &[Identifier],
        profile: &ValidationProfile,
        profile_name: String,
        valid: Vec<Authorization>,
        deadline: Option<Instant>,
    ) -> Result<(Order, Vec<Authorization>), Problem> {
        let inner = &self.inner;
        let now = now();
        let mut reusable: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for authz in valid {
            let value = if authz.wildcard { format!("*.{}", authz.identifier.value) } else { authz.identifier.value };
            reusable.insert(value, (authz.id, authz.expires));
        }
        let mut reused_ids = Vec::new();
        let mut new_authorizations = Vec::new();
        let mut expires = now + profile.order_lifetime_secs;
        let reuse_percent = inner.client_testing.authz_reuse_percent.unwrap_or(100);
        for identifier in identifiers {
            let reused = reusable.get(&identifier.value).filter(|_| quarry_core::testing::chance(reuse_percent));
            if let Some((id, authz_expires)) = reused {
                reused_ids.push(*id);
                expires = expires.min(*authz_expires);
                continue;
            }
            let types = offered_challenges(identifier, &inner.challenge_types);
            if types.is_empty() {
                return Err(Problem::new(
                    ErrorKind::UnsupportedIdentifier,
                    format!("no enabled challenge type can validate {}", identifier.value),
                ));
            }
            let types: Vec<String> = types.iter().map(|t| t.as_str().to_owned()).collect();
            let authz_expires = now + profile.pending_authorization_lifetime_secs;
            expires = expires.min(authz_expires);
            new_authorizations.push(sapb::NewAuthorization {
                identifier: Some(identifier.into()),
                challenge_types: types,
                token: random_token()?,
                expires: authz_expires,
            });
        }
        let create = sapb::NewOrderAndAuthorizationsRequest {
            account_id: req.account_id,
            identifiers: identifiers_to_pb(identifiers),
            expires,
            reused_authorization_ids: reused_ids,
            new_authorizations,
            profile: profile_name,
            replaces: req.replaces,
            replaces_serial: req.replaces_serial,
        };
        let (order, authorizations) = inner.sa.new_order_and_authorizations(create, deadline).await?;
        tracing::info!(
            target: "audit",
            event = "order-created",
            order_id = order.id,
            account_id = order.account_id,
            names = ?identifiers.iter().map(|i| &i.value).collect::<Vec<_>>(),
            "order created"
        );
        Ok((order, authorizations))
    }
}

/// Refuses an order naming an identifier the account is paused for (`paused`, as the sa found them), saying how to
/// get unpaused.
fn check_not_paused(account_id: i64, paused: &[Identifier]) -> Result<(), Problem> {
    if paused.is_empty() {
        return Ok(());
    }
    let paused: Vec<&str> = paused.iter().map(|i| i.value.as_str()).collect();
    Err(Problem::new(
        ErrorKind::RateLimited,
        format!(
            "account {account_id} is paused for {} after failing validation for it too many times in a row; fix the \
             client's validation setup, then ask the CA's operators to unpause the account \
             (quarry admin unpause --account {account_id})",
            paused.join(", ")
        ),
    ))
}

/// Identifier checks: one subproblem per offending identifier (RFC 8555 §6.7.1).
fn check_identifiers(
    identifiers: &[Identifier],
    profile: &ValidationProfile,
    profile_name: &str,
    allow_non_public_ip: bool,
    policy: &IdentifierPolicy,
) -> Result<(), Problem> {
    let mut subproblems = Vec::new();
    for identifier in identifiers {
        let problem = if !profile.identifier_types.contains(&identifier.kind) {
            Some(Problem::new(
                ErrorKind::RejectedIdentifier,
                format!("profile {profile_name:?} does not permit {} identifiers", identifier.kind.as_str()),
            ))
        } else {
            identifier.check_well_formed().and_then(|()| policy.check(identifier)).err().or_else(|| {
                match identifier.value.parse() {
                    Ok(ip)
                        if identifier.kind == IdentifierType::Ip && !allow_non_public_ip && !is_public_unicast(ip) =>
                    {
                        Some(Problem::new(
                            ErrorKind::RejectedIdentifier,
                            format!("{ip} is not a public unicast address"),
                        ))
                    }
                    _ => None,
                }
            })
        };
        if let Some(problem) = problem {
            subproblems.push(SubProblem {
                kind: problem.kind,
                detail: problem.detail,
                identifier: Some(identifier.clone()),
            });
        }
    }
    Problem::from_identifier_subproblems(subproblems).map_or(Ok(()), Err)
}

/// 32 random bytes, base64url: a challenge token (RFC 8555 §8.1 asks for at least 128 bits).
fn random_token() -> Result<String, Problem> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Problem::internal("random number generator failed"))?;
    Ok(quarry_jose::b64_encode(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_problems_name_each_identifier() {
        let classic = ValidationProfile::classic();
        let ids =
            [Identifier::dns("ok.example.org"), Identifier::dns("bad..example.org"), Identifier::dns("-x.example.org")];
        let problem = check_identifiers(&ids, &classic, "classic", false, &IdentifierPolicy::default()).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::RejectedIdentifier);
        assert_eq!(problem.subproblems.len(), 2);
        assert_eq!(problem.subproblems[0].identifier.as_ref().unwrap().value, "bad..example.org");
    }

    #[test]
    fn ip_identifiers_follow_the_profile_and_the_address_policy() {
        let public = Identifier { kind: IdentifierType::Ip, value: "64.112.117.1".into() };
        let loopback = Identifier { kind: IdentifierType::Ip, value: "127.0.0.1".into() };
        let classic = ValidationProfile::classic();
        let problem =
            check_identifiers(std::slice::from_ref(&public), &classic, "classic", false, &IdentifierPolicy::default())
                .unwrap_err();
        assert_eq!(problem.kind, ErrorKind::RejectedIdentifier);
        assert!(problem.detail.contains("does not permit ip identifiers"), "{}", problem.detail);
        let shortlived =
            ValidationProfile { identifier_types: vec![IdentifierType::Dns, IdentifierType::Ip], ..classic };
        assert!(
            check_identifiers(
                std::slice::from_ref(&public),
                &shortlived,
                "shortlived",
                false,
                &IdentifierPolicy::default()
            )
            .is_ok()
        );
        let problem = check_identifiers(
            std::slice::from_ref(&loopback),
            &shortlived,
            "shortlived",
            false,
            &IdentifierPolicy::default(),
        )
        .unwrap_err();
        assert!(problem.detail.contains("not a public unicast address"), "{}", problem.detail);
        assert!(check_identifiers(&[loopback], &shortlived, "shortlived", true, &IdentifierPolicy::default()).is_ok());
    }

    #[test]
    fn reuse_margin_is_an_eighth_of_the_order_lifetime_within_bounds() {
        assert_eq!(reuse_margin(7 * 86_400), 75_600);
        assert_eq!(reuse_margin(14 * 86_400), 86_400);
        assert_eq!(reuse_margin(8 * 3_600), 3_600);
        assert_eq!(reuse_margin(24 * 3_600), 3 * 3_600);
    }
}
