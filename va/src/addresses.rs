//! Where validation may connect: a name's addresses, why a connection failed, and the address policy that keeps the CA from validating
//! against private, loopback, link-local and other reserved addresses (allowed only on a developer's machine).

use std::net::IpAddr;

use quarry_core::identifier::is_public_unicast;
use quarry_core::{ErrorKind, Problem};

use crate::resolver::{LookupError, Resolver};

/// Whether non-public addresses may be validated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressPolicy {
    pub allow_non_public: bool,
}

impl AddressPolicy {
    fn permits(self, ip: IpAddr) -> bool {
        self.allow_non_public || is_public_unicast(ip)
    }

    /// An address given directly (an IP identifier, or a redirect to an IP literal) must be permitted.
    pub fn check(self, ip: IpAddr) -> Result<(), Problem> {
        if self.permits(ip) {
            return Ok(());
        }
        Err(Problem::new(
            ErrorKind::Connection,
            format!("{ip} is not a public address; this CA does not validate against it"),
        ))
    }

    /// The A and AAAA records of `host` this CA may connect to; all of them, resolved, for the record.
    pub async fn resolve(self, resolver: &dyn Resolver, host: &str) -> Result<(Vec<IpAddr>, Vec<IpAddr>), Problem> {
        let resolved = match resolver.lookup_ips(host).await {
            Ok(ips) if !ips.is_empty() => ips,
            Ok(_) | Err(LookupError::NotFound) => {
                return Err(Problem::new(ErrorKind::Dns, format!("no valid A or AAAA records for {host}")));
            }
            Err(LookupError::Failed(why)) => {
                return Err(Problem::new(
                    ErrorKind::Dns,
                    format!("DNS problem: {why} looking up A and AAAA for {host}"),
                ));
            }
        };
        let permitted: Vec<IpAddr> = resolved.iter().copied().filter(|ip| self.permits(*ip)).collect();
        if permitted.is_empty() {
            let shown: Vec<String> = resolved.iter().map(IpAddr::to_string).collect();
            return Err(Problem::new(
                ErrorKind::Dns,
                format!("{host} resolves only to addresses this CA does not validate against ({})", shown.join(", ")),
            ));
        }
        Ok((permitted, resolved))
    }
}

/// Why connecting to an address failed, in the words operators know.
pub(crate) fn connect_error(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "Connection refused",
        std::io::ErrorKind::ConnectionReset => "Connection reset by peer",
        std::io::ErrorKind::TimedOut => "Timeout during connect (likely firewall problem)",
        std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => "Network unreachable",
        std::io::ErrorKind::AddrNotAvailable => "Address not available",
        _ => "Connection failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_refuses_reserved_addresses_unless_allowed() {
        let strict = AddressPolicy::default();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let public: IpAddr = "64.112.117.1".parse().unwrap();
        assert_eq!(strict.check(loopback).unwrap_err().kind, ErrorKind::Connection);
        assert!(strict.check(public).is_ok());
        assert!(AddressPolicy { allow_non_public: true }.check(loopback).is_ok());
    }
}
