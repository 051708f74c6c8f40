//! Revocation (RFC 8555 §7.6): by the account that holds the certificate, by another holding authorizations for
//! all its names, or by the certificate's own key, which also blocks the key for every certificate that has it.

use std::collections::BTreeSet;
use std::time::Instant;

use quarry_core::clock::now;
use quarry_core::{ErrorKind, Identifier, Problem};
use quarry_jose::Jwk;
use quarry_proto::convert::identifiers_to_pb;
use quarry_proto::ra::{RevokeCertByApplicantRequest, RevokeCertByKeyRequest};
use quarry_proto::sa as sapb;
use quarry_proto::sa::revoke_for_key_compromise_response::Outcome;

use crate::registrar::Registrar;

/// CRL reason codes a subscriber may ask for (RFC 5280 §5.3.1, as Let's Encrypt allows them).
const SUBSCRIBER_REASONS: &[i64] = &[0, 1, 4, 5];
const KEY_COMPROMISE: i64 = 1;
const CESSATION_OF_OPERATION: i64 = 5;

/// What the ra needs to know about a certificate being revoked.
struct RevocationTarget {
    serial: String,
    names: Vec<Identifier>,
    spki_hash: Vec<u8>,
}

impl RevocationTarget {
    fn parse(der: &[u8]) -> Result<Self, Problem> {
        use x509_parser::prelude::*;
        let (_, cert) =
            parse_x509_certificate(der).map_err(|_| Problem::malformed("the certificate does not parse"))?;
        Ok(Self {
            serial: cert.raw_serial_as_string().replace(':', ""),
            names: quarry_core::certificate::identifiers(&cert),
            spki_hash: Jwk::from_spki_der(cert.public_key().raw)
                .map_err(|e| Problem::malformed(format!("the certificate's public key: {e}")))?
                .key_hash()
                .to_vec(),
        })
    }
}

impl Registrar {
    /// The stored certificate with `der`'s serial, which must be exactly `der`: only certificates Quarry issued.
    async fn issued_certificate(
        &self,
        der: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(RevocationTarget, i64), Problem> {
        let target = RevocationTarget::parse(der)?;
        let stored = match self.inner.sa.get_certificate(&target.serial, deadline).await {
            Ok(stored) => stored,
            Err(problem) if problem.kind == ErrorKind::NotFound => {
                return Err(Problem::not_found("no such certificate was issued here"));
            }
            Err(problem) => return Err(problem),
        };
        if stored.der != der {
            return Err(Problem::not_found("no such certificate was issued here"));
        }
        Ok((target, stored.account_id))
    }

    async fn revoke(&self, serial: &str, reason: i64, deadline: Option<Instant>) -> Result<(), Problem> {
        let revoke = sapb::RevokeCertificateRequest { serial: serial.to_owned(), reason, date: now() };
        self.inner.sa.revoke_certificate(revoke, deadline).await?;
        tracing::info!(target: "audit", event = "certificate-revoked", serial, reason, "certificate revoked");
        Ok(())
    }

    pub(crate) async fn revoke_by_applicant(
        &self,
        req: RevokeCertByApplicantRequest,
        deadline: Option<Instant>,
    ) -> Result<(), Problem> {
        if !SUBSCRIBER_REASONS.contains(&req.reason) {
            return Err(Problem::new(
                ErrorKind::BadRevocationReason,
                format!("reason code {} is not allowed; use one of {SUBSCRIBER_REASONS:?}", req.reason),
            ));
        }
        let (target, owner) = self.issued_certificate(&req.der, deadline).await?;
        if owner == req.account_id {
            return self.revoke(&target.serial, req.reason, deadline).await;
        }
        // Another account may revoke only with valid authorizations for every name, and only as cessationOfOperation.
        let valid = sapb::GetValidAuthorizationsRequest {
            account_id: req.account_id,
            identifiers: identifiers_to_pb(&target.names),
            valid_until: now(),
            profile: String::new(),
        };
        let valid = self.inner.sa.get_valid_authorizations(valid, deadline).await?;
        let covered: BTreeSet<String> = valid
            .into_iter()
            .map(|a| if a.wildcard { format!("*.{}", a.identifier.value) } else { a.identifier.value })
            .collect();
        if target.names.is_empty() || !target.names.iter().all(|name| covered.contains(&name.value)) {
            return Err(Problem::unauthorized(
                "the account neither issued this certificate nor holds authorizations for all its names",
            ));
        }
        self.revoke(&target.serial, CESSATION_OF_OPERATION, deadline).await
    }

    pub(crate) async fn revoke_by_key(
        &self,
        req: RevokeCertByKeyRequest,
        deadline: Option<Instant>,
    ) -> Result<(), Problem> {
        let (target, _) = self.issued_certificate(&req.der, deadline).await?;
        // Revoked first, so that the bad-key revoker woken below cannot take this one and leave its requester an
        // `alreadyRevoked`; revoked already for another reason: the reason becomes keyCompromise (Boulder).
        let request = sapb::RevokeForKeyCompromiseRequest { serial: target.serial.clone(), date: now() };
        let revoked = self.inner.sa.revoke_for_key_compromise(request, deadline).await;
        // The key is blocked whatever the revocation's outcome, and every other certificate with it, whoever holds
        // it, is the bad-key revoker's to revoke.
        let block = sapb::AddBlockedKeyRequest {
            key_hash: target.spki_hash.clone(),
            source: "revocation".into(),
            comment: format!("key compromise reported for serial {}", target.serial),
        };
        self.inner.sa.add_blocked_key(block, deadline).await?;
        self.inner.bad_key_blocked.notify_one();
        match revoked? {
            Outcome::Already => Err(Problem::new(
                ErrorKind::AlreadyRevoked,
                format!("certificate {} is already revoked for key compromise", target.serial),
            )),
            outcome => {
                tracing::info!(
                    target: "audit",
                    event = "certificate-revoked",
                    serial = target.serial,
                    reason = KEY_COMPROMISE,
                    upgraded = outcome == Outcome::Upgraded,
                    "certificate revoked by its key"
                );
                Ok(())
            }
        }
    }
}
