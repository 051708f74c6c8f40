//! tls-alpn-01 validation (RFC 8737, IP identifiers per RFC 8738): a TLS handshake offering only the `acme-tls/1`
//! protocol, whose self-signed certificate must name exactly the identifier and carry the critical
//! id-pe-acmeIdentifier extension holding the SHA-256 digest of the key authorization.
//!
//! No certificate chain is checked: the client proves control by answering the handshake with that extension, so
//! trust comes from the extension, not from a CA. The handshake signature is still verified, which shows the server
//! holds the certificate's key.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quarry_core::model::{ChallengeType, ValidationRecord};
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::addresses::{AddressPolicy, connect_error};
use crate::resolver::Resolver;
use crate::validator::{Attempt, Validator};

/// The only protocol the va offers (RFC 8737 §6.2).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// id-pe-acmeIdentifier (RFC 8737 §6.1).
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";
/// The start of every detail about a certificate that does not prove control, as Boulder words it.
const BAD_CERT: &str = "Incorrect validation certificate for tls-alpn-01 challenge.";

/// What a tls-alpn-01 validation may do; the va's configuration supplies it.
#[derive(Debug, Clone)]
pub struct TlsAlpnPolicy {
    /// The port every handshake goes to (443 on the Internet).
    pub port: u16,
    /// How long one address may take to accept the connection, and then to complete the handshake.
    pub connect_timeout: Duration,
    pub perspective: String,
    pub addresses: AddressPolicy,
}

/// Performs the tls-alpn-01 handshake against the identifier's addresses (or the IP identifier itself).
pub struct Tlsalpn01Validator {
    resolver: Arc<dyn Resolver>,
    policy: TlsAlpnPolicy,
    connector: TlsConnector,
}

impl Tlsalpn01Validator {
    pub fn new(resolver: Arc<dyn Resolver>, policy: TlsAlpnPolicy) -> Self {
        Self { resolver, policy, connector: TlsConnector::from(Arc::new(client_config())) }
    }
}

/// TLS 1.2 and 1.3 over aws-lc-rs, `acme-tls/1` only, no resumption: every validation is a fresh handshake.
fn client_config() -> ClientConfig {
    permissive_client_config(vec![ACME_TLS_ALPN.to_vec()])
}

/// A client that accepts any certificate (still checking the handshake signature) offering `alpn`: for tls-alpn-01,
/// and for http-01 redirects to https, where the certificate proves nothing either (Boulder does not check it).
pub(crate) fn permissive_client_config(alpn: Vec<Vec<u8>>) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AnyCertificate { algorithms: provider.signature_verification_algorithms });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // The default provider supports both versions, so this cannot fail.
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// Accepts any certificate chain (the acmeIdentifier extension is what is checked afterwards) but verifies the
/// handshake signatures, so the server must hold the key of the certificate it presents.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (algorithm, public_key) = public_key_of(cert)?;
        // TLS 1.2 schemes do not name the curve, so every algorithm the scheme maps to is a candidate; the one for
        // the certificate's key type is used, as webpki does.
        let candidate = self
            .algorithms
            .mapping
            .iter()
            .filter(|(scheme, _)| *scheme == dss.scheme)
            .flat_map(|(_, algorithms)| algorithms.iter())
            .find(|alg| alg.public_key_alg_id().as_ref() == algorithm);
        // No algorithm of this scheme for this key type: the signature cannot be one made by the certificate's key.
        let Some(candidate) = candidate else { return Err(CertificateError::BadSignature.into()) };
        candidate
            .verify_signature(&public_key, message, dss.signature())
            .map(|()| HandshakeSignatureValid::assertion())
            .map_err(|_| CertificateError::BadSignature.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = spki_of(cert)?;
        rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// rustls' `verify_tls1x_signature` parse the certificate with webpki, which refuses the critical acmeIdentifier
// extension it does not know; so the key is taken out with x509-parser, and only the key is handed on.

/// The certificate's SubjectPublicKeyInfo, DER.
fn spki_of(cert: &CertificateDer<'_>) -> Result<SubjectPublicKeyInfoDer<'static>, rustls::Error> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|_| CertificateError::BadEncoding)?;
    Ok(SubjectPublicKeyInfoDer::from(parsed.tbs_certificate.subject_pki.raw.to_vec()))
}

/// The contents of the certificate key's AlgorithmIdentifier (the form `SignatureVerificationAlgorithm` uses) and
/// the key itself.
fn public_key_of(cert: &CertificateDer<'_>) -> Result<(Vec<u8>, Vec<u8>), rustls::Error> {
    let spki = spki_of(cert)?;
    split_spki(spki.as_ref()).ok_or_else(|| CertificateError::BadEncoding.into())
}

