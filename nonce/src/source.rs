//! The nonce source: mints nonces as AEAD-sealed counters behind this instance's prefix, and redeems each at most once.
//!
//! A nonce is `prefix ‖ base64url(iv ‖ AES-256-GCM(counter) ‖ tag)`. The key lives only in memory, so nonces of a
//! previous process fail to open. Redeemed counters are remembered in a set bounded by `max_used`; when it overflows,
//! the smallest remembered counter becomes the floor `earliest`, at or below which every nonce is refused. That keeps
//! memory bounded and lets old unredeemed nonces expire without any clock.
//!
//! Nothing here does I/O besides asking the system for randomness; the gRPC service holds one source behind a mutex.

use std::collections::BTreeSet;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN as IV_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::Error;

/// Length of an instance prefix, in characters of the base64url alphabet.
pub const PREFIX_LEN: usize = 8;

const COUNTER_LEN: usize = size_of::<u64>();
const TAG_LEN: usize = 16;
/// Bytes behind the prefix: the random IV, the sealed counter and the GCM tag.
const SEALED_LEN: usize = IV_LEN + COUNTER_LEN + TAG_LEN;
/// `SEALED_LEN` is a multiple of 3, so its unpadded base64url form has no partial group and exactly one spelling.
const SEALED_B64_LEN: usize = SEALED_LEN / 3 * 4;
const _: () = assert!(SEALED_LEN.is_multiple_of(3));

/// Length of every nonce this service mints, in characters.
pub const NONCE_LEN: usize = PREFIX_LEN + SEALED_B64_LEN;

/// Checks that `prefix` is exactly [`PREFIX_LEN`] characters of the base64url alphabet, so that it can start a nonce
/// without changing the nonce's alphabet and the wfe can route a nonce by its first characters.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let alphabet_only = prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if prefix.len() == PREFIX_LEN && alphabet_only {
        Ok(())
    } else {
        Err(format!("{prefix:?} must be exactly {PREFIX_LEN} characters from the base64url alphabet (A-Z a-z 0-9 - _)"))
    }
}

/// Why a nonce was not accepted; the service only answers "invalid", this is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The nonce does not start with this instance's prefix.
    ForeignPrefix,
    /// The part after the prefix is not base64url of the expected length.
    Malformed,
    /// The sealed counter does not open under this process's key: forged, tampered with, or from another process.
    Forged,
    /// The counter was never minted; only someone holding the key could have sealed it.
    NotYetMinted,
    /// The counter is at or below the floor: redeemed long ago, or minted long ago and never redeemed.
    Expired,
    /// The nonce was already redeemed.
    AlreadyRedeemed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ForeignPrefix => "foreign prefix",
            Self::Malformed => "malformed",
            Self::Forged => "forged",
            Self::NotYetMinted => "not yet minted",
            Self::Expired => "expired",
            Self::AlreadyRedeemed => "already redeemed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Mints and redeems the nonces of one instance.
pub struct NonceSource {
    prefix: String,
    key: RandomizedNonceKey,
    /// The counter of the most recently minted nonce; 0 before the first.
    latest: u64,
    /// Every counter at or below this is refused.
    earliest: u64,
    /// Redeemed counters above `earliest`; never more than `max_used` between calls.
    used: BTreeSet<u64>,
    max_used: usize,
}

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSource")
            .field("prefix", &self.prefix)
            .field("latest", &self.latest)
            .field("earliest", &self.earliest)
            .field("used", &self.used.len())
            .field("max_used", &self.max_used)
            .finish_non_exhaustive()
    }
}

impl NonceSource {
    /// How many redeemed counters are remembered now (at most `max_used`).
    pub fn remembered(&self) -> usize {
        self.used.len()
    }

