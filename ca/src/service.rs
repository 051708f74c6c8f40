//! The `quarry.ca.v1.CertificateAuthority` gRPC service, in Boulder's order: choose an issuer, draw a random serial,
//! store the linted linting copy with the serial's reservation (one sa write), sign the precertificate, get SCTs
//! through the publisher, sign the final certificate, store it with its order, answer with it and its chain.
//!
//! Which names may be certified was decided by the ra; the ca still refuses a CSR whose signature or key is bad,
//! since it is the last component before a signature exists.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use quarry_core::config::ConfigError;
use quarry_core::csr::{ParsedCsr, parse_csr};
use quarry_core::grpc::{ClientAllowlist, incoming_deadline};
use quarry_core::{ErrorKind, Identifier, Problem};
use quarry_jose::Jwk;
use quarry_proto::ca::certificate_authority_server::{CertificateAuthority, CertificateAuthorityServer};
use quarry_proto::ca::{IssueCertificateForPrecertificateRequest, IssueCertificateRequest, IssueCertificateResponse};
use quarry_proto::client::{PublisherClient, SaClient};
use quarry_proto::sa::{AddCertificateRequest, AddSerialRequest};
use time::{Duration, OffsetDateTime};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing::{error, info, warn};

use crate::final_submissions::FinalSubmissions;
use crate::issuance::{
    CertProfile, IssueRequest, Issuer, KeyAlgorithm, Prepared, issuer_id, prepare_precertificate, random_serial,
    sign_final_certificate, sign_precertificate,
};
use crate::{Config, Error};

/// The full gRPC name of the service, the key of its allowlist in `grpc.services`.
pub(crate) const SERVICE_NAME: &str = quarry_proto::ca::certificate_authority_server::SERVICE_NAME;

/// How many random serials to try before giving up; a collision of 136-bit random values means a broken RNG,
/// so more than a couple of retries would only hide it.
const SERIAL_ATTEMPTS: usize = 3;

/// One loaded issuer with what the configuration says about it.
pub(crate) struct ConfiguredIssuer {
    pub(crate) issuer: Arc<Issuer>,
    pub(crate) id: i64,
    issuer_url: String,
    pub(crate) crl_url_prefix: String,
    active: bool,
    /// Empty: every profile.
    profiles: Vec<String>,
}

impl ConfiguredIssuer {
    fn serves(&self, profile: &str) -> bool {
        self.active && (self.profiles.is_empty() || self.profiles.iter().any(|p| p == profile))
    }

    fn is_rsa(&self) -> bool {
        self.issuer.key_algorithm() == KeyAlgorithm::Rsa
    }
}

/// The service's state: the issuers, the profiles, and clients of the sa and the publisher.
pub(crate) struct CaService {
    issuers: Arc<Vec<ConfiguredIssuer>>,
    crl_shards: i64,
    serial_prefix: u8,
    profiles: BTreeMap<String, CertProfile>,
    default_profile: String,
    sa: SaClient,
    finisher: Finisher,
    /// `[client_testing] issuer_key_type`: every certificate from an issuer of this type (quarry dev only).
    issuer_key_type: Option<crate::IssuerKeyType>,
}

/// What finishes an issuance once its precertificate is about to be signed: a task of its own, so that a caller
/// that goes away (its deadline passed, its process died) cannot stop a signed certificate from being stored.
#[derive(Clone)]
struct Finisher {
    issuers: Arc<Vec<ConfiguredIssuer>>,
    sa: SaClient,
    publisher: PublisherClient,
    final_submissions: FinalSubmissions,
}

/// Once signing begins, storing what is signed gets at least this long, whatever the caller's deadline.
const FINISH_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(30);

fn invalid(message: String) -> Error {
    Error::Config(ConfigError::Invalid(message))
}

