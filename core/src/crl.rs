//! CRL sharding, the rule three services must apply alike: the ca writes a certificate's shard into its CRL
//! distribution point, the sa files a revoked certificate under that shard, and the crl-updater signs every shard.
//! All three compute the shard from the serial with [`shard`] and the one shard count their configurations hold
//! (the sa's and the ca's `crl_shards`, the crl-updater's `shards`); each checks its count with
//! [`check_shard_count`] at start-up, and `quarry env check` checks that an environment's three counts are equal.

/// CRL shards per issuer unless configured otherwise.
pub const DEFAULT_SHARDS: i64 = 128;

/// The most CRL shards an issuer may have: every shard is a CRL signed and stored again each period, and a count
/// far above the default is more likely a typo than a plan.
pub const MAX_SHARDS: i64 = 1_024;

/// The shard of a certificate with hex `serial`: its last eight bytes modulo `shards` (serials are random, so
/// shards fill evenly).
pub fn shard(serial: &str, shards: i64) -> i64 {
    let tail = &serial[serial.len().saturating_sub(16)..];
    let value = u64::from_str_radix(tail, 16).unwrap_or_default();
    (value % shards.max(1) as u64) as i64
}

/// Whether `shards` may be a shard count: 1 to [`MAX_SHARDS`]. The error says what is wrong, for the caller to prefix
/// with its key.
pub fn check_shard_count(shards: i64) -> Result<(), String> {
    if (1..=MAX_SHARDS).contains(&shards) {
        Ok(())
    } else {
        Err(format!("must be between 1 and {MAX_SHARDS}, not {shards}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_come_from_the_serials_low_bytes() {
        assert_eq!(shard("7f0000000000000000000000000000000005", 4), 1);
        assert_eq!(shard("01ff", 128), 0xff % 128);
        assert_eq!(shard("", 128), 0);
        assert_eq!(shard("zz", 128), 0, "not hex: shard 0 rather than a panic");
        assert_eq!(shard("0123", 0), 0, "a zero shard count is treated as one");
    }

    #[test]
    fn shard_counts_are_positive_and_bounded() {
        for good in [1, DEFAULT_SHARDS, MAX_SHARDS] {
            assert_eq!(check_shard_count(good), Ok(()), "{good}");
        }
        for bad in [i64::MIN, -1, 0, MAX_SHARDS + 1] {
            let err = check_shard_count(bad).expect_err("refused");
            assert!(err.contains(&bad.to_string()), "{err}");
        }
    }
}