    /// A source with a fresh random key; `prefix` must pass [`check_prefix`] and `max_used` must be at least 1.
    pub fn new(prefix: &str, max_used: usize) -> Result<Self, Error> {
        check_prefix(prefix).map_err(|reason| Error::Setting { key: "prefix", reason })?;
        if max_used == 0 {
            return Err(Error::Setting { key: "max_used", reason: "must be at least 1".into() });
        }
        let mut key_bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key_bytes).map_err(|_| Error::Random)?;
        let key =
            RandomizedNonceKey::new(&AES_256_GCM, &key_bytes).map_err(|_| Error::Crypto("create the nonce key"))?;
        Ok(Self { prefix: prefix.to_owned(), key, latest: 0, earliest: 0, used: BTreeSet::new(), max_used })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The counter of the most recently minted nonce.
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// The floor: nonces whose counter is at or below it are refused.
    pub fn earliest(&self) -> u64 {
        self.earliest
    }

    /// How many redeemed counters are remembered; at most `max_used`.
    pub fn used_len(&self) -> usize {
        self.used.len()
    }

    /// A fresh nonce of [`NONCE_LEN`] characters.
    pub fn mint(&mut self) -> Result<String, Error> {
        let counter = self.latest.checked_add(1).ok_or(Error::CounterExhausted)?;
        let mut sealed = Vec::with_capacity(COUNTER_LEN + TAG_LEN);
        sealed.extend_from_slice(&counter.to_be_bytes());
        let iv = self
            .key
            .seal_in_place_append_tag(Aad::from(self.prefix.as_bytes()), &mut sealed)
            .map_err(|_| Error::Crypto("seal a nonce"))?;
        let mut raw = [0u8; SEALED_LEN];
        raw[..IV_LEN].copy_from_slice(iv.as_ref());
        raw[IV_LEN..].copy_from_slice(&sealed);
        self.latest = counter;

        let mut nonce = String::with_capacity(NONCE_LEN);
        nonce.push_str(&self.prefix);
        URL_SAFE_NO_PAD.encode_string(raw, &mut nonce);
        Ok(nonce)
    }

    /// Redeems `nonce`: true exactly once for each nonce this source minted and has not expired.
    pub fn redeem(&mut self, nonce: &str) -> bool {
        self.try_redeem(nonce).is_ok()
    }

    /// [`NonceSource::redeem`], saying why a nonce is refused.
    pub fn try_redeem(&mut self, nonce: &str) -> Result<(), Refusal> {
        let counter = self.open(nonce)?;
        if counter > self.latest {
            return Err(Refusal::NotYetMinted);
        }
        if counter <= self.earliest {
            return Err(Refusal::Expired);
        }
        if !self.used.insert(counter) {
            return Err(Refusal::AlreadyRedeemed);
        }
        if self.used.len() > self.max_used
            && let Some(smallest) = self.used.pop_first()
        {
            self.earliest = smallest;
        }
        Ok(())
    }