/// `SEQUENCE { AlgorithmIdentifier SEQUENCE, subjectPublicKey BIT STRING }`, with no unused bits in the key.
fn split_spki(spki: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (0x30, body, []) = der_tlv(spki)? else { return None };
    let (0x30, algorithm, rest) = der_tlv(body)? else { return None };
    let (0x03, bits, []) = der_tlv(rest)? else { return None };
    let (0, key) = bits.split_first()? else { return None };
    Some((algorithm.to_vec(), key.to_vec()))
}

/// One DER tag-length-value: the tag, the contents and what follows.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        (bytes.iter().fold(0usize, |len, byte| (len << 8) | usize::from(*byte)), rest)
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[tonic::async_trait]
impl Validator for Tlsalpn01Validator {
    fn challenge_type(&self) -> ChallengeType {
        ChallengeType::TlsAlpn01
    }

    async fn validate(&self, attempt: Attempt<'_>, records: &mut Vec<ValidationRecord>) -> Result<(), Problem> {
        let identifier = attempt.identifier;
        if identifier.is_wildcard() {
            return Err(Problem::malformed("tls-alpn-01 cannot validate a wildcard identifier; use dns-01"));
        }
        let (sni, expected, addresses) = match identifier.kind {
            IdentifierType::Ip => {
                let ip: IpAddr = identifier.value.parse().map_err(|_| {
                    Problem::malformed(format!("{:?} is not an IP address", shorten(&identifier.value)))
                })?;
                records.push(self.record(identifier));
                self.policy.addresses.check(ip)?;
                (reverse_dns_name(ip), Expected::Ip(ip), vec![ip])
            }
            IdentifierType::Dns => {
                // The record says what was being looked up even if the lookup is what fails.
                records.push(ValidationRecord {
                    resolver_addresses: self.resolver.addresses(),
                    ..self.record(identifier)
                });
                let (ips, resolved) = self.policy.addresses.resolve(self.resolver.as_ref(), &identifier.value).await?;
                let last = records.len() - 1;
                records[last].addresses_resolved = resolved.iter().map(IpAddr::to_string).collect();
                (identifier.value.to_ascii_lowercase(), Expected::Dns(identifier.value.to_ascii_lowercase()), ips)
            }
        };
        let last = records.len() - 1;
        let record = &mut records[last];
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| Problem::malformed(format!("{:?} cannot be sent as a TLS server name", shorten(&sni))))?;
        let (ip, certificates) = self.handshake(&addresses, server_name, record).await?;
        let addr = SocketAddr::new(ip, self.policy.port);
        check_certificate(&certificates, &expected, &identifier.value, addr, attempt.key_authorization)
    }
}

/// What the certificate's single subjectAltName must be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// Lower case, compared case-insensitively.
    Dns(String),
    Ip(IpAddr),
}

impl Tlsalpn01Validator {
    fn record(&self, identifier: &Identifier) -> ValidationRecord {
        ValidationRecord {
            hostname: identifier.value.clone(),
            port: self.policy.port.to_string(),
            perspective: self.policy.perspective.clone(),
            ..Default::default()
        }
    }

    /// Connects to the first address that accepts (IPv6 first, then IPv4) and completes one handshake there; a
    /// handshake failure is final, since the server was reached.
    async fn handshake(
        &self,
        addresses: &[IpAddr],
        server_name: ServerName<'static>,
        record: &mut ValidationRecord,
    ) -> Result<(IpAddr, Vec<CertificateDer<'static>>), Problem> {
        let mut ordered: Vec<IpAddr> = addresses.iter().copied().filter(IpAddr::is_ipv6).collect();
        ordered.extend(addresses.iter().copied().filter(IpAddr::is_ipv4));
        let timeout = self.policy.connect_timeout;
        let mut failures = Vec::new();
        for ip in ordered {
            record.addresses_tried.push(ip.to_string());
            let addr = SocketAddr::new(ip, self.policy.port);
            let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    failures.push(format!("{addr}: {}", connect_error(&err)));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{addr}: Timeout during connect (likely firewall problem)"));
                    continue;
                }
            };
            quarry_core::tcp::no_delay(&mut stream);
            record.address_used = ip.to_string();
            let tls_failed = |why: String| {
                Problem::new(
                    ErrorKind::Tls,
                    format!("{addr}: Error getting validation data: TLS handshake failed: {why}"),
                )
            };
            let tls = match tokio::time::timeout(timeout, self.connector.connect(server_name, stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => return Err(tls_failed(err.to_string())),
                Err(_) => return Err(tls_failed("timed out".to_owned())),
            };
            let (_, connection) = tls.get_ref();
            if connection.alpn_protocol() != Some(ACME_TLS_ALPN) {
                return Err(Problem::new(
                    ErrorKind::Unauthorized,
                    format!("{addr}: Cannot negotiate ALPN protocol \"acme-tls/1\" for tls-alpn-01 challenge"),
                ));
            }
            let certificates = connection.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
            // Nothing is sent over the connection; dropping it closes it.
            return Ok((ip, certificates));
        }
        Err(Problem::new(ErrorKind::Connection, failures.join("; ")))
    }
}

