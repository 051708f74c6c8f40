//! A Certificate Transparency log that checks what it is sent and answers with real SCTs, for tests and the dev
//! stack: it keeps no Merkle tree, but every SCT it returns is signed with its ECDSA P-256 key over exactly the entry
//! RFC 6962 defines, so the publisher and any TLS client can verify it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use quarry_core::ct::{self, LogEntry, LogKey};
use rcgen::{KeyPair, PublicKeyData, SigningKey};
use serde::Deserialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// What a log was sent, for assertions.
#[derive(Debug, Default)]
struct Submissions {
    precertificates: Vec<Vec<u8>>,
    certificates: Vec<Vec<u8>>,
    failing: bool,
    delay: std::time::Duration,
}

/// A fake CT log; clones share the key and the record of submissions.
#[derive(Clone)]
pub struct FakeCtLog {
    key: Arc<KeyPair>,
    submissions: Arc<Mutex<Submissions>>,
}

impl Default for FakeCtLog {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Deserialize)]
struct AddChain {
    chain: Vec<String>,
}

impl FakeCtLog {
    /// A log with a fresh key.
    pub fn new() -> Self {
        Self::with_key(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation"))
    }

    /// A log with `key`, which must be ECDSA P-256 (a dev stack keeps its logs' keys across restarts).
    pub fn with_key(key: KeyPair) -> Self {
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256, "CT logs here sign with P-256");
        Self { key: Arc::new(key), submissions: Arc::default() }
    }

    /// The log's SubjectPublicKeyInfo, base64, as the publisher's configuration takes it.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.subject_public_key_info())
    }

    pub fn log_key(&self) -> LogKey {
        LogKey::from_spki(&self.key.subject_public_key_info()).expect("own key parses")
    }

    /// When set, every submission is answered 503, as a log that is down.
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Every answer waits this long first, as a log that is slow.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.lock().delay = delay;
    }

    fn delay(&self) -> std::time::Duration {
        self.lock().delay
    }

    pub fn precertificates(&self) -> Vec<Vec<u8>> {
        self.lock().precertificates.clone()
    }

    pub fn certificates(&self) -> Vec<Vec<u8>> {
        self.lock().certificates.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Submissions> {
        self.submissions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves `ct/v1/add-pre-chain` and `ct/v1/add-chain` on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = axum::Router::new()
            .route("/ct/v1/add-pre-chain", post(add_pre_chain))
            .route("/ct/v1/add-chain", post(add_chain))
            .with_state(self);
        let limits = quarry_core::http_server::ListenerConfig { max_body_bytes: 1 << 20, ..Default::default() };
        quarry_core::http_server::serve("ct-log", listener, None, app, limits, shutdown).await;
        Ok(())
    }

    /// Binds a loopback port and serves in the background for the rest of the test; returns the log's base URL.
    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        tokio::spawn(self.clone().serve(listener, std::future::pending()));
        format!("http://{addr}/")
    }

    fn answer(&self, chain: &[Vec<u8>], precertificate: bool) -> Result<serde_json::Value, (StatusCode, String)> {
        let bad = |detail: String| (StatusCode::BAD_REQUEST, detail);
        if self.lock().failing {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "log is down".into()));
        }
        let [leaf, issuer, ..] = chain else { return Err(bad("a chain needs a leaf and its issuer".into())) };
        let (_, leaf_cert) = X509Certificate::from_der(leaf).map_err(|e| bad(format!("leaf: {e}")))?;
        let (_, issuer_cert) = X509Certificate::from_der(issuer).map_err(|e| bad(format!("issuer: {e}")))?;
        leaf_cert
            .verify_signature(Some(issuer_cert.public_key()))
            .map_err(|_| bad("not signed by its issuer".into()))?;
        let poisoned = ct::is_precertificate(leaf).map_err(|e| bad(e.to_string()))?;
        if poisoned != precertificate {
            return Err(bad(format!("poison present: {poisoned}, expected: {precertificate}")));
        }
        let timestamp_ms = u64::try_from(time_ms()).unwrap_or_default();
        let (tbs, issuer_key_hash);
        let entry = if precertificate {
            (tbs, issuer_key_hash) =
                LogEntry::of_precertificate(leaf, issuer_cert.public_key().raw).map_err(|e| bad(e.to_string()))?;
            LogEntry::Precert { issuer_key_hash, tbs: &tbs }
        } else {
            LogEntry::X509 { certificate: leaf }
        };
        let signature = self
            .key
            .sign(&ct::signed_data(&entry, timestamp_ms, &[]))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let mut digitally_signed = vec![4, 3];
        digitally_signed.extend_from_slice(&(signature.len() as u16).to_be_bytes());
        digitally_signed.extend_from_slice(&signature);

        let mut submissions = self.lock();
        let record = if precertificate { &mut submissions.precertificates } else { &mut submissions.certificates };
        record.push(leaf.clone());
        Ok(serde_json::json!({
            "sct_version": 0,
            "id": STANDARD.encode(self.log_key().log_id()),
            "timestamp": timestamp_ms,
            "extensions": "",
            "signature": STANDARD.encode(digitally_signed),
        }))
    }
}

fn time_ms() -> i128 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
}

fn decode_chain(body: &AddChain) -> Result<Vec<Vec<u8>>, (StatusCode, String)> {
    body.chain
        .iter()
        .map(|c| STANDARD.decode(c).map_err(|e| (StatusCode::BAD_REQUEST, format!("chain: {e}"))))
        .collect()
}

async fn add_pre_chain(
    State(log): State<FakeCtLog>,
    Json(body): Json<AddChain>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    tokio::time::sleep(log.delay()).await;
    log.answer(&decode_chain(&body)?, true).map(Json)
}

async fn add_chain(
    State(log): State<FakeCtLog>,
    Json(body): Json<AddChain>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    tokio::time::sleep(log.delay()).await;
    log.answer(&decode_chain(&body)?, false).map(Json)
}
