//! `quarry ceremony`: an environment's issuing hierarchy from one ceremony file — a root (generated, or an existing
//! one) and ECDSA and RSA intermediates — named per environment, so that staging's is production's with
//! "(STAGING) " before every name, and the PKI sections of the ca, wfe and crl-updater configurations that point
//! at it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use quarry_ca::extensions::{authority_info_access, certificate_policies};
use quarry_ca::files;
use quarry_ca::issuance::{BACKDATE, random_serial};
use quarry_ca::pkcs11::{Pkcs11Config, Pkcs11Key, TokenKeyKind};

use crate::Error;

/// The serial prefix of hierarchy certificates; kept apart from subscriber certificates' prefixes by convention.
const HIERARCHY_SERIAL_PREFIX: u8 = 0x7e;

/// A ceremony file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyConfig {
    pub version: quarry_core::config::ConfigVersion,
    /// The root: its names before the environment's prefix.
    pub root: RootSpec,
    /// The issuing intermediates.
    pub intermediates: Vec<IntermediateSpec>,
    /// What differs per environment: the name prefix, the URLs, and an existing root to reuse.
    pub environments: BTreeMap<String, EnvironmentSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSpec {
    pub organization: String,
    pub common_name: String,
    pub key: KeySpec,
    pub validity_days: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntermediateSpec {
    /// Its short name: file names, and the path of its CRLs and certificate URL.
    pub name: String,
    pub common_name: String,
    pub key: KeySpec,
    pub validity_days: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    /// Put before every common name and organization, e.g. "(STAGING) "; empty for production.
    #[serde(default)]
    pub name_prefix: String,
    /// Issuer certificates are published at `<issuer_url_base><name>.der` (the root as `root.der`).
    pub issuer_url_base: String,
    /// CRLs are published at `<crl_url_base><name>/<shard>.crl` (the root's at `<crl_url_base>root.crl`).
    pub crl_url_base: String,
    /// Reuse this root instead of generating one.
    #[serde(default)]
    pub existing_root: Option<ExistingRoot>,
    /// Generate the keys on this PKCS#11 token (labelled `<environment>-root`, `<environment>-<name>`) instead of
    /// in PEM files.
    #[serde(default)]
    pub pkcs11: Option<CeremonyToken>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExistingRoot {
    pub cert: PathBuf,
    /// Its key in a PEM file; without it, the key labelled `<environment>-root` on the environment's token.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// The token a ceremony generates keys on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyToken {
    pub module: PathBuf,
    pub token_label: String,
    pub pin_file: PathBuf,
}

impl CeremonyToken {
    fn key(&self, key_label: String) -> Pkcs11Config {
        Pkcs11Config {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            pin_file: self.pin_file.clone(),
            key_label,
        }
    }
}

/// A hierarchy key, in a file or on a token; rcgen signs with either.
enum HierarchyKey {
    File(KeyPair),
    Token(Pkcs11Key),
}

impl rcgen::PublicKeyData for HierarchyKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::File(key) => key.der_bytes(),
            Self::Token(key) => key.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::File(key) => rcgen::PublicKeyData::algorithm(key),
            Self::Token(key) => rcgen::PublicKeyData::algorithm(key),
        }
    }
}

impl rcgen::SigningKey for HierarchyKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::File(key) => rcgen::SigningKey::sign(key, msg),
            Self::Token(key) => rcgen::SigningKey::sign(key, msg),
        }
    }
}

/// Where a generated key went: a file, or a token.
enum KeyPlace {
    File(PathBuf),
    Token(Pkcs11Config),
}

/// Generates a key on `token` labelled `label`, or without a token into the PEM file `path`.
fn generate_key(
    spec: KeySpec,
    token: Option<&CeremonyToken>,
    label: String,
    path: &Path,
) -> Result<(HierarchyKey, KeyPlace), Error> {
    let Some(token) = token else {
        let key = spec.generate()?;
        write_new(path, &key.serialize_pem(), true)?;
        return Ok((HierarchyKey::File(key), KeyPlace::File(path.to_owned())));
    };
    let config = token.key(label);
    let kind = match spec {
        KeySpec::EcdsaP256 => TokenKeyKind::EcdsaP256,
        KeySpec::EcdsaP384 => TokenKeyKind::EcdsaP384,
        KeySpec::Rsa2048 => TokenKeyKind::Rsa { bits: 2048 },
        KeySpec::Rsa3072 => TokenKeyKind::Rsa { bits: 3072 },
        KeySpec::Rsa4096 => TokenKeyKind::Rsa { bits: 4096 },
    };
    Ok((HierarchyKey::Token(Pkcs11Key::generate(&config, kind)?), KeyPlace::Token(config)))
}

