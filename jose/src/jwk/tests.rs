//! The canonical key: every encoding of one key parses to one `Jwk` with one hash; every key Quarry does not
//! accept, and every malformed encoding, is refused with the right error.

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use serde_json::json;

use super::*;
use crate::signing::SigningKey;

fn generated(alg: Algorithm) -> (SigningKey, Vec<u8>) {
    let key = SigningKey::generate(alg).unwrap();
    let der: PublicKeyX509Der<'static> = match &key {
        SigningKey::Ecdsa { pair, .. } => aws_lc_rs::signature::KeyPair::public_key(pair).as_der().unwrap(),
        SigningKey::Rsa(pair) => aws_lc_rs::signature::KeyPair::public_key(pair).as_der().unwrap(),
    };
    (key, der.as_ref().to_vec())
}

/// An EC SubjectPublicKeyInfo around `point`, as another library (or an attacker) would encode it.
fn ec_spki(crv: EcCurve, point: &[u8]) -> Vec<u8> {
    let curve = if crv == EcCurve::P256 { OID_P256 } else { OID_P384 };
    let algorithm = der::encode(TAG_SEQUENCE, &[OID_EC_PUBLIC_KEY, curve].concat());
    let bits = der::encode(TAG_BIT_STRING, &[&[0][..], point].concat());
    der::encode(TAG_SEQUENCE, &[algorithm, bits].concat())
}

fn rsa_spki(parameters: &[u8], n: &[u8], e: &[u8]) -> Vec<u8> {
    let algorithm = der::encode(TAG_SEQUENCE, &[OID_RSA_ENCRYPTION, parameters].concat());
    let key = der::encode(TAG_SEQUENCE, &[der::encode(der::TAG_INTEGER, n), der::encode(der::TAG_INTEGER, e)].concat());
    let bits = der::encode(TAG_BIT_STRING, &[&[0][..], &key].concat());
    der::encode(TAG_SEQUENCE, &[algorithm, bits].concat())
}

/// What a parse must have answered.
type Expectation = fn(Result<Jwk, JoseError>) -> bool;

fn is_bad_key(result: Result<Jwk, JoseError>) -> bool {
    matches!(result, Err(JoseError::BadPublicKey(_)))
}

fn is_malformed(result: Result<Jwk, JoseError>) -> bool {
    matches!(result, Err(JoseError::Malformed(_)))
}

#[test]
fn canonical_encodings_are_the_crypto_librarys() {
    for alg in [Algorithm::Es256, Algorithm::Es384, Algorithm::Rs256] {
        let (key, der) = generated(alg);
        assert_eq!(key.jwk().spki_der(), der, "{alg:?}");
        assert_eq!(Jwk::from_spki_der(&der).unwrap(), key.jwk(), "{alg:?}");
        assert_eq!(key.jwk().key_hash(), sha256(&der), "{alg:?}");
        assert_eq!(Jwk::from_json(&key.jwk().to_json()).unwrap(), key.jwk(), "{alg:?}");
    }
}

/// The attack: the same EC key, compressed, passed for another key (a blocked key issued again, a CSR carrying the
/// account's own key). Both forms must be one key with one hash.
#[test]
fn a_compressed_point_is_the_same_key_as_the_uncompressed_one() {
    for (alg, crv) in [(Algorithm::Es256, EcCurve::P256), (Algorithm::Es384, EcCurve::P384)] {
        // Enough keys that both parities of y occur.
        for _ in 0..8 {
            let (key, der) = generated(alg);
            let Jwk::Ec { x, y, .. } = key.jwk() else { unreachable!() };
            let prefix = if y.last().unwrap() % 2 == 1 { 0x03 } else { 0x02 };
            let compressed = ec_spki(crv, &[&[prefix][..], &x].concat());
            assert_ne!(compressed, der);
            let parsed = Jwk::from_spki_der(&compressed).unwrap();
            assert_eq!(parsed, key.jwk());
            assert_eq!(parsed.key_hash(), key.jwk().key_hash());
            assert_eq!(parsed.spki_der(), der, "re-encoded uncompressed");
            // The other parity is the other point with this x: a different key.
            let flipped = ec_spki(crv, &[&[prefix ^ 1][..], &x].concat());
            assert_ne!(Jwk::from_spki_der(&flipped).unwrap(), key.jwk());
        }
    }
}