    /// The counter sealed in `nonce`, if it is ours and authentic.
    fn open(&self, nonce: &str) -> Result<u64, Refusal> {
        let encoded = nonce.strip_prefix(self.prefix.as_str()).ok_or(Refusal::ForeignPrefix)?;
        // Checked before decoding so that an oversized input costs nothing.
        if encoded.len() != SEALED_B64_LEN {
            return Err(Refusal::Malformed);
        }
        let mut raw = [0u8; SEALED_LEN];
        match URL_SAFE_NO_PAD.decode_slice(encoded, &mut raw) {
            Ok(SEALED_LEN) => {}
            _ => return Err(Refusal::Malformed),
        }
        let (iv, sealed) = raw.split_at_mut(IV_LEN);
        let iv = Nonce::try_assume_unique_for_key(iv).map_err(|_| Refusal::Malformed)?;
        let plain =
            self.key.open_in_place(iv, Aad::from(self.prefix.as_bytes()), sealed).map_err(|_| Refusal::Forged)?;
        let counter: [u8; COUNTER_LEN] = (&*plain).try_into().map_err(|_| Refusal::Forged)?;
        Ok(u64::from_be_bytes(counter))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const PREFIX: &str = "test-_01";

    fn source(max_used: usize) -> NonceSource {
        NonceSource::new(PREFIX, max_used).expect("nonce source")
    }

    fn is_base64url(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    }

    #[test]
    fn prefixes_must_be_eight_base64url_characters() {
        let cases: &[(&str, bool)] = &[
            ("abcdefgh", true),
            ("AZaz09-_", true),
            ("dev1nonc", true),
            ("", false),
            ("abcdefg", false),
            ("abcdefghi", false),
            ("abcdefg=", false),
            ("abcdefg+", false),
            ("abcdefg/", false),
            ("abcd efg", false),
            ("abcdefé", false),
            ("abcdefgé", false),
        ];
        for (prefix, ok) in cases {
            assert_eq!(check_prefix(prefix).is_ok(), *ok, "{prefix:?}");
            let created = NonceSource::new(prefix, 1);
            assert_eq!(created.is_ok(), *ok, "{prefix:?}");
            if let Err(err) = created {
                assert!(err.to_string().starts_with("invalid prefix:"), "{err}");
            }
        }
    }

    #[test]
    fn max_used_must_be_positive() {
        let err = NonceSource::new(PREFIX, 0).expect_err("max_used 0");
        assert!(err.to_string().contains("max_used"), "{err}");
    }

    #[test]
    fn minted_nonces_are_distinct_prefixed_and_of_stable_length() {
        let mut source = source(8);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let nonce = source.mint().expect("mint");
            assert_eq!(nonce.len(), NONCE_LEN, "{nonce}");
            assert!(nonce.starts_with(PREFIX), "{nonce}");
            assert!(nonce.chars().all(is_base64url), "{nonce}");
            assert!(seen.insert(nonce), "duplicate nonce");
        }
        assert_eq!(source.latest(), 200);
        assert_eq!(NONCE_LEN, 56);
    }

    #[test]
    fn a_nonce_redeems_once_in_any_order() {
        let mut source = source(8);
        let nonces: Vec<String> = (0..3).map(|_| source.mint().expect("mint")).collect();
        for index in [2, 0, 1] {
            assert_eq!(source.try_redeem(&nonces[index]), Ok(()), "first redeem of #{index}");
        }
        for nonce in &nonces {
            assert_eq!(source.try_redeem(nonce), Err(Refusal::AlreadyRedeemed));
            assert!(!source.redeem(nonce));
        }
    }

    #[test]
    fn nonces_of_other_instances_and_processes_are_refused() {
        let mut ours = source(8);
        let mut other_instance = NonceSource::new("otherpfx", 8).expect("source");
        let mut previous_process = source(8);
        let foreign = other_instance.mint().expect("mint");
        let stale = previous_process.mint().expect("mint");
        ours.mint().expect("mint");

        assert_eq!(ours.try_redeem(&foreign), Err(Refusal::ForeignPrefix));
        assert_eq!(ours.try_redeem(&stale), Err(Refusal::Forged));
        // The prefix is authenticated too: ours re-labelled as another instance's does not open there.
        let ours_nonce = ours.mint().expect("mint");
        let relabelled = format!("otherpfx{}", &ours_nonce[PREFIX_LEN..]);
        assert_eq!(other_instance.try_redeem(&relabelled), Err(Refusal::Forged));
        assert_eq!(ours.try_redeem(&ours_nonce), Ok(()));
    }

