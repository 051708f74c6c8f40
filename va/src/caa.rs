//! CAA (RFC 8659, with RFC 8657's `accounturi` and `validationmethods`): may this CA issue for a name? The record set
//! that counts is the first non-empty one climbing from the name towards the root; no set at all allows issuance.

use futures::StreamExt;
use quarry_core::{ErrorKind, Problem};

// The record type lives with the lookups that return it; it is part of this module's API (`decide`) too.
pub use crate::resolver::CaaRecord;
use crate::resolver::{LookupError, Resolver};

/// What is being checked: the name (without `*.`), whether the certificate is for its wildcard, and how and for whom
/// it was validated.
#[derive(Debug, Clone, Copy)]
pub struct CaaCheck<'a> {
    pub name: &'a str,
    pub wildcard: bool,
    /// The challenge type that proved control (`http-01`, `dns-01`, `tls-alpn-01`).
    pub validation_method: &'a str,
    /// The ACME account URL of the subscriber.
    pub account_uri: &'a str,
}

/// The tags RFC 8659 defines; any other tag marked critical stops issuance.
const KNOWN_TAGS: &[&str] = &["issue", "issuewild", "iodef", "contactemail", "contactphone"];

/// Finds the relevant record set (the resolver follows CNAMEs) and decides.
///
/// Every name from `check.name` up to its top-level label is asked at once, as Boulder does, and the answers are read
/// in climbing order, as a climb one name at a time would read them: the first non-empty set decides, and a failed
/// lookup stops issuance only when no closer name had a set. The check ends as soon as the answers read decide, so
/// it never waits for names above the one that decides (their lookups are dropped). With a remote resolver this takes
/// the deciding name's lookup time instead of one lookup per label up to it; the price is the questions above it.
pub async fn check(resolver: &dyn Resolver, check: CaaCheck<'_>, identities: &[String]) -> Result<(), Problem> {
    let name = check.name.trim_end_matches('.').to_ascii_lowercase();
    let candidates = climb(&name);
    let mut answers: futures::stream::FuturesOrdered<_> =
        candidates.iter().map(|candidate| resolver.lookup_caa(candidate)).collect();
    for candidate in &candidates {
        let Some(answer) = answers.next().await else { break };
        match answer {
            Ok(records) if !records.is_empty() => return decide(&records, check, identities, candidate),
            Ok(_) | Err(LookupError::NotFound) => continue,
            Err(LookupError::Failed(why)) => {
                return Err(Problem::new(
                    ErrorKind::Dns,
                    format!("CAA lookup for {candidate} failed: {why}; issuance cannot proceed without an answer"),
                ));
            }
        }
    }
    Ok(())
}

/// `name` and each of its ancestors up to the top-level label, closest first (RFC 8659 §3's climb).
fn climb(name: &str) -> Vec<&str> {
    let mut names = vec![name];
    let mut rest = name;
    while let Some((_, parent)) = rest.split_once('.') {
        names.push(parent);
        rest = parent;
    }
    names
}

/// The decision for one record set found at `owner`.
pub fn decide(records: &[CaaRecord], check: CaaCheck<'_>, identities: &[String], owner: &str) -> Result<(), Problem> {
    let deny = |why: String| Err(Problem::new(ErrorKind::Caa, format!("CAA record for {owner} {why}")));
    if let Some(unknown) =
        records.iter().find(|r| r.critical && !KNOWN_TAGS.contains(&r.tag.to_ascii_lowercase().as_str()))
    {
        return deny(format!("has an unknown critical tag {:?}", unknown.tag));
    }
    let tagged = |tag: &str| records.iter().filter(move |r| r.tag.eq_ignore_ascii_case(tag)).collect::<Vec<_>>();
    let issue = tagged("issue");
    let issuewild = tagged("issuewild");
    // RFC 8659 §4.3: for a wildcard, issuewild records take precedence when there are any.
    let relevant = if check.wildcard && !issuewild.is_empty() { issuewild } else { issue };
    if relevant.is_empty() {
        // Only iodef or other tags: nothing restricts issuance.
        return Ok(());
    }
    for record in &relevant {
        let Some(value) = IssueValue::parse(&record.value) else { continue };
        let Some(domain) = &value.issuer else { continue };
        if !identities.iter().any(|id| id.eq_ignore_ascii_case(domain)) {
            continue;
        }
        if let Some(uri) = value.parameter("accounturi")
            && uri != check.account_uri
        {
            continue;
        }
        if let Some(methods) = value.parameter("validationmethods")
            && !methods.split(',').any(|m| m.trim() == check.validation_method)
        {
            continue;
        }
        return Ok(());
    }
    let what = if check.wildcard { "wildcard issuance" } else { "issuance" };
    deny(format!(
        "prevents {what} by this CA (identities {identities:?}, account {}, method {})",
        check.account_uri, check.validation_method
    ))
}

