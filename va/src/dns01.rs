//! dns-01 validation (RFC 8555 §8.4): a TXT record at `_acme-challenge.<name>` holding the base64url SHA-256 of
//! the key authorization. Wildcard identifiers arrive without their `*.`, so they validate here too.

use std::sync::Arc;

use quarry_core::model::{ChallengeType, ValidationRecord};
use quarry_core::{ErrorKind, Problem};

use crate::resolver::{LookupError, Resolver};
use crate::validator::{Attempt, Validator};

/// How much of an unexpected TXT value a problem detail quotes.
const QUOTE_LEN: usize = 100;

/// Looks the TXT record up through the configured resolver and passes when any value matches.
pub struct Dns01Validator {
    resolver: Arc<dyn Resolver>,
    perspective: String,
}

impl Dns01Validator {
    pub fn new(resolver: Arc<dyn Resolver>, perspective: impl Into<String>) -> Self {
        Self { resolver, perspective: perspective.into() }
    }
}

#[tonic::async_trait]
impl Validator for Dns01Validator {
    fn challenge_type(&self) -> ChallengeType {
        ChallengeType::Dns01
    }

    async fn validate(&self, attempt: Attempt<'_>, records: &mut Vec<ValidationRecord>) -> Result<(), Problem> {
        let base = attempt.identifier.without_wildcard().value;
        let name = format!("_acme-challenge.{base}");
        records.push(ValidationRecord {
            hostname: base,
            resolver_addresses: self.resolver.addresses(),
            perspective: self.perspective.clone(),
            ..Default::default()
        });
        let expected = quarry_jose::dns01_txt_value(attempt.key_authorization);
        match self.resolver.lookup_txt(&name).await {
            Ok(values) if values.iter().any(|value| value == &expected) => Ok(()),
            Ok(values) => {
                let shown = values.first().map(String::as_str).unwrap_or_default();
                let shown: String = shown.chars().take(QUOTE_LEN).collect();
                let others = match values.len() {
                    0 | 1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                Err(Problem::new(
                    ErrorKind::IncorrectResponse,
                    format!("Incorrect TXT record {shown:?}{others} found at {name}"),
                ))
            }
            Err(LookupError::NotFound) => {
                Err(Problem::new(ErrorKind::Unauthorized, format!("No TXT record found at {name}")))
            }
            Err(LookupError::Failed(why)) => {
                Err(Problem::new(ErrorKind::Dns, format!("DNS problem: {why} looking up TXT for {name}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use quarry_core::Identifier;

    use super::*;

    /// Answers every TXT query with one fixed outcome.
    struct FixedTxt(Result<Vec<String>, LookupError>);

    #[tonic::async_trait]
    impl Resolver for FixedTxt {
        async fn lookup_ips(&self, _: &str) -> Result<Vec<IpAddr>, LookupError> {
            Err(LookupError::NotFound)
        }
        async fn lookup_txt(&self, _: &str) -> Result<Vec<String>, LookupError> {
            self.0.clone()
        }
        async fn lookup_caa(&self, _: &str) -> Result<Vec<crate::resolver::CaaRecord>, LookupError> {
            Err(LookupError::NotFound)
        }
        fn addresses(&self) -> Vec<String> {
            vec!["fixed".to_owned()]
        }
    }

    #[tokio::test]
    async fn lookup_outcomes_map_to_problem_kinds() {
        let key_authorization = "tok.thumb";
        let expected = quarry_jose::dns01_txt_value(key_authorization);
        type Case = (Result<Vec<String>, LookupError>, Option<ErrorKind>);
        let cases: Vec<Case> = vec![
            (Ok(vec![expected.clone()]), None),
            (Ok(vec!["other".into(), expected]), None),
            (Ok(vec!["x".repeat(300)]), Some(ErrorKind::IncorrectResponse)),
            (Err(LookupError::NotFound), Some(ErrorKind::Unauthorized)),
            (Err(LookupError::Failed("timeout".into())), Some(ErrorKind::Dns)),
        ];
        let identifier = Identifier::dns("example.com");
        for (answer, kind) in cases {
            let validator = Dns01Validator::new(Arc::new(FixedTxt(answer.clone())), "primary");
            let mut records = Vec::new();
            let attempt = Attempt { identifier: &identifier, token: "tok", key_authorization };
            let outcome = validator.validate(attempt, &mut records).await;
            assert_eq!(outcome.as_ref().err().map(|p| p.kind), kind, "{answer:?}");
            if let Err(problem) = outcome {
                assert!(problem.detail.len() < 200, "{}", problem.detail);
                assert!(problem.detail.contains("_acme-challenge.example.com"), "{}", problem.detail);
            }
            assert_eq!(records[0].resolver_addresses, ["fixed"]);
        }
    }
}
