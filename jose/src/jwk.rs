//! Public keys in the one form Quarry knows them by. A key arrives as a JWK (account keys) or as a DER
//! SubjectPublicKeyInfo (CSRs, certificates, an operator's PEM); either is parsed exactly once into a [`Jwk`], which
//! can only hold a key Quarry accepts — RSA of 2048, 3072 or 4096 bits with e = 65537, ECDSA on P-256 or P-384 — and
//! re-encoded canonically (integers without padding, uncompressed points). [`Jwk::key_hash`] over that encoding is
//! the key's identity everywhere (blocked keys, the key→serial index, "the CSR key is not the account key"), so no
//! second encoding of a key can slip past a check made on the first.

use std::sync::OnceLock;

use aws_lc_rs::digest;
use num_bigint::BigUint;
use serde_json::{Map, Value};

use crate::algorithm::Algorithm;
use crate::base64url::{b64_decode, b64_encode};
use crate::der::{self, DerError, Element, TAG_BIT_STRING, TAG_OID, TAG_SEQUENCE};
use crate::error::{JoseError, malformed};

/// The RSA modulus sizes accepted, in bits.
pub const RSA_SIZES: [usize; 3] = [2048, 3072, 4096];
/// The one RSA public exponent accepted.
pub const RSA_EXPONENT: u64 = 65_537;

fn bad_key(detail: impl Into<String>) -> JoseError {
    JoseError::BadPublicKey(detail.into())
}

/// The elliptic curves accepted for ECDSA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    P256,
    P384,
}

/// A short Weierstrass curve y² = x³ − 3x + b over the prime field p (both NIST curves have a = −3).
struct CurveField {
    p: BigUint,
    b: BigUint,
}

impl EcCurve {
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    /// The curve's field and constant (FIPS 186-5 / SP 800-186 §3.2.1).
    fn field(self) -> &'static CurveField {
        static P256: OnceLock<CurveField> = OnceLock::new();
        static P384: OnceLock<CurveField> = OnceLock::new();
        let hex = |s: &str| BigUint::parse_bytes(s.as_bytes(), 16).unwrap_or_default();
        match self {
            Self::P256 => P256.get_or_init(|| CurveField {
                p: hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"),
                b: hex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b"),
            }),
            Self::P384 => P384.get_or_init(|| CurveField {
                p: hex(
                    "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
                ),
                b: hex(
                    "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
                ),
            }),
        }
    }

    /// x³ − 3x + b mod p: what y² must be for a point at `x`.
    fn curve_rhs(self, x: &BigUint) -> BigUint {
        let CurveField { p, b } = self.field();
        // Two products rather than `modpow`, whose Montgomery set-up costs more than the whole cube for an
        // exponent of 3.
        let x3 = (x * x % p) * x % p;
        (x3 + b + p * 3u32 - (x * 3u32) % p) % p
    }

    /// Whether (x, y) is a point of the curve (not the point at infinity, which has no affine coordinates).
    fn contains(self, x: &[u8], y: &[u8]) -> bool {
        let p = &self.field().p;
        let (x, y) = (BigUint::from_bytes_be(x), BigUint::from_bytes_be(y));
        x < *p && y < *p && (&y * &y) % p == self.curve_rhs(&x)
    }

    /// The y of the point at `x` whose parity is `odd`, from a compressed point (SEC 1 §2.3.4). Both curves have
    /// p ≡ 3 (mod 4), so the square root is a single exponentiation.
    fn decompress(self, x: &[u8], odd: bool) -> Option<Vec<u8>> {
        let p = &self.field().p;
        let x = BigUint::from_bytes_be(x);
        if x >= *p {
            return None;
        }
        let rhs = self.curve_rhs(&x);
        let mut y = rhs.modpow(&((p + 1u32) >> 2), p);
        if (&y * &y) % p != rhs {
            return None;
        }
        if y.bit(0) != odd {
            if y == BigUint::ZERO {
                return None;
            }
            y = p - y;
        }
        Some(fixed_width(&y.to_bytes_be(), self.coordinate_len()))
    }
}

fn fixed_width(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0; len.saturating_sub(bytes.len())];
    out.extend_from_slice(bytes);
    out
}