fn load_issuers(config: &Config) -> Result<Vec<ConfiguredIssuer>, Error> {
    let mut issuers = Vec::with_capacity(config.issuers.len());
    for (index, issuer_config) in config.issuers.iter().enumerate() {
        for (field, url) in
            [("issuer_url", &issuer_config.issuer_url), ("crl_url_prefix", &issuer_config.crl_url_prefix)]
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(format!("issuers[{index}].{field} {url:?} must be an http(s) URL")));
            }
        }
        if let Some(unknown) = issuer_config.profiles.iter().find(|p| !config.profiles.contains_key(*p)) {
            return Err(invalid(format!("issuers[{index}].profiles names unknown profile {unknown:?}")));
        }
        let issuer = match (&issuer_config.key, &issuer_config.pkcs11) {
            (Some(key), None) => Issuer::from_pem_files(&issuer_config.cert, key)?,
            (None, Some(token)) => Issuer::from_token(&issuer_config.cert, token)?,
            _ => return Err(invalid(format!("issuers[{index}] needs exactly one of key and pkcs11"))),
        };
        let id = issuer_id(&issuer);
        if issuers.iter().any(|other: &ConfiguredIssuer| other.id == id) {
            return Err(invalid(format!("issuers[{index}] has the same subject as an earlier issuer")));
        }
        info!(
            issuer = issuer.subject(),
            issuer_id = id,
            key = %issuer.key_algorithm(),
            not_after = %issuer.not_after(),
            active = issuer_config.active,
            "loaded issuer"
        );
        issuers.push(ConfiguredIssuer {
            issuer: Arc::new(issuer),
            id,
            issuer_url: issuer_config.issuer_url.clone(),
            crl_url_prefix: issuer_config.crl_url_prefix.clone(),
            active: issuer_config.active,
            profiles: issuer_config.profiles.clone(),
        });
    }
    Ok(issuers)
}

impl CaService {
    /// Checks the configuration and loads the issuers; anything wrong is a start-up error.
    pub(crate) fn new(config: &Config, sa: SaClient, publisher: PublisherClient) -> Result<Self, Error> {
        if !(0x01..=0x7f).contains(&config.serial_prefix) {
            return Err(invalid(format!("serial_prefix {:#04x} is outside 0x01..=0x7f", config.serial_prefix)));
        }
        if config.crl_shards < 1 {
            return Err(invalid(format!("crl_shards must be at least 1, not {}", config.crl_shards)));
        }
        let issuers = Arc::new(load_issuers(config)?);

        let mut profiles = BTreeMap::new();
        for (name, profile) in &config.profiles {
            let validity = i64::try_from(profile.validity_secs)
                .ok()
                .filter(|secs| *secs > 0)
                .map(Duration::seconds)
                .ok_or_else(|| invalid(format!("profiles.{name}.validity_secs must be positive and fit an i64")))?;
            let serving: Vec<&ConfiguredIssuer> = issuers.iter().filter(|i| i.serves(name)).collect();
            if serving.is_empty() {
                return Err(invalid(format!("no active issuer serves profile {name:?}")));
            }
            for issuer in serving {
                if OffsetDateTime::now_utc() + validity > issuer.issuer.not_after() {
                    warn!(
                        profile = name,
                        issuer = issuer.issuer.subject(),
                        "issuer expires before a certificate of this profile would"
                    );
                }
            }
            profiles.insert(
                name.clone(),
                CertProfile {
                    validity,
                    include_common_name: profile.include_common_name,
                    key_encipherment: !profile.omit_key_encipherment,
                    client_auth: !profile.omit_client_auth,
                    subject_key_id: !profile.omit_subject_key_id,
                },
            );
        }
        if !profiles.contains_key(&config.default_profile) {
            return Err(invalid(format!("default_profile {:?} is not in profiles", config.default_profile)));
        }
        Ok(Self {
            finisher: Finisher {
                issuers: Arc::clone(&issuers),
                sa: sa.clone(),
                final_submissions: FinalSubmissions::new(Arc::new(publisher.clone())),
                publisher,
            },
            issuers,
            crl_shards: config.crl_shards,
            serial_prefix: config.serial_prefix,
            profiles,
            default_profile: config.default_profile.clone(),
            sa,
            issuer_key_type: config.client_testing.issuer_key_type,
        })
    }

    /// The loaded issuers, which the CRL service signs with too.
    pub(crate) fn issuers(&self) -> Arc<Vec<ConfiguredIssuer>> {
        Arc::clone(&self.issuers)
    }

    pub(crate) fn into_server(
        self,
        allowlist: ClientAllowlist,
    ) -> InterceptedService<CertificateAuthorityServer<Self>, ClientAllowlist> {
        CertificateAuthorityServer::with_interceptor(self, allowlist)
    }

