//! CRL sharding shared by the ca (which writes a certificate's shard into its CRL distribution point) and the sa
//! (which files a revoked certificate under that shard): both must compute the same shard from the serial.

/// CRL shards per issuer unless configured otherwise.
pub const DEFAULT_SHARDS: i64 = 128;

/// The shard of a certificate with hex `serial`: its last eight bytes modulo `shards` (serials are random, so
/// shards fill evenly).
pub fn shard(serial: &str, shards: i64) -> i64 {
    let tail = &serial[serial.len().saturating_sub(16)..];
    let value = u64::from_str_radix(tail, 16).unwrap_or_default();
    (value % shards.max(1) as u64) as i64
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
}
