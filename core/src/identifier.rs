//! ACME identifiers (RFC 8555 §9.7.7, RFC 8738): the type, its normal form, and facts about names and addresses.
//! Their well-formedness rules, which answer with a `Problem`, are in the child module `well_formed`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

mod well_formed;

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

#[cfg(test)]
mod tests {
    use super::*;

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
