//! What every request handler shares: the gRPC clients, the nonce instances by prefix, the issuer chains and the
//! directory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quarry_core::config::GrpcClientConfig;
use quarry_core::grpc::Channel;
use quarry_core::grpc::request_with_deadline;
use quarry_core::{ErrorKind, Problem};
use quarry_proto::nonce::nonce_service_client::NonceServiceClient;
use quarry_proto::nonce::{NonceBatchRequest, NonceMessage};
use quarry_proto::ra::registration_authority_client::RegistrationAuthorityClient;
use quarry_proto::sa::storage_authority_read_only_client::StorageAuthorityReadOnlyClient;
use serde_json::{Value, json};

use crate::accounts::AccountCache;
use crate::render::Urls;
use crate::{Config, Error, ExternalAccountBindingConfig};

/// A health check answers within this, so that load balancers are not kept waiting.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// 128 bits: a shorter MAC key could be guessed.
const MIN_EAB_KEY_LEN: usize = 16;

/// The nonce prefix length every instance uses.
const NONCE_PREFIX_LEN: usize = 8;

/// Nonces are minted this many at a time and handed out one per reply: asking the nonce service once per reply was
/// a sixth of the gRPC calls behind each certificate.
const NONCE_BATCH: u32 = 16;
/// A nonce kept at hand longer than this is dropped rather than handed out, so that after a nonce service restarts
/// (its earlier nonces no longer redeem) clients meet at most a few seconds of `badNonce`.
const NONCE_SHELF_LIFE: Duration = Duration::from_secs(10);
/// Concurrent refills can overfill; beyond this the extra nonces are dropped.
const MAX_NONCES_AT_HAND: usize = 4 * NONCE_BATCH as usize;

