//! The project's own ACME client: any account key type (RS256, ES256, ES384, EdDSA, which instant-acme cannot all
//! do) and raw access to requests. The prober issues through it in every environment, and the tests use it to send
//! malformed JWSs on purpose.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use quarry_jose::{Algorithm, SigningKey};
use serde_json::{Value, json};

/// One HTTP response, fully read.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    /// Every value of a header, e.g. all `Link`s.
    pub fn headers_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
    }

    /// The problem type's last segment (`badNonce`), when the body is a problem document.
    pub fn problem_type(&self) -> Option<String> {
        self.json()["type"].as_str().and_then(|t| t.strip_prefix("urn:ietf:params:acme:error:")).map(str::to_owned)
    }
}

/// An ACME server, reached over HTTPS (trusting a given CA) or plain HTTP.
#[derive(Clone)]
pub struct AcmeClient {
    tls: Option<tokio_rustls::TlsConnector>,
    directory: Value,
    /// Sent as `X-Forwarded-For` with every request, as a proxy in front of the server would.
    forwarded_for: Option<String>,
}

/// An account key, and the account URL once registered.
pub struct AcmeAccount {
    pub key: SigningKey,
    pub url: Option<String>,
}

impl AcmeAccount {
    pub fn generate(alg: Algorithm) -> Self {
        Self { key: SigningKey::generate(alg).expect("generate account key"), url: None }
    }

    /// A flattened JWS for `url` with `nonce`; `kid` once registered, `jwk` before.
    pub fn sign(&self, url: &str, nonce: &str, payload: Option<&Value>) -> String {
        self.sign_with_header(url, nonce, payload, json!({}))
    }

    /// As [`AcmeAccount::sign`], with protected header members replaced (a null removes one): the requests an
    /// attacker varies.
    pub fn sign_with_header(&self, url: &str, nonce: &str, payload: Option<&Value>, changes: Value) -> String {
        let mut header = json!({ "alg": self.key.algorithm().as_str(), "nonce": nonce, "url": url });
        match &self.url {
            Some(kid) => header["kid"] = json!(kid),
            None => header["jwk"] = self.key.jwk().to_json(),
        }
        for (key, value) in changes.as_object().into_iter().flatten() {
            match (value.is_null(), header.as_object_mut()) {
                (true, Some(members)) => drop(members.remove(key)),
                _ => header[key] = value.clone(),
            }
        }
        let payload = payload.map(|p| p.to_string().into_bytes());
        quarry_jose::sign_flattened(&self.key, &header, payload.as_deref())
    }
}

/// A flattened JWS with one character of its signature changed.
pub fn tamper_signature(body: &str) -> String {
    let mut jws: Value = serde_json::from_str(body).unwrap_or_default();
    let signature = jws["signature"].as_str().unwrap_or_default();
    let flipped = match signature.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", signature.get(1..).unwrap_or_default()),
    };
    jws["signature"] = json!(flipped);
    jws.to_string()
}

impl AcmeClient {
    /// This client with every request carrying `X-Forwarded-For: {value}`.
    pub fn forwarded_for(&self, value: &str) -> Self {
        Self { forwarded_for: Some(value.to_owned()), ..self.clone() }
    }

    /// Fetches the directory; `ca_pem` is the trust anchor for HTTPS.
    pub async fn new(directory_url: &str, ca_pem: Option<&Path>) -> anyhow::Result<Self> {
        let mut client = Self::without_directory(ca_pem)?;
        let response = client.request(http::Method::GET, directory_url, None, Vec::new()).await?;
        if response.status != 200 {
            bail!("directory answered {}", response.status);
        }
        client.directory = response.json();
        Ok(client)
    }

