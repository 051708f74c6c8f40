//! Which public keys Quarry accepts, for account keys and certificate keys alike: Let's Encrypt's set
//! (RSA 2048/3072/4096 with exponent 65537, ECDSA P-256/P-384), plus Ed25519 for account keys only.

use quarry_core::csr::CsrKey;
use quarry_core::{ErrorKind, Problem};
use quarry_jose::{EcCurve, Jwk};

const RSA_SIZES: &[usize] = &[2048, 3072, 4096];
const RSA_EXPONENT: u64 = 65_537;

fn bad_key(detail: impl Into<String>) -> Problem {
    Problem::new(ErrorKind::BadPublicKey, detail)
}

fn check_rsa(bits: usize, exponent: Option<u64>) -> Result<(), Problem> {
    if !RSA_SIZES.contains(&bits) {
        return Err(bad_key(format!("RSA keys must be 2048, 3072 or 4096 bits, not {bits}")));
    }
    if exponent != Some(RSA_EXPONENT) {
        return Err(bad_key("RSA keys must use the public exponent 65537"));
    }
    Ok(())
}

/// Checks an account key.
pub fn check_account_key(jwk: &Jwk) -> Result<(), Problem> {
    match jwk {
        Jwk::Rsa { .. } => check_rsa(jwk.rsa_modulus_bits().unwrap_or(0), jwk.rsa_exponent()),
        Jwk::Ec { crv: EcCurve::P256 | EcCurve::P384, .. } | Jwk::Okp { .. } => Ok(()),
    }
}

/// Checks the key a certificate is requested for.
pub fn check_certificate_key(key: &CsrKey) -> Result<(), Problem> {
    match key {
        CsrKey::EcdsaP256 | CsrKey::EcdsaP384 => Ok(()),
        CsrKey::Rsa { modulus_bits, exponent } => check_rsa(*modulus_bits, Some(*exponent)),
        CsrKey::Ed25519 => Err(bad_key("Ed25519 keys are not accepted in certificates")),
        CsrKey::Other(what) => Err(bad_key(format!("unsupported key type {what}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_keys() {
        let cases: &[(CsrKey, bool)] = &[
            (CsrKey::EcdsaP256, true),
            (CsrKey::EcdsaP384, true),
            (CsrKey::Rsa { modulus_bits: 2048, exponent: 65537 }, true),
            (CsrKey::Rsa { modulus_bits: 4096, exponent: 65537 }, true),
            (CsrKey::Rsa { modulus_bits: 1024, exponent: 65537 }, false),
            (CsrKey::Rsa { modulus_bits: 2049, exponent: 65537 }, false),
            (CsrKey::Rsa { modulus_bits: 2048, exponent: 3 }, false),
            (CsrKey::Ed25519, false),
            (CsrKey::Other("P-521".into()), false),
        ];
        for (key, ok) in cases {
            let result = check_certificate_key(key);
            assert_eq!(result.is_ok(), *ok, "{key:?}");
            if let Err(problem) = result {
                assert_eq!(problem.kind, ErrorKind::BadPublicKey);
            }
        }
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
