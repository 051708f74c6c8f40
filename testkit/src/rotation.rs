//! Certificates rotated under a running service as cert-manager and the kubelet rotate them — a Secret volume whose
//! files all change at once through a symlink swap — and what a new TLS connection is served meanwhile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_core::config::TlsFiles;
use rustls_pki_types::ServerName;

/// A directory laid out as the kubelet mounts a Secret: `NAME` → `..data/NAME`, and `..data` → a directory holding
/// this version of every file. A new version is written into a new directory and `..data` is swapped to it by one
/// rename, so a reader never sees half of it; the files a service opened by path are new, their inodes are not.
pub struct SecretVolume {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretVolume {
    /// A volume holding `files` (name, contents).
    pub fn new(files: &[(&str, &[u8])]) -> Self {
        let mut volume = Self { dir: tempfile::tempdir().expect("secret volume directory"), version: 0 };
        volume.replace(files);
        volume
    }

    /// A service's internal identity as cert-manager mounts it: `tls.crt`, `tls.key` and `ca.crt`.
    pub fn with_identity(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Self {
        Self::new(&[("tls.crt", cert_pem.as_bytes()), ("tls.key", key_pem.as_bytes()), ("ca.crt", ca_pem.as_bytes())])
    }

    /// The path a service is configured with for the file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The mutual-TLS files of [`SecretVolume::with_identity`], looked at every `reload_interval`.
    pub fn tls_files(&self, reload_interval: Duration) -> TlsFiles {
        TlsFiles {
            reload_interval_ms: reload_interval.as_millis() as u64,
            ..TlsFiles::new(self.path("tls.crt"), self.path("tls.key"), self.path("ca.crt"))
        }
    }

    /// Replaces every file at once, as the kubelet does when the Secret changes.
    pub fn replace(&mut self, files: &[(&str, &[u8])]) {
        self.version += 1;
        let root = self.dir.path();
        let version = format!("..version-{}", self.version);
        std::fs::create_dir(root.join(&version)).expect("new version directory");
        for (name, contents) in files {
            std::fs::write(root.join(&version).join(name), contents).expect("write a secret file");
            let link = root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).expect("link a secret file");
            }
        }
        let swapping = root.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &swapping).expect("link the new version");
        std::fs::rename(&swapping, root.join("..data")).expect("swap ..data");
        if self.version > 1 {
            let _ = std::fs::remove_dir_all(root.join(format!("..version-{}", self.version - 1)));
        }
    }

    /// Replaces the identity files of [`SecretVolume::with_identity`] at once.
    pub fn replace_identity(&mut self, cert_pem: &str, key_pem: &str, ca_pem: &str) {
        self.replace(&[
            ("tls.crt", cert_pem.as_bytes()),
            ("tls.key", key_pem.as_bytes()),
            ("ca.crt", ca_pem.as_bytes()),
        ]);
    }

    /// Overwrites one file in place, as a person or a careless tool would: readers may see it half written.
    pub fn overwrite(&self, name: &str, contents: &[u8]) {
        std::fs::write(self.path(name), contents).expect("overwrite a secret file");
    }
}

/// The certificate (DER) a new TLS connection to `addr`, made with `client` and naming `server_name`, is served.
pub async fn served_certificate(
    addr: SocketAddr,
    server_name: &str,
    client: Arc<rustls::ClientConfig>,
) -> std::io::Result<Vec<u8>> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(std::io::Error::other)?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    let handshake = tokio_rustls::TlsConnector::from(client).connect(name, tcp);
    let tls = tokio::time::timeout(Duration::from_secs(5), handshake).await??;
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates().and_then(|chain| chain.first());
    leaf.map(|der| der.to_vec()).ok_or_else(|| std::io::Error::other("no certificate served"))
}

/// Connects anew every 50 ms, for at most `within`, until a connection is served `expected`; the error says what
/// was served last.
pub async fn wait_until_served(
    addr: SocketAddr,
    server_name: &str,
    client: Arc<rustls::ClientConfig>,
    expected: &[u8],
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::from("nothing yet");
    while started.elapsed() < within {
        match served_certificate(addr, server_name, client.clone()).await {
            Ok(served) if served == expected => return Ok(started.elapsed()),
            Ok(_) => last = "another certificate".to_owned(),
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("not served within {within:?}; last: {last}"))
}