/// A public key Quarry accepts, in canonical form: EC coordinates at the curve's width, RSA integers without
/// leading zeros. Only [`Jwk::from_json`] and [`Jwk::from_spki_der`] (and key generation) make one, so holding a
/// `Jwk` means holding an allowed key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Jwk {
    Ec { crv: EcCurve, x: Vec<u8>, y: Vec<u8> },
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// Members that only a private key has; a JWK carrying one is refused rather than silently trimmed.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// The members a public JWK of an accepted type may carry (RFC 7517 §4, RFC 7518 §6.2.1 and §6.3.1).
const PUBLIC_MEMBERS: &[&str] = &["kty", "crv", "x", "y", "n", "e", "alg", "kid", "use", "key_ops", "ext"];

pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[first..].to_vec()
}

fn member<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, JoseError> {
    object
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("JWK is missing the string member {name:?}")))
}

// AlgorithmIdentifier OIDs, as encoded elements: id-ecPublicKey and rsaEncryption, and the named curves.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA_ENCRYPTION: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const DER_NULL: &[u8] = &[0x05, 0x00];

fn der_error(e: DerError) -> JoseError {
    malformed(format!("public key: {e}"))
}

impl Jwk {
    /// An EC key, checked to lie on its curve.
    pub fn ec(crv: EcCurve, x: Vec<u8>, y: Vec<u8>) -> Result<Self, JoseError> {
        if x.len() != crv.coordinate_len() || y.len() != crv.coordinate_len() {
            return Err(malformed(format!("EC key coordinates have the wrong length for {}", crv.name())));
        }
        if !crv.contains(&x, &y) {
            return Err(bad_key(format!("the EC key is not a point on {}", crv.name())));
        }
        Ok(Self::Ec { crv, x, y })
    }

    /// An RSA key of an accepted size and exponent with an odd modulus (`n`, `e` big-endian, leading zeros allowed).
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<Self, JoseError> {
        let (n, e) = (strip_leading_zeros(n), strip_leading_zeros(e));
        let bits = n.first().map_or(0, |first| n.len() * 8 - first.leading_zeros() as usize);
        if !RSA_SIZES.contains(&bits) {
            return Err(bad_key(format!("RSA keys must be 2048, 3072 or 4096 bits, not {bits}")));
        }
        let exponent = (e.len() <= 8).then(|| e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
        if exponent != Some(RSA_EXPONENT) {
            return Err(bad_key("RSA keys must use the public exponent 65537"));
        }
        if n.last().is_none_or(|low| low % 2 == 0) {
            return Err(bad_key("the RSA modulus is even"));
        }
        Ok(Self::Rsa { n, e })
    }

    /// Parses a public JWK from its JSON object form.
    pub fn from_json(value: &Value) -> Result<Self, JoseError> {
        let object = value.as_object().ok_or_else(|| malformed("JWK is not a JSON object"))?;
        if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| object.contains_key(**m)) {
            return Err(malformed(format!("JWK contains the private member {private:?}")));
        }
        let key = match member(object, "kty")? {
            "EC" => {
                let crv = match member(object, "crv")? {
                    "P-256" => EcCurve::P256,
                    "P-384" => EcCurve::P384,
                    other => return Err(bad_key(format!("EC curve {other:?} is not accepted; use P-256 or P-384"))),
                };
                Self::ec(crv, b64_decode(member(object, "x")?)?, b64_decode(member(object, "y")?)?)?
            }
            "RSA" => Self::rsa(&b64_decode(member(object, "n")?)?, &b64_decode(member(object, "e")?)?)?,
            other => {
                return Err(bad_key(format!(
                    "key type {other:?} is not accepted; use an RSA or an EC (P-256, P-384) key"
                )));
            }
        };
        if let Some(unknown) = object.keys().find(|name| !PUBLIC_MEMBERS.contains(&name.as_str())) {
            return Err(malformed(format!("JWK member {unknown:?} is not one a public {} key has", key.kind())));
        }
        if matches!(&key, Self::Ec { .. }) && (object.contains_key("n") || object.contains_key("e"))
            || matches!(&key, Self::Rsa { .. }) && ["crv", "x", "y"].iter().any(|member| object.contains_key(*member))
        {
            return Err(malformed(format!("JWK mixes the members of RSA and EC keys in a {} key", key.kind())));
        }
        if let Some(alg) = object.get("alg")
            && alg.as_str() != Some(key.algorithm().as_str())
        {
            return Err(malformed(format!("JWK \"alg\" {alg} does not match its {} key", key.kind())));
        }
        Ok(key)
    }

