//! Signing one CRL shard: the entries the crl-updater read from the sa, under the issuer that signed their
//! certificates, with the issuing distribution point the certificates name.
//!
//! As with certificates, rcgen builds the TBSCertList with a throwaway key and the issuer's signer signs exactly
//! those bytes; the result is verified with the issuer's public key before it leaves.

use rcgen::{
    CertificateRevocationListParams, CrlDistributionPoint, CrlIssuingDistributionPoint, CrlScope, KeyIdMethod,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::Error;
use crate::issuance::Issuer;

/// The Baseline Requirements' longest CRL validity (§4.9.7): nextUpdate at most ten days after thisUpdate.
pub const MAX_CRL_VALIDITY: Duration = Duration::days(10);

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Big-endian, as in the certificate.
    pub serial: Vec<u8>,
    pub revoked_at: OffsetDateTime,
    /// RFC 5280 CRLReason code.
    pub reason: i64,
}

/// One shard's CRL to sign.
#[derive(Debug, Clone)]
pub struct CrlRequest {
    pub this_update: OffsetDateTime,
    pub validity: Duration,
    /// The shard's URL, as the certificates' CRL distribution point names it.
    pub url: String,
    pub entries: Vec<CrlEntry>,
}

fn reason(code: i64) -> Result<Option<RevocationReason>, Error> {
    // unspecified (0) is expressed by leaving the reasonCode out (BR §7.2.2).
    Ok(match code {
        0 => None,
        1 => Some(RevocationReason::KeyCompromise),
        3 => Some(RevocationReason::AffiliationChanged),
        4 => Some(RevocationReason::Superseded),
        5 => Some(RevocationReason::CessationOfOperation),
        9 => Some(RevocationReason::PrivilegeWithdrawn),
        other => return Err(Error::Request(format!("CRL reason code {other} is not allowed in a subscriber CRL"))),
    })
}