/// An `issue`/`issuewild` value: an optional issuer domain and `key=value` parameters (RFC 8659 §4.2).
#[derive(Debug, PartialEq, Eq)]
struct IssueValue {
    issuer: Option<String>,
    parameters: Vec<(String, String)>,
}

impl IssueValue {
    /// `None` for a value that does not parse, which matches no CA.
    fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(';');
        let issuer = parts.next().unwrap_or_default().trim();
        if !issuer.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return None;
        }
        let mut parameters = Vec::new();
        for part in parts {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (key, value) = part.split_once('=')?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) || value.contains(char::is_whitespace)
            {
                return None;
            }
            parameters.push((key.to_ascii_lowercase(), value.to_owned()));
        }
        Some(Self { issuer: (!issuer.is_empty()).then(|| issuer.to_ascii_lowercase()), parameters })
    }

    fn parameter(&self, key: &str) -> Option<&str> {
        self.parameters.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::time::Duration;

    use tokio::sync::Barrier;

    use super::*;

    const ACCOUNT: &str = "https://ca.example/acme/acct/7";

    fn record(tag: &str, value: &str) -> CaaRecord {
        CaaRecord { critical: false, tag: tag.into(), value: value.into() }
    }

    fn verdict(records: &[CaaRecord], wildcard: bool, method: &str) -> Option<ErrorKind> {
        let check = CaaCheck { name: "example.org", wildcard, validation_method: method, account_uri: ACCOUNT };
        decide(records, check, &["quarry.test".to_owned()], "example.org").err().map(|p| p.kind)
    }

    #[test]
    fn decisions() {
        let caa = Some(ErrorKind::Caa);
        let critical = CaaRecord { critical: true, tag: "tbs".into(), value: "x".into() };
        // (what, records, wildcard, validation method, expected problem kind)
        type Case<'a> = (&'a str, Vec<CaaRecord>, bool, &'a str, Option<ErrorKind>);
        let cases: Vec<Case<'_>> = vec![
            ("issue for us", vec![record("issue", "quarry.test")], false, "http-01", None),
            ("issue, case-insensitive", vec![record("ISSUE", "Quarry.Test")], false, "http-01", None),
            ("issue for another CA", vec![record("issue", "other.example")], false, "http-01", caa),
            ("empty issue forbids all", vec![record("issue", ";")], false, "http-01", caa),
            (
                "one of several",
                vec![record("issue", "other.example"), record("issue", "quarry.test")],
                false,
                "dns-01",
                None,
            ),
            ("iodef only", vec![record("iodef", "mailto:a@example.org")], false, "http-01", None),
            ("unknown critical tag", vec![record("issue", "quarry.test"), critical.clone()], false, "http-01", caa),
            (
                "unknown non-critical tag",
                vec![record("issue", "quarry.test"), record("tbs", "x")],
                false,
                "http-01",
                None,
            ),
            (
                "issuewild for wildcards",
                vec![record("issue", "other.example"), record("issuewild", "quarry.test")],
                true,
                "dns-01",
                None,
            ),
            (
                "issuewild denies wildcards",
                vec![record("issue", "quarry.test"), record("issuewild", ";")],
                true,
                "dns-01",
                caa,
            ),
            (
                "issuewild ignored for plain names",
                vec![record("issue", "quarry.test"), record("issuewild", ";")],
                false,
                "dns-01",
                None,
            ),
            ("issue covers wildcards without issuewild", vec![record("issue", "quarry.test")], true, "dns-01", None),
            (
                "accounturi matches",
                vec![record("issue", &format!("quarry.test; accounturi={ACCOUNT}"))],
                false,
                "http-01",
                None,
            ),
            (
                "accounturi differs",
                vec![record("issue", "quarry.test; accounturi=https://ca.example/acme/acct/8")],
                false,
                "http-01",
                caa,
            ),
            (
                "validationmethods allows",
                vec![record("issue", "quarry.test; validationmethods=dns-01,http-01")],
                false,
                "http-01",
                None,
            ),
            (
                "validationmethods forbids",
                vec![record("issue", "quarry.test; validationmethods=dns-01")],
                false,
                "http-01",
                caa,
            ),
            (
                "garbled value matches nothing",
                vec![record("issue", "quarry.test; key with space=1")],
                false,
                "http-01",
                caa,
            ),
        ];
        for (what, records, wildcard, method, expected) in cases {
            assert_eq!(verdict(&records, wildcard, method), expected, "{what}");
        }
    }

    #[test]
    fn the_climb_goes_from_the_name_to_its_top_level_label() {
        assert_eq!(climb("a.b.example.org"), ["a.b.example.org", "b.example.org", "example.org", "org"]);
        assert_eq!(climb("localhost"), ["localhost"]);
    }

    /// CAA answers by name. A name without one has no set, or never answers with `others_silent`. With a
    /// `barrier`, every lookup waits until all of them have reached it, so a climb that asks one name at a time
    /// never gets an answer.
    struct ScriptedCaa {
        answers: HashMap<&'static str, Result<Vec<CaaRecord>, LookupError>>,
        barrier: Option<Barrier>,
        others_silent: bool,
    }

    #[tonic::async_trait]
    impl Resolver for ScriptedCaa {
        async fn lookup_ips(&self, _: &str) -> Result<Vec<IpAddr>, LookupError> {
            Err(LookupError::NotFound)
        }
        async fn lookup_txt(&self, _: &str) -> Result<Vec<String>, LookupError> {
            Err(LookupError::NotFound)
        }
        async fn lookup_caa(&self, name: &str) -> Result<Vec<CaaRecord>, LookupError> {
            if let Some(barrier) = &self.barrier {
                barrier.wait().await;
            }
            match self.answers.get(name) {
                Some(answer) => answer.clone(),
                None if self.others_silent => std::future::pending().await,
                None => Ok(Vec::new()),
            }
        }
        fn addresses(&self) -> Vec<String> {
            vec!["scripted".to_owned()]
        }
    }

    #[tokio::test]
    async fn a_set_found_close_to_the_name_decides_without_waiting_for_the_names_above() {
        let check =
            CaaCheck { name: "www.example.org", wildcard: false, validation_method: "http-01", account_uri: ACCOUNT };
        let identities = ["quarry.test".to_owned()];
        let resolver = ScriptedCaa {
            answers: [("www.example.org", Ok(vec![record("issue", "quarry.test")]))].into_iter().collect(),
            barrier: None,
            others_silent: true,
        };
        let outcome = tokio::time::timeout(Duration::from_secs(5), super::check(&resolver, check, &identities)).await;
        assert_eq!(outcome.expect("decided without the ancestors' answers"), Ok(()));
    }

    #[tokio::test]
    async fn every_name_of_the_climb_is_asked_at_once_and_the_closest_answer_decides() {
        let failed = || Err(LookupError::Failed("SERVFAIL".into()));
        let ours = || Ok(vec![record("issue", "quarry.test")]);
        let theirs = || Ok(vec![record("issue", "other.example")]);
        type Answers = Vec<(&'static str, Result<Vec<CaaRecord>, LookupError>)>;
        // (what, answers by name, expected problem kind) for `www.shop.example.org`: four names asked.
        let cases: Vec<(&str, Answers, Option<ErrorKind>)> = vec![
            ("no set anywhere", vec![], None),
            ("the name's own set", vec![("www.shop.example.org", ours())], None),
            ("a closer set overrides its ancestors'", vec![("shop.example.org", ours()), ("org", theirs())], None),
            ("an ancestor's set governs", vec![("example.org", theirs())], Some(ErrorKind::Caa)),
            (
                "a failure above the set that decides is ignored",
                vec![("shop.example.org", ours()), ("org", failed())],
                None,
            ),
            (
                "a failure below the set that decides stops issuance",
                vec![("shop.example.org", failed()), ("org", ours())],
                Some(ErrorKind::Dns),
            ),
            (
                "NXDOMAIN counts as no set",
                vec![("www.shop.example.org", Err(LookupError::NotFound)), ("example.org", theirs())],
                Some(ErrorKind::Caa),
            ),
        ];
        for (what, answers, expected) in cases {
            let resolver = ScriptedCaa {
                answers: answers.into_iter().collect(),
                barrier: Some(Barrier::new(4)),
                others_silent: false,
            };
            let check = CaaCheck {
                name: "www.shop.example.org",
                wildcard: false,
                validation_method: "http-01",
                account_uri: ACCOUNT,
            };
            let identities = ["quarry.test".to_owned()];
            let outcome = tokio::time::timeout(Duration::from_secs(5), super::check(&resolver, check, &identities))
                .await
                .unwrap_or_else(|_| panic!("{what}: the names were not all asked at once"));
            assert_eq!(outcome.err().map(|p| p.kind), expected, "{what}");
        }
    }
}