    /// Parses a JWK from JSON bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, JoseError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|_| malformed("JWK is not valid JSON"))?;
        Self::from_json(&value)
    }

    /// Parses a DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7; RFC 3279 and RFC 5480 for the algorithms): nothing
    /// may follow it, RSA parameters must be NULL, EC parameters a named curve, and an EC point may come
    /// compressed or not.
    pub fn from_spki_der(spki: &[u8]) -> Result<Self, JoseError> {
        let outer = der::read_exact(spki, TAG_SEQUENCE).map_err(der_error)?;
        let [algorithm, bits] = der::children(outer.content).map_err(der_error)?[..] else {
            return Err(malformed("public key: a SubjectPublicKeyInfo has exactly two members"));
        };
        if algorithm.tag != TAG_SEQUENCE || bits.tag != TAG_BIT_STRING {
            return Err(malformed("public key: not a SubjectPublicKeyInfo"));
        }
        let key = match bits.content {
            [0, key @ ..] => key,
            _ => return Err(malformed("public key: the key's BIT STRING has unused bits")),
        };
        let identifier = der::children(algorithm.content).map_err(der_error)?;
        match identifier[..] {
            [oid, parameters] if oid.encoded == OID_RSA_ENCRYPTION => {
                if parameters.encoded != DER_NULL {
                    return Err(malformed("public key: rsaEncryption parameters must be NULL"));
                }
                let sequence = der::read_exact(key, TAG_SEQUENCE).map_err(der_error)?;
                let [n, e] = der::children(sequence.content).map_err(der_error)?[..] else {
                    return Err(malformed("public key: an RSAPublicKey has exactly two integers"));
                };
                Self::rsa(
                    der::read_unsigned_integer(&n).map_err(der_error)?,
                    der::read_unsigned_integer(&e).map_err(der_error)?,
                )
            }
            [oid, curve] if oid.encoded == OID_EC_PUBLIC_KEY => Self::from_ec_point(named_curve(&curve)?, key),
            [oid, ..] if oid.encoded == OID_RSA_ENCRYPTION || oid.encoded == OID_EC_PUBLIC_KEY => {
                Err(malformed("public key: the algorithm's parameters are missing or extra"))
            }
            [oid, ..] if oid.tag == TAG_OID => {
                Err(bad_key("the key's algorithm is not accepted; use an RSA or an EC (P-256, P-384) key"))
            }
            _ => Err(malformed("public key: the AlgorithmIdentifier does not parse")),
        }
    }

    /// An EC point in SEC 1 form: `04‖x‖y`, or `02‖x` / `03‖x` compressed.
    fn from_ec_point(crv: EcCurve, point: &[u8]) -> Result<Self, JoseError> {
        let len = crv.coordinate_len();
        match point {
            [0x04, coordinates @ ..] if coordinates.len() == 2 * len => {
                let (x, y) = coordinates.split_at(len);
                Self::ec(crv, x.to_vec(), y.to_vec())
            }
            [prefix @ (0x02 | 0x03), x @ ..] if x.len() == len => {
                let y = crv
                    .decompress(x, *prefix == 0x03)
                    .ok_or_else(|| bad_key(format!("the EC key is not a point on {}", crv.name())))?;
                Self::ec(crv, x.to_vec(), y)
            }
            _ => Err(malformed(format!("public key: not an EC point on {}", crv.name()))),
        }
    }

    /// "RSA" or "EC", for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ec { .. } => "EC",
            Self::Rsa { .. } => "RSA",
        }
    }

    /// The one JWS algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Rsa { .. } => Algorithm::Rs256,
            Self::Ec { crv: EcCurve::P256, .. } => Algorithm::Es256,
            Self::Ec { crv: EcCurve::P384, .. } => Algorithm::Es384,
        }
    }

    /// Whether `alg` is the one algorithm this key may sign with.
    pub fn algorithm_allowed(&self, alg: Algorithm) -> bool {
        self.algorithm() == alg
    }

    /// The RFC 7638 canonical JSON: required members only, in lexicographic order, no whitespace.
    pub fn canonical_json(&self) -> String {
        match self {
            Self::Ec { crv, x, y } => {
                format!(r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#, crv.name(), b64_encode(x), b64_encode(y))
            }
            Self::Rsa { n, e } => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64_encode(e), b64_encode(n)),
        }
    }

    /// The JWK as a JSON value (its canonical members).
    pub fn to_json(&self) -> Value {
        serde_json::from_str(&self.canonical_json()).unwrap_or(Value::Null)
    }

    /// RFC 7638 thumbprint: base64url SHA-256 of the canonical JSON (key authorizations).
    pub fn thumbprint(&self) -> String {
        b64_encode(&self.thumbprint_sha256())
    }

    /// SHA-256 of the canonical JSON: how the sa finds an account by its key (RFC 8555 §7.3.1).
    pub fn thumbprint_sha256(&self) -> [u8; 32] {
        sha256(self.canonical_json().as_bytes())
    }

    /// The RSA modulus, for the checks too costly for every parse (Fermat factorization).
    pub fn rsa_modulus(&self) -> Option<&[u8]> {
        match self {
            Self::Rsa { n, .. } => Some(n),
            Self::Ec { .. } => None,
        }
    }

    /// The key as the subjectPublicKey BIT STRING of a SubjectPublicKeyInfo carries it: the uncompressed point
    /// (EC) or the DER RSAPublicKey; what aws-lc-rs verifies signatures with.
    pub fn subject_public_key(&self) -> Vec<u8> {
        match self {
            Self::Ec { x, y, .. } => [&[0x04][..], x, y].concat(),
            Self::Rsa { n, e } => {
                der::encode(TAG_SEQUENCE, &[der::encode_unsigned_integer(n), der::encode_unsigned_integer(e)].concat())
            }
        }
    }

    /// The canonical DER SubjectPublicKeyInfo: what Quarry's certificates carry for this key.
    pub fn spki_der(&self) -> Vec<u8> {
        let algorithm = match self {
            Self::Ec { crv, .. } => {
                let curve = if *crv == EcCurve::P256 { OID_P256 } else { OID_P384 };
                der::encode(TAG_SEQUENCE, &[OID_EC_PUBLIC_KEY, curve].concat())
            }
            Self::Rsa { .. } => der::encode(TAG_SEQUENCE, &[OID_RSA_ENCRYPTION, DER_NULL].concat()),
        };
        let bits = der::encode(TAG_BIT_STRING, &[&[0][..], &self.subject_public_key()].concat());
        der::encode(TAG_SEQUENCE, &[algorithm, bits].concat())
    }

    /// The key's identity: SHA-256 of [`Jwk::spki_der`]. The one key hash of blocked keys, the key→serial index and
    /// every comparison of keys.
    pub fn key_hash(&self) -> [u8; 32] {
        spki_sha256(&self.spki_der())
    }

    /// The key hash of a DER SubjectPublicKeyInfo in whatever encoding it comes (a compressed point, say): parsed,
    /// re-encoded canonically, hashed. A key Quarry does not accept has none: no account or certificate can hold it.
    pub fn key_hash_of_spki(spki_der: &[u8]) -> Result<[u8; 32], JoseError> {
        Ok(Self::from_spki_der(spki_der)?.key_hash())
    }
}

/// SHA-256 of a DER SubjectPublicKeyInfo, byte for byte: the one place a public key is hashed. [`Jwk::key_hash`] is
/// this over the canonical encoding (a key's identity); Certificate Transparency's issuer key hash and log id
/// (`quarry_core::ct`) are this over the bytes as a certificate or a log list carries them, as RFC 6962 defines them.
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    sha256(spki_der)
}

fn named_curve(parameters: &Element<'_>) -> Result<EcCurve, JoseError> {
    match parameters.encoded {
        OID_P256 => Ok(EcCurve::P256),
        OID_P384 => Ok(EcCurve::P384),
        _ if parameters.tag == TAG_OID => Err(bad_key("the EC curve is not accepted; use P-256 or P-384")),
        _ => Err(malformed("public key: EC parameters must name a curve")),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, bytes);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

impl serde::Serialize for Jwk {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Jwk {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_json(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
