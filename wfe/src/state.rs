//! What every request handler shares: the gRPC clients, the nonce instances by prefix, the issuer chains and the
//! directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_core::grpc::GrpcError;
use quarry_core::lane::Lane;
use quarry_core::model::MAX_ORDER_PAGE;
use quarry_core::peer::Peer;
use quarry_core::{ErrorKind, Problem};
use quarry_proto::client::{NonceClient, PREFIX_LEN, RaClient, SaClient};
use serde_json::{Value, json};

use crate::accounts::AccountCache;
use crate::issued_certificates::IssuedCertificates;
use crate::nonce_stock::{NonceStock, Refill};
use crate::render::Urls;
use crate::shown_authorizations::ShownAuthorizations;
use crate::{Config, Error, ExternalAccountBindingConfig};

/// A health check answers within this, so that load balancers are not kept waiting.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// 128 bits: a shorter MAC key could be guessed.
const MIN_EAB_KEY_LEN: usize = 16;

/// The shortest nonce prefix key: shorter could be guessed.
const MIN_NONCE_PREFIX_KEY_LEN: usize = 16;

/// Nonces are minted this many at a time and handed out one per reply: asking the nonce service once per reply was
/// a sixth of the gRPC calls behind each certificate. (16 at a time still cost 0.38 calls per certificate; minting
/// one takes under a microsecond, so a batch unused within its shelf life wastes little.)
pub const NONCE_BATCH: u32 = 64;
/// A nonce kept at hand longer than this is dropped rather than handed out, so that after a nonce service restarts
/// (its earlier nonces no longer redeem) clients meet at most a few seconds of `badNonce`.
const NONCE_SHELF_LIFE: Duration = Duration::from_secs(10);
/// How long a nonce call may take: every reply carries a nonce, so a stuck nonce replica must not hold replies up.
const NONCE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Wfe {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Urls,
    ra: RaClient,
    sa: SaClient,
    nonces: NonceClient,
    /// Minted nonces not yet handed out.
    nonce_stock: NonceStock,
    chains: Vec<Vec<Vec<u8>>>,
    /// The subject key identifiers of the chains' issuers: what an ARI CertID may name.
    issuer_key_ids: Vec<Vec<u8>>,
    eab_required: bool,
    eab_reuse: bool,
    /// External account binding MAC keys by key identifier.
    eab_keys: BTreeMap<String, Vec<u8>>,
    directory: Value,
    request_timeout: Duration,
    finalize_timeout: Duration,
    retry_after: u64,
    authz_retry_after: u64,
    hold_processing: Duration,
    /// What the holds measured of validations and of issuances: their `Retry-After`.
    validation_time: crate::hold::WorkTime,
    issuance_time: crate::hold::WorkTime,
    orders_per_page: i64,
    accounts: AccountCache,
    shown_authorizations: ShownAuthorizations,
    issued_certificates: IssuedCertificates,
    provocations: crate::testing::Provocations,
}

/// The external account binding MAC keys, decoded and checked.
fn eab_keys(eab: &ExternalAccountBindingConfig) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    if eab.required && eab.keys.is_empty() {
        return Err(Error::Config("external_account_binding.required needs at least one key".into()));
    }
    let mut keys = BTreeMap::new();
    for (kid, key) in &eab.keys {
        let key = quarry_jose::b64_decode(key)
            .map_err(|_| Error::Config(format!("external_account_binding key {kid:?} is not base64url")))?;
        if key.len() < MIN_EAB_KEY_LEN {
            return Err(Error::Config(format!(
                "external_account_binding key {kid:?} is shorter than {MIN_EAB_KEY_LEN} bytes"
            )));
        }
        keys.insert(kid.clone(), key);
    }
    Ok(keys)
}

fn subject_key_id(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::*;
    let (_, cert) = parse_x509_certificate(der).ok()?;
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
        _ => None,
    })
}