#[test]
fn points_off_the_curve_are_refused() {
    for (alg, crv) in [(Algorithm::Es256, EcCurve::P256), (Algorithm::Es384, EcCurve::P384)] {
        let (key, _) = generated(alg);
        let Jwk::Ec { x, mut y, .. } = key.jwk() else { unreachable!() };
        *y.last_mut().unwrap() ^= 1;
        assert!(is_bad_key(Jwk::ec(crv, x.clone(), y.clone())), "{crv:?}");
        let mut jwk = key.jwk().to_json();
        jwk["y"] = json!(b64_encode(&y));
        assert!(is_bad_key(Jwk::from_json(&jwk)), "{crv:?}");
        assert!(is_bad_key(Jwk::from_spki_der(&ec_spki(crv, &[&[4][..], &x, &y].concat()))), "{crv:?}");
        // Coordinates of p or more are not field elements, even when they reduce to a point.
        let p = fixed_width(&crv.field().p.to_bytes_be(), crv.coordinate_len());
        assert!(is_bad_key(Jwk::ec(crv, p.clone(), y)), "{crv:?}");
        assert!(crv.decompress(&p, false).is_none(), "{crv:?}");
        // About half of all x have no point: some small x among the first few must be refused compressed.
        let refused = (1u8..=40)
            .filter(|&small| {
                let x = fixed_width(&[small], crv.coordinate_len());
                is_bad_key(Jwk::from_spki_der(&ec_spki(crv, &[&[2][..], &x].concat())))
            })
            .count();
        assert!(refused > 0, "{crv:?}");
    }
}

#[test]
fn rsa_keys_outside_the_policy_are_refused() {
    // A synthetic odd modulus of `bits` bits: the policy looks at size, exponent and parity before any maths.
    let modulus = |bits: usize| {
        let mut n = vec![0u8; bits.div_ceil(8)];
        n[0] = 1 << ((bits - 1) % 8);
        *n.last_mut().unwrap() |= 1;
        n
    };
    let f4 = [1, 0, 1];
    for bits in RSA_SIZES {
        assert!(Jwk::rsa(&modulus(bits), &f4).is_ok(), "{bits}");
    }
    for bits in [1024, 2047, 2049, 8192] {
        assert!(is_bad_key(Jwk::rsa(&modulus(bits), &f4)), "{bits}");
    }
    for e in [&[3][..], &[1, 0, 0, 1][..], &[0, 0, 0, 0, 0, 0, 0, 1, 0, 1][..]] {
        let result = Jwk::rsa(&modulus(2048), e);
        assert_eq!(result.is_ok(), e.ends_with(&f4) && strip_leading_zeros(e) == f4, "{e:?}");
    }
    let mut even = modulus(2048);
    *even.last_mut().unwrap() &= 0xfe;
    assert!(is_bad_key(Jwk::rsa(&even, &f4)));
    // Leading zeros are padding, not a different key.
    let padded = [&[0, 0][..], &modulus(2048)].concat();
    assert_eq!(Jwk::rsa(&padded, &f4).unwrap(), Jwk::rsa(&modulus(2048), &f4).unwrap());
}

