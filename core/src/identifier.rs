//! ACME identifiers (RFC 8555 §9.7.7, RFC 8738) and their well-formedness rules.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Problem};

/// The identifier types Quarry understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierType {
    Dns,
    Ip,
}

impl IdentifierType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Ip => "ip",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "dns" => Some(Self::Dns),
            "ip" => Some(Self::Ip),
            _ => None,
        }
    }
}

/// An identifier as it appears in orders and authorizations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: IdentifierType,
    pub value: String,
}

/// The longest DNS name we accept, in octets of its presentation form without a trailing dot.
const MAX_DNS_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

impl Identifier {
    pub fn dns(value: impl Into<String>) -> Self {
        Self { kind: IdentifierType::Dns, value: value.into() }
    }

    pub fn ip(value: IpAddr) -> Self {
        Self { kind: IdentifierType::Ip, value: value.to_string() }
    }

    /// True for a DNS identifier of the form `*.example.com`.
    pub fn is_wildcard(&self) -> bool {
        self.kind == IdentifierType::Dns && self.value.starts_with("*.")
    }

    /// The identifier's value without a leading `*.`: the name an authorization is about.
    pub fn without_wildcard(&self) -> Identifier {
        match self.value.strip_prefix("*.") {
            Some(base) if self.kind == IdentifierType::Dns => Identifier::dns(base),
            _ => self.clone(),
        }
    }

    /// Lowercases DNS names and canonicalises IP addresses so equal identifiers compare equal.
    pub fn normalized(&self) -> Identifier {
        match self.kind {
            IdentifierType::Dns => Identifier::dns(self.value.to_ascii_lowercase()),
            IdentifierType::Ip => match self.value.parse::<IpAddr>() {
                Ok(ip) => Identifier::ip(ip),
                Err(_) => self.clone(),
            },
        }
    }

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

/// True for an address that can be reached on the public Internet: not loopback, private, link-local, shared,
/// documentation, benchmarking, multicast or otherwise reserved (the IANA special-purpose registries).
pub fn is_public_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            let reserved = a == 0
                || a == 10
                || a == 127
                || a >= 224
                || (a == 100 && (64..128).contains(&b))
                || (a == 169 && b == 254)
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168)
                || (a == 192 && b == 0 && (c == 0 || c == 2))
                || (a == 192 && b == 88 && c == 99)
                || (a == 198 && (b == 18 || b == 19))
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113);
            !reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // Only 2000::/3 is global unicast; inside it, carve out the special-purpose blocks.
            let global = (s[0] & 0xe000) == 0x2000;
            let special =
                (s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8)) || s[0] == 0x2002 || (s[0] & 0xfff0) == 0x3ff0;
            global && !special
        }
    }
}

/// The SHA-256 of an identifier set — its values lowercased, deduplicated, sorted and joined by commas — so that one
/// set has one hash whatever the order or case it arrives in (the sa's FQDN sets, the ra's rate-limit buckets).
pub fn fqdn_set_hash<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let names: std::collections::BTreeSet<String> = values.into_iter().map(str::to_ascii_lowercase).collect();
    let joined = names.into_iter().collect::<Vec<_>>().join(",");
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, joined.as_bytes()).as_ref().to_vec()
}

/// The registered domain (eTLD+1, by the public suffix list compiled in) of a DNS name, lowercase; a wildcard
/// counts as its base name. `None` for a name that is itself a public suffix, or not a name.
pub fn registered_domain(name: &str) -> Option<String> {
    let name = name.strip_prefix("*.").unwrap_or(name).trim_end_matches('.').to_ascii_lowercase();
    let domain = psl::domain(name.as_bytes())?;
    std::str::from_utf8(domain.as_bytes()).ok().map(str::to_owned)
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

    #[test]
    fn public_unicast_addresses() {
        let cases: &[(&str, bool)] = &[
            ("64.112.117.1", true),
            ("8.8.8.8", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("100.64.0.1", false),
            ("172.16.0.1", false),
            ("172.32.0.1", true),
            ("192.168.1.1", false),
            ("169.254.1.1", false),
            ("192.0.2.1", false),
            ("198.18.0.1", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("0.1.2.3", false),
            ("2606:4700::1", true),
            ("::1", false),
            ("::", false),
            ("::ffff:8.8.8.8", false),
            ("fe80::1", false),
            ("fd00::1", false),
            ("ff02::1", false),
            ("2001:db8::1", false),
            ("2001::1", false),
            ("2002::1", false),
            ("3fff::1", false),
        ];
        for (ip, public) in cases {
            assert_eq!(is_public_unicast(ip.parse().unwrap()), *public, "{ip}");
        }
    }

    #[test]
    fn registered_domains_follow_the_public_suffix_list() {
        let cases = [
            ("www.example.com", Some("example.com")),
            ("*.a.b.example.co.uk", Some("example.co.uk")),
            ("Example.COM", Some("example.com")),
            ("co.uk", None),
            ("com", None),
            ("foo.github.io", Some("foo.github.io")),
        ];
        for (name, expected) in cases {
            assert_eq!(registered_domain(name).as_deref(), expected, "{name}");
        }
    }

    #[test]
    fn wildcards_and_normalisation() {
        let id = Identifier::dns("*.Example.COM").normalized();
        assert_eq!(id.value, "*.example.com");
        assert!(id.is_wildcard());
        assert_eq!(id.without_wildcard(), Identifier::dns("example.com"));
    }
}