    /// An active issuer serving `profile` that outlives `not_after`: of the key's kind (ECDSA or RSA) when there is
    /// one, else of the other kind; at random among equals, so that load and risk spread over the intermediates.
    fn choose_issuer(&self, profile: &str, key: &Jwk, not_after: OffsetDateTime) -> Option<&ConfiguredIssuer> {
        let eligible: Vec<&ConfiguredIssuer> =
            self.issuers.iter().filter(|i| i.serves(profile) && i.issuer.not_after() >= not_after).collect();
        let wants_rsa = match self.issuer_key_type {
            Some(kind) => kind == crate::IssuerKeyType::Rsa,
            None => matches!(key, Jwk::Rsa { .. }),
        };
        let same_kind: Vec<&ConfiguredIssuer> = eligible.iter().copied().filter(|i| i.is_rsa() == wants_rsa).collect();
        let pool = if same_kind.is_empty() { eligible } else { same_kind };
        let mut random = [0u8; 4];
        aws_lc_rs::rand::fill(&mut random).ok()?;
        let index = u32::from_be_bytes(random) as usize % pool.len().max(1);
        pool.get(index).copied()
    }

    async fn issue(
        &self,
        request: IssueCertificateRequest,
        deadline: Option<Instant>,
    ) -> Result<IssueCertificateResponse, Problem> {
        let profile_name = if request.profile.is_empty() { &self.default_profile } else { &request.profile };
        let profile = *self.profiles.get(profile_name).ok_or_else(|| {
            Problem::new(ErrorKind::InvalidProfile, format!("unknown certificate profile {profile_name:?}"))
        })?;
        let csr = parse_csr(&request.csr).map_err(|e| Problem::new(ErrorKind::BadCsr, e.to_string()))?;
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
            profile,
            crl_url: String::new(),
            issuer_url: String::new(),
        };
        // Checked before anything is signed or stored, so that a misconfiguration does not fill the serials table.
        let (_, not_after) = issue_request.validity_window().map_err(|e| internal("validity window", &e))?;
        let Some(chosen) = self.choose_issuer(profile_name, &issue_request.csr.key, not_after) else {
            error!(profile = profile_name, %not_after, "no active issuer serves this profile past the certificate's notAfter");
            return Err(Problem::internal("certificate issuance is currently unavailable"));
        };
        issue_request.issuer_url.clone_from(&chosen.issuer_url);

