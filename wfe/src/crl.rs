//! The CRL distribution points and issuer certificates: a plain-HTTP listener (the Baseline Requirements ask for
//! `http` CRL and caIssuers URLs) serving each shard's latest CRL from the sa at `/{issuer}/{shard}.crl`, and each
//! issuer's certificate (DER) at `/{issuer}.der` — the URLs its certificates name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarry_core::ErrorKind;
use quarry_proto::client::SaClient;
use quarry_proto::sa::CrlShard;
use serde::Deserialize;

use crate::Error;

/// Where the CRLs are served, and under which name each issuer's shards are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlConfig {
    /// The plain-HTTP address; the CA's `crl_url_prefix` of an issuer is `http://<this>/<name>/`.
    pub listen: SocketAddr,
    /// Path name → the issuer's certificate (PEM).
    pub issuers: BTreeMap<String, PathBuf>,
}

#[derive(Clone)]
struct CrlState {
    sa: SaClient,
    issuer_ids: BTreeMap<String, i64>,
    /// `<name>.der` → the issuer's certificate, for the Authority Information Access URL of what it issues.
    issuer_certs: std::sync::Arc<BTreeMap<String, Vec<u8>>>,
}

/// Loads the issuers and returns the router that serves their shards.
pub(crate) fn router(config: &CrlConfig, sa: SaClient) -> Result<axum::Router, Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let mut issuer_ids = BTreeMap::new();
    let mut issuer_certs = BTreeMap::new();
    for (name, path) in &config.issuers {
        let bad = |detail: String| Error::Config(format!("crl.issuers.{name} {}: {detail}", path.display()));
        let der = CertificateDer::from_pem_file(path).map_err(|e| bad(e.to_string()))?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
        issuer_ids.insert(name.clone(), quarry_core::certificate::issuer_id(cert.subject().as_raw()));
        issuer_certs.insert(format!("{name}.der"), der.to_vec());
    }
    let state = CrlState { sa, issuer_ids, issuer_certs: std::sync::Arc::new(issuer_certs) };
    Ok(axum::Router::new()
        .route("/{issuer}/{file}", axum::routing::get(shard))
        .route("/{file}", axum::routing::get(issuer_certificate))
        .with_state(state))
}

/// `GET /{issuer}.der`: the issuer's certificate, which never changes under its name.
async fn issuer_certificate(State(state): State<CrlState>, Path(file): Path<String>) -> Response {
    match state.issuer_certs.get(&file) {
        Some(der) => (
            [(header::CONTENT_TYPE, "application/pkix-cert"), (header::CACHE_CONTROL, "public, max-age=86400")],
            der.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such issuer certificate\n").into_response(),
    }
}

async fn shard(State(state): State<CrlState>, Path((issuer, file)): Path<(String, String)>) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such CRL\n").into_response();
    let Some(&issuer_id) = state.issuer_ids.get(&issuer) else { return not_found() };
    let Some(shard) = file.strip_suffix(".crl").and_then(|n| n.parse::<i64>().ok()).filter(|n| *n >= 0) else {
        return not_found();
    };
    match state.sa.get_crl(CrlShard { issuer_id, shard }, None).await {
        Ok(crl) => {
            // Caches may keep it a while, never past the moment a newer one is due.
            let max_age = (crl.next_update - quarry_core::clock::now()).clamp(0, 300);
            (
                [
                    (header::CONTENT_TYPE, "application/pkix-crl".to_owned()),
                    (header::CACHE_CONTROL, format!("public, max-age={max_age}")),
                ],
                crl.der,
            )
                .into_response()
        }
        Err(problem) if problem.kind == ErrorKind::NotFound => not_found(),
        Err(problem) => {
            tracing::warn!(issuer_id, shard, %problem, "reading a CRL from the sa failed");
            (StatusCode::SERVICE_UNAVAILABLE, "the CRL cannot be read right now\n").into_response()
        }
    }
}