fn load_chain(path: &std::path::Path) -> Result<Vec<Vec<u8>>, Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<Vec<u8>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.map(|c| c.map(|c| c.to_vec())).collect::<Result<_, _>>())
        .map_err(|e| Error::Config(format!("chain {}: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(Error::Config(format!("chain {} holds no certificate", path.display())));
    }
    Ok(chain)
}

impl Wfe {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let eab_keys = eab_keys(&config.external_account_binding)?;
        let base = config.base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(Error::Config(format!("base_url {base:?} must be an http(s) URL")));
        }
        if config.nonce_prefix_key.len() < MIN_NONCE_PREFIX_KEY_LEN {
            return Err(Error::Config(format!("nonce_prefix_key must be at least {MIN_NONCE_PREFIX_KEY_LEN} bytes")));
        }
        let orders_per_page = i64::from(config.orders_per_page);
        if !(1..=MAX_ORDER_PAGE).contains(&orders_per_page) {
            return Err(Error::Config(format!("orders_per_page must be 1 to {MAX_ORDER_PAGE}, not {orders_per_page}")));
        }
        let hold = config.hold_processing_ms;
        if hold > crate::hold::MAX_HOLD_MS || (hold > 0 && hold >= config.request_timeout_ms) {
            return Err(Error::Config(format!(
                "hold_processing_ms must be at most {} and under request_timeout_ms, not {}",
                crate::hold::MAX_HOLD_MS,
                hold
            )));
        }
        let lane = Lane::new(config.lane.as_ref()).map_err(GrpcError::from)?;
        let nonces =
            NonceClient::new(Peer::in_lane(&config.nonce, &config.tls, &lane)?, config.nonce_prefix_key.as_bytes());
        let urls = Urls { base };
        let mut meta = json!({});
        let m = &config.directory_meta;
        if let Some(tos) = &m.terms_of_service {
            meta["termsOfService"] = json!(tos);
        }
        if let Some(website) = &m.website {
            meta["website"] = json!(website);
        }
        if !m.caa_identities.is_empty() {
            meta["caaIdentities"] = json!(m.caa_identities);
        }
        if !m.profiles.is_empty() {
            meta["profiles"] = json!(m.profiles);
        }
        let eab = &config.external_account_binding;
        if eab.required {
            meta["externalAccountRequired"] = json!(true);
        }
        let directory = json!({
            "newNonce": format!("{}/acme/new-nonce", urls.base),
            "newAccount": format!("{}/acme/new-acct", urls.base),
            "newOrder": format!("{}/acme/new-order", urls.base),
            "revokeCert": format!("{}/acme/revoke-cert", urls.base),
            "keyChange": format!("{}/acme/key-change", urls.base),
            "renewalInfo": format!("{}/acme/renewal-info", urls.base),
            "meta": meta,
        });
        let chains: Vec<Vec<Vec<u8>>> = config.chains.iter().map(|p| load_chain(p)).collect::<Result<_, _>>()?;
        let mut issuer_key_ids = Vec::new();
        for (chain, path) in chains.iter().zip(&config.chains) {
            let key_id = subject_key_id(&chain[0]).ok_or_else(|| {
                Error::Config(format!("chain {}: the issuer has no subject key identifier", path.display()))
            })?;
            if !issuer_key_ids.contains(&key_id) {
                issuer_key_ids.push(key_id);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                ra: RaClient::new(Peer::in_lane(&config.ra, &config.tls, &lane)?),
                sa: SaClient::new(Peer::in_lane(&config.sa, &config.tls, &lane)?),
                nonces,
                nonce_stock: NonceStock::new(Refill {
                    batch: NONCE_BATCH as usize,
                    wait: NONCE_TIMEOUT,
                    shelf_life: NONCE_SHELF_LIFE,
                }),
                chains,
                issuer_key_ids,
                eab_required: eab.required,
                eab_reuse: eab.reuse,
                eab_keys,
                directory,
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                finalize_timeout: Duration::from_millis(config.finalize_timeout_ms),
                retry_after: config.retry_after_secs,
                authz_retry_after: config.authz_retry_after_secs.unwrap_or(config.retry_after_secs),
                hold_processing: Duration::from_millis(config.hold_processing_ms),
                validation_time: crate::hold::WorkTime::new(Duration::from_millis(config.hold_processing_ms)),
                issuance_time: crate::hold::WorkTime::new(Duration::from_millis(config.hold_processing_ms)),
                orders_per_page,
                accounts: AccountCache::new(&config.account_cache),
                shown_authorizations: ShownAuthorizations::new(&config.authorization_cache),
                issued_certificates: IssuedCertificates::new(&config.certificate_cache),
                provocations: crate::testing::Provocations::new(config.client_testing.clone()),
                urls,
            }),
        })
    }

    /// The client-testing knobs (all off outside quarry dev).
    pub(crate) fn provocations(&self) -> &crate::testing::Provocations {
        &self.inner.provocations
    }

    pub fn urls(&self) -> &Urls {
        &self.inner.urls
    }

    pub fn directory(&self) -> &Value {
        &self.inner.directory
    }

    /// The `Retry-After` of a processing order: what issuance measurably takes, at most `retry_after_secs`.
    pub fn retry_after(&self) -> u64 {
        self.inner.issuance_time.retry_after(self.inner.retry_after)
    }

    /// The `Retry-After` of an authorization or challenge being validated: what validation measurably takes, at
    /// most the configured value.
    pub fn authz_retry_after(&self) -> u64 {
        self.inner.validation_time.retry_after(self.inner.authz_retry_after)
    }

    /// What held polls measured of validations.
    pub(crate) fn validation_time(&self) -> &crate::hold::WorkTime {
        &self.inner.validation_time
    }

    /// What held polls measured of issuances.
    pub(crate) fn issuance_time(&self) -> &crate::hold::WorkTime {
        &self.inner.issuance_time
    }

    /// How long a poll of work under way may wait for it to settle (zero: not at all).
    pub fn hold_processing(&self) -> Duration {
        self.inner.hold_processing
    }

    /// How many order URLs a page of an account's orders list holds.
    pub fn orders_per_page(&self) -> i64 {
        self.inner.orders_per_page
    }

    pub fn ra(&self) -> &RaClient {
        &self.inner.ra
    }

    /// Whether some replica of the ra, of the sa's read-only service and of the nonce service answers its health
    /// check, each with why not.
    pub async fn peers_health(&self) -> [(&'static str, Result<(), String>); 3] {
        let deadline = Some(Instant::now() + HEALTH_TIMEOUT);
        let (ra, sa, nonce) = tokio::join!(
            self.inner.ra.peer().check_health("quarry.ra.v1.RegistrationAuthority", deadline),
            self.inner.sa.peer().check_health("quarry.sa.v1.StorageAuthorityReadOnly", deadline),
            self.inner.nonces.peer().check_health("quarry.nonce.v1.NonceService", deadline),
        );
        [("ra", ra), ("sa", sa), ("nonce", nonce)]
    }

    /// Accounts recently read from the sa.
    pub fn accounts(&self) -> &AccountCache {
        &self.inner.accounts
    }

    /// Authorizations recently created, shown or validated for their clients, for the requests that follow.
    pub fn shown_authorizations(&self) -> &ShownAuthorizations {
        &self.inner.shown_authorizations
    }

    /// Certificates recently issued by this wfe's finalize answers, for their downloads.
    pub fn issued_certificates(&self) -> &IssuedCertificates {
        &self.inner.issued_certificates
    }

    pub fn sa(&self) -> &SaClient {
        &self.inner.sa
    }

    /// The deadline of a request starting now.
    pub fn deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.inner.request_timeout)
    }

    /// A finalization's deadline: issuance takes longer than any other request.
    pub fn finalize_deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.inner.finalize_timeout)
    }

    /// A fresh nonce: one at hand, else one of a new batch from a nonce replica (another one when the first
    /// fails); `unavailable` when none answers.
    pub async fn new_nonce(&self) -> Result<String, Problem> {
        let fetch = || {
            let wfe = self.clone();
            async move {
                wfe.inner.nonces.nonce_batch(NONCE_BATCH, wfe.nonce_deadline()).await.map_err(|problem| {
                    tracing::warn!(%problem, "no nonce replica answered");
                    Problem::new(ErrorKind::Unavailable, "no anti-replay nonce can be issued now; try again shortly")
                })
            }
        };
        self.inner.nonce_stock.take(fetch).await
    }

    /// Nonce calls get a short deadline of their own: every reply waits on one.
    fn nonce_deadline(&self) -> Option<Instant> {
        Some(Instant::now() + NONCE_TIMEOUT.min(self.inner.request_timeout))
    }

    /// Redeems a nonce at the replica that minted it. A nonce no known replica minted (a replica since gone), a
    /// replay, or one whose replica cannot be asked is not valid: the client gets `badNonce` and retries with a
    /// fresh nonce, as RFC 8555 §6.5 has it.
    pub async fn redeem_nonce(&self, nonce: &str) -> bool {
        let prefix = nonce.get(..PREFIX_LEN).unwrap_or_default();
        match self.inner.nonces.redeem(nonce, self.nonce_deadline()).await {
            Ok(true) => true,
            Ok(false) => {
                // A replay, or a nonce of a replica that has restarted since (its earlier nonces no longer redeem,
                // and those at hand would meet the same fate): a fresh batch costs one call.
                self.forget_nonces_of(prefix);
                false
            }
            Err(problem) => {
                tracing::warn!(%problem, "the nonce's replica could not redeem it");
                self.forget_nonces_of(prefix);
                false
            }
        }
    }

    /// Drops the nonces at hand that the instance with `prefix` minted.
    fn forget_nonces_of(&self, prefix: &str) {
        self.inner.nonce_stock.forget(prefix);
    }

    /// Whether new accounts need an external account binding.
    pub fn eab_required(&self) -> bool {
        self.inner.eab_required
    }

    /// Whether one external account binding key may bind several accounts.
    pub fn eab_reuse(&self) -> bool {
        self.inner.eab_reuse
    }

    /// The MAC key of the external account `kid`.
    pub fn eab_key(&self, kid: &str) -> Option<&[u8]> {
        self.inner.eab_keys.get(kid).map(Vec::as_slice)
    }

    pub fn issuer_key_ids(&self) -> &[Vec<u8>] {
        &self.inner.issuer_key_ids
    }

    /// Every configured chain whose first certificate issued `leaf`, in configuration order: the first is the
    /// default, the others are alternates (RFC 8555 §7.4.2).
    pub fn chains_for(&self, leaf: &[u8]) -> Vec<&[Vec<u8>]> {
        use x509_parser::prelude::*;
        let Ok((_, leaf)) = parse_x509_certificate(leaf) else { return Vec::new() };
        self.inner
            .chains
            .iter()
            .filter(|chain| {
                chain
                    .first()
                    .and_then(|issuer| parse_x509_certificate(issuer).ok())
                    .is_some_and(|(_, issuer)| issuer.subject().as_raw() == leaf.issuer().as_raw())
            })
            .map(Vec::as_slice)
            .collect()
    }
}