        // From here on the serial is revocable, whatever fails next.
        let (serial_hex, prepared) =
            self.store_precertificate(chosen, issue_request, &request, not_after, deadline).await?;
        quarry_core::fault::point("ca.after_precertificate_stored");
        let issued = Issued { account_id: request.account_id, order_id: request.order_id, serial: serial_hex, at: now };
        self.finish_detached(chosen, prepared, issued, profile_name, deadline).await
    }

    /// Runs [`Finisher::finish`] as a task of its own, with at least [`FINISH_AT_LEAST`] to complete.
    async fn finish_detached(
        &self,
        chosen: &ConfiguredIssuer,
        prepared: Prepared,
        issued: Issued,
        profile_name: &str,
        deadline: Option<Instant>,
    ) -> Result<IssueCertificateResponse, Problem> {
        let index = self.issuers.iter().position(|i| std::ptr::eq(i, chosen)).unwrap_or_default();
        let floor = Instant::now() + FINISH_AT_LEAST;
        let deadline = Some(deadline.map_or(floor, |deadline| deadline.max(floor)));
        let finishing = self.finisher.clone().finish(index, prepared, issued, profile_name.to_owned(), deadline);
        tokio::spawn(finishing.in_current_span()).await.map_err(|e| internal("finishing task", &e))?
    }

    /// Finishes an issuance a crash interrupted once its linting copy was stored: the same TBS is signed as the
    /// precertificate (its SCTs are over the TBS, so a second signature of it changes nothing a log or a client
    /// sees), then the final certificate. A final certificate stored already is the answer.
    async fn issue_for_precertificate(
        &self,
        request: IssueCertificateForPrecertificateRequest,
        deadline: Option<Instant>,
    ) -> Result<IssueCertificateResponse, Problem> {
        let serial = request.serial.to_ascii_lowercase();
        match self.sa.get_certificate(&serial, deadline).await {
            Ok(stored) => {
                let issuer = self.issuers.iter().find(|i| i.id == stored.issuer_id);
                let chain = issuer.map(|i| vec![i.issuer.certificate_der().to_vec()]).unwrap_or_default();
                // Its order is not looked at here: the ra records it.
                return Ok(IssueCertificateResponse { der: stored.der, chain, serial, order_finalized: false });
            }
            Err(problem) if problem.kind == ErrorKind::NotFound => {}
            Err(problem) => return Err(problem),
        }
        let linting_copy = self.sa.get_precertificate(&serial, deadline).await?;
        let Some(chosen) = self.issuers.iter().find(|i| i.id == linting_copy.issuer_id) else {
            error!(serial, issuer_id = linting_copy.issuer_id, "the precertificate's issuer is not loaded here");
            return Err(Problem::internal("certificate issuance is currently unavailable"));
        };
        let max_validity = self.profiles.values().map(|p| p.validity.whole_seconds()).max().unwrap_or_default();
        let der = linting_copy.der;
        let prepared =
            on_signing_thread(&chosen.issuer, move |issuer| Prepared::from_linting_copy(issuer, &der, max_validity))
                .await?;
        info!(serial, order_id = request.order_id, "finishing an interrupted issuance from its precertificate");
        let issued = Issued {
            account_id: linting_copy.account_id,
            order_id: request.order_id,
            serial,
            at: OffsetDateTime::from_unix_timestamp(linting_copy.issued).unwrap_or_else(|_| OffsetDateTime::now_utc()),
        };
        self.finish_detached(chosen, prepared, issued, "recovered", deadline).await
    }

    /// Draws a random serial, prepares the precertificate under it (its linting copy signed with the throwaway key
    /// and linted) and stores that copy in the sa, which reserves the serial for the order in the same write. A
    /// serial the sa has already is drawn again, with a new linting copy (the serial and its CRL shard are in it),
    /// at most [`SERIAL_ATTEMPTS`] times. Gives the serial (hex) and the precertificate to sign.
    async fn store_precertificate(
        &self,
        chosen: &ConfiguredIssuer,
        mut draft: IssueRequest,
        request: &IssueCertificateRequest,
        not_after: OffsetDateTime,
        deadline: Option<Instant>,
    ) -> Result<(String, Prepared), Problem> {
        for attempt in 1..=SERIAL_ATTEMPTS {
            let serial = random_serial(self.serial_prefix).map_err(|e| internal("serial generation", &e))?;
            let serial_hex = hex::encode(serial);
            draft.serial = serial.to_vec();
            // The shard is fixed now, in the certificate, so that the sa files its revocation under the same one.
            let shard = quarry_core::crl::shard(&serial_hex, self.crl_shards);
            draft.crl_url = format!("{}{shard}.crl", chosen.crl_url_prefix);
            let prepare = move |issuer: &Issuer| prepare_precertificate(issuer, &draft).map(|p| (p, draft));
            let (prepared, returned) = on_signing_thread(&chosen.issuer, prepare).await?;
            draft = returned;
            let linting_copy = AddCertificateRequest {
                account_id: request.account_id,
                der: prepared.linting_copy.clone(),
                issued: draft.not_before.unix_timestamp(),
                issuer_id: chosen.id,
                order_id: request.order_id,
                expires: not_after.unix_timestamp(),
                processing_by: request.processing_by.clone(),
            };
            match self.store_linting_copy(linting_copy, &serial_hex, deadline).await {
                Ok(()) => return Ok((serial_hex, prepared)),
                Err(problem) if problem.kind == ErrorKind::Duplicate => {
                    warn!(attempt, serial = serial_hex, "random serial already taken");
                }
                // Another finalization of the order got there first: nothing was stored, and nothing is signed.
                Err(problem) if problem.kind == ErrorKind::OrderNotReady => return Err(problem),
                Err(problem) => {
                    // Stored or not (an answer lost), the order's recovery finds out by the serial's reservation.
                    warn!(serial = serial_hex, order_id = request.order_id, %problem, "precertificate not stored");
                    return Err(problem);
                }
            }
        }
        error!(attempts = SERIAL_ATTEMPTS, "every random serial was already taken");
        Err(Problem::internal("could not reserve a serial"))
    }

    /// Stores a linting copy with its serial's reservation. An sa that predates reserving them together refuses the
    /// copy as never reserved: during a rolling update that one gets the reservation first, as it used to.
    async fn store_linting_copy(
        &self,
        copy: AddCertificateRequest,
        serial: &str,
        deadline: Option<Instant>,
    ) -> Result<(), Problem> {
        match self.sa.add_precertificate(copy.clone(), deadline).await {
            Err(problem) if problem.kind == ErrorKind::Malformed && problem.detail.ends_with("was never reserved") => {
                let reservation = AddSerialRequest {
                    account_id: copy.account_id,
                    order_id: copy.order_id,
                    serial: serial.to_owned(),
                    created: copy.issued,
                    expires: copy.expires,
                };
                self.sa.add_serial(reservation, deadline).await?;
                self.sa.add_precertificate(copy, deadline).await
            }
            stored => stored,
        }
    }
}

