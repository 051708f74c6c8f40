//! Which public keys Quarry accepts, for account keys and certificate keys alike: Let's Encrypt's set
//! (RSA 2048/3072/4096 with exponent 65537 and a modulus whose factors are not close, ECDSA P-256/P-384), plus
//! Ed25519 for account keys only.

use num_bigint::BigUint;
use quarry_core::csr::CsrKey;
use quarry_core::{ErrorKind, Problem};
use quarry_jose::{EcCurve, Jwk};

const RSA_SIZES: &[usize] = &[2048, 3072, 4096];
const RSA_EXPONENT: u64 = 65_537;

fn bad_key(detail: impl Into<String>) -> Problem {
    Problem::new(ErrorKind::BadPublicKey, detail)
}

/// Rounds of Fermat's method, as Boulder runs: enough to catch primes generated close together (a broken key
/// generator), cheap enough for every key.
const FERMAT_ROUNDS: u32 = 100;

fn check_rsa(bits: usize, exponent: Option<u64>, modulus: &[u8]) -> Result<(), Problem> {
    if !RSA_SIZES.contains(&bits) {
        return Err(bad_key(format!("RSA keys must be 2048, 3072 or 4096 bits, not {bits}")));
    }
    if exponent != Some(RSA_EXPONENT) {
        return Err(bad_key("RSA keys must use the public exponent 65537"));
    }
    if modulus.last().is_none_or(|low| low % 2 == 0) {
        return Err(bad_key("the RSA modulus is even"));
    }
    if fermat_factors(&BigUint::from_bytes_be(modulus), FERMAT_ROUNDS).is_some() {
        return Err(bad_key("the RSA modulus has factors too close together (Fermat factorization)"));
    }
    Ok(())
}

/// Fermat's factorization: `n = a² − b²` for the first `rounds` values of `a` from ⌈√n⌉; finds `(a − b, a + b)` when
/// the factors are close.
fn fermat_factors(n: &BigUint, rounds: u32) -> Option<(BigUint, BigUint)> {
    let mut a = n.sqrt();
    if &a * &a < *n {
        a += 1u32;
    }
    for _ in 0..rounds {
        let b2 = &a * &a - n;
        let b = b2.sqrt();
        if &b * &b == b2 {
            return Some((&a - &b, &a + &b));
        }
        a += 1u32;
    }
    None
}

/// The modulus of an RSA SubjectPublicKeyInfo.
fn rsa_modulus(spki_der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    match spki.parsed().ok()? {
        PublicKey::RSA(rsa) => Some(rsa.modulus.to_vec()),
        _ => None,
    }
}

/// Checks an account key.
pub fn check_account_key(jwk: &Jwk) -> Result<(), Problem> {
    match jwk {
        Jwk::Rsa { n, .. } => check_rsa(jwk.rsa_modulus_bits().unwrap_or(0), jwk.rsa_exponent(), n),
        Jwk::Ec { crv: EcCurve::P256 | EcCurve::P384, .. } | Jwk::Okp { .. } => Ok(()),
    }
}

/// Checks the key a certificate is requested for; `spki_der` is its SubjectPublicKeyInfo.
pub fn check_certificate_key(key: &CsrKey, spki_der: &[u8]) -> Result<(), Problem> {
    match key {
        CsrKey::EcdsaP256 | CsrKey::EcdsaP384 => Ok(()),
        CsrKey::Rsa { modulus_bits, exponent } => {
            let modulus = rsa_modulus(spki_der).ok_or_else(|| bad_key("the RSA public key does not parse"))?;
            check_rsa(*modulus_bits, Some(*exponent), &modulus)
        }
        CsrKey::Ed25519 => Err(bad_key("Ed25519 keys are not accepted in certificates")),
        CsrKey::Other(what) => Err(bad_key(format!("unsupported key type {what}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The modulus of a freshly generated 2048-bit key: what a sound key generator produces.
    fn sound_modulus() -> Vec<u8> {
        match quarry_jose::SigningKey::generate(quarry_jose::Algorithm::Rs256).unwrap().jwk() {
            Jwk::Rsa { n, .. } => n,
            _ => unreachable!("an RS256 key is RSA"),
        }
    }

    #[test]
    fn certificate_keys() {
        let cases: &[(CsrKey, bool)] = &[
            (CsrKey::EcdsaP256, true),
            (CsrKey::EcdsaP384, true),
            (CsrKey::Ed25519, false),
            (CsrKey::Other("P-521".into()), false),
        ];
        for (key, ok) in cases {
            let result = check_certificate_key(key, &[]);
            assert_eq!(result.is_ok(), *ok, "{key:?}");
            if let Err(problem) = result {
                assert_eq!(problem.kind, ErrorKind::BadPublicKey);
            }
        }
        // An RSA key whose SubjectPublicKeyInfo does not parse is refused, not waved through.
        let rsa = CsrKey::Rsa { modulus_bits: 2048, exponent: 65537 };
        assert_eq!(check_certificate_key(&rsa, b"garbage").unwrap_err().kind, ErrorKind::BadPublicKey);
    }

    #[test]
    fn rsa_sizes_and_exponents() {
        let modulus = sound_modulus();
        let cases: &[(usize, u64, bool)] =
            &[(2048, 65537, true), (4096, 65537, true), (1024, 65537, false), (2049, 65537, false), (2048, 3, false)];
        for (bits, exponent, ok) in cases {
            assert_eq!(check_rsa(*bits, Some(*exponent), &modulus).is_ok(), *ok, "{bits} {exponent}");
        }
        let mut even = modulus.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(check_rsa(2048, Some(65537), &even).unwrap_err().detail.contains("even"));
    }

    #[test]
    fn close_factors_are_found_by_fermat() {
        let (p, q) = (BigUint::from(1_000_003u32), BigUint::from(1_000_033u32));
        let found = fermat_factors(&(&p * &q), 100).expect("close factors");
        assert_eq!(found, (p, q));
        // Factors far apart (3 and a large number) are out of reach in 100 rounds.
        let far = BigUint::from(3u32) * BigUint::from(1_000_000_007u64);
        assert_eq!(fermat_factors(&far, 100), None);
        let sound = BigUint::from_bytes_be(&sound_modulus());
        assert_eq!(fermat_factors(&sound, 100), None);
    }

    #[test]
    fn a_2048_bit_modulus_with_close_factors_is_refused() {
        // n = a² − b² = (a − b)(a + b) with a just under 2^1024: a 2048-bit modulus a weak generator could produce.
        let a = (BigUint::from(1u32) << 1024u32) - BigUint::from(12_345u32);
        let b = BigUint::from(1_000u32);
        let n = &a * &a - &b * &b;
        assert_eq!(n.bits(), 2048);
        let weak = Jwk::Rsa { n: n.to_bytes_be(), e: vec![1, 0, 1] };
        let problem = check_account_key(&weak).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::BadPublicKey);
        assert!(problem.detail.contains("Fermat"), "{}", problem.detail);
    }

    #[test]
    fn account_keys() {
        for alg in [
            quarry_jose::Algorithm::Es256,
            quarry_jose::Algorithm::Es384,
            quarry_jose::Algorithm::EdDsa,
            quarry_jose::Algorithm::Rs256,
        ] {
            let key = quarry_jose::SigningKey::generate(alg).unwrap();
            assert!(check_account_key(&key.jwk()).is_ok(), "{alg:?}");
        }
        let small = Jwk::Rsa { n: vec![0xff; 128], e: vec![1, 0, 1] };
        assert_eq!(check_account_key(&small).unwrap_err().kind, ErrorKind::BadPublicKey);
    }
}
