//! Client-testing knobs: the provocations a client's test suite asks of a test CA — Pebble's `PEBBLE_*` settings
//! and a few of Quarry's own — each service's `[client_testing]` table. They exist for `quarry dev` only: a
//! configuration of any other environment that holds the table is refused when it is loaded (by `config`), and
//! `quarry env check` refuses the table in every overlay. Off, every knob is production behaviour.

/// The table every service's knobs live in.
pub const SECTION: &str = "client_testing";

/// The command-line flags of `quarry dev` that turn a knob on (its `Knobs`; a test there keeps the two equal):
/// `quarry env check` refuses them in anything that deploys an environment.
pub const KNOB_FLAGS: &[&str] = &[
    "--va-nosleep",
    "--va-sleeptime",
    "--va-always-valid",
    "--wfe-nonce-reject",
    "--authz-reuse",
    "--orders-per-page",
    "--chain-length",
    "--alternate-roots",
    "--server-internal-percent",
    "--rate-limited-percent",
    "--finalize-delay-secs",
    "--renew-now",
];

/// The prefix of the environment variables that set a knob, as Pebble names them.
pub const KNOB_VARIABLE_PREFIX: &str = "PEBBLE_";

/// A draw that comes out true `percent` times in a hundred (never for 0, always from 100 up).
pub fn chance(percent: u8) -> bool {
    // The ends need no draw: production's settings (0 or 100) cost nothing on a hot path.
    match percent {
        0 => return false,
        100.. => return true,
        _ => {}
    }
    let mut byte = [0u8; 2];
    if aws_lc_rs::rand::fill(&mut byte).is_err() {
        return false;
    }
    u16::from_le_bytes(byte) % 100 < u16::from(percent)
}

/// A whole number of seconds below `max` drawn at random (0 for 0): Pebble's validation sleep.
pub fn below(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes) % max
}

/// Deserializes a percentage, refusing anything over 100 with the key's meaning in the message.
pub fn percent<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let value = <u64 as serde::Deserialize>::deserialize(deserializer)?;
    u8::try_from(value)
        .ok()
        .filter(|value| *value <= 100)
        .ok_or_else(|| serde::de::Error::custom(format!("{value} is not a percentage (0 to 100)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chances_at_the_ends_are_certain() {
        assert!((0..1000).all(|_| !chance(0)));
        assert!((0..1000).all(|_| chance(100)));
        let hits = (0..10_000).filter(|_| chance(50)).count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| below(5) < 5));
        assert_eq!(below(0), 0);
    }
}
