//! Certificates, keys and CA bundles that follow their files: when cert-manager renews a mounted Secret, new TLS
//! handshakes use the new files within a reload interval, without a restart. A change that does not load — a file
//! missing or half written, a key that is not the certificate's — is refused: the last good files stay in use, and
//! the refusal is logged once and counted.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ConfigError, TlsFiles};

/// Shorter intervals are raised to this: a zero interval would spin.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(20);

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// A service's mutual-TLS identity ([`TlsFiles`]) as rustls configurations whose certificate and CA bundle follow
/// the files. Every new connection is authenticated afresh (no session resumption), so a CA taken out of the bundle
/// admits nobody new, and a renewed certificate is presented on the next connection.
#[derive(Clone)]
pub struct MutualTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutualTls").finish_non_exhaustive()
    }
}

impl MutualTls {
    /// Reads the files (an error names the one that does not load) and keeps watching them.
    pub fn open(files: &TlsFiles) -> Result<Self, ConfigError> {
        let interval = files.reload_interval();
        let certificate = Arc::new(ReloadingCertificate::open(&files.cert, &files.key, interval)?);
        let trust = Arc::new(ReloadingTrust::open(&files.ca, interval)?);
        let invalid = |e: rustls::Error| ConfigError::Invalid(format!("TLS settings: {e}"));
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_client_cert_verifier(trust.clone())
            .with_cert_resolver(certificate.clone());
        server.alpn_protocols = vec![b"h2".to_vec()];
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .dangerous()
            // Not dangerous: it is webpki's verifier, over the current bundle.
            .with_custom_certificate_verifier(trust)
            .with_client_cert_resolver(certificate);
        client.alpn_protocols = vec![b"h2".to_vec()];
        client.resumption = Resumption::disabled();
        Ok(Self { server: Arc::new(server), client: Arc::new(client) })
    }

    /// For a gRPC server: HTTP/2, and a client certificate the current bundle verifies required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// For a gRPC client: HTTP/2, the peer verified against the current bundle, the current certificate presented.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }
}

/// A certificate chain and its private key following their files: what a server presents, and a client when asked.
#[derive(Clone)]
pub struct ReloadingCertificate(Arc<Watched<CertifiedKey>>);

impl ReloadingCertificate {
    /// Reads the chain (leaf first) and the key now, and looks at them again every `interval`.
    pub fn open(cert: &Path, key: &Path, interval: Duration) -> Result<Self, ConfigError> {
        static OPEN: Registry<CertifiedKey> = Mutex::new(Vec::new());
        let paths = vec![cert.to_owned(), key.to_owned()];
        Ok(Self(Watched::open_shared(&OPEN, paths, load_certified_key, interval)?))
    }

    /// The certificate in use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.current()
    }
}

impl fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReloadingCertificate").field(&self.0.paths).finish()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCertificate {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn load_certified_key(paths: &[PathBuf], contents: &[Vec<u8>]) -> Result<CertifiedKey, ConfigError> {
    let [(cert_path, cert), (key_path, key)] = [0, 1].map(|i| (paths[i].display(), &contents[i]));
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Invalid(format!("{cert_path}: {e}")))?;
    if chain.is_empty() {
        return Err(ConfigError::Invalid(format!("{cert_path}: no PEM certificate")));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| ConfigError::Invalid(format!("{key_path}: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| ConfigError::Invalid(format!("{cert_path} with {key_path}: {e}")))
}

/// The CA bundle peers are verified against, following its file.
#[derive(Clone)]
pub struct ReloadingTrust(Arc<Watched<Trust>>);

/// One CA bundle as the verifiers of both ends of a connection.
struct Trust {
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<WebPkiServerVerifier>,
}

impl ReloadingTrust {
    /// Reads the bundle now, and looks at it again every `interval`.
    pub fn open(bundle: &Path, interval: Duration) -> Result<Self, ConfigError> {
        static OPEN: Registry<Trust> = Mutex::new(Vec::new());
        Ok(Self(Watched::open_shared(&OPEN, vec![bundle.to_owned()], load_trust, interval)?))
    }
}

impl fmt::Debug for ReloadingTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReloadingTrust").field(&self.0.paths).finish()
    }
}

