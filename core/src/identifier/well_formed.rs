//! The syntax every identifier must have before any policy looks at it (RFC 8555 §7.1.4, RFC 1035, RFC 8738), as
//! `Identifier::check_well_formed`: kept apart from the identifier type because its answer is a `Problem`, and the
//! problem type itself names identifiers (a subproblem's).

use std::net::IpAddr;

use super::{Identifier, IdentifierType};
use crate::error::{ErrorKind, Problem};

/// The longest DNS name we accept, in octets of its presentation form without a trailing dot.
const MAX_DNS_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

impl Identifier {
    /// Checks syntax only (the issuance policy, such as public suffixes and blocklists, is the ra's business).
    ///
    /// The error is a `malformed` or `rejectedIdentifier` problem naming the identifier, ready to be a subproblem.
    pub fn check_well_formed(&self) -> Result<(), Problem> {
        match self.kind {
            IdentifierType::Ip => match self.value.parse::<IpAddr>() {
                // RFC 8738 asks for the canonical textual form.
                Ok(ip) if ip.to_string() == self.value => Ok(()),
                _ => Err(Problem::malformed(format!("{:?} is not a valid IP address", self.value))),
            },
            IdentifierType::Dns => check_dns_name(&self.value),
        }
    }
}

fn check_dns_name(name: &str) -> Result<(), Problem> {
    let reject =
        |why: &str| Err(Problem::new(ErrorKind::RejectedIdentifier, format!("invalid DNS name {name:?}: {why}")));
    if name.is_empty() {
        return Err(Problem::malformed("DNS identifier is empty"));
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return reject("name is longer than 253 characters");
    }
    if name.ends_with('.') {
        return reject("name ends in a period");
    }
    if name.parse::<IpAddr>().is_ok() {
        return reject("an IP address must use the \"ip\" identifier type");
    }
    let base = name.strip_prefix("*.").unwrap_or(name);
    let labels: Vec<&str> = base.split('.').collect();
    if labels.len() < 2 {
        return reject("name has fewer than two labels");
    }
    for label in &labels {
        if label.is_empty() {
            return reject("name has an empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return reject("a label is longer than 63 characters");
        }
        if *label == "*" || label.contains('*') {
            return reject("a wildcard is allowed only as the whole leftmost label");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return reject("name contains a character other than letters, digits, hyphens and periods");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return reject("a label starts or ends with a hyphen");
        }
    }
    if labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return reject("the top-level domain is all digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_names() {
        let cases: &[(&str, bool)] = &[
            ("example.com", true),
            ("*.example.com", true),
            ("a-b.example.co.uk", true),
            ("xn--bcher-kva.example", true),
            ("example.com.", false),
            ("com", false),
            ("*.*.example.com", false),
            ("a.*.example.com", false),
            ("exa mple.com", false),
            ("-a.example.com", false),
            ("a..b", false),
            ("1.2.3.4", false),
            ("example.123", false),
            ("", false),
        ];
        for (name, ok) in cases {
            assert_eq!(Identifier::dns(*name).check_well_formed().is_ok(), *ok, "{name}");
        }
    }

    #[test]
    fn ip_identifiers_must_be_canonical() {
        assert!(Identifier { kind: IdentifierType::Ip, value: "192.0.2.1".into() }.check_well_formed().is_ok());
        assert!(Identifier { kind: IdentifierType::Ip, value: "2001:db8::1".into() }.check_well_formed().is_ok());
        assert!(Identifier { kind: IdentifierType::Ip, value: "2001:DB8::1".into() }.check_well_formed().is_err());
        assert!(Identifier { kind: IdentifierType::Ip, value: "example.com".into() }.check_well_formed().is_err());
    }
}
