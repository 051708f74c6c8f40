//! One Certificate Transparency log as RFC 6962 §4.1–4.2 defines its submission API: `add-pre-chain` for
//! precertificates, `add-chain` for final certificates, each answered by a signed certificate timestamp that is
//! verified against the log's key before it is believed.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use quarry_core::ct::{LogEntry, LogKey, Sct};
use serde::Deserialize;

use crate::{Error, LogConfig};

/// A log's answer is a few hundred bytes; anything much larger is not an SCT.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

use quarry_core::http_client::HttpClient;

/// What a log is asked to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    Precertificate,
    FinalCertificate,
}

/// One configured log.
#[derive(Debug, Clone)]
pub struct CtLog {
    pub name: String,
    pub operator: String,
    pub submit_final: bool,
    base_url: String,
    key: LogKey,
    timeout: Duration,
}

#[derive(Deserialize)]
struct AddChainResponse {
    sct_version: u8,
    id: String,
    timestamp: u64,
    #[serde(default)]
    extensions: String,
    signature: String,
}

impl CtLog {
    pub fn new(config: &LogConfig, timeout: Duration) -> Result<Self, Error> {
        let bad = |reason: String| Error::Log { log: config.name.clone(), reason };
        if !(config.url.starts_with("https://") || config.url.starts_with("http://")) {
            return Err(bad(format!("url {:?} must be http(s)", config.url)));
        }
        let spki = STANDARD.decode(config.public_key.trim()).map_err(|e| bad(format!("public_key: {e}")))?;
        let key = LogKey::from_spki(&spki).map_err(|e| bad(e.to_string()))?;
        let base_url = if config.url.ends_with('/') { config.url.clone() } else { format!("{}/", config.url) };
        Ok(Self {
            name: config.name.clone(),
            operator: config.operator.clone(),
            submit_final: config.submit_final,
            base_url,
            key,
            timeout,
        })
    }

    /// Submits `chain` (leaf first, then its issuer) and returns the TLS-encoded SCT, verified. The error is a
    /// sentence for the logs: a log's failure is an operational fact, not a subscriber's problem. Every submission
    /// is counted per log, kind and outcome (`quarry_ct_submissions_total`) and timed
    /// (`quarry_ct_submission_seconds`): one log failing shows as that log, not as the publisher.
    pub async fn submit(&self, client: &HttpClient, chain: &[Vec<u8>], kind: Submission) -> Result<Vec<u8>, String> {
        let started = std::time::Instant::now();
        let outcome = self.submit_once(client, chain, kind).await;
        let kind_label = match kind {
            Submission::Precertificate => "precertificate",
            Submission::FinalCertificate => "final",
        };
        let log = self.name.clone();
        match &outcome {
            Ok(_) => metrics::counter!("quarry_ct_submissions_total", "log" => log, "kind" => kind_label, "result" => "ok"),
            Err(_) => {
                metrics::counter!("quarry_ct_submissions_total", "log" => log, "kind" => kind_label, "result" => "error")
            }
        }
        .increment(1);
        metrics::histogram!("quarry_ct_submission_seconds", "log" => self.name.clone(), "kind" => kind_label)
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn submit_once(&self, client: &HttpClient, chain: &[Vec<u8>], kind: Submission) -> Result<Vec<u8>, String> {
        let [leaf, issuer, ..] = chain else { return Err("the chain needs a leaf and its issuer".into()) };
        let path = match kind {
            Submission::Precertificate => "ct/v1/add-pre-chain",
            Submission::FinalCertificate => "ct/v1/add-chain",
        };
        let body = serde_json::json!({ "chain": chain.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>() });
        let request = http::Request::post(format!("{}{path}", self.base_url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("building the request: {e}"))?;
        let exchange = async {
            let response = client.request(request).await.map_err(|e| format!("request failed: {e}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the response: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
            }
            Ok(body)
        };
        let body = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))??;
        let sct = parse_sct(&body)?;

        let (issuer_spki, tbs, issuer_key_hash);
        let entry = match kind {
            // Only a precertificate's entry names its issuer (by its key's hash).
            Submission::Precertificate => {
                issuer_spki = spki_of(issuer)?;
                (tbs, issuer_key_hash) =
                    LogEntry::of_precertificate(leaf, &issuer_spki).map_err(|e| format!("precertificate: {e}"))?;
                LogEntry::Precert { issuer_key_hash, tbs: &tbs }
            }
            Submission::FinalCertificate => LogEntry::X509 { certificate: leaf },
        };
        self.key.verify(&sct, &entry).map_err(|e| format!("the log's SCT is not valid: {e}"))?;
        Ok(sct.encode())
    }
}

fn parse_sct(body: &[u8]) -> Result<Sct, String> {
    let response: AddChainResponse =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not an add-chain response: {e}"))?;
    if response.sct_version != 0 {
        return Err(format!("SCT version {} is not v1", response.sct_version));
    }
    let decode = |field: &str, value: &str| STANDARD.decode(value).map_err(|e| format!("{field}: {e}"));
    let log_id = decode("id", &response.id)?.try_into().map_err(|_| "id is not 32 bytes".to_owned())?;
    let extensions = decode("extensions", &response.extensions)?;
    // DigitallySigned: hash algorithm, signature algorithm, then the signature with a two-byte length.
    let signed = decode("signature", &response.signature)?;
    let [hash_algorithm, signature_algorithm, high, low, signature @ ..] = signed.as_slice() else {
        return Err("signature is truncated".into());
    };
    if usize::from(u16::from_be_bytes([*high, *low])) != signature.len() {
        return Err("signature length does not match".into());
    }
    Ok(Sct {
        log_id,
        timestamp_ms: response.timestamp,
        extensions,
        hash_algorithm: *hash_algorithm,
        signature_algorithm: *signature_algorithm,
        signature: signature.to_vec(),
    })
}

/// The SubjectPublicKeyInfo of a certificate, DER.
fn spki_of(certificate: &[u8]) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(certificate)
        .map_err(|e| format!("issuer certificate: {e}"))?;
    Ok(cert.public_key().raw.to_vec())
}
