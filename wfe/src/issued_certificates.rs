//! The certificates this wfe's finalize answers just issued, kept a short while for their client's download, which
//! then costs the sa no read. A certificate never changes once issued (its revocation is not part of the download),
//! so a copy is never stale; each serves one download, and any other goes to the sa.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::expiring::Expiring;

/// `[certificate_cache]` in the wfe's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateCacheConfig {
    /// How long a certificate a finalize answer issued is kept for its download; 0 turns it off.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// At most this many are kept (about 2 KiB each).
    #[serde(default = "default_size")]
    pub size: usize,
}

impl Default for CertificateCacheConfig {
    fn default() -> Self {
        Self { ttl_ms: default_ttl_ms(), size: default_size() }
    }
}

fn default_ttl_ms() -> u64 {
    30_000
}
fn default_size() -> usize {
    2_000
}

/// A certificate as its finalize answer gave it.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub account_id: i64,
    pub der: Vec<u8>,
}

pub struct IssuedCertificates {
    entries: Mutex<Expiring<String, IssuedCertificate>>,
}

impl IssuedCertificates {
    pub fn new(config: &CertificateCacheConfig) -> Self {
        Self { entries: Mutex::new(Expiring::new(Duration::from_millis(config.ttl_ms), config.size)) }
    }

    /// Keeps the certificate `serial` (hex, any case) that a finalize answer just issued, for its download.
    pub fn keep(&self, serial: &str, certificate: IssuedCertificate) {
        self.lock().insert(serial.to_ascii_lowercase(), certificate);
    }

    /// The certificate `serial` (hex, lower case), if a finalize answer issued it lately; it is not kept any longer.
    pub fn take(&self, serial: &str) -> Option<IssuedCertificate> {
        self.lock().take(&serial.to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Expiring<String, IssuedCertificate>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_serves_one_download() {
        let issued = IssuedCertificates::new(&CertificateCacheConfig::default());
        issued.keep("00AB", IssuedCertificate { account_id: 7, der: vec![1, 2, 3] });
        let copy = issued.take("00ab").expect("kept under its lower-case serial");
        assert_eq!((copy.account_id, copy.der), (7, vec![1, 2, 3]));
        assert!(issued.take("00ab").is_none(), "used once");

        let off = IssuedCertificates::new(&CertificateCacheConfig { ttl_ms: 0, size: 10 });
        off.keep("01", IssuedCertificate { account_id: 7, der: vec![1] });
        assert!(off.take("01").is_none());
    }
}
