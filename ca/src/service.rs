//! The `quarry.ca.v1.CertificateAuthority` gRPC service: reserve a random serial in the sa, sign, store the
//! certificate in the sa, answer with it and its chain.
//!
//! Which names may be certified was decided by the ra; the ca still refuses a CSR whose signature or key is bad,
//! since it is the last component before a signature exists.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use quarry_core::config::ConfigError;
use quarry_core::csr::{CsrKey, ParsedCsr, parse_csr};
use quarry_core::grpc::{ClientAllowlist, incoming_deadline, request_with_deadline};
use quarry_core::{ErrorKind, Identifier, Problem};
use quarry_proto::ca::certificate_authority_server::{CertificateAuthority, CertificateAuthorityServer};
use quarry_proto::ca::{IssueCertificateRequest, IssueCertificateResponse};
use quarry_proto::sa::storage_authority_client::StorageAuthorityClient;
use quarry_proto::sa::{AddCertificateRequest, AddSerialRequest};
use time::{Duration, OffsetDateTime};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::issuance::{IssueRequest, Issuer, KeyAlgorithm, issue_certificate, issuer_id, random_serial};
use crate::{Config, Error};

/// How many random serials to try before giving up; a collision of 136-bit random values means a broken RNG,
/// so more than a couple of retries would only hide it.
const SERIAL_ATTEMPTS: usize = 3;

/// A profile with its settings checked and converted.
#[derive(Debug, Clone, Copy)]
struct Profile {
    validity: Duration,
    include_common_name: bool,
}

/// The service's state: the signing issuer, the profiles, and a client of the sa.
pub(crate) struct CaService {
    issuer: Arc<Issuer>,
    issuer_id: i64,
    issuer_url: String,
    crl_url_prefix: String,
    crl_shards: i64,
    serial_prefix: u8,
    profiles: BTreeMap<String, Profile>,
    default_profile: String,
    sa: StorageAuthorityClient<Channel>,
}

fn invalid(message: String) -> Error {
    Error::Config(ConfigError::Invalid(message))
}