#[derive(Clone)]
pub struct Wfe {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Urls,
    ra: RegistrationAuthorityClient<Channel>,
    sa: StorageAuthorityReadOnlyClient<Channel>,
    /// The same channels, for health checks.
    ra_channel: Channel,
    sa_channel: Channel,
    nonces: Vec<(String, NonceServiceClient<Channel>)>,
    next_nonce_service: AtomicUsize,
    /// Minted nonces not yet handed out, oldest first, with when they were minted.
    nonces_at_hand: Mutex<VecDeque<(Instant, String)>>,
    chains: Vec<Vec<Vec<u8>>>,
    /// The subject key identifiers of the chains' issuers: what an ARI CertID may name.
    issuer_key_ids: Vec<Vec<u8>>,
    eab_required: bool,
    /// External account binding MAC keys by key identifier.
    eab_keys: BTreeMap<String, Vec<u8>>,
    directory: Value,
    request_timeout: Duration,
    retry_after: u64,
    accounts: AccountCache,
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
        if config.nonce_services.is_empty() {
            return Err(Error::Config("nonce_services must list at least one nonce service".into()));
        }
        let mut nonces = Vec::new();
        for service in &config.nonce_services {
            if service.prefix.len() != NONCE_PREFIX_LEN {
                return Err(Error::Config(format!(
                    "nonce prefix {:?} must be {NONCE_PREFIX_LEN} characters",
                    service.prefix
                )));
            }
            let client = GrpcClientConfig {
                address: service.address.clone(),
                server_name: service.server_name.clone(),
                timeout_ms: service.timeout_ms,
            };
            nonces.push((
                service.prefix.clone(),
                NonceServiceClient::new(quarry_core::grpc::channel(&client, &config.tls)?),
            ));
        }
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
        let ra_channel = quarry_core::grpc::channel(&config.ra, &config.tls)?;
        let sa_channel = quarry_core::grpc::channel(&config.sa, &config.tls)?;
        Ok(Self {
            inner: Arc::new(Inner {
                ra: RegistrationAuthorityClient::new(ra_channel.clone()),
                sa: StorageAuthorityReadOnlyClient::new(sa_channel.clone()),
                ra_channel,
                sa_channel,
                nonces,
                next_nonce_service: AtomicUsize::new(0),
                nonces_at_hand: Mutex::default(),
                chains,
                issuer_key_ids,
                eab_required: eab.required,
                eab_keys,
                directory,
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                retry_after: config.retry_after_secs,
                accounts: AccountCache::new(&config.account_cache),
                urls,
            }),
        })
    }

    pub fn urls(&self) -> &Urls {
        &self.inner.urls
    }

    pub fn directory(&self) -> &Value {
        &self.inner.directory
    }

    pub fn retry_after(&self) -> u64 {
        self.inner.retry_after
    }

    pub fn ra(&self) -> RegistrationAuthorityClient<Channel> {
        self.inner.ra.clone()
    }

    /// Whether the ra and the sa's read-only service answer their health checks, each with why not.
    pub async fn peers_health(&self) -> [(&'static str, Result<(), String>); 2] {
        use quarry_core::grpc::check_health;
        let deadline = Some(Instant::now() + HEALTH_TIMEOUT);
        let (ra, sa) = tokio::join!(
            check_health(self.inner.ra_channel.clone(), "quarry.ra.v1.RegistrationAuthority", deadline),
            check_health(self.inner.sa_channel.clone(), "quarry.sa.v1.StorageAuthorityReadOnly", deadline),
        );
        [("ra", ra), ("sa", sa)]
    }

    /// Accounts recently read from the sa.
    pub fn accounts(&self) -> &AccountCache {
        &self.inner.accounts
    }

    pub fn sa(&self) -> StorageAuthorityReadOnlyClient<Channel> {
        self.inner.sa.clone()
    }

    /// The deadline of a request starting now.
    pub fn deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.inner.request_timeout)
    }

    fn nonces_at_hand(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, String)>> {
        // Pushing and popping cannot leave the queue half-updated, so a poisoned lock still guards a sound queue.
        self.inner.nonces_at_hand.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh nonce: one at hand, else a new batch from the next instance in turn.
    pub async fn new_nonce(&self) -> Result<String, Problem> {
        {
            let mut at_hand = self.nonces_at_hand();
            while let Some((minted, nonce)) = at_hand.pop_front() {
                if minted.elapsed() < NONCE_SHELF_LIFE {
                    return Ok(nonce);
                }
            }
        }
        let services = &self.inner.nonces;
        let first = self.inner.next_nonce_service.fetch_add(1, Ordering::Relaxed);
        let mut last = Problem::new(ErrorKind::Unavailable, "no nonce service answered");
        // Try each instance once, so that one being down does not stop the wfe from handing out nonces.
        for offset in 0..services.len() {
            let (prefix, client) = &services[(first + offset) % services.len()];
            let request = request_with_deadline(NonceBatchRequest { count: NONCE_BATCH }, self.deadline());
            match client.clone().nonce_batch(request).await {
                Ok(reply) => {
                    let mut minted = reply.into_inner().nonces;
                    let Some(nonce) = minted.pop() else { continue };
                    let now = Instant::now();
                    let mut at_hand = self.nonces_at_hand();
                    let room = MAX_NONCES_AT_HAND.saturating_sub(at_hand.len());
                    at_hand.extend(minted.into_iter().take(room).map(|n| (now, n)));
                    return Ok(nonce);
                }
                Err(status) => {
                    self.forget_nonces_of(prefix);
                    last = status.into();
                }
            }
        }
        Err(last)
    }

    /// Redeems a nonce at the instance that minted it; an unknown prefix is refused without asking anyone.
    pub async fn redeem_nonce(&self, nonce: &str) -> Result<bool, Problem> {
        let Some(prefix) = nonce.get(..NONCE_PREFIX_LEN) else { return Ok(false) };
        let Some((_, client)) = self.inner.nonces.iter().find(|(p, _)| p == prefix) else { return Ok(false) };
        let reply = client
            .clone()
            .redeem(request_with_deadline(NonceMessage { nonce: nonce.to_owned() }, self.deadline()))
            .await
            .inspect_err(|_| self.forget_nonces_of(prefix))?;
        let valid = reply.into_inner().valid;
        if !valid {
            // A replay, or a nonce of an instance that has restarted since (its earlier nonces no longer redeem, and
            // those at hand would meet the same fate): a fresh batch costs one call.
            self.forget_nonces_of(prefix);
        }
        Ok(valid)
    }

    /// Drops the nonces at hand that the instance with `prefix` minted.
    fn forget_nonces_of(&self, prefix: &str) {
        self.nonces_at_hand().retain(|(_, kept)| !kept.starts_with(prefix));
    }

    /// Whether new accounts need an external account binding.
    pub fn eab_required(&self) -> bool {
        self.inner.eab_required
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
