//! The prober's plain HTTP requests beside ACME (the wfe's health, the CRL, the Pushgateway), each bounded.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use quarry_acme_client::{AcmeClient, HttpResponse};

/// How long one request beside ACME (health, CRL, push) may take.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One plain request beside ACME, bounded by [`REQUEST_TIMEOUT`].
pub(super) async fn request(
    http: &AcmeClient,
    method: http::Method,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(REQUEST_TIMEOUT, http.request(method, url, content_type, body))
        .await
        .map_err(|_| anyhow!("{url}: no answer within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| url.to_owned())
}
