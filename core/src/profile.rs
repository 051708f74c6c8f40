//! Certificate profile names (draft-aaron-acme-profiles), the rule three services must apply alike: the wfe
//! advertises profiles in its directory, the ra holds a validation profile of each name it accepts, and the ca a
//! certificate profile of each name it issues. Each service checks its own names with [`check_name`] at start-up;
//! no call between them carries a whole set, so `quarry env check` checks that an environment's sets nest
//! ([`unnested`]).

use std::collections::BTreeSet;

/// The profile of an order that names none, unless configured otherwise.
pub const DEFAULT_PROFILE: &str = "classic";

/// The longest profile name.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` may name a profile: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `-` and `_`. A name is a TOML key
/// in three files and a JSON member in the directory; no dot, so that a configuration key path names one profile.
pub fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(allowed) {
        return Err(format!("profile name {name:?} must be 1 to {MAX_NAME_LEN} ASCII letters, digits, '-' and '_'"));
    }
    Ok(())
}

/// One environment's profiles, as its services' configurations hold them.
#[derive(Debug, Clone, Default)]
pub struct ProfileSets<'a> {
    /// The wfe's `directory_meta.profiles`.
    pub advertised: BTreeSet<&'a str>,
    /// The ra's `profiles` and `default_profile`.
    pub ra: BTreeSet<&'a str>,
    pub ra_default: &'a str,
    /// The ca's `profiles` and `default_profile`.
    pub ca: BTreeSet<&'a str>,
    pub ca_default: &'a str,
}

/// Who names a profile that another must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedBy {
    /// The wfe's directory advertises it.
    WfeDirectory,
    /// The ra has a validation profile of that name.
    RaProfile,
    /// It is the ra's default.
    RaDefault,
    /// It is the ca's default.
    CaDefault,
}

/// Which set lacks a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldBy {
    Ra,
    Ca,
}

/// A profile named where it must also be held, and is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unnested<'a> {
    pub name: &'a str,
    pub named_by: NamedBy,
    pub missing_from: HeldBy,
}

/// Where the sets fail the rule: every profile the wfe advertises is an ra profile and a ca profile, every ra
/// profile is a ca profile, and each default is a profile of its own service (the ra's, then, of the ca's too).
/// An order names a profile the wfe advertised, the ra validates it by its profile and the ca issues by its own: a
/// name missing along the way is an order that fails at new-order or, worse, at finalization.
pub fn unnested<'a>(sets: &ProfileSets<'a>) -> Vec<Unnested<'a>> {
    let mut found = Vec::new();
    let mut require = |name: &'a str, named_by: NamedBy, held: &BTreeSet<&'a str>, missing_from: HeldBy| {
        if !held.contains(name) {
            found.push(Unnested { name, named_by, missing_from });
        }
    };
    for name in &sets.advertised {
        require(name, NamedBy::WfeDirectory, &sets.ra, HeldBy::Ra);
        require(name, NamedBy::WfeDirectory, &sets.ca, HeldBy::Ca);
    }
    for name in &sets.ra {
        require(name, NamedBy::RaProfile, &sets.ca, HeldBy::Ca);
    }
    require(sets.ra_default, NamedBy::RaDefault, &sets.ra, HeldBy::Ra);
    require(sets.ca_default, NamedBy::CaDefault, &sets.ca, HeldBy::Ca);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_pattern() {
        for good in ["classic", "tlsserver", "shortlived", "default", "Short-Lived_2", &"a".repeat(MAX_NAME_LEN)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "two words", "dotted.name", "ünicode", "quote\"", &"a".repeat(MAX_NAME_LEN + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
        names.iter().copied().collect()
    }

    #[test]
    fn advertised_profiles_are_ra_profiles_and_ra_profiles_are_ca_profiles() {
        let nested = ProfileSets {
            advertised: set(&["classic"]),
            ra: set(&["classic", "shortlived"]),
            ra_default: "classic",
            ca: set(&["classic", "shortlived", "tlsserver"]),
            ca_default: "classic",
        };
        assert_eq!(unnested(&nested), []);

        let unknown_to_the_ca = ProfileSets { advertised: set(&["classic", "premium"]), ..nested.clone() };
        assert_eq!(
            unnested(&unknown_to_the_ca),
            [
                Unnested { name: "premium", named_by: NamedBy::WfeDirectory, missing_from: HeldBy::Ra },
                Unnested { name: "premium", named_by: NamedBy::WfeDirectory, missing_from: HeldBy::Ca },
            ]
        );
        let ra_only = ProfileSets { ra: set(&["classic", "shortlived", "premium"]), ..nested.clone() };
        assert_eq!(
            unnested(&ra_only),
            [Unnested { name: "premium", named_by: NamedBy::RaProfile, missing_from: HeldBy::Ca }]
        );
        let defaults = ProfileSets { ra_default: "premium", ca_default: "premium", ..nested };
        assert_eq!(
            unnested(&defaults),
            [
                Unnested { name: "premium", named_by: NamedBy::RaDefault, missing_from: HeldBy::Ra },
                Unnested { name: "premium", named_by: NamedBy::CaDefault, missing_from: HeldBy::Ca },
            ]
        );
    }
}
