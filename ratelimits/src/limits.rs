//! The limits Quarry enforces (Boulder's names and numbers), their values from a limits file, and the bucket each
//! request draws from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use crate::gcra::Rate;

/// Every limit, numbered as Boulder numbers them (the number prefixes bucket keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum LimitName {
    NewRegistrationsPerIPAddress = 1,
    NewRegistrationsPerIPv6Range = 2,
    NewOrdersPerAccount = 3,
    FailedAuthorizationsPerDomainPerAccount = 4,
    CertificatesPerDomain = 5,
    CertificatesPerDomainPerAccount = 6,
    CertificatesPerFQDNSet = 7,
    FailedAuthorizationsForPausingPerDomainPerAccount = 8,
}

impl LimitName {
    pub const ALL: [Self; 8] = [
        Self::NewRegistrationsPerIPAddress,
        Self::NewRegistrationsPerIPv6Range,
        Self::NewOrdersPerAccount,
        Self::FailedAuthorizationsPerDomainPerAccount,
        Self::CertificatesPerDomain,
        Self::CertificatesPerDomainPerAccount,
        Self::CertificatesPerFQDNSet,
        Self::FailedAuthorizationsForPausingPerDomainPerAccount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewRegistrationsPerIPAddress => "NewRegistrationsPerIPAddress",
            Self::NewRegistrationsPerIPv6Range => "NewRegistrationsPerIPv6Range",
            Self::NewOrdersPerAccount => "NewOrdersPerAccount",
            Self::FailedAuthorizationsPerDomainPerAccount => "FailedAuthorizationsPerDomainPerAccount",
            Self::CertificatesPerDomain => "CertificatesPerDomain",
            Self::CertificatesPerDomainPerAccount => "CertificatesPerDomainPerAccount",
            Self::CertificatesPerFQDNSet => "CertificatesPerFQDNSet",
            Self::FailedAuthorizationsForPausingPerDomainPerAccount => {
                "FailedAuthorizationsForPausingPerDomainPerAccount"
            }
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|limit| limit.as_str() == name)
    }

    /// Limits that apply only to buckets with an override (no default value).
    pub fn is_override_only(self) -> bool {
        self == Self::CertificatesPerDomainPerAccount
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bucket: a limit and the id of what it counts (an IP, an account, a domain...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket {
    pub limit: LimitName,
    pub id: String,
}

impl Bucket {
    /// The store key, `<limit number>:<id>`, as Boulder's.
    pub fn key(&self) -> String {
        format!("{}:{}", self.limit as u8, self.id)
    }

    pub fn new_registrations_per_ip(ip: IpAddr) -> Self {
        Self { limit: LimitName::NewRegistrationsPerIPAddress, id: ip.to_string() }
    }

    /// The /48 of an IPv6 address; `None` for IPv4, which this limit does not cover.
    pub fn new_registrations_per_ipv6_range(ip: IpAddr) -> Option<Self> {
        let IpAddr::V6(v6) = ip else { return None };
        let prefix = u128::from(v6) & !((1u128 << 80) - 1);
        let id = format!("{}/48", std::net::Ipv6Addr::from(prefix));
        Some(Self { limit: LimitName::NewRegistrationsPerIPv6Range, id })
    }

    pub fn new_orders_per_account(account_id: i64) -> Self {
        Self { limit: LimitName::NewOrdersPerAccount, id: account_id.to_string() }
    }

    pub fn failed_authorizations(account_id: i64, identifier: &str) -> Self {
        Self { limit: LimitName::FailedAuthorizationsPerDomainPerAccount, id: format!("{account_id}:{identifier}") }
    }

    pub fn failed_authorizations_for_pausing(account_id: i64, identifier: &str) -> Self {
        let id = format!("{account_id}:{identifier}");
        Self { limit: LimitName::FailedAuthorizationsForPausingPerDomainPerAccount, id }
    }

    /// `domain_or_cidr` is a registered domain (eTLD+1), an IPv4 address, or an IPv6 /64.
    pub fn certificates_per_domain(domain_or_cidr: &str) -> Self {
        Self { limit: LimitName::CertificatesPerDomain, id: domain_or_cidr.to_owned() }
    }

    pub fn certificates_per_domain_per_account(account_id: i64, domain_or_cidr: &str) -> Self {
        Self { limit: LimitName::CertificatesPerDomainPerAccount, id: format!("{account_id}:{domain_or_cidr}") }
    }

    /// `set_hash` is the hex SHA-256 of the sorted identifier set.
    pub fn certificates_per_fqdn_set(set_hash: &str) -> Self {
        Self { limit: LimitName::CertificatesPerFQDNSet, id: set_hash.to_owned() }
    }
}

/// What an IP address counts under CertificatesPerDomain: itself (IPv4) or its /64 (IPv6).
pub fn ip_domain_bucket_id(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", std::net::Ipv6Addr::from(prefix))
        }
    }
}

/// A limit's value as a limits file writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitValue {
    pub count: u64,
    pub period_secs: u64,
    pub burst: u64,
}

impl LimitValue {
    pub fn rate(&self) -> Option<Rate> {
        let period = i64::try_from(self.period_secs).ok()?.checked_mul(1_000_000)?;
        Rate::new(self.count, period, self.burst)
    }
}

