//! Accounts (RFC 8555 §7.3): registration, contact updates, key roll-over and deactivation, with the checks of
//! account keys and contacts.

use std::time::Instant;

use quarry_core::clock::now;
use quarry_core::{ErrorKind, Identifier, Problem};
use quarry_jose::Jwk;
use quarry_proto::core as pb;
use quarry_proto::ra::{DeactivateAccountRequest, UpdateAccountContactRequest, UpdateAccountKeyRequest};
use quarry_proto::sa as sapb;

use crate::keypolicy;
use crate::registrar::Registrar;

impl Registrar {
    pub(crate) async fn new_account(
        &self,
        account: pb::Account,
        client_ip: Option<std::net::IpAddr>,
        deadline: Option<Instant>,
    ) -> Result<pb::Account, Problem> {
        let jwk = Jwk::from_slice(&account.jwk).map_err(|e| Problem::new(ErrorKind::BadPublicKey, e.to_string()))?;
        keypolicy::check_key(&jwk)?;
        self.check_key_not_blocked(&jwk, deadline).await?;
        check_contacts(&account.contact)?;
        let spent = self.inner.limits.new_account(client_ip).await?;
        let created = self.create_account(jwk, account, deadline).await;
        if !matches!(&created, Ok((_, true))) {
            // No account came of it: the registration is not counted.
            self.inner.limits.refund(&spent).await;
        }
        created.map(|(account, _)| account)
    }

    /// Stores a new account; (the account, whether it is new) — a racing request may have registered the key.
    async fn create_account(
        &self,
        jwk: Jwk,
        account: pb::Account,
        deadline: Option<Instant>,
    ) -> Result<(pb::Account, bool), Problem> {
        let new = pb::Account {
            jwk: jwk.canonical_json().into_bytes(),
            status: "valid".into(),
            contact: account.contact,
            terms_of_service_agreed: account.terms_of_service_agreed,
            created_at: now(),
            external_account_id: account.external_account_id,
            external_account_exclusive: account.external_account_exclusive,
            ..Default::default()
        };
        match self.inner.sa.new_account(new.clone(), deadline).await {
            Ok(created) => {
                tracing::info!(target: "audit", event = "account-created", account_id = created.id, "account created");
                Ok((created, true))
            }
            Err(problem) if problem.kind == ErrorKind::Duplicate => {
                // Another request registered the same key first: that account is the answer.
                let existing = self.inner.sa.get_account_by_key(new.jwk, deadline).await?;
                Ok((pb::Account::from(&existing), false))
            }
            Err(problem) => Err(problem),
        }
    }

    /// A key blocked in the sa (compromised, reported) may not become an account key either.
    async fn check_key_not_blocked(&self, jwk: &Jwk, deadline: Option<Instant>) -> Result<(), Problem> {
        if self.inner.sa.key_blocked(jwk.key_hash().to_vec(), deadline).await? {
            return Err(Problem::new(ErrorKind::BadPublicKey, "the account key is blocked"));
        }
        Ok(())
    }