/// The checks of RFC 8737 §3 on the leaf certificate: one subjectAltName, the identifier, and the critical
/// acmeIdentifier extension holding SHA-256(key authorization).
fn check_certificate(
    certificates: &[CertificateDer<'_>],
    expected: &Expected,
    shown: &str,
    addr: SocketAddr,
    key_authorization: &str,
) -> Result<(), Problem> {
    let unauthorized = |why: String| Problem::new(ErrorKind::Unauthorized, why);
    let Some(leaf) = certificates.first() else {
        return Err(unauthorized(format!("{addr}: No certs presented for tls-alpn-01 challenge")));
    };
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| {
        unauthorized(format!("{BAD_CERT} Requested {shown} from {addr}. The certificate cannot be parsed."))
    })?;
    let names =
        san_names(&cert).map_err(|why| unauthorized(format!("{BAD_CERT} Requested {shown} from {addr}. {why}")))?;
    let matches = match (names.as_slice(), expected) {
        ([San::Dns(name)], Expected::Dns(want)) => name.eq_ignore_ascii_case(want),
        ([San::Ip(ip)], Expected::Ip(want)) => ip == want,
        _ => false,
    };
    if !matches {
        let shown_names: Vec<String> = names.iter().map(San::to_string).collect();
        return Err(unauthorized(format!(
            "{BAD_CERT} Requested {shown} from {addr}. Received certificate containing: {}",
            if shown_names.is_empty() { "no names".to_owned() } else { shown_names.join(", ") }
        )));
    }
    check_acme_identifier(&cert, key_authorization)
        .map_err(|why| unauthorized(format!("{BAD_CERT} Requested {shown} from {addr}. {why}")))
}

/// One subjectAltName entry, as far as tls-alpn-01 cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum San {
    Dns(String),
    Ip(IpAddr),
    /// Any other kind of name, or an IP address of odd length; never acceptable.
    Other(String),
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "{}", shorten(name)),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Other(what) => write!(f, "{what}"),
        }
    }
}

fn san_names(cert: &X509Certificate<'_>) -> Result<Vec<San>, String> {
    let extension = cert
        .subject_alternative_name()
        .map_err(|_| "The subjectAltName extension is malformed or repeated.".to_owned())?;
    let Some(extension) = extension else { return Ok(Vec::new()) };
    Ok(extension
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => San::Dns((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => San::Ip(IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())),
                16 => San::Ip(IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())),
                _ => San::Other("a malformed IP address".to_owned()),
            },
            _ => San::Other("a name that is neither a DNS name nor an IP address".to_owned()),
        })
        .collect())
}

/// The extension must appear once, be critical, and hold `OCTET STRING (SHA-256(key authorization))`.
fn check_acme_identifier(cert: &X509Certificate<'_>, key_authorization: &str) -> Result<(), String> {
    let mut found = cert.extensions().iter().filter(|ext| ext.oid.to_id_string() == ACME_IDENTIFIER_OID);
    let Some(extension) = found.next() else { return Err("Missing acmeValidationV1 extension.".to_owned()) };
    if found.next().is_some() {
        return Err("More than one acmeValidationV1 extension.".to_owned());
    }
    if !extension.critical {
        return Err("acmeValidationV1 extension not critical.".to_owned());
    }
    if extension.value != expected_extension_value(key_authorization).as_slice() {
        return Err("Invalid acmeValidationV1 extension value: it is not the SHA-256 digest of the key authorization."
            .to_owned());
    }
    Ok(())
}

/// The DER encoding of the extension's value: an OCTET STRING of the 32-byte digest.
fn expected_extension_value(key_authorization: &str) -> Vec<u8> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let mut value = vec![0x04, 0x20];
    value.extend_from_slice(digest.as_ref());
    value
}