impl Finisher {
    /// Issuance from the stored linting copy on: signs the precertificate with issuer `index`, gets its SCTs, signs
    /// the final certificate and stores it.
    async fn finish(
        self,
        index: usize,
        prepared: Prepared,
        issued: Issued,
        profile_name: String,
        deadline: Option<Instant>,
    ) -> Result<IssueCertificateResponse, Problem> {
        let chosen = &self.issuers[index];
        let Issued { account_id, order_id, serial: serial_hex, at } = issued;
        let precertificate =
            on_signing_thread(&chosen.issuer, move |issuer| sign_precertificate(issuer, &prepared)).await?;

        let chain = vec![precertificate.clone(), chosen.issuer.certificate_der().to_vec()];
        let scts = match self.publisher.get_scts(chain, deadline).await {
            Ok(scts) => scts,
            Err(problem) => {
                error!(serial = serial_hex, order_id, %problem, "no SCTs for the precertificate");
                return Err(Problem::internal(
                    "could not obtain the Certificate Transparency SCTs the certificate needs",
                ));
            }
        };
        let der =
            on_signing_thread(&chosen.issuer, move |issuer| sign_final_certificate(issuer, &precertificate, &scts))
                .await?;
        // Before it is stored, the whole certificate: should this process die before the sa has it, the audit trail
        // still holds it (`quarry admin adopt-orphans` stores it from there, as Boulder's orphan finder does).
        info!(
            target: "audit",
            event = "final-signed",
            serial = serial_hex,
            order_id,
            account_id,
            issuer_id = chosen.id,
            issued = at.unix_timestamp(),
            der = %base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der),
            "final certificate signed"
        );
        quarry_core::fault::point("ca.after_final_signed");

        // Naming the order has the sa record the certificate as its order's in the same write.
        let store = AddCertificateRequest {
            account_id,
            der: der.clone(),
            issued: at.unix_timestamp(),
            issuer_id: chosen.id,
            order_id,
            expires: 0,
            processing_by: String::new(),
        };
        let order_finalized = match self.sa.add_certificate(store, deadline).await {
            Ok(order_finalized) => order_finalized,
            Err(problem) => {
                // The signed certificate exists only in this process now; the log line is its only trace.
                error!(serial = serial_hex, order_id, %problem, "storing a signed certificate failed");
                return Err(problem);
            }
        };
        info!(
            target: "audit",
            event = "certificate-signed",
            serial = serial_hex,
            account_id,
            order_id,
            profile = profile_name,
            issuer = chosen.issuer.subject(),
            "issued certificate"
        );
        metrics::counter!(
            "quarry_certificates_issued_total",
            "profile" => profile_name.to_owned(),
            "issuer" => chosen.issuer.subject().to_owned(),
        )
        .increment(1);
        // For the logs that take final certificates; nobody waits for it.
        self.final_submissions.submit(vec![der.clone(), chosen.issuer.certificate_der().to_vec()]);
        let chain = vec![chosen.issuer.certificate_der().to_vec()];
        Ok(IssueCertificateResponse { der, chain, serial: serial_hex, order_finalized })
    }
}

/// Runs a step that signs with `issuer` on a blocking thread when its signatures are slow (RSA, an HSM), inline
/// otherwise (an ECDSA file key signs in microseconds).
pub(crate) async fn on_signing_thread<T: Send + 'static>(
    issuer: &Arc<Issuer>,
    step: impl FnOnce(&Issuer) -> Result<T, Error> + Send + 'static,
) -> Result<T, Problem> {
    let result = if issuer.signs_slowly() {
        let issuer = Arc::clone(issuer);
        tokio::task::spawn_blocking(move || step(&issuer)).await.map_err(|e| internal("signing task", &e))?
    } else {
        step(issuer)
    };
    result.map_err(|e| match e {
        // Our own descriptions of what in the CSR cannot be certified: safe and useful to the subscriber.
        Error::Request(_) | Error::UnsupportedKey(_) => Problem::new(ErrorKind::BadCsr, e.to_string()),
        other => internal("signing", &other),
    })
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

    async fn issue_certificate_for_precertificate(
        &self,
        request: Request<IssueCertificateForPrecertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let deadline = incoming_deadline(&request);
        self.issue_for_precertificate(request.into_inner(), deadline).await.map(Response::new).map_err(Status::from)
    }
}

/// Who and what a certificate is issued for, and when.
struct Issued {
    account_id: i64,
    order_id: i64,
    serial: String,
    at: OffsetDateTime,
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
            key: quarry_jose::SigningKey::generate(quarry_jose::Algorithm::Es256).expect("a key").jwk(),
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
