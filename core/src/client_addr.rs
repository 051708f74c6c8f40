//! Who the client is: the peer address, unless the peer is a trusted proxy that says otherwise — in a PROXY protocol
//! v2 header at the start of the connection, or in `X-Forwarded-For`. Pure parsing, no I/O (the fuzz targets call it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// The twelve bytes that open every PROXY protocol v2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family and protocol, and the length of what follows.
pub const PROXY_V2_PREFIX_LEN: usize = 16;
/// The longest address block accepted (addresses plus TLVs); a load balancer sends well under 300 bytes.
pub const PROXY_V2_MAX_BLOCK: usize = 1024;

/// What a PROXY protocol v2 header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The proxy's own connection (a health check): the peer address stands.
    Local,
    /// A client's connection from `source`.
    Proxied { source: SocketAddr },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol v2 header")]
    Signature,
    #[error("unsupported PROXY protocol version or command {0:#04x}")]
    VersionOrCommand(u8),
    #[error("the PROXY header's address block is {0} bytes, more than allowed")]
    TooLong(usize),
    #[error("the PROXY header's address block is too short for its family")]
    Truncated,
}

/// Reads the 16-byte prefix: the length of the address block that follows.
pub fn proxy_v2_block_len(prefix: &[u8; PROXY_V2_PREFIX_LEN]) -> Result<usize, ProxyHeaderError> {
    if prefix[..12] != PROXY_V2_SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    // High nibble: version 2; low nibble: LOCAL (0) or PROXY (1).
    if !matches!(prefix[12], 0x20 | 0x21) {
        return Err(ProxyHeaderError::VersionOrCommand(prefix[12]));
    }
    let len = usize::from(u16::from_be_bytes([prefix[14], prefix[15]]));
    if len > PROXY_V2_MAX_BLOCK {
        return Err(ProxyHeaderError::TooLong(len));
    }
    Ok(len)
}

