//! The prober's persistent account key (`--account-key`): a P-256 key in a PKCS#8 PEM file, read when it exists and
//! generated and written (mode 0600) when it does not, so that a prober run every few minutes keeps one account.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context;
use quarry_jose::{Algorithm, SigningKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;

/// The key kept at `path`, and whether this call created it (so no account can exist for it yet).
pub fn load_or_create(path: &Path) -> anyhow::Result<(SigningKey, bool)> {
    match std::fs::read(path) {
        Ok(pem) => Ok((parse(&pem).with_context(|| format!("the account key {}", path.display()))?, false)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(err) => Err(err).with_context(|| format!("read the account key {}", path.display())),
    }
}

fn parse(pem: &[u8]) -> anyhow::Result<SigningKey> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem).context("not a PEM PKCS#8 private key")?;
    Ok(SigningKey::from_pkcs8(Algorithm::Es256, der.secret_pkcs8_der())?)
}

/// Generates a key and puts it at `path` whole or not at all: written to a private temporary file beside it, then
/// linked into place, which fails rather than replaces when another probe got there first — then that key is used.
fn create(path: &Path) -> anyhow::Result<(SigningKey, bool)> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generate an account key")?;
    let key = SigningKey::from_pkcs8(Algorithm::Es256, &pair.serialize_der())?;
    // Named by process and time: a container's prober has the same process id every run, and a run that died
    // between writing and removing its temporary file must not block the next.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}-{nanos:x}.tmp", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("create {}", temporary.display()))?;
    let written = file
        .write_all(pair.serialize_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match written {
        Ok(()) => Ok((key, true)),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let pem = std::fs::read(path).with_context(|| format!("read the account key {}", path.display()))?;
            Ok((parse(&pem).with_context(|| format!("the account key {}", path.display()))?, false))
        }
        Err(err) => Err(err).with_context(|| format!("write the account key {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_missing_key_is_created_private_and_then_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("account.pem");
        let (created, fresh) = load_or_create(&path).expect("create");
        assert!(fresh);
        let mode = std::fs::metadata(&path).expect("written").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (read, fresh) = load_or_create(&path).expect("read");
        assert!(!fresh);
        assert_eq!(read.jwk(), created.jwk(), "the same key on every run");
        let leftovers = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[test]
    fn a_key_that_is_not_p256_pkcs8_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("account.pem");
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
        for text in [p384.serialize_pem(), "not a key".to_owned()] {
            std::fs::write(&path, &text).expect("write");
            let err = load_or_create(&path).expect_err("refused");
            assert!(format!("{err:#}").contains("account.pem"), "{err:#}");
            assert_eq!(std::fs::read_to_string(&path).expect("kept"), text);
        }
    }
}
