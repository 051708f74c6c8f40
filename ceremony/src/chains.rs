//! Longer and alternate chains for the dev hierarchy (Pebble's `PEBBLE_CHAIN_LENGTH` and `PEBBLE_ALTERNATE_ROOTS`):
//! the leaves stay signed by E1 and R1, whose keys and names are certified again — cross-signed — below upper
//! intermediates and other roots, so that one leaf verifies through every chain, as a cross-signed production
//! hierarchy does. Each configuration's chains are kept in their own directory and reused across restarts.

use std::path::PathBuf;

use time::OffsetDateTime;

use crate::dev_pki::{Certified, DevPki, Files, RENEW_BEFORE, Spec, ensure};
use quarry_ca::files;

use crate::Error;

/// The most intermediates between a root and a leaf, and the most alternate roots, `quarry dev` makes.
pub const MAX_CHAIN_LENGTH: u8 = 8;
pub const MAX_ALTERNATE_ROOTS: u8 = 8;

/// One chain a leaf may be served with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevChain {
    /// The chain's root and its key.
    pub root_pem: PathBuf,
    pub root_key: PathBuf,
    /// What follows an E1 leaf and an R1 leaf on this chain (the leaf's issuer first, the root left out), in order.
    pub issuer_chains: [PathBuf; 2],
}

impl DevChain {
    /// The chain of the dev hierarchy itself: root X1 above E1 and R1.
    fn of(pki: &DevPki) -> Self {
        Self {
            root_pem: pki.root_pem.clone(),
            root_key: pki.root_pem.with_file_name("root.key.pem"),
            issuer_chains: [pki.intermediate_pem.clone(), pki.rsa_intermediate_pem.clone()],
        }
    }
}

/// The chains of a hierarchy with `chain_length` intermediates between each root and a leaf and `alternate_roots`
/// roots besides the first: chain 0 first (the dev root's own when `chain_length` is 1). Made in `pki`'s
/// `webpki/chains/` on first use, and reused.
pub fn ensure_dev_chains(pki: &DevPki, chain_length: u8, alternate_roots: u8) -> Result<Vec<DevChain>, Error> {
    if !(1..=MAX_CHAIN_LENGTH).contains(&chain_length) {
        return Err(Error::Chains(format!("a chain has 1 to {MAX_CHAIN_LENGTH} intermediates, not {chain_length}")));
    }
    if alternate_roots > MAX_ALTERNATE_ROOTS {
        return Err(Error::Chains(format!("at most {MAX_ALTERNATE_ROOTS} alternate roots, not {alternate_roots}")));
    }
    let dir = pki.root_pem.with_file_name("chains").join(format!("length-{chain_length}"));
    let now = OffsetDateTime::now_utc();
    let issuers = [
        (Spec::intermediate(), files::read_key(&pki.intermediate_key)?, "e1"),
        (Spec::rsa_intermediate(), files::read_key(&pki.rsa_intermediate_key)?, "r1"),
    ];
    let mut chains = Vec::new();
    for index in 0..=alternate_roots {
        if index == 0 && chain_length == 1 {
            chains.push(DevChain::of(pki));
            continue;
        }
        let chain_dir = dir.join(format!("chain-{index}"));
        std::fs::create_dir_all(&chain_dir).map_err(|source| Error::Io { path: chain_dir.clone(), source })?;
        let root_files = Files { cert: chain_dir.join("root.pem"), key: chain_dir.join("root.key.pem") };
        let root_name = match index {
            0 => format!("(DEV) Quarry Root X1, chain length {chain_length}"),
            n => format!("(DEV) Quarry Alternate Root X{}", n + 1),
        };
        let mut above = ensure(&root_files, &Spec::ca(Some("Quarry"), &root_name, 10, chain_length), None, now)?;
        // From the root down: upper intermediate n is followed by n more CA certificates before a leaf.
        let mut uppers = Vec::new();
        for level in (1..chain_length).rev() {
            let files = Files {
                cert: chain_dir.join(format!("upper-{level}.pem")),
                key: chain_dir.join(format!("upper-{level}.key.pem")),
            };
            let name = format!("(DEV) Quarry Intermediate #{level}, chain {index}");
            let upper = ensure(&files, &Spec::ca(Some("Quarry"), &name, 5, level), Some(&above), now)?;
            uppers.push(upper.der.clone());
            above = upper;
        }
        let mut issuer_chains = Vec::new();
        for (spec, key, name) in &issuers {
            let path = chain_dir.join(format!("{name}-chain.pem"));
            if still_certified_by(&path, &above) {
                issuer_chains.push(path);
                continue;
            }
            let cross = cross_sign(spec, key, &above, now)?;
            let mut pem = files::certificate_pem(&cross);
            for upper in uppers.iter().rev() {
                pem.push_str(&files::certificate_pem(upper));
            }
            files::write_atomically(&path, &pem, false)?;
            issuer_chains.push(path);
        }
        let [e1, r1]: [PathBuf; 2] = issuer_chains.try_into().map_err(|_| Error::Chains("two issuers".into()))?;
        chains.push(DevChain { root_pem: root_files.cert, root_key: root_files.key, issuer_chains: [e1, r1] });
    }
    Ok(chains)
}

/// Whether the chain file at `path` begins with a certificate `parent` signed that is not close to expiry: kept, so
/// that a restart serves the same chains.
fn still_certified_by(path: &std::path::Path, parent: &Certified) -> bool {
    use x509_parser::prelude::FromDer;
    let Ok(der) = files::read_certificate(path) else { return false };
    let (Ok((_, cert)), Ok((_, parent))) = (
        x509_parser::certificate::X509Certificate::from_der(&der),
        x509_parser::certificate::X509Certificate::from_der(&parent.der),
    ) else {
        return false;
    };
    let renew_at = OffsetDateTime::now_utc() + RENEW_BEFORE;
    cert.verify_signature(Some(parent.public_key())).is_ok() && cert.validity().not_after.to_datetime() > renew_at
}

/// The issuer `spec` with `key` certified again by `parent`: the same name and key (so the same key identifier),
/// another issuer.
fn cross_sign(spec: &Spec, key: &rcgen::KeyPair, parent: &Certified, now: OffsetDateTime) -> Result<Vec<u8>, Error> {
    let mut params = spec.params(now)?;
    params.use_authority_key_identifier_extension = true;
    let issuer = rcgen::Issuer::from_ca_cert_der(&parent.der.as_slice().into(), &parent.key)?;
    Ok(params.signed_by(key, &issuer)?.der().to_vec())
}

/// Where `ensure_dev_chains` would put nothing: the dev hierarchy's own single chain.
pub fn single(pki: &DevPki) -> Vec<DevChain> {
    vec![DevChain::of(pki)]
}