/// Parses a whole header: the prefix and its address block. An address family other than TCP or UDP over IPv4 or
/// IPv6 (UNIX sockets, unspecified) carries no client address: it is treated as LOCAL, as the specification asks.
pub fn parse_proxy_v2(header: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    let prefix: &[u8; PROXY_V2_PREFIX_LEN] =
        header.get(..PROXY_V2_PREFIX_LEN).and_then(|p| p.try_into().ok()).ok_or(ProxyHeaderError::Truncated)?;
    let len = proxy_v2_block_len(prefix)?;
    let block = header.get(PROXY_V2_PREFIX_LEN..PROXY_V2_PREFIX_LEN + len).ok_or(ProxyHeaderError::Truncated)?;
    if prefix[12] == 0x20 {
        return Ok(ProxyHeader::Local);
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match prefix[13] {
        // TCP or UDP over IPv4: source, destination, source port, destination port.
        0x11 | 0x12 => {
            if block.len() < 12 {
                return Err(ProxyHeaderError::Truncated);
            }
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Ok(ProxyHeader::Proxied { source: SocketAddr::new(IpAddr::V4(ip), port(8)) })
        }
        0x21 | 0x22 => {
            if block.len() < 36 {
                return Err(ProxyHeaderError::Truncated);
            }
            let octets: [u8; 16] = block[..16].try_into().map_err(|_| ProxyHeaderError::Truncated)?;
            let ip = canonical(IpAddr::V6(Ipv6Addr::from(octets)));
            Ok(ProxyHeader::Proxied { source: SocketAddr::new(ip, port(32)) })
        }
        _ => Ok(ProxyHeader::Local),
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as a dual-stack socket reports IPv4 peers) is the IPv4 address:
/// per-address limits must not put every IPv4 client of a dual-stack listener in one IPv6 bucket.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The proxies whose word on the client address is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `X-Forwarded-For` values (in header order) that reached us through `peer`: walking from
    /// the right, the first address that is not a trusted proxy. Entries left of it were written by whoever the
    /// client is and are not believed. When `peer` is not trusted, or a value is garbled, the answer is `peer`.
    pub fn forwarded_client<'a>(&self, peer: IpAddr, values: impl DoubleEndedIterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for value in values.rev() {
            for entry in value.rsplit(',') {
                let Some(ip) = parse_forwarded_entry(entry) else {
                    return peer;
                };
                client = ip;
                if !self.contains(ip) {
                    return client;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`192.0.2.1:443`, `[2001:db8::1]:443`).
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if entry.len() > 64 {
        return None;
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry.parse::<SocketAddr>().ok().map(|addr| canonical(addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut header = PROXY_V2_SIGNATURE.to_vec();
        header.extend([command, family]);
        header.extend((block.len() as u16).to_be_bytes());
        header.extend(block);
        header
    }

    #[test]
    fn proxy_v2_headers_give_the_source_address() {
        let v4 = [203, 0, 113, 7, 10, 0, 0, 1, 0x1f, 0x90, 1, 187];
        let parsed = parse_proxy_v2(&header(0x21, 0x11, &v4)).unwrap();
        assert_eq!(parsed, ProxyHeader::Proxied { source: "203.0.113.7:8080".parse().unwrap() });

        // IPv4-mapped IPv6 source: the IPv4 address; TLVs after the addresses are skipped.
        let mut v6 = Ipv4Addr::new(198, 51, 100, 9).to_ipv6_mapped().octets().to_vec();
        v6.extend([0u8; 16]);
        v6.extend([0, 80, 1, 187, 0x04, 0, 1, 0]);
        let parsed = parse_proxy_v2(&header(0x21, 0x21, &v6)).unwrap();
        assert_eq!(parsed, ProxyHeader::Proxied { source: "198.51.100.9:80".parse().unwrap() });

        assert_eq!(parse_proxy_v2(&header(0x20, 0x00, &[])).unwrap(), ProxyHeader::Local);
        assert_eq!(parse_proxy_v2(&header(0x21, 0x31, &[0; 216])).unwrap(), ProxyHeader::Local, "a UNIX socket");
    }

    #[test]
    fn malformed_proxy_v2_headers_are_refused() {
        let cases: &[(Vec<u8>, ProxyHeaderError)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), ProxyHeaderError::Signature),
            (header(0x11, 0x11, &[0; 12]), ProxyHeaderError::VersionOrCommand(0x11)),
            (header(0x22, 0x11, &[0; 12]), ProxyHeaderError::VersionOrCommand(0x22)),
            (header(0x21, 0x11, &[0; 11]), ProxyHeaderError::Truncated),
            (header(0x21, 0x21, &[0; 35]), ProxyHeaderError::Truncated),
            (header(0x21, 0x11, &[0; 2000]), ProxyHeaderError::TooLong(2000)),
            (header(0x21, 0x11, &[0; 12])[..20].to_vec(), ProxyHeaderError::Truncated),
            (PROXY_V2_SIGNATURE[..10].to_vec(), ProxyHeaderError::Truncated),
        ];
        for (bytes, expected) in cases {
            assert_eq!(parse_proxy_v2(bytes), Err(*expected), "{bytes:?}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = trusted(&["10.0.0.0/8", "2001:db8:1::/48"]);
        let client = |peer: &str, values: &[&str]| {
            proxies.forwarded_client(peer.parse().unwrap(), values.iter().copied()).to_string()
        };
        // Table: peer, X-Forwarded-For values, the client believed.
        let cases: &[(&str, &[&str], &str)] = &[
            ("203.0.113.5", &["198.51.100.1"], "203.0.113.5"),
            ("10.1.2.3", &["198.51.100.1"], "198.51.100.1"),
            ("10.1.2.3", &["6.6.6.6, 198.51.100.1, 10.9.9.9"], "198.51.100.1"),
            ("10.1.2.3", &["6.6.6.6", "198.51.100.1,10.9.9.9"], "198.51.100.1"),
            ("10.1.2.3", &["10.4.4.4, 10.9.9.9"], "10.4.4.4"),
            ("10.1.2.3", &[], "10.1.2.3"),
            ("10.1.2.3", &["garbage"], "10.1.2.3"),
            ("10.1.2.3", &["198.51.100.1:4431"], "198.51.100.1"),
            ("10.1.2.3", &["[2001:db8:2::7]:443"], "2001:db8:2::7"),
            ("10.1.2.3", &["::ffff:198.51.100.2"], "198.51.100.2"),
            ("::ffff:10.1.2.3", &["198.51.100.3"], "198.51.100.3"),
            ("::ffff:203.0.113.5", &["198.51.100.3"], "203.0.113.5"),
            ("2001:db8:1::9", &["2001:db8:3::1"], "2001:db8:3::1"),
        ];
        for (peer, values, expected) in cases {
            assert_eq!(client(peer, values), *expected, "peer {peer}, X-Forwarded-For {values:?}");
        }
        assert_eq!(
            TrustedProxies::default()
                .forwarded_client("10.1.2.3".parse().unwrap(), ["1.1.1.1"].into_iter())
                .to_string(),
            "10.1.2.3"
        );
    }
}