/// The key types a hierarchy may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySpec {
    EcdsaP256,
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeySpec {
    fn generate(self) -> Result<KeyPair, Error> {
        let rsa = |size| KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size);
        Ok(match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            Self::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
            Self::Rsa2048 => rsa(rcgen::RsaKeySize::_2048)?,
            Self::Rsa3072 => rsa(rcgen::RsaKeySize::_3072)?,
            Self::Rsa4096 => rsa(rcgen::RsaKeySize::_4096)?,
        })
    }
}

/// What a ceremony wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeremonyOutput {
    pub root_pem: PathBuf,
    /// Each intermediate's name, certificate and key file (empty when the key is on a token).
    pub intermediates: Vec<(String, PathBuf, PathBuf)>,
    /// The PKI sections for the environment's overlay: `ca.toml`, `wfe.toml`, `crl-updater.toml`.
    pub pki_dir: PathBuf,
}

/// Runs the ceremony of `environment` from `config`, writing into `out` (which must not hold a hierarchy yet:
/// a ceremony never overwrites keys). The PKI sections name the files under `install_dir` when given (where the
/// deployment mounts them), else under `out`.
pub fn run_ceremony(
    config: &CeremonyConfig,
    environment: &str,
    out: &Path,
    install_dir: Option<&Path>,
) -> Result<CeremonyOutput, Error> {
    let invalid = |message: String| Error::Config(quarry_core::config::ConfigError::Invalid(message));
    let env = config.environments.get(environment).ok_or_else(|| {
        invalid(format!(
            "no environment {environment:?}; the file has {:?}",
            config.environments.keys().collect::<Vec<_>>()
        ))
    })?;
    for (field, url) in [("issuer_url_base", &env.issuer_url_base), ("crl_url_base", &env.crl_url_base)] {
        if !url.starts_with("http://") || !url.ends_with('/') {
            return Err(invalid(format!("environments.{environment}.{field} must be an http:// URL ending in '/'")));
        }
    }
    if config.intermediates.is_empty() {
        return Err(invalid("a hierarchy needs at least one intermediate".into()));
    }
    for intermediate in &config.intermediates {
        let name_ok = !intermediate.name.is_empty()
            && intermediate.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok || intermediate.name == "root" {
            return Err(invalid(format!(
                "intermediate name {:?} must be lowercase letters, digits and '-', not \"root\"",
                intermediate.name
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_owned(), source })?;
    let now = OffsetDateTime::now_utc();
    let organization = format!("{}{}", env.name_prefix, config.root.organization);

    let token = env.pkcs11.as_ref();
    let (root_der, root_key, root_pem) = match &env.existing_root {
        Some(existing) => {
            let der = files::read_certificate(&existing.cert)?;
            let key = match (&existing.key, token) {
                (Some(path), _) => HierarchyKey::File(files::read_key(path)?),
                (None, Some(token)) => HierarchyKey::Token(Pkcs11Key::open(&token.key(format!("{environment}-root")))?),
                (None, None) => return Err(invalid("existing_root needs a key file, or a token in pkcs11".into())),
            };
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| Error::Certificate { path: existing.cert.clone(), detail: e.to_string() })?;
            if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
                return Err(Error::Certificate {
                    path: existing.cert.clone(),
                    detail: "the existing root's key does not match it".into(),
                });
            }
            (der, key, existing.cert.clone())
        }
        None => {
            let (key, _) =
                generate_key(config.root.key, token, format!("{environment}-root"), &out.join("root.key.pem"))?;
            let mut params = ca_params(
                &organization,
                &format!("{}{}", env.name_prefix, config.root.common_name),
                now,
                config.root.validity_days,
            )?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            // A root signs certificates and CRLs only (BR §7.1.2.1.2), and names its own key as the authority's.
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.use_authority_key_identifier_extension = true;
            let cert = params.self_signed(&key)?;
            verify_signed_by(cert.der(), cert.der())?;
            let path = out.join("root.pem");
            write_new(&path, &cert.pem(), false)?;
            (cert.der().to_vec(), key, path)
        }
    };
    let root_issuer = rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(root_der.as_slice()), root_key)?;

    let mut intermediates = Vec::new();
    let mut places = Vec::new();
    for spec in &config.intermediates {
        let key_path = out.join(format!("{}.key.pem", spec.name));
        let (key, place) = generate_key(spec.key, token, format!("{environment}-{}", spec.name), &key_path)?;
        let common_name = format!("{}{}", env.name_prefix, spec.common_name);
        let mut params = ca_params(&organization, &common_name, now, spec.validity_days)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.crl_distribution_points =
            vec![rcgen::CrlDistributionPoint { uris: vec![format!("{}root.crl", env.crl_url_base)] }];
        params.custom_extensions.push(authority_info_access(&format!("{}root.der", env.issuer_url_base))?);
        params.custom_extensions.push(certificate_policies());
        let cert = params.signed_by(&key, &root_issuer)?;
        verify_signed_by(cert.der(), &root_der)?;
        let cert_path = out.join(format!("{}.pem", spec.name));
        write_new(&cert_path, &cert.pem(), false)?;
        tracing::info!(subject = common_name, path = %cert_path.display(), "generated intermediate");
        let key_file = if matches!(place, KeyPlace::File(_)) { key_path } else { PathBuf::new() };
        intermediates.push((spec.name.clone(), cert_path, key_file));
        places.push(place);
    }

    let pki_dir = out.join("pki");
    std::fs::create_dir_all(&pki_dir).map_err(|source| Error::Io { path: pki_dir.clone(), source })?;
    let installed = |path: &Path| match (install_dir, path.file_name()) {
        (Some(dir), Some(file)) => dir.join(file),
        _ => path.to_owned(),
    };
    let sections: Vec<(String, PathBuf, KeyPlace)> = intermediates
        .iter()
        .zip(places)
        .map(|((name, cert, _), place)| {
            let place = match place {
                KeyPlace::File(path) => KeyPlace::File(installed(&path)),
                token => token,
            };
            (name.clone(), installed(cert), place)
        })
        .collect();
    write_pki_sections(&pki_dir, environment, env, &sections)?;
    Ok(CeremonyOutput { root_pem, intermediates, pki_dir })
}