    /// A client for plain requests beside ACME (health, CRLs, a metrics push), which needs no directory and so
    /// works when the ACME server does not answer; `ca_pem` is the trust anchor for HTTPS.
    pub fn without_directory(ca_pem: Option<&Path>) -> anyhow::Result<Self> {
        let tls = match ca_pem {
            None => None,
            Some(path) => {
                use rustls_pki_types::CertificateDer;
                use rustls_pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).context("read CA PEM")? {
                    roots.add(cert.context("parse CA PEM")?)?;
                }
                let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
            }
        };
        Ok(Self { tls, directory: Value::Null, forwarded_for: None })
    }

    pub fn directory(&self) -> &Value {
        &self.directory
    }

    /// A directory URL by its key (`newAccount`, `newOrder`, ...).
    pub fn url(&self, key: &str) -> String {
        self.directory[key].as_str().unwrap_or_default().to_owned()
    }

    /// One request on a fresh connection.
    pub async fn request(
        &self,
        method: http::Method,
        url: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<HttpResponse> {
        let uri: http::Uri = url.parse().context("parse URL")?;
        let host = uri.host().ok_or_else(|| anyhow!("URL without host"))?.to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let mut stream =
            tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await.context("connect")?;
        quarry_core::tcp::no_delay(&mut stream);
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, uri.authority().map_or(host.clone(), |a| a.to_string()))
            .header(http::header::USER_AGENT, "quarry-testkit");
        if let Some(content_type) = content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        if let Some(forwarded_for) = &self.forwarded_for {
            request = request.header("x-forwarded-for", forwarded_for);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let response = match (&self.tls, https) {
            (Some(tls), true) => {
                let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())?;
                let stream = tls.connect(name, stream).await.context("TLS handshake")?;
                send(TokioIo::new(stream), request).await?
            }
            (None, true) => bail!("an https URL needs a CA to trust"),
            (_, false) => send(TokioIo::new(stream), request).await?,
        };
        Ok(response)
    }

    /// The leaf (DER) of the certificate a finalized order (`finalized`, the finalize answer) links to.
    pub async fn certificate_der(&self, account: &AcmeAccount, finalized: &HttpResponse) -> anyhow::Result<Vec<u8>> {
        use rustls_pki_types::pem::PemObject;
        let url = finalized.json()["certificate"].as_str().ok_or_else(|| anyhow!("no certificate URL"))?.to_owned();
        let pem = self.post(account, &url, None).await?.body;
        let leaf =
            rustls_pki_types::CertificateDer::pem_slice_iter(&pem).next().ok_or_else(|| anyhow!("no certificate"))?;
        Ok(leaf.context("certificate PEM")?.to_vec())
    }

    /// A fresh nonce from newNonce.
    pub async fn nonce(&self) -> anyhow::Result<String> {
        let response = self.request(http::Method::HEAD, &self.url("newNonce"), None, Vec::new()).await?;
        response.header("replay-nonce").ok_or_else(|| anyhow!("newNonce gave no Replay-Nonce"))
    }

    /// A signed POST with a fresh nonce; `payload` None is POST-as-GET.
    pub async fn post(
        &self,
        account: &AcmeAccount,
        url: &str,
        payload: Option<&Value>,
    ) -> anyhow::Result<HttpResponse> {
        let nonce = self.nonce().await?;
        self.post_body(url, account.sign(url, &nonce, payload)).await
    }

    /// POSTs a prepared body as `application/jose+json`.
    pub async fn post_body(&self, url: &str, body: String) -> anyhow::Result<HttpResponse> {
        self.request(http::Method::POST, url, Some("application/jose+json"), body.into_bytes()).await
    }

    /// Registers `account` (agreeing to the terms) and records its URL.
    pub async fn register(&self, account: &mut AcmeAccount) -> anyhow::Result<HttpResponse> {
        let response =
            self.post(account, &self.url("newAccount"), Some(&json!({ "termsOfServiceAgreed": true }))).await?;
        if response.status != 201 && response.status != 200 {
            bail!("new-account answered {}: {}", response.status, String::from_utf8_lossy(&response.body));
        }
        account.url = response.header("location");
        Ok(response)
    }

    /// POST-as-GET `url` until `done` says the JSON is final, at most `attempts` times, 100 ms apart.
    pub async fn poll(
        &self,
        account: &AcmeAccount,
        url: &str,
        attempts: usize,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        for _ in 0..attempts {
            let response = self.post(account, url, None).await?;
            let json = response.json();
            if done(&json) {
                return Ok(json);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        bail!("{url} did not settle after {attempts} polls")
    }
}

async fn send<I>(io: I, request: http::Request<Full<Bytes>>) -> anyhow::Result<HttpResponse>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    driver.abort();
    Ok(HttpResponse { status, headers, body })
}