    pub(crate) async fn update_account_contact(
        &self,
        req: UpdateAccountContactRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::Account, Problem> {
        check_contacts(&req.contact)?;
        let update = sapb::UpdateAccountContactRequest { id: req.account_id, contact: req.contact };
        let account = self.inner.sa.update_account_contact(update, deadline).await?;
        tracing::info!(target: "audit", event = "account-updated", account_id = req.account_id, "account contacts updated");
        Ok(account)
    }

    pub(crate) async fn update_account_key(
        &self,
        req: UpdateAccountKeyRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::Account, Problem> {
        let jwk = Jwk::from_slice(&req.jwk).map_err(|e| Problem::new(ErrorKind::BadPublicKey, e.to_string()))?;
        keypolicy::check_key(&jwk)?;
        self.check_key_not_blocked(&jwk, deadline).await?;
        let update = sapb::UpdateAccountKeyRequest { id: req.account_id, jwk: jwk.canonical_json().into_bytes() };
        let account = self.inner.sa.update_account_key(update, deadline).await?;
        tracing::info!(target: "audit", event = "account-key-changed", account_id = req.account_id, "account key rolled over");
        Ok(account)
    }

    pub(crate) async fn deactivate_account(
        &self,
        req: DeactivateAccountRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::Account, Problem> {
        let id = req.account_id;
        let account = self.inner.sa.deactivate_account(id, deadline).await?;
        tracing::info!(target: "audit", event = "account-deactivated", account_id = id, "account deactivated");
        Ok(account)
    }
}

/// At most this many contacts per account, as Let's Encrypt allows.
const MAX_CONTACTS: usize = 10;
/// The longest address SMTP can carry (RFC 5321 §4.5.3.1.3: a 256-octet path, less its angle brackets).
const MAX_ADDRESS_LEN: usize = 254;
/// The longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_PART_LEN: usize = 64;

/// An account's contacts (RFC 8555 §7.3): a handful of `mailto:` URLs of one plain address each.
fn check_contacts(contacts: &[String]) -> Result<(), Problem> {
    if contacts.len() > MAX_CONTACTS {
        return Err(Problem::malformed(format!(
            "too many contacts: {} given, at most {MAX_CONTACTS} allowed",
            contacts.len()
        )));
    }
    contacts.iter().try_for_each(|contact| check_contact(contact))
}

fn check_contact(contact: &str) -> Result<(), Problem> {
    // The detail quotes the contact with its control characters escaped, and no more than a screenful of it.
    let shown: String = contact.chars().take(80).flat_map(char::escape_debug).collect();
    let invalid = |why: &str| Err(Problem::new(ErrorKind::InvalidContact, format!("contact \"{shown}\" {why}")));
    let Some(address) = contact.strip_prefix("mailto:") else {
        return Err(Problem::new(ErrorKind::UnsupportedContact, format!("contact \"{shown}\" is not a mailto: URL")));
    };
    if address.len() > MAX_ADDRESS_LEN {
        return invalid(&format!("is longer than {MAX_ADDRESS_LEN} characters"));
    }
    if !address.is_ascii() {
        return invalid("must be ASCII");
    }
    if address.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return invalid("must not contain spaces or control characters");
    }
    if address.contains('?') {
        return invalid("must not contain header fields");
    }
    if address.contains('#') {
        return invalid("must not contain a fragment");
    }
    if address.contains(',') {
        return invalid("must hold exactly one address");
    }
    let Some((local, domain)) = address.rsplit_once('@') else { return invalid("is not an email address") };
    // A dot-atom local part (RFC 5322 §3.4.1); quoted local parts and comments are not accepted.
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!$%&'*+/=^_`{|}~-".contains(&b);
    let dot_atom = !local.is_empty() && local.split('.').all(|atom| !atom.is_empty() && atom.bytes().all(atext));
    if !dot_atom || local.len() > MAX_LOCAL_PART_LEN {
        return invalid("is not an email address");
    }
    let domain = Identifier::dns(domain.to_ascii_lowercase());
    if domain.check_well_formed().and_then(|()| quarry_core::policy::check_fixed(&domain)).is_err() {
        return invalid("has an invalid domain");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts() {
        let cases: &[(&str, Option<ErrorKind>)] = &[
            ("mailto:ops@example.org", None),
            ("tel:+1234", Some(ErrorKind::UnsupportedContact)),
            ("mailto:a@example.org?subject=x", Some(ErrorKind::InvalidContact)),
            ("mailto:a@example.org,b@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:nobody", Some(ErrorKind::InvalidContact)),
            ("mailto:a@bad..domain", Some(ErrorKind::InvalidContact)),
            ("mailto:first.last+tag@mail.example.org", None),
            // Found accepted by the attack run: control characters, NUL, a 5,000-character address.
            ("mailto:a@example.org\r\nBcc: all@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a\0b@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a\tb@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a b@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a@example.org#x", Some(ErrorKind::InvalidContact)),
            ("mailto:\"quoted\"@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:.a@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a..b@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:ops@localhost", Some(ErrorKind::InvalidContact)),
            ("mailto:ops@service.internal", Some(ErrorKind::InvalidContact)),
            ("mailto:ops@b\u{fc}cher.example", Some(ErrorKind::InvalidContact)),
        ];
        for (contact, expected) in cases {
            assert_eq!(check_contact(contact).err().map(|p| p.kind), *expected, "{contact:?}");
        }
        let long = format!("mailto:{}@example.org", "a".repeat(5_000));
        let problem = check_contact(&long).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::InvalidContact);
        assert!(problem.detail.len() < 200, "the detail does not echo the whole address");
        let long_local = format!("mailto:{}@example.org", "a".repeat(65));
        assert_eq!(check_contact(&long_local).unwrap_err().kind, ErrorKind::InvalidContact);
    }

    #[test]
    fn at_most_ten_contacts() {
        let contacts: Vec<String> = (0..11).map(|i| format!("mailto:ops{i}@example.org")).collect();
        assert_eq!(check_contacts(&contacts[..10]), Ok(()));
        let problem = check_contacts(&contacts).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::Malformed);
        assert!(problem.detail.contains("at most 10"), "{}", problem.detail);
    }
}