fn ca_params(
    organization: &str,
    common_name: &str,
    now: OffsetDateTime,
    validity_days: i64,
) -> Result<CertificateParams, Error> {
    if !(1..=25 * 366).contains(&validity_days) {
        return Err(Error::Request(format!("validity_days {validity_days} is not within 1..=25 years")));
    }
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    // countryName is a PrintableString (X.520); rcgen's default UTF8String would be malformed.
    name.push(DnType::CountryName, rcgen::DnValue::PrintableString("US".try_into()?));
    name.push(DnType::OrganizationName, organization);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial(HIERARCHY_SERIAL_PREFIX)?));
    params.not_before = now - BACKDATE;
    params.not_after = params.not_before + Duration::days(validity_days);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Checks `der`'s signature with `issuer`'s public key: a token's (or a library's) bad signature never reaches a
/// file.
fn verify_signed_by(der: &[u8], issuer: &[u8]) -> Result<(), Error> {
    let parse = |der| {
        X509Certificate::from_der(der)
            .map(|(_, cert)| cert)
            .map_err(|e| Error::SelfCheck(format!("hierarchy certificate: {e}")))
    };
    let (cert, issuer) = (parse(der)?, parse(issuer)?);
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|_| Error::SelfCheck("a hierarchy certificate's signature does not verify".into()))
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    if path.exists() {
        return Err(Error::Request(format!("{} exists already; a ceremony never overwrites", path.display())));
    }
    Ok(files::write_atomically(path, contents, private)?)
}

/// The overlay fragments: the ca's issuers, the wfe's chains and CRL issuers, the crl-updater's issuers.
fn write_pki_sections(
    dir: &Path,
    environment: &str,
    env: &EnvironmentSpec,
    intermediates: &[(String, PathBuf, KeyPlace)],
) -> Result<(), Error> {
    let header = format!("# The {environment} hierarchy's PKI section, written by `quarry ceremony`.\n");
    let quote = |path: &Path| toml::Value::String(path.display().to_string()).to_string();
    let mut ca = header.clone();
    let mut chains = Vec::new();
    let mut crl_issuers = String::new();
    for (name, cert, key) in intermediates {
        let _ = write!(
            ca,
            "\n[[issuers]]\ncert = {}\nissuer_url = \"{}{name}.der\"\ncrl_url_prefix = \"{}{name}/\"\n",
            quote(cert),
            env.issuer_url_base,
            env.crl_url_base
        );
        match key {
            KeyPlace::File(path) => {
                let _ = writeln!(ca, "key = {}", quote(path));
            }
            KeyPlace::Token(token) => {
                let _ = write!(
                    ca,
                    "[issuers.pkcs11]\nmodule = {}\ntoken_label = {}\npin_file = {}\nkey_label = {}\n",
                    quote(&token.module),
                    toml::Value::String(token.token_label.clone()),
                    quote(&token.pin_file),
                    toml::Value::String(token.key_label.clone())
                );
            }
        }
        chains.push(quote(cert));
        let _ = writeln!(crl_issuers, "{name} = {}", quote(cert));
    }
    let wfe = format!("{header}chains = [{}]\n\n[crl.issuers]\n{crl_issuers}", chains.join(", "));
    let crl_updater = format!("{header}issuers = [{}]\n", chains.join(", "));
    for (file, text) in [("ca.toml", ca), ("wfe.toml", wfe), ("crl-updater.toml", crl_updater)] {
        let path = dir.join(file);
        files::write_atomically(&path, &text, false)?;
    }
    Ok(())
}