/// An override of one bucket's limit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideEntry {
    pub limit: String,
    /// The bucket id (without the limit number), e.g. an account id or a registered domain.
    pub bucket: String,
    pub count: u64,
    pub period_secs: u64,
    pub burst: u64,
    #[serde(default)]
    pub comment: String,
}

/// A limits file: the default of every limit and per-bucket overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub version: u32,
    pub limits: BTreeMap<String, LimitValue>,
    #[serde(default)]
    pub overrides: Vec<OverrideEntry>,
}

/// A limits file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits: {0}")]
pub struct LimitsError(pub String);

/// The checked limits: a rate per limit and per overridden bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    defaults: BTreeMap<LimitName, Rate>,
    overrides: BTreeMap<Bucket, Rate>,
}

impl Limits {
    /// Every limit but the override-only one must have a value.
    pub fn from_file(file: &LimitsFile) -> Result<Self, LimitsError> {
        if file.version != 1 {
            return Err(LimitsError(format!("version {} is not 1", file.version)));
        }
        let mut limits = Self::default();
        for (name, value) in &file.limits {
            let limit = LimitName::parse(name).ok_or_else(|| LimitsError(format!("unknown limit {name:?}")))?;
            if limit.is_override_only() {
                return Err(LimitsError(format!("{limit} takes overrides only")));
            }
            let rate = value
                .rate()
                .ok_or_else(|| LimitsError(format!("{limit}: count, period and burst must be positive")))?;
            limits.defaults.insert(limit, rate);
        }
        if let Some(missing) =
            LimitName::ALL.into_iter().find(|l| !l.is_override_only() && !limits.defaults.contains_key(l))
        {
            return Err(LimitsError(format!("{missing} has no value")));
        }
        limits.add_overrides(&file.overrides)?;
        Ok(limits)
    }

    /// Adds (or replaces) overrides, e.g. the sa's enabled overrides on top of the file's.
    pub fn add_overrides(&mut self, overrides: &[OverrideEntry]) -> Result<(), LimitsError> {
        for entry in overrides {
            let limit = LimitName::parse(&entry.limit)
                .ok_or_else(|| LimitsError(format!("override of unknown limit {:?}", entry.limit)))?;
            let value = LimitValue { count: entry.count, period_secs: entry.period_secs, burst: entry.burst };
            let rate = value
                .rate()
                .ok_or_else(|| LimitsError(format!("override {limit}:{}: values must be positive", entry.bucket)))?;
            self.overrides.insert(Bucket { limit, id: entry.bucket.clone() }, rate);
        }
        Ok(())
    }

    /// The rate of `bucket`: its override, else its limit's default; `None` for an override-only limit without one.
    pub fn rate(&self, bucket: &Bucket) -> Option<Rate> {
        if let Some(rate) = self.overrides.get(bucket) {
            return Some(*rate);
        }
        if bucket.limit == LimitName::CertificatesPerDomainPerAccount {
            // `account:domain` buckets take the account's override.
            let account = bucket.id.split(':').next()?;
            return self.overrides.get(&Bucket { limit: bucket.limit, id: account.to_owned() }).copied();
        }
        self.defaults.get(&bucket.limit).copied()
    }

    /// Whether the account has a CertificatesPerDomainPerAccount override (its certificates then count per account
    /// instead of per domain).
    pub fn has_per_account_domain_override(&self, account_id: i64) -> bool {
        self.overrides
            .contains_key(&Bucket { limit: LimitName::CertificatesPerDomainPerAccount, id: account_id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_follow_boulder() {
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().expect("ip");
        assert_eq!(Bucket::new_orders_per_account(42).key(), "3:42");
        assert_eq!(Bucket::new_registrations_per_ip("192.0.2.1".parse().expect("ip")).key(), "1:192.0.2.1");
        assert_eq!(Bucket::new_registrations_per_ipv6_range(v6).expect("v6").key(), "2:2001:db8:1::/48");
        assert_eq!(Bucket::new_registrations_per_ipv6_range("192.0.2.1".parse().expect("ip")), None);
        assert_eq!(ip_domain_bucket_id(v6), "2001:db8:1:2::/64");
        assert_eq!(Bucket::failed_authorizations(7, "a.example.com").key(), "4:7:a.example.com");
    }

    #[test]
    fn a_file_must_give_every_limit_a_positive_value() {
        let mut text = String::from("version = 1\n");
        for limit in LimitName::ALL.into_iter().filter(|l| !l.is_override_only()) {
            text.push_str(&format!("[limits.{limit}]\ncount = 10\nperiod_secs = 3600\nburst = 10\n"));
        }
        let file: LimitsFile = toml::from_str(&text).expect("parses");
        let limits = Limits::from_file(&file).expect("valid");
        assert!(limits.rate(&Bucket::new_orders_per_account(1)).is_some());
        assert_eq!(limits.rate(&Bucket::certificates_per_domain_per_account(1, "example.com")), None);

        let missing: LimitsFile =
            toml::from_str(&text.replace("[limits.NewOrdersPerAccount]", "[limits.Typo]")).expect("parses");
        assert!(Limits::from_file(&missing).unwrap_err().0.contains("Typo"));
        let zero: LimitsFile = toml::from_str(&text.replacen("count = 10", "count = 0", 1)).expect("parses");
        assert!(Limits::from_file(&zero).is_err());
    }
}