fn load_trust(paths: &[PathBuf], contents: &[Vec<u8>]) -> Result<Trust, ConfigError> {
    let path = paths[0].display();
    let invalid = |e: &dyn fmt::Display| ConfigError::Invalid(format!("{path}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&contents[0]) {
        roots.add(cert.map_err(|e| invalid(&e))?).map_err(|e| invalid(&e))?;
    }
    if roots.is_empty() {
        return Err(invalid(&"no PEM certificate"));
    }
    let roots = Arc::new(roots);
    let clients =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build().map_err(|e| invalid(&e))?;
    let servers = WebPkiServerVerifier::builder_with_provider(roots, provider()).build().map_err(|e| invalid(&e))?;
    Ok(Trust { clients, servers })
}

impl ClientCertVerifier for ReloadingTrust {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The names would have to outlive the bundle they came from; with none, a client sends the one certificate
        // it has, which is what every client of these servers does anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.current().clients.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().clients.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().clients.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().clients.supported_verify_schemes()
    }
}

impl ServerCertVerifier for ReloadingTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().servers.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().servers.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().servers.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().servers.supported_verify_schemes()
    }
}

/// The files opened so far, by paths and interval: the server and every client of a service share one watcher per
/// set of files, so that a change is loaded, logged and counted once.
type Registry<T> = Mutex<Vec<(Vec<PathBuf>, Duration, Weak<Watched<T>>)>>;

/// Makes something of the contents of files (in the order of their paths, which name them in errors).
type Load<T> = fn(&[PathBuf], &[Vec<u8>]) -> Result<T, ConfigError>;

/// What `load` makes of some files, made again whenever their contents change and it succeeds.
struct Watched<T> {
    paths: Vec<PathBuf>,
    load: Load<T>,
    current: RwLock<Arc<T>>,
    /// A digest of each file as last read (`None`: unreadable), whether the contents were taken or refused: each
    /// change is acted on, and a refused one reported, once.
    last_read: Mutex<Vec<Option<Vec<u8>>>>,
    /// Whether a task is looking at the files: it ends with its runtime (a test's), and a later user restarts it.
    watching: Arc<AtomicBool>,
}

impl<T: Send + Sync + 'static> Watched<T> {
    fn open_shared(
        registry: &Registry<T>,
        paths: Vec<PathBuf>,
        load: Load<T>,
        interval: Duration,
    ) -> Result<Arc<Self>, ConfigError> {
        let interval = interval.max(MIN_RELOAD_INTERVAL);
        let mut open = registry.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|(_, _, watched)| watched.strong_count() > 0);
        let known = open.iter().find(|(p, i, _)| *p == paths && *i == interval).and_then(|(_, _, w)| w.upgrade());
        if let Some(watched) = known {
            watched.keep_watching(interval);
            return Ok(watched);
        }
        let watched = Self::open(paths.clone(), load, interval)?;
        open.push((paths, interval, Arc::downgrade(&watched)));
        Ok(watched)
    }

    fn open(paths: Vec<PathBuf>, load: Load<T>, interval: Duration) -> Result<Arc<Self>, ConfigError> {
        let contents = paths
            .iter()
            .map(|path| std::fs::read(path).map_err(|source| ConfigError::Read { path: path.clone(), source }))
            .collect::<Result<Vec<_>, _>>()?;
        let value = load(&paths, &contents)?;
        export_expiry(&paths, &contents);
        let watched = Arc::new(Self {
            last_read: Mutex::new(contents.iter().map(|content| Some(digest(content))).collect()),
            current: RwLock::new(Arc::new(value)),
            paths,
            load,
            watching: Arc::default(),
        });
        watched.keep_watching(interval);
        Ok(watched)
    }

    fn current(&self) -> Arc<T> {
        // Replaced whole, never changed in place: a poisoned lock still holds a sound value.
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Looks at the files every `interval` while anyone uses them, on the current Tokio runtime; outside one (a
    /// command-line tool's set-up) the files are read once.
    fn keep_watching(self: &Arc<Self>, interval: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let watched = Arc::downgrade(self);
        let stopped = StopsWatching(self.watching.clone());
        runtime.spawn(async move {
            let _stopped = stopped;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(watched) = watched.upgrade() else { return };
                // Files on a mounted volume: reading them must not hold up a runtime thread.
                let _ = tokio::task::spawn_blocking(move || watched.check()).await;
            }
        });
    }

    /// Reads the files; when they changed since the last look, loads them and uses the result, or keeps the current
    /// one and says why.
    fn check(&self) {
        let read: Vec<io::Result<Vec<u8>>> = self.paths.iter().map(std::fs::read).collect();
        let digests: Vec<Option<Vec<u8>>> =
            read.iter().map(|content| content.as_ref().ok().map(|c| digest(c))).collect();
        {
            let mut last_read = self.last_read.lock().unwrap_or_else(PoisonError::into_inner);
            if *last_read == digests {
                return;
            }
            *last_read = digests;
        }
        let file = self.paths[0].display().to_string();
        let mut contents = Vec::with_capacity(read.len());
        let mut loaded = Ok(());
        for (path, content) in self.paths.iter().zip(read) {
            match content {
                Ok(content) => contents.push(content),
                Err(source) => {
                    loaded = Err(ConfigError::Read { path: path.clone(), source });
                    break;
                }
            }
        }
        match loaded.and_then(|()| (self.load)(&self.paths, &contents)) {
            Ok(value) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
                let not_after = export_expiry(&self.paths, &contents);
                metrics::counter!("quarry_tls_reloads_total", "file" => file.clone()).increment(1);
                tracing::info!(%file, ?not_after, "TLS files changed: new connections use them");
            }
            Err(err) => {
                metrics::counter!("quarry_tls_reload_errors_total", "file" => file.clone()).increment(1);
                tracing::warn!(%file, %err, "TLS files changed but do not load: the previous ones stay in use");
            }
        }
    }
}