#[test]
fn subject_public_key_infos_are_parsed_strictly() {
    let (rsa, rsa_der) = generated(Algorithm::Rs256);
    let Jwk::Rsa { n, e } = rsa.jwk() else { unreachable!() };
    let n_content = der::unsigned_integer_content(&n);
    assert_eq!(Jwk::from_spki_der(&rsa_spki(DER_NULL, &n_content, &e)).unwrap(), rsa.jwk());

    let (ec, ec_der) = generated(Algorithm::Es256);
    let with_trailing = [rsa_der.clone(), vec![0]].concat();
    let unused_bits = {
        let mut der = ec_der.clone();
        // A P-256 SPKI: SEQUENCE (2) + AlgorithmIdentifier (21) + BIT STRING tag and length (2), then that octet.
        der[25] = 1;
        der
    };
    let cases: Vec<(&str, Vec<u8>, Expectation)> = vec![
        ("trailing data", with_trailing, is_malformed),
        ("RSA parameters absent", rsa_spki(&[], &n_content, &e), is_malformed),
        ("RSA parameters not NULL", rsa_spki(&[0x05, 0x01, 0x00], &n_content, &e), is_malformed),
        ("RSA modulus not minimal", rsa_spki(DER_NULL, &[&[0][..], &n_content].concat(), &e), is_malformed),
        ("RSA modulus negative", rsa_spki(DER_NULL, &n, &e), is_malformed),
        ("unused bits in the key", unused_bits, is_malformed),
        ("a point of the wrong length", ec_spki(EcCurve::P384, &ec_der[26..]), is_malformed),
        ("a hybrid point", ec_spki(EcCurve::P256, &[&[6][..], &ec_der[27..]].concat()), is_malformed),
        ("empty", Vec::new(), is_malformed),
        (
            "Ed25519",
            hex_bytes("302a300506032b6570032100d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
            is_bad_key,
        ),
        (
            "P-521",
            {
                let algorithm = der::encode(
                    TAG_SEQUENCE,
                    &[OID_EC_PUBLIC_KEY, &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23][..]].concat(),
                );
                let bits = der::encode(TAG_BIT_STRING, &[0, 4, 1, 2]);
                der::encode(TAG_SEQUENCE, &[algorithm, bits].concat())
            },
            is_bad_key,
        ),
    ];
    for (what, der, expected) in cases {
        let result = Jwk::from_spki_der(&der);
        assert!(expected(result.clone()), "{what}: {result:?}");
    }
    assert_eq!(Jwk::from_spki_der(&ec_der).unwrap(), ec.jwk());
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn jwk_members_are_held_to_the_key_type() {
    let (ec, _) = generated(Algorithm::Es256);
    let with = |name: &str, value: Value| {
        let mut jwk = ec.jwk().to_json();
        jwk[name] = value;
        Jwk::from_json(&jwk)
    };
    assert!(with("kid", json!("k1")).is_ok());
    assert!(with("use", json!("sig")).is_ok());
    assert!(with("alg", json!("ES256")).is_ok());
    assert!(is_malformed(with("alg", json!("ES384"))));
    assert!(is_malformed(with("alg", json!("none"))));
    assert!(is_malformed(with("n", json!("AQAB"))));
    assert!(is_malformed(with("x5u", json!("https://attacker.example/"))));
    assert!(is_malformed(with("d", json!("AAAA"))));
    assert!(is_malformed(with("x", json!("AAAA"))));
    let cases = [
        json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
        json!({"kty": "oct", "k": "AAAA"}),
    ];
    for jwk in cases {
        let result = Jwk::from_json(&jwk);
        assert!(is_bad_key(result.clone()) || is_malformed(result.clone()), "{jwk}: {result:?}");
    }
    assert!(is_bad_key(Jwk::from_json(&json!({"kty": "OKP", "crv": "Ed25519", "x": "AA"}))));
}

#[test]
fn thumbprints_match_the_rfc_vector() {
    // RFC 7638 §3.1: a 2048-bit key with e = 65537, so Quarry accepts it too.
    let rsa = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    assert_eq!(Jwk::from_json(&rsa).unwrap().thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
}

/// The key hash pinned for two known keys, computed outside Quarry (`openssl pkey -pubin -outform DER | sha256sum`):
/// the hashes stored in `blocked_keys` and `key_hash_to_serial` must never change with the code that computes them.
#[test]
fn key_hashes_of_known_keys_are_pinned() {
    // The public key of private key 1 on P-256: the curve's generator.
    let generator_x = hex_bytes("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
    let generator_y = hex_bytes("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
    let expected = hex_bytes("5cd252fb0ce8932436faf8ccd1040981b89ee4ad6b9fe9e2a2b7e71aacb27cd3");
    let key = Jwk::ec(EcCurve::P256, generator_x.clone(), generator_y).unwrap();
    assert_eq!(key.key_hash().to_vec(), expected);
    assert_eq!(spki_sha256(&key.spki_der()).to_vec(), expected);
    let compressed = ec_spki(EcCurve::P256, &[&[0x03][..], &generator_x].concat());
    assert_eq!(Jwk::key_hash_of_spki(&compressed).unwrap().to_vec(), expected, "the same key, compressed");
    assert_ne!(spki_sha256(&compressed).to_vec(), expected, "the bytes as given: CT's hash, not the key's identity");

    // RFC 7638 §3.1's RSA key.
    let rsa = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
    });
    let expected = hex_bytes("ad32320cf6c596d884b05381ba573aba8ddd5749b4de8f4a23a79f9a89ddaeb2");
    assert_eq!(Jwk::from_json(&rsa).unwrap().key_hash().to_vec(), expected);
}