/// The name sent as SNI for an IP identifier (RFC 8738 §6): the address's reverse-DNS name.
pub fn reverse_dns_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_follow_rfc_8738() {
        assert_eq!(reverse_dns_name("192.0.2.1".parse().unwrap()), "1.2.0.192.in-addr.arpa");
        assert_eq!(reverse_dns_name("127.0.0.1".parse().unwrap()), "1.0.0.127.in-addr.arpa");
        assert_eq!(
            reverse_dns_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
        for ip in ["192.0.2.1", "2001:db8::1"] {
            assert!(ServerName::try_from(reverse_dns_name(ip.parse().unwrap())).is_ok(), "{ip}");
        }
    }

    const KEY_AUTHORIZATION: &str = "token.thumbprint";

    /// A self-signed certificate with `sans` and, when given, the acmeIdentifier extension `(content, critical)`.
    fn certificate(sans: Vec<rcgen::SanType>, extension: Option<(Vec<u8>, bool)>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        if let Some((content, critical)) = extension {
            let mut ext = rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 31], content);
            ext.set_criticality(critical);
            params.custom_extensions = vec![ext];
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn dns_san(name: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(name.try_into().unwrap())
    }

    fn check(cert: CertificateDer<'static>, expected: &Expected) -> Result<(), Problem> {
        let addr = SocketAddr::from(([192, 0, 2, 1], 443));
        check_certificate(&[cert], expected, "shown", addr, KEY_AUTHORIZATION)
    }

    #[test]
    fn certificates_are_checked_per_rfc_8737() {
        let good = Some((expected_extension_value(KEY_AUTHORIZATION), true));
        let name = Expected::Dns("example.com".into());
        let ip = Expected::Ip("192.0.2.1".parse().unwrap());
        assert!(check(certificate(vec![dns_san("Example.COM")], good.clone()), &name).is_ok());
        let ip_san = rcgen::SanType::IpAddress("192.0.2.1".parse().unwrap());
        assert!(check(certificate(vec![ip_san.clone()], good.clone()), &ip).is_ok());
        let failures = [
            (certificate(vec![dns_san("example.com")], None), &name, "Missing acmeValidationV1"),
            (
                certificate(vec![dns_san("example.com")], Some((expected_extension_value(KEY_AUTHORIZATION), false))),
                &name,
                "not critical",
            ),
            (
                certificate(vec![dns_san("example.com")], Some((expected_extension_value("x.y"), true))),
                &name,
                "Invalid acmeValidationV1 extension value",
            ),
            (certificate(vec![dns_san("example.com"), ip_san.clone()], good.clone()), &name, "192.0.2.1"),
            (certificate(vec![ip_san], good.clone()), &name, "containing: 192.0.2.1"),
            (certificate(vec![dns_san("example.com")], good.clone()), &ip, "containing: example.com"),
            (certificate(Vec::new(), good), &name, "no names"),
        ];
        for (cert, expected, detail) in failures {
            let problem = check(cert, expected).unwrap_err();
            assert_eq!(problem.kind, ErrorKind::Unauthorized, "{detail}");
            assert!(problem.detail.starts_with(BAD_CERT), "{}", problem.detail);
            assert!(problem.detail.contains(detail), "{detail}: {}", problem.detail);
        }
        let none = check_certificate(&[], &name, "shown", SocketAddr::from(([192, 0, 2, 1], 443)), "k");
        assert!(none.unwrap_err().detail.contains("No certs presented"));
        let garbage = check(CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]), &name).unwrap_err();
        assert!(garbage.detail.contains("cannot be parsed"), "{}", garbage.detail);
    }

    #[test]
    fn public_keys_are_taken_out_of_certificates_webpki_refuses() {
        let cert = certificate(vec![dns_san("example.com")], Some((expected_extension_value("k"), true)));
        let (algorithm, key) = public_key_of(&cert).unwrap();
        // id-ecPublicKey with the P-256 curve, what rcgen makes by default; the form the provider's algorithms use.
        assert_eq!(algorithm, rustls::pki_types::alg_id::ECDSA_P256.as_ref());
        assert_eq!(key.len(), 65);
        assert_eq!(key[0], 0x04);
        assert!(split_spki(&[0x30, 0x00]).is_none());
        assert!(der_tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert_eq!(der_tlv(&[0x04, 0x81, 0x01, 0xaa, 0xbb]), Some((0x04, &[0xaa][..], &[0xbb][..])));
    }

    #[test]
    fn the_extension_value_is_a_der_octet_string_of_the_digest() {
        let value = expected_extension_value("token.thumbprint");
        assert_eq!(value.len(), 34);
        assert_eq!(&value[..2], &[0x04, 0x20]);
        // SHA-256("abc"), the FIPS 180-2 example.
        let abc = expected_extension_value("abc");
        assert_eq!(abc[2..6], [0xba, 0x78, 0x16, 0xbf]);
    }
}
