//! dns-01 validation (RFC 8555 §8.4): a TXT record at `_acme-challenge.<name>` holding the base64url SHA-256 of
//! the key authorization. Wildcard identifiers arrive without their `*.`, so they validate here too.

use quarry_core::model::ValidationRecord;
use quarry_core::{ErrorKind, Identifier, Problem};

use crate::resolver::{LookupError, Resolver};

/// Looks the record up and passes when any TXT value matches.
pub async fn validate(
    resolver: &dyn Resolver,
    perspective: &str,
    identifier: &Identifier,
    expected_key_authorization: &str,
    records: &mut Vec<ValidationRecord>,
) -> Result<(), Problem> {
    let name = format!("_acme-challenge.{}", identifier.without_wildcard().value);
    records.push(ValidationRecord {
        hostname: identifier.value.clone(),
        resolver_addresses: resolver.addresses(),
        perspective: perspective.to_owned(),
        ..Default::default()
    });
    let expected = quarry_jose::dns01_txt_value(expected_key_authorization);
    match resolver.lookup_txt(&name).await {
        Ok(values) if values.iter().any(|value| value == &expected) => Ok(()),
        Ok(values) => Err(Problem::new(
            ErrorKind::IncorrectResponse,
            format!(
                "incorrect TXT record {:?} found at {name}",
                values.first().map(String::as_str).unwrap_or_default()
            ),
        )),
        Err(LookupError::NotFound) => {
            Err(Problem::new(ErrorKind::Unauthorized, format!("no TXT record found at {name}")))
        }
        Err(LookupError::Failed(why)) => {
            Err(Problem::new(ErrorKind::Dns, format!("DNS problem looking up TXT for {name}: {why}")))
        }
    }
}
