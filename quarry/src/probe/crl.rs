//! The probe's `crl` step: the CRL a revoked certificate names (its CRL Distribution Points extension, where the ca
//! writes the certificate's shard URL) must be signed by the certificate's issuer and current, and, when the probe
//! is told to wait, must come to list the revoked serial — what a relying party needs from revocation.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use quarry_acme_client::AcmeClient;
use x509_parser::prelude::{DistributionPointName, FromDer, GeneralName, ParsedExtension, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// How often the CRL is fetched again while waiting for the serial.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Checks the CRL named by `leaf` (DER) against `issuer` (DER); with a non-zero `wait`, polls it until it lists the
/// leaf's serial, failing once `wait` has passed without it.
pub async fn check(http: &AcmeClient, leaf: &[u8], issuer: &[u8], wait: Duration) -> anyhow::Result<()> {
    let (_, certificate) = X509Certificate::from_der(leaf).context("the certificate does not parse")?;
    let url = distribution_point(&certificate)?;
    let serial = certificate.raw_serial();
    let deadline = Instant::now() + wait;
    loop {
        // A CRL that is there but wrong fails at once; one not (yet) served is tried again while there is time.
        let why_not = match fetch(http, &url).await {
            Ok(der) => {
                let revoked = verify(&der, issuer, SystemTime::now()).with_context(|| format!("the CRL at {url}"))?;
                if wait.is_zero() || revoked.iter().any(|listed| listed.as_slice() == serial) {
                    return Ok(());
                }
                format!("it lists {} serials, not this one", revoked.len())
            }
            Err(err) if wait.is_zero() => return Err(err),
            Err(err) => format!("{err:#}"),
        };
        let now = Instant::now();
        if now >= deadline {
            bail!("the CRL at {url} did not list serial {} within {wait:?}: {why_not}", hex::encode(serial));
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// The HTTP URL of the certificate's CRL Distribution Points extension.
fn distribution_point(certificate: &X509Certificate<'_>) -> anyhow::Result<String> {
    certificate
        .extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(points) => {
                points.iter().find_map(|point| match &point.distribution_point {
                    Some(DistributionPointName::FullName(names)) => names.iter().find_map(|name| match name {
                        GeneralName::URI(uri) if uri.starts_with("http://") || uri.starts_with("https://") => {
                            Some((*uri).to_owned())
                        }
                        _ => None,
                    }),
                    _ => None,
                })
            }
            _ => None,
        })
        .context("the certificate names no HTTP CRL distribution point")
}

async fn fetch(http: &AcmeClient, url: &str) -> anyhow::Result<Vec<u8>> {
    let response = super::plain_http::request(http, http::Method::GET, url, None, Vec::new()).await?;
    if response.status != 200 {
        bail!("GET {url} answered {}", response.status);
    }
    Ok(response.body)
}

/// Checks that `der` is a CRL of `issuer` (DER), signed by its key, with thisUpdate ≤ `now` < nextUpdate; returns
/// the serials it lists (the INTEGERs' content bytes, as certificates carry them).
fn verify(der: &[u8], issuer: &[u8], now: SystemTime) -> anyhow::Result<Vec<Vec<u8>>> {
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|e| anyhow!("does not parse: {e}"))?;
    if !rest.is_empty() {
        bail!("has trailing data");
    }
    let (_, issuer) = X509Certificate::from_der(issuer).context("the issuer certificate does not parse")?;
    if crl.issuer().as_raw() != issuer.subject().as_raw() {
        bail!("is issued by {}, not by the certificate's issuer {}", crl.issuer(), issuer.subject());
    }
    crl.verify_signature(issuer.public_key())
        .map_err(|_| anyhow!("is not signed by the key of {}", issuer.subject()))?;
    let now = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs() as i64);
    let this_update = crl.last_update();
    if this_update.timestamp() > now {
        bail!("has thisUpdate {this_update} in the future");
    }
    let next_update = crl.next_update().context("has no nextUpdate")?;
    if next_update.timestamp() <= now {
        bail!("is stale: its nextUpdate {next_update} has passed");
    }
    Ok(crl.iter_revoked_certificates().map(|revoked| revoked.raw_serial().to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use quarry_ca::crl::{CrlEntry, CrlRequest, sign_crl};
    use quarry_ca::issuance::Issuer;
    use time::OffsetDateTime;

    use super::*;

    /// The dev hierarchy's two intermediates, signed by one root: an issuer, and another that is not it.
    fn issuers() -> (tempfile::TempDir, Issuer, Issuer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = quarry_ceremony::ensure_dev_pki(dir.path(), &[]).expect("dev pki");
        let ecdsa = Issuer::from_pem_files(&pki.intermediate_pem, &pki.intermediate_key).expect("E1");
        let rsa = Issuer::from_pem_files(&pki.rsa_intermediate_pem, &pki.rsa_intermediate_key).expect("R1");
        (dir, ecdsa, rsa)
    }

    fn signed(issuer: &Issuer, this_update: OffsetDateTime, serials: &[&[u8]]) -> Vec<u8> {
        let entries = serials
            .iter()
            .map(|serial| CrlEntry { serial: serial.to_vec(), revoked_at: this_update, reason: 5 })
            .collect();
        let request = CrlRequest {
            this_update,
            validity: time::Duration::hours(1),
            url: "http://crl.example/1/0.crl".to_owned(),
            entries,
        };
        sign_crl(issuer, &request).expect("sign")
    }

    #[test]
    fn a_current_crl_of_the_issuer_passes_and_lists_its_serials() {
        let (_dir, issuer, _) = issuers();
        let now = OffsetDateTime::now_utc();
        let der = signed(&issuer, now, &[&[0x01, 0x02], &[0x7f]]);
        let serials = verify(&der, issuer.certificate_der(), SystemTime::now()).expect("passes");
        assert_eq!(serials, vec![vec![0x01, 0x02], vec![0x7f]]);
    }

    #[test]
    fn another_issuers_crl_a_stale_crl_and_a_future_crl_fail() {
        let (_dir, issuer, other) = issuers();
        let now = OffsetDateTime::now_utc();
        let err = verify(&signed(&other, now, &[]), issuer.certificate_der(), SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("not by the certificate's issuer"), "{err}");

        let der = signed(&issuer, now, &[]);
        let later = SystemTime::now() + Duration::from_secs(2 * 3600);
        let err = verify(&der, issuer.certificate_der(), later).unwrap_err();
        assert!(err.to_string().contains("stale"), "{err}");
        let earlier = SystemTime::now() - Duration::from_secs(600);
        let err = verify(&der, issuer.certificate_der(), earlier).unwrap_err();
        assert!(err.to_string().contains("in the future"), "{err}");

        let mut tampered = der.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let err = verify(&tampered, issuer.certificate_der(), SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("not signed"), "{err}");
    }
}