impl CaService {
    /// Checks the configuration and loads the issuers; anything wrong is a start-up error.
    fn new(config: &Config, sa: Channel) -> Result<Self, Error> {
        if !(0x01..=0x7f).contains(&config.serial_prefix) {
            return Err(invalid(format!("serial_prefix {:#04x} is outside 0x01..=0x7f", config.serial_prefix)));
        }
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for issuer in &config.issuers {
            issuers.push(Issuer::from_pem_files(&issuer.cert, &issuer.key)?);
        }
        if issuers.is_empty() {
            return Err(invalid("issuers is empty: configure at least one [[issuers]] cert and key".into()));
        }
        let issuer = Arc::new(issuers.swap_remove(0));
        let signing = &config.issuers[0];
        for (field, url) in [("issuer_url", &signing.issuer_url), ("crl_url_prefix", &signing.crl_url_prefix)] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(format!("issuers[0].{field} {url:?} must be an http(s) URL")));
            }
        }
        if config.crl_shards < 1 {
            return Err(invalid(format!("crl_shards must be at least 1, not {}", config.crl_shards)));
        }

        let mut profiles = BTreeMap::new();
        for (name, profile) in &config.profiles {
            let validity = i64::try_from(profile.validity_secs)
                .ok()
                .filter(|secs| *secs > 0)
                .map(Duration::seconds)
                .ok_or_else(|| invalid(format!("profiles.{name}.validity_secs must be positive and fit an i64")))?;
            if OffsetDateTime::now_utc() + validity > issuer.not_after() {
                warn!(
                    profile = name,
                    issuer = issuer.subject(),
                    "issuer expires before a certificate of this profile would"
                );
            }
            profiles.insert(name.clone(), Profile { validity, include_common_name: profile.include_common_name });
        }
        if !profiles.contains_key(&config.default_profile) {
            return Err(invalid(format!("default_profile {:?} is not in profiles", config.default_profile)));
        }

        let issuer_id = issuer_id(&issuer);
        info!(
            issuer = issuer.subject(),
            issuer_id,
            key = %issuer.key_algorithm(),
            not_after = %issuer.not_after(),
            "loaded issuer"
        );
        Ok(Self {
            issuer,
            issuer_id,
            issuer_url: signing.issuer_url.clone(),
            crl_url_prefix: signing.crl_url_prefix.clone(),
            crl_shards: config.crl_shards,
            serial_prefix: config.serial_prefix,
            profiles,
            default_profile: config.default_profile.clone(),
            sa: StorageAuthorityClient::new(sa),
        })
    }

    async fn issue(
        &self,
        request: IssueCertificateRequest,
        deadline: Option<Instant>,
    ) -> Result<IssueCertificateResponse, Problem> {
        let profile_name = if request.profile.is_empty() { &self.default_profile } else { &request.profile };
        let profile = self.profiles.get(profile_name).ok_or_else(|| {
            Problem::new(ErrorKind::InvalidProfile, format!("unknown certificate profile {profile_name:?}"))
        })?;
        let csr = parse_csr(&request.csr).map_err(|e| Problem::new(ErrorKind::BadCsr, e.to_string()))?;
        if let CsrKey::Other(algorithm) = &csr.key {
            return Err(Problem::new(ErrorKind::BadCsr, format!("csr public key type {algorithm} is not supported")));
        }
        let (dns_names, ip_addresses) = certificate_names(&csr);
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(Problem::new(ErrorKind::BadCsr, "csr names no identifier"));
        }
        // The ra matched these names to a validated order; this only stops the ca from ever signing a name that no
        // order could have held, should a caller skip that check.
        for name in &dns_names {
            Identifier::dns(name.clone()).check_well_formed().map_err(|p| Problem::new(ErrorKind::BadCsr, p.detail))?;
        }

        let now = OffsetDateTime::now_utc();
        let mut issue_request = IssueRequest {
            csr,
            dns_names,
            ip_addresses,
            serial: Vec::new(),
            not_before: now,
            validity: profile.validity,
            include_common_name: profile.include_common_name,
            crl_url: None,
            issuer_url: Some(self.issuer_url.clone()),
        };
        // Checked before a serial is reserved, so that a misconfiguration does not fill the serials table.
        let (_, not_after) = issue_request.validity_window().map_err(|e| internal("validity window", &e))?;
        if not_after > self.issuer.not_after() {
            error!(profile = profile_name, issuer_not_after = %self.issuer.not_after(), %not_after, "issuer expires too soon");
            return Err(Problem::internal("certificate issuance is currently unavailable"));
        }

        let serial = self.reserve_serial(request.account_id, now, not_after, deadline).await?;
        let serial_hex = hex::encode(serial);
        issue_request.serial = serial.to_vec();
        // The shard is fixed now, in the certificate, so that the sa files its revocation under the same one.
        let shard = quarry_core::crl::shard(&serial_hex, self.crl_shards);
        issue_request.crl_url = Some(format!("{}{shard}.crl", self.crl_url_prefix));
        let der = self.sign(issue_request).await.inspect_err(|_| {
            warn!(serial = serial_hex, order_id = request.order_id, "serial reserved but no certificate signed");
        })?;

        let store = AddCertificateRequest {
            account_id: request.account_id,
            der: der.clone(),
            issued: now.unix_timestamp(),
            issuer_id: self.issuer_id,
        };
        if let Err(status) = self.sa.clone().add_certificate(request_with_deadline(store, deadline)).await {
            // The signed certificate exists only in this process now; the log line is its only trace.
            error!(serial = serial_hex, order_id = request.order_id, code = ?status.code(), "storing a signed certificate failed");
            return Err(Problem::from(status));
        }
        info!(
            serial = serial_hex,
            account_id = request.account_id,
            order_id = request.order_id,
            profile = profile_name,
            "issued certificate"
        );
        Ok(IssueCertificateResponse { der, chain: vec![self.issuer.certificate_der().to_vec()], serial: serial_hex })
    }

    /// Draws random serials until the sa accepts one as new.
    async fn reserve_serial(
        &self,
        account_id: i64,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
        deadline: Option<Instant>,
    ) -> Result<[u8; crate::issuance::SERIAL_LEN], Problem> {
        for attempt in 1..=SERIAL_ATTEMPTS {
            let serial = random_serial(self.serial_prefix).map_err(|e| internal("serial generation", &e))?;
            let reservation = AddSerialRequest {
                account_id,
                serial: hex::encode(serial),
                created: now.unix_timestamp(),
                expires: not_after.unix_timestamp(),
            };
            match self.sa.clone().add_serial(request_with_deadline(reservation, deadline)).await {
                Ok(_) => return Ok(serial),
                Err(status) => {
                    let problem = Problem::from(status);
                    if problem.kind != ErrorKind::Duplicate {
                        return Err(problem);
                    }
                    warn!(attempt, serial = hex::encode(serial), "random serial already taken");
                }
            }
        }
        error!(attempts = SERIAL_ATTEMPTS, "every random serial was already taken");
        Err(Problem::internal("could not reserve a serial"))
    }

    /// Signs on a blocking thread when the issuer key is RSA (milliseconds of CPU), inline otherwise (microseconds).
    async fn sign(&self, request: IssueRequest) -> Result<Vec<u8>, Problem> {
        let result = if self.issuer.key_algorithm() == KeyAlgorithm::Rsa {
            let issuer = Arc::clone(&self.issuer);
            tokio::task::spawn_blocking(move || issue_certificate(&issuer, &request))
                .await
                .map_err(|e| internal("signing task", &e))?
        } else {
            issue_certificate(&self.issuer, &request)
        };
        result.map_err(|e| match e {
            // Our own descriptions of what in the CSR cannot be certified: safe and useful to the subscriber.
            Error::Request(_) | Error::UnsupportedKey(_) => Problem::new(ErrorKind::BadCsr, e.to_string()),
            other => internal("signing", &other),
        })
    }
}

