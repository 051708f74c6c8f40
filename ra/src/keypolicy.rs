//! The one key check too costly for every parse. Which keys Quarry accepts — Let's Encrypt's set: RSA
//! 2048/3072/4096 with exponent 65537, ECDSA P-256/P-384, for account and certificate keys alike — is decided where
//! a key is parsed (`quarry_jose::Jwk`); here an RSA modulus is also searched for factors close together, once, when
//! a key is admitted (new account, key change, finalization).

use num_bigint::BigUint;
use quarry_core::{ErrorKind, Problem};
use quarry_jose::Jwk;

fn bad_key(detail: impl Into<String>) -> Problem {
    Problem::new(ErrorKind::BadPublicKey, detail)
}

/// Rounds of Fermat's method, as Boulder runs: enough to catch primes generated close together (a broken key
/// generator), cheap enough for every key.
const FERMAT_ROUNDS: u32 = 100;

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

/// Checks a key being admitted as an account key or a certificate key.
pub fn check_key(key: &Jwk) -> Result<(), Problem> {
    match key.rsa_modulus() {
        Some(modulus) if fermat_factors(&BigUint::from_bytes_be(modulus), FERMAT_ROUNDS).is_some() => {
            Err(bad_key("the RSA modulus has factors too close together (Fermat factorization)"))
        }
        _ => Ok(()),
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
        let weak = Jwk::rsa(&n.to_bytes_be(), &[1, 0, 1]).expect("a key the parse accepts");
        let problem = check_key(&weak).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::BadPublicKey);
        assert!(problem.detail.contains("Fermat"), "{}", problem.detail);
    }

    #[test]
    fn sound_keys_pass() {
        for alg in [quarry_jose::Algorithm::Es256, quarry_jose::Algorithm::Es384, quarry_jose::Algorithm::Rs256] {
            let key = quarry_jose::SigningKey::generate(alg).unwrap();
            assert!(check_key(&key.jwk()).is_ok(), "{alg:?}");
        }
    }
}