/// Clears the watching flag when the watching task ends, however it ends.
struct StopsWatching(Arc<AtomicBool>);

impl Drop for StopsWatching {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn digest(content: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content).as_ref().to_vec()
}

/// Sets `quarry_tls_certificate_not_after_seconds{file}` for each file holding certificates (the soonest notAfter of
/// a chain or bundle, which is the one that matters); returns those times (Unix seconds), file by file.
fn export_expiry(paths: &[PathBuf], contents: &[Vec<u8>]) -> Vec<Option<i64>> {
    paths
        .iter()
        .zip(contents)
        .map(|(path, content)| {
            let soonest = CertificateDer::pem_slice_iter(content)
                .filter_map(Result::ok)
                .filter_map(|der| {
                    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
                    Some(cert.validity().not_after.timestamp())
                })
                .min();
            if let Some(not_after) = soonest {
                metrics::gauge!("quarry_tls_certificate_not_after_seconds", "file" => path.display().to_string())
                    .set(not_after as f64);
            }
            soonest
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_RELOAD_INTERVAL;

    fn self_signed(name: &str) -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("certificate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn leaf(certificate: &ReloadingCertificate) -> Vec<u8> {
        certificate.current().cert[0].to_vec()
    }

    #[test]
    fn a_change_that_does_not_load_is_refused_reported_once_and_counted() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (a_cert, a_key) = self_signed("a.quarry");
        let (b_cert, b_key) = self_signed("b.quarry");
        std::fs::write(&cert, &a_cert).unwrap();
        std::fs::write(&key, &a_key).unwrap();
        let errors = || {
            let rendered = handle.render();
            let line = rendered.lines().find(|line| line.starts_with("quarry_tls_reload_errors_total"));
            line.and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok()).unwrap_or(0)
        };
        metrics::with_local_recorder(&recorder, || {
            // Outside a runtime nothing watches: the test looks itself.
            let certificate = ReloadingCertificate::open(&cert, &key, Duration::ZERO).unwrap();
            let a = leaf(&certificate);
            let steps: [(&str, &dyn Fn(), u64); 4] = [
                ("garbage key", &|| std::fs::write(&key, "not a key").unwrap(), 1),
                ("the same garbage again", &|| std::fs::write(&key, "not a key").unwrap(), 1),
                (
                    "B's certificate with A's key",
                    &|| {
                        std::fs::write(&cert, &b_cert).unwrap();
                        std::fs::write(&key, &a_key).unwrap();
                    },
                    2,
                ),
                ("a missing key", &|| std::fs::remove_file(&key).unwrap(), 3),
            ];
            for (step, change, expected_errors) in steps {
                change();
                certificate.0.check();
                assert_eq!(leaf(&certificate), a, "{step}: A stays in use");
                assert_eq!(errors(), expected_errors, "{step}");
            }
            std::fs::write(&key, &b_key).unwrap();
            certificate.0.check();
            assert_ne!(leaf(&certificate), a, "B, whole, is taken");
            assert_eq!(errors(), 3);
            let expiry = handle.render();
            assert!(expiry.contains("quarry_tls_certificate_not_after_seconds"), "{expiry}");
        });
    }

    #[test]
    fn a_bundle_without_a_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca.crt");
        std::fs::write(&bundle, "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
        assert!(ReloadingTrust::open(&bundle, DEFAULT_RELOAD_INTERVAL).is_err());
        std::fs::write(&bundle, "").unwrap();
        let err = ReloadingTrust::open(&bundle, DEFAULT_RELOAD_INTERVAL).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