    #[test]
    fn garbage_is_refused() {
        let mut source = source(8);
        let valid = source.mint().expect("mint");
        let body = &valid[PREFIX_LEN..];
        let cases: Vec<(&str, String, Refusal)> = vec![
            ("empty", String::new(), Refusal::ForeignPrefix),
            ("short", "abc".into(), Refusal::ForeignPrefix),
            ("prefix in other case", valid.to_uppercase(), Refusal::ForeignPrefix),
            ("prefix only", PREFIX.into(), Refusal::Malformed),
            ("truncated", valid[..NONCE_LEN - 1].into(), Refusal::Malformed),
            ("extended", format!("{valid}A"), Refusal::Malformed),
            ("padded", format!("{valid}=="), Refusal::Malformed),
            ("not base64url", format!("{PREFIX}{}", "!".repeat(SEALED_B64_LEN)), Refusal::Malformed),
            ("standard alphabet", format!("{PREFIX}{}", "+/".repeat(SEALED_B64_LEN / 2)), Refusal::Malformed),
            ("multibyte", format!("{PREFIX}{}", "é".repeat(SEALED_B64_LEN / 2)), Refusal::Malformed),
            ("huge", format!("{PREFIX}{}", "A".repeat(1 << 20)), Refusal::Malformed),
            ("all zero", format!("{PREFIX}{}", "A".repeat(SEALED_B64_LEN)), Refusal::Forged),
            ("body with prefix twice", format!("{PREFIX}{PREFIX}{}", &body[PREFIX_LEN..]), Refusal::Forged),
        ];
        for (name, nonce, refusal) in cases {
            assert_eq!(source.try_redeem(&nonce), Err(refusal), "{name}");
        }
        assert_eq!(source.used_len(), 0);
        assert_eq!(source.try_redeem(&valid), Ok(()), "garbage must not disturb a valid nonce");
    }

    #[test]
    fn every_tampered_character_is_detected() {
        let mut source = source(8);
        let nonce = source.mint().expect("mint");
        for position in PREFIX_LEN..NONCE_LEN {
            let mut tampered = nonce.clone().into_bytes();
            tampered[position] = if tampered[position] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(tampered).expect("ascii");
            assert_eq!(source.try_redeem(&tampered), Err(Refusal::Forged), "position {position}");
        }
        assert_eq!(source.try_redeem(&nonce), Ok(()));
    }

    #[test]
    fn remembered_nonces_stay_bounded_and_old_ones_expire() {
        const MAX_USED: usize = 16;
        const EXTRA: usize = 10;
        let mut source = source(MAX_USED);
        let old_unredeemed = source.mint().expect("mint");
        let mut redeemed = Vec::new();
        for _ in 0..MAX_USED + EXTRA {
            let nonce = source.mint().expect("mint");
            assert!(source.redeem(&nonce));
            assert!(source.used_len() <= MAX_USED, "used set grew to {}", source.used_len());
            redeemed.push(nonce);
        }
        assert_eq!(source.used_len(), MAX_USED);
        // Counters 2..=27 were redeemed; the 10 smallest were dropped, the last of them became the floor.
        assert_eq!(source.earliest(), 1 + EXTRA as u64);

        assert_eq!(source.try_redeem(&old_unredeemed), Err(Refusal::Expired));
        for nonce in &redeemed[..EXTRA] {
            assert_eq!(source.try_redeem(nonce), Err(Refusal::Expired));
        }
        for nonce in &redeemed[EXTRA..] {
            assert_eq!(source.try_redeem(nonce), Err(Refusal::AlreadyRedeemed));
        }
        let fresh = source.mint().expect("mint");
        assert_eq!(source.try_redeem(&fresh), Ok(()));
        assert_eq!(source.used_len(), MAX_USED);
    }

    #[test]
    fn an_unredeemed_nonce_above_the_floor_still_redeems() {
        let mut source = source(2);
        let kept = [source.mint().expect("mint"), source.mint().expect("mint")];
        for _ in 0..5 {
            let nonce = source.mint().expect("mint");
            assert!(source.redeem(&nonce));
        }
        // Counters 3..=7 redeemed with room for 2: the floor is 5, so counters 1 and 2 have expired.
        assert_eq!(source.earliest(), 5);
        for nonce in &kept {
            assert_eq!(source.try_redeem(nonce), Err(Refusal::Expired));
        }

        let mut source = NonceSource::new(PREFIX, 4).expect("source");
        let first = source.mint().expect("mint");
        let kept = source.mint().expect("mint");
        assert!(source.redeem(&first));
        for _ in 0..3 {
            let nonce = source.mint().expect("mint");
            assert!(source.redeem(&nonce));
        }
        // Four redeemed, none dropped yet: the floor is still 0 and the kept nonce is good.
        assert_eq!(source.earliest(), 0);
        assert_eq!(source.try_redeem(&kept), Ok(()));
    }
}