/// Signs the CRL of `request` with `issuer`.
pub fn sign_crl(issuer: &Issuer, request: &CrlRequest) -> Result<Vec<u8>, Error> {
    if request.validity <= Duration::ZERO || request.validity > MAX_CRL_VALIDITY {
        return Err(Error::Request(format!("CRL validity {} is not within (0, 10 days]", request.validity)));
    }
    let this_update =
        request.this_update.replace_nanosecond(0).map_err(|_| Error::Request("thisUpdate is out of range".into()))?;
    let mut serials: Vec<&[u8]> = request.entries.iter().map(|e| e.serial.as_slice()).collect();
    serials.sort_unstable();
    if serials.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(Error::Request("a serial appears twice in the CRL".into()));
    }
    let mut revoked_certs = Vec::with_capacity(request.entries.len());
    for entry in &request.entries {
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&entry.serial),
            revocation_time: entry.revoked_at.replace_nanosecond(0).unwrap_or(entry.revoked_at),
            reason_code: reason(entry.reason)?,
            invalidity_date: None,
        });
    }
    // Unique and increasing across updates: the update's time in nanoseconds, as Boulder numbers its CRLs.
    let number = request.this_update.unix_timestamp_nanos();
    let number_bytes = u128::try_from(number).map_err(|_| Error::Request("thisUpdate precedes 1970".into()))?;
    let params = CertificateRevocationListParams {
        this_update,
        next_update: this_update + request.validity,
        crl_number: SerialNumber::from_slice(&quarry_core::der::unsigned_integer_content(&number_bytes.to_be_bytes())),
        issuing_distribution_point: Some(CrlIssuingDistributionPoint {
            distribution_point: CrlDistributionPoint { uris: vec![request.url.clone()] },
            scope: Some(CrlScope::UserCertsOnly),
        }),
        revoked_certs,
        key_identifier_method: KeyIdMethod::PreSpecified(issuer.key_id().to_vec()),
    };
    let unsigned = params.signed_by(issuer.lint_signer())?;
    let parts = quarry_core::der::split_signed(unsigned.der()).map_err(|e| Error::SelfCheck(format!("CRL: {e}")))?;
    let der = issuer.sign_message(parts.tbs, parts.signature_algorithm)?;

    let (rest, crl) =
        CertificateRevocationList::from_der(&der).map_err(|e| Error::SelfCheck(format!("signed CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::SelfCheck("trailing data after the CRL".into()));
    }
    let (_, issuer_cert) = x509_parser::certificate::X509Certificate::from_der(issuer.certificate_der())
        .map_err(|e| Error::SelfCheck(format!("issuer certificate: {e}")))?;
    crl.verify_signature(issuer_cert.public_key())
        .map_err(|_| Error::SelfCheck("the CRL's signature does not verify with the issuer's key".into()))?;
    if crl.issuer().as_raw() != issuer.subject_der() || crl.iter_revoked_certificates().count() != request.entries.len()
    {
        return Err(Error::SelfCheck("the CRL does not name its issuer or lost entries".into()));
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use x509_parser::revocation_list::CertificateRevocationList;

    use super::*;
    use quarry_ceremony::ensure_dev_pki;

    fn issuer() -> (tempfile::TempDir, Issuer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = ensure_dev_pki(dir.path(), &[]).expect("dev pki");
        let issuer = Issuer::from_pem_files(&pki.intermediate_pem, &pki.intermediate_key).expect("issuer");
        (dir, issuer)
    }

    fn entry(serial: u8, reason: i64) -> CrlEntry {
        CrlEntry { serial: vec![0x01, serial, 0x02], revoked_at: OffsetDateTime::now_utc(), reason }
    }

    fn request(entries: Vec<CrlEntry>) -> CrlRequest {
        CrlRequest {
            this_update: OffsetDateTime::now_utc(),
            validity: Duration::days(9),
            url: "http://c.quarry.example.com/e1/3.crl".into(),
            entries,
        }
    }

    #[test]
    fn signs_a_verifiable_shard_with_its_entries_and_distribution_point() {
        let (_dir, issuer) = issuer();
        let der = sign_crl(&issuer, &request(vec![entry(1, 1), entry(2, 0), entry(3, 5)])).expect("signed");
        let (_, crl) = CertificateRevocationList::from_der(&der).expect("parses");
        let serials: Vec<Vec<u8>> = crl.iter_revoked_certificates().map(|r| r.raw_serial().to_vec()).collect();
        assert_eq!(serials, [vec![1, 1, 2], vec![1, 2, 2], vec![1, 3, 2]]);
        let reasons: Vec<Option<u8>> =
            crl.iter_revoked_certificates().map(|r| r.reason_code().map(|(_, code)| code.0)).collect();
        assert_eq!(reasons, [Some(1), None, Some(5)], "unspecified is left out");
        let validity = crl.next_update().expect("nextUpdate").timestamp() - crl.last_update().timestamp();
        assert_eq!(validity, 9 * 86_400);
        let extensions: Vec<String> = crl.extensions().iter().map(|e| e.oid.to_id_string()).collect();
        assert_eq!(extensions, ["2.5.29.35", "2.5.29.20", "2.5.29.28"], "AKI, CRL number, IDP");
        let idp = crl.extensions().iter().find(|e| e.oid.to_id_string() == "2.5.29.28").expect("idp");
        assert!(idp.critical, "the issuing distribution point is critical");
        let url = b"http://c.quarry.example.com/e1/3.crl";
        assert!(idp.value.windows(url.len()).any(|w| w == url));
    }

    #[test]
    fn refuses_what_no_subscriber_crl_may_hold() {
        let (_dir, issuer) = issuer();
        let mut too_long = request(vec![]);
        too_long.validity = Duration::days(11);
        let cases = [
            ("too long", too_long),
            ("duplicate serial", request(vec![entry(1, 1), entry(1, 4)])),
            ("caCompromise", request(vec![entry(1, 2)])),
        ];
        for (label, request) in cases {
            assert!(matches!(sign_crl(&issuer, &request), Err(Error::Request(_))), "{label}");
        }
        sign_crl(&issuer, &request(vec![])).expect("an empty shard is a valid CRL");
    }
}
