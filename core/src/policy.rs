//! What the CA will issue for, the same in every environment: beyond well-formedness (`identifier`), a DNS name must
//! end in a public suffix of the ICANN list and not be one, must not be a reserved or special-use name, its
//! internationalised labels must be valid A-labels, and it must not be on a blocklist.
//!
//! The wfe applies the fixed rules at the edge; the ra applies them all, with the blocklists from its configuration.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::{ErrorKind, Problem};
use crate::identifier::{Identifier, IdentifierType, registered_domain};

/// Special-use and reserved top-level names (RFC 2606, 6761, 6762, 7686, 9476, 8375, and ICANN's `.internal`):
/// no certificate may name them, and no CA can validate them.
const RESERVED_SUFFIXES: &[&str] =
    &["test", "example", "invalid", "localhost", "local", "onion", "alt", "internal", "home.arpa", "arpa"];

/// Names the CA refuses whatever the validation, from the ra's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blocklists {
    /// Refused exactly as written (their subdomains are not).
    #[serde(default)]
    pub exact: Vec<String>,
    /// Refused with every name under them: names phishers favour.
    #[serde(default)]
    pub high_risk: Vec<String>,
    /// Refused with every name under them: the operator's own decisions (legal, abuse).
    #[serde(default)]
    pub admin: Vec<String>,
}

/// The checked policy: the fixed rules and the blocklists.
#[derive(Debug, Clone, Default)]
pub struct IdentifierPolicy {
    exact: BTreeSet<String>,
    subtree: BTreeSet<String>,
}

fn rejected(detail: String) -> Problem {
    Problem::new(ErrorKind::RejectedIdentifier, detail)
}

impl IdentifierPolicy {
    pub fn new(blocklists: &Blocklists) -> Self {
        fn lower(names: &[String]) -> impl Iterator<Item = String> + '_ {
            names.iter().map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        }
        Self {
            exact: lower(&blocklists.exact).collect(),
            subtree: lower(&blocklists.high_risk).chain(lower(&blocklists.admin)).collect(),
        }
    }

    /// The whole policy for one (normalised, well-formed) identifier.
    pub fn check(&self, identifier: &Identifier) -> Result<(), Problem> {
        check_fixed(identifier)?;
        if identifier.kind != IdentifierType::Dns {
            return Ok(());
        }
        let name = identifier.value.strip_prefix("*.").unwrap_or(&identifier.value);
        let blocked = self.exact.contains(name)
            || std::iter::successors(Some(name), |n| n.split_once('.').map(|(_, rest)| rest))
                .any(|suffix| self.subtree.contains(suffix));
        if blocked {
            return Err(Problem::new(
                ErrorKind::RejectedIdentifier,
                format!("the CA's policy forbids issuing for {:?}", identifier.value),
            ));
        }
        Ok(())
    }
}

/// The rules that need no configuration (the wfe's edge checks): public suffixes, reserved names, A-labels.
pub fn check_fixed(identifier: &Identifier) -> Result<(), Problem> {
    if identifier.kind != IdentifierType::Dns {
        return Ok(());
    }
    let value = identifier.value.as_str();
    let name = value.strip_prefix("*.").unwrap_or(value);
    for reserved in RESERVED_SUFFIXES {
        if name == *reserved || name.ends_with(&format!(".{reserved}")) {
            return Err(rejected(format!("{value:?} is a reserved name (.{reserved}) no certificate may hold")));
        }
    }
    for label in name.split('.').filter(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case("xn--")) {
        let (unicode, result) = idna::domain_to_unicode(label);
        if result.is_err() || unicode.is_empty() || unicode.eq_ignore_ascii_case(label) {
            return Err(Problem::new(
                ErrorKind::RejectedIdentifier,
                format!("{value:?}: the label {label:?} is not a valid IDNA A-label"),
            ));
        }
    }
    let suffix = psl::suffix(name.as_bytes());
    if !suffix.is_some_and(|s| s.is_known()) {
        return Err(rejected(format!("{value:?} does not end in a public suffix (top-level domain)")));
    }
    if registered_domain(name).is_none() {
        let what =
            if value.starts_with("*.") { "a wildcard directly under a public suffix" } else { "a public suffix" };
        return Err(rejected(format!("{value:?} is {what}; certificates are issued for names under one")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (identifier, the problem kind expected, or none for allowed)
    const CASES: &[(&str, Option<ErrorKind>)] = &[
        ("www.example.com", None),
        ("example.com", None),
        ("*.example.com", None),
        ("a.b.example.co.uk", None),
        ("foo.github.io", None),
        ("xn--bcher-kva.example", Some(ErrorKind::RejectedIdentifier)),
        ("xn--bcher-kva.com", None),
        ("xn--zz.com", Some(ErrorKind::RejectedIdentifier)),
        ("com", Some(ErrorKind::RejectedIdentifier)),
        ("co.uk", Some(ErrorKind::RejectedIdentifier)),
        ("*.co.uk", Some(ErrorKind::RejectedIdentifier)),
        ("*.com", Some(ErrorKind::RejectedIdentifier)),
        ("github.io", Some(ErrorKind::RejectedIdentifier)),
        ("host.test", Some(ErrorKind::RejectedIdentifier)),
        ("www.example", Some(ErrorKind::RejectedIdentifier)),
        ("printer.local", Some(ErrorKind::RejectedIdentifier)),
        ("db.internal", Some(ErrorKind::RejectedIdentifier)),
        ("x.onion", Some(ErrorKind::RejectedIdentifier)),
        ("router.home.arpa", Some(ErrorKind::RejectedIdentifier)),
        ("example.notatld", Some(ErrorKind::RejectedIdentifier)),
        ("blocked.example.net", Some(ErrorKind::RejectedIdentifier)),
        ("sub.blocked.example.net", None),
        ("paypal.com", Some(ErrorKind::RejectedIdentifier)),
        ("login.paypal.com", Some(ErrorKind::RejectedIdentifier)),
        ("*.paypal.com", Some(ErrorKind::RejectedIdentifier)),
        ("takedown.example.org", Some(ErrorKind::RejectedIdentifier)),
        ("a.takedown.example.org", Some(ErrorKind::RejectedIdentifier)),
    ];

    #[test]
    fn policy_table() {
        let policy = IdentifierPolicy::new(&Blocklists {
            exact: vec!["blocked.example.net".into()],
            high_risk: vec!["paypal.com".into()],
            admin: vec!["takedown.example.org".into()],
        });
        for (name, expected) in CASES {
            let identifier = Identifier::dns(*name);
            let got = policy.check(&identifier).err().map(|p| p.kind);
            assert_eq!(got, *expected, "{name}: {:?}", policy.check(&identifier));
        }
        let ip = Identifier::ip("192.0.2.1".parse().expect("ip"));
        assert_eq!(policy.check(&ip), Ok(()), "IP addresses are the ra's address policy's business");
    }
}
