//! Reading and writing the PEM files that hold certificates and private keys.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

/// The first certificate in a PEM file; a chain file is accepted and its leaf returned.
pub fn read_certificate(path: &Path) -> Result<Vec<u8>, Error> {
    let pem = read(path)?;
    let cert = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| Error::Pem { path: path.to_owned(), detail: "no CERTIFICATE block".into() })?
        .map_err(|e| Error::Pem { path: path.to_owned(), detail: e.to_string() })?;
    Ok(cert.to_vec())
}

/// A private key in PKCS#8, SEC1 or PKCS#1 PEM; the algorithm is taken from the key itself.
pub fn read_key(path: &Path) -> Result<KeyPair, Error> {
    let pem = read(path)?;
    let key =
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Pem { path: path.to_owned(), detail: e.to_string() })?;
    KeyPair::try_from(&key).map_err(|e| Error::Key { path: path.to_owned(), detail: e.to_string() })
}

/// Writes through a temporary file and a rename, so a crash never leaves half a key or certificate behind.
/// Private files are created with mode 0600 before any secret is written to them.
pub fn write_atomically(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);

    // A leftover from an earlier crash may carry looser permissions; only a file created here gets ours.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&tmp)(e)),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// A DER certificate as PEM text (64-character lines).
pub fn certificate_pem(der: &[u8]) -> String {
    let text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let lines: Vec<&str> =
        text.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).unwrap_or_default()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}
