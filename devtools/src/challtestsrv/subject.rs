//! What a tls-alpn-01 ClientHello's server name stands for: a DNS name, or an IP address given as its reverse-DNS
//! name (RFC 8738 §6). The responder makes certificates for it and the state looks key authorizations up by it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the certificate for one server name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subject {
    Dns(String),
    /// The server name was the reverse-DNS name of this address (RFC 8738 §6).
    Ip(IpAddr),
}

impl Subject {
    /// The SNI value as sent: a reverse-DNS name stands for its address, anything else is a DNS name.
    pub(crate) fn from_server_name(name: &str) -> Self {
        match ip_from_reverse_name(name) {
            Some(ip) => Self::Ip(ip),
            None => Self::Dns(name.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
}

/// Maps `d.c.b.a.in-addr.arpa` and the 32-nibble `ip6.arpa` form back to the address; `None` for other names.
fn ip_from_reverse_name(name: &str) -> Option<IpAddr> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() != 4 {
            return None;
        }
        let mut octets = [0u8; 4];
        for (octet, label) in octets.iter_mut().zip(labels.iter().rev()) {
            // Refuses leading zeros and signs, as an address's reverse name never has them.
            if label.is_empty() || label.len() > 3 || (label.len() > 1 && label.starts_with('0')) {
                return None;
            }
            *octet = label.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut value: u128 = 0;
    for nibble in nibbles.iter().rev() {
        if nibble.len() != 1 {
            return None;
        }
        value = (value << 4) | u128::from(u8::from_str_radix(nibble, 16).ok()?);
    }
    Some(IpAddr::V6(Ipv6Addr::from(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_map_back_to_addresses() {
        let cases = [
            ("1.0.0.127.in-addr.arpa", Some("127.0.0.1")),
            ("1.2.0.192.IN-ADDR.ARPA.", Some("192.0.2.1")),
            ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", Some("2001:db8::1")),
            ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa", Some("::1")),
            ("01.0.0.127.in-addr.arpa", None),
            ("256.0.0.127.in-addr.arpa", None),
            ("0.0.127.in-addr.arpa", None),
            ("1.0.ip6.arpa", None),
            ("example.com", None),
        ];
        for (name, expected) in cases {
            assert_eq!(ip_from_reverse_name(name), expected.map(|ip| ip.parse().unwrap()), "{name}");
        }
        assert_eq!(Subject::from_server_name("Example.COM."), Subject::Dns("example.com".into()));
        assert_eq!(Subject::from_server_name("1.0.0.127.in-addr.arpa"), Subject::Ip("127.0.0.1".parse().unwrap()));
    }
}