/// Logs an internal failure in full and returns a problem that reveals nothing of it.
fn internal(stage: &str, error: &dyn std::error::Error) -> Problem {
    error!(stage, error = %error, "issuance failed");
    Problem::internal("certificate issuance failed")
}

/// The certificate's names: the commonName first (so it stays the certificate's commonName), then the SAN names.
/// A commonName holding an IP address is certified as an IP address, never as a DNS name.
fn certificate_names(csr: &ParsedCsr) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns_names = Vec::with_capacity(csr.dns_names.len() + 1);
    let mut ip_addresses = csr.ip_addresses.clone();
    if let Some(common_name) = &csr.common_name {
        match common_name.parse::<IpAddr>() {
            Ok(ip) if !ip_addresses.contains(&ip) => ip_addresses.insert(0, ip),
            Ok(_) => {}
            Err(_) => dns_names.push(common_name.clone()),
        }
    }
    for name in &csr.dns_names {
        if !dns_names.contains(name) {
            dns_names.push(name.clone());
        }
    }
    (dns_names, ip_addresses)
}

#[tonic::async_trait]
impl CertificateAuthority for CaService {
    async fn issue_certificate(
        &self,
        request: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let deadline = incoming_deadline(&request);
        self.issue(request.into_inner(), deadline).await.map(Response::new).map_err(Status::from)
    }
}

pub(crate) async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let name = <CertificateAuthorityServer<CaService> as tonic::server::NamedService>::NAME;
    let allowlist = ClientAllowlist::for_service(&config.grpc, name)?;
    let sa = quarry_core::grpc::channel(&config.sa, &config.tls)?;
    let service = CaService::new(&config, sa)?;
    let routes = tonic::service::Routes::new(CertificateAuthorityServer::with_interceptor(service, allowlist));
    info!(addr = ?listener.local_addr().ok(), "ca listening");
    quarry_core::grpc::serve(listener, &config.tls, routes, &[name], shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(common_name: Option<&str>, dns: &[&str], ips: &[&str]) -> ParsedCsr {
        ParsedCsr {
            der: Vec::new(),
            spki_der: Vec::new(),
            common_name: common_name.map(str::to_owned),
            dns_names: dns.iter().map(|n| (*n).to_owned()).collect(),
            ip_addresses: ips.iter().map(|ip| ip.parse().expect("ip")).collect(),
            key: CsrKey::EcdsaP256,
        }
    }

    #[test]
    fn common_name_leads_the_names_and_ip_common_names_stay_ips() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let cases: [(ParsedCsr, Vec<&str>, Vec<IpAddr>); 5] = [
            (csr(None, &["a.example", "b.example"], &[]), vec!["a.example", "b.example"], vec![]),
            (csr(Some("b.example"), &["a.example", "b.example"], &[]), vec!["b.example", "a.example"], vec![]),
            (csr(Some("c.example"), &["a.example"], &[]), vec!["c.example", "a.example"], vec![]),
            (csr(Some("192.0.2.1"), &[], &["192.0.2.2"]), vec![], vec![ip("192.0.2.1"), ip("192.0.2.2")]),
            (csr(Some("192.0.2.2"), &["a.example"], &["192.0.2.2"]), vec!["a.example"], vec![ip("192.0.2.2")]),
        ];
        for (csr, dns, ips) in cases {
            let (got_dns, got_ips) = certificate_names(&csr);
            assert_eq!(got_dns, dns, "{csr:?}");
            assert_eq!(got_ips, ips, "{csr:?}");
        }
    }
}
