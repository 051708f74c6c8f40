//! The `Store` conformance suite: the same cases against every backend (SQLite always, PostgreSQL when the test
//! command provides it), through the store's own API. Errors must come out as typed kinds.

use std::time::Duration;

use quarry_core::clock::now;
use quarry_core::model::{Account, AccountStatus, ChallengeType};
use quarry_core::{ErrorKind, Identifier};
use quarry_sa::store::{NewAuthorization, NewOrder, PoolSettings};
use quarry_sa::{RateLimitOverride, ShardLease, Store};
use quarry_testkit::db::TestDatabase;

const DAY: i64 = 86_400;

/// Each backend's store, with the database kept alive beside it.
async fn stores() -> Vec<(Store, TestDatabase)> {
    let settings = PoolSettings { max_connections: 4, statement_timeout: Duration::from_secs(5) };
    let mut stores = Vec::new();
    for db in TestDatabase::every_backend().await {
        let store = Store::open(&db.url, settings).await.expect("open the store").with_crl_shards(4);
        stores.push((store, db));
    }
    stores
}

async fn account(store: &Store) -> Account {
    let key = quarry_jose::SigningKey::generate(quarry_jose::Algorithm::Es256).unwrap().jwk();
    let new = Account {
        id: 0,
        jwk: key.canonical_json().into_bytes(),
        status: AccountStatus::Valid,
        contact: Vec::new(),
        terms_of_service_agreed: true,
        created_at: now(),
        external_account_id: String::new(),
    };
    store.new_account(&new, false).await.unwrap()
}

fn order_for(account_id: i64, names: &[&str]) -> NewOrder {
    NewOrder {
        account_id,
        identifiers: names.iter().map(|n| Identifier::dns(*n)).collect(),
        expires: now() + 7 * DAY,
        reused_authorization_ids: Vec::new(),
        new_authorizations: names
            .iter()
            .map(|n| NewAuthorization {
                identifier: Identifier::dns(*n),
                challenge_types: vec![ChallengeType::Http01],
                token: format!("token-{n}"),
                expires: now() + 7 * DAY,
            })
            .collect(),
        profile: "classic".into(),
        replaces: String::new(),
        replaces_serial: String::new(),
    }
}

/// A certificate for `names` with `serial`, valid from `not_before` for 90 days.
fn certificate(names: &[&str], serial: &[u8], not_before: i64) -> Vec<u8> {
    certificate_with_key(names, serial, not_before, &rcgen::KeyPair::generate().unwrap())
}

fn certificate_with_key(names: &[&str], serial: &[u8], not_before: i64, key: &rcgen::KeyPair) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
    params.not_after = params.not_before + time::Duration::days(90);
    params.self_signed(key).unwrap().der().to_vec()
}

/// Reserves `serial` and stores a certificate for `names` under it; returns the hex serial.
async fn issue(store: &Store, account_id: i64, names: &[&str], serial: &[u8], not_before: i64) -> String {
    issue_der(store, account_id, serial, certificate(names, serial, not_before), not_before).await
}

async fn issue_der(store: &Store, account_id: i64, serial: &[u8], der: Vec<u8>, not_before: i64) -> String {
    let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    store.add_serial(account_id, 0, &hex, now(), now() + 90 * DAY).await.unwrap();
    store.add_precertificate(account_id, &der, not_before, 7).await.unwrap();
    store.add_certificate(account_id, &der, not_before, 7).await.unwrap()
}

#[tokio::test]
async fn constraint_violations_are_typed() {
    for (store, db) in stores().await {
        let first = account(&store).await;
        let mut again = first.clone();
        again.id = 0;
        assert_eq!(store.new_account(&again, false).await.unwrap_err().kind, ErrorKind::Duplicate, "{}", db.url);
        store.add_serial(first.id, 0, "01aa", now(), now() + DAY).await.unwrap();
        let twice = store.add_serial(first.id, 0, "01AA", now(), now() + DAY).await.unwrap_err();
        assert_eq!(twice.kind, ErrorKind::Duplicate, "{}", db.url);
        // An order of an account that does not exist breaks a foreign key: notFound, not a driver message.
        let orphan = store.new_order_and_authorizations(&order_for(999_999, &["orphan.example.org"])).await;
        let orphan = orphan.unwrap_err();
        assert_eq!(orphan.kind, ErrorKind::NotFound, "{}: {}", db.url, orphan.detail);
        assert!(!orphan.detail.to_lowercase().contains("foreign"), "{}", orphan.detail);
        // Nothing of the failed order was kept.
        assert_eq!(db.count("authorizations").await, 0, "{}", db.url);
    }
}

#[tokio::test]
async fn fuses_let_one_caller_through() {
    for (store, db) in stores().await {
        let owner = account(&store).await;
        let (order, _) = store.new_order_and_authorizations(&order_for(owner.id, &["fuse.example.org"])).await.unwrap();
        let authz = order.authorization_ids[0];
        store.set_authorization_processing(authz, "http-01", now(), "ra-test").await.unwrap();
        let second = store.set_authorization_processing(authz, "http-01", now(), "ra-test").await.unwrap_err();
        assert_eq!(second.kind, ErrorKind::Conflict, "{}", db.url);
        let ready = quarry_sa::store::ValidationOutcome {
            id: authz,
            status: quarry_core::model::AuthorizationStatus::Valid,
            expires: now() + 30 * DAY,
            attempted: "http-01".into(),
            attempted_at: now(),
            records: Vec::new(),
            error: None,
        };
        store.finalize_authorization(&ready).await.unwrap();
        // An authorization is finalized only while pending (the same outcome again is a retry, and accepted).
        store.finalize_authorization(&ready).await.unwrap();
        let other =
            quarry_sa::store::ValidationOutcome { status: quarry_core::model::AuthorizationStatus::Invalid, ..ready };
        let late = store.finalize_authorization(&other).await;
        assert!(late.is_err(), "{}", db.url);
        store.set_order_processing(order.id, "ra-test").await.unwrap();
        let twice = store.set_order_processing(order.id, "ra-test").await.unwrap_err();
        assert_eq!(twice.kind, ErrorKind::OrderNotReady, "{}", db.url);
    }
}

#[tokio::test]
async fn issuance_history_by_name_set_and_domain() {
    for (store, db) in stores().await {
        let owner = account(&store).await;
        let t = now() - 10 * DAY;
        issue(&store, owner.id, &["example.com", "www.example.com"], &[0x01, 0x01], t).await;
        issue(&store, owner.id, &["www.example.com", "example.com"], &[0x01, 0x02], t + DAY).await;
        issue(&store, owner.id, &["api.example.com"], &[0x01, 0x03], t + 2 * DAY).await;
        issue(&store, owner.id, &["notexample.com"], &[0x01, 0x04], t + 2 * DAY).await;
        issue(&store, owner.id, &["example.com.evil.org"], &[0x01, 0x05], t + 2 * DAY).await;

        let set = [Identifier::dns("www.example.com"), Identifier::dns("example.com")];
        let times = store.fqdn_set_issuance_times(&set, t - 1).await.unwrap();
        assert_eq!(times, [t + DAY, t], "{}", db.url);
        assert_eq!(store.fqdn_set_issuance_times(&set, t).await.unwrap(), [t + DAY], "{}", db.url);
        assert_eq!(store.certificates_for_domain("example.com", t - 1).await.unwrap(), 3, "{}", db.url);
        assert_eq!(store.certificates_for_domain("example.com", t + DAY).await.unwrap(), 1, "{}", db.url);
        assert_eq!(store.certificates_for_domain("EXAMPLE.com", t - 1).await.unwrap(), 3, "{}", db.url);
        assert_eq!(store.certificates_for_domain("evil.org", t - 1).await.unwrap(), 1, "{}", db.url);
    }
}

#[tokio::test]
async fn revoked_certificates_are_filed_by_issuer_and_shard() {
    for (store, db) in stores().await {
        let owner = account(&store).await;
        let t = now() - DAY;
        let mut by_shard = std::collections::BTreeMap::<i64, Vec<String>>::new();
        for last in 0u8..8 {
            let serial = issue(&store, owner.id, &["revoked.example.org"], &[0x02, last], t).await;
            store.revoke_certificate(&serial, 1, now()).await.unwrap();
            by_shard.entry(store.crl_shard(&serial)).or_default().push(serial);
        }
        let kept = issue(&store, owner.id, &["kept.example.org"], &[0x03, 0x00], t).await;
        assert_eq!(by_shard.len(), 4, "eight consecutive serials spread over the four shards");
        for (shard, serials) in &by_shard {
            let listed = store.revoked_certificates(7, *shard, now()).await.unwrap();
            let listed: Vec<String> = listed.iter().map(|r| r.serial.clone()).collect();
            assert_eq!(&listed, serials, "{}", db.url);
            assert!(!listed.contains(&kept));
            // Another issuer's shard is empty, and expired entries drop out.
            assert!(store.revoked_certificates(8, *shard, now()).await.unwrap().is_empty());
            assert!(store.revoked_certificates(7, *shard, now() + 100 * DAY).await.unwrap().is_empty());
        }
        let again = store.revoke_certificate(&by_shard[&0][0], 4, now()).await.unwrap_err();
        assert_eq!(again.kind, ErrorKind::AlreadyRevoked, "{}", db.url);
    }
}

/// The bad-key revoker's view: a blocked key's unexpired certificates across accounts, revoked (or their reason
/// raised) for key compromise once each, and the key checked off only once its issuance grace has passed.
#[tokio::test]
async fn a_blocked_keys_certificates_are_found_and_revoked_for_key_compromise() {
    for (store, db) in stores().await {
        let (first, second) = (account(&store).await, account(&store).await);
        let key = rcgen::KeyPair::generate().unwrap();
        let key_hash = quarry_jose::Jwk::from_spki_der(&rcgen::PublicKeyData::subject_public_key_info(&key))
            .unwrap()
            .key_hash()
            .to_vec();
        let t = now() - DAY;
        let der = |serial: &[u8], not_before| certificate_with_key(&["bad.example.org"], serial, not_before, &key);
        let superseded = issue_der(&store, first.id, &[0x05, 0x01], der(&[0x05, 0x01], t), t).await;
        let held = issue_der(&store, second.id, &[0x05, 0x02], der(&[0x05, 0x02], t), t).await;
        let expired =
            issue_der(&store, second.id, &[0x05, 0x03], der(&[0x05, 0x03], t - 100 * DAY), t - 100 * DAY).await;
        let other_key = issue(&store, second.id, &["bad.example.org"], &[0x05, 0x04], t).await;
        store.revoke_certificate(&superseded, 4, t + 60).await.unwrap();

        assert!(store.unchecked_blocked_keys(10).await.unwrap().is_empty(), "{}", db.url);
        store.add_blocked_key(&key_hash, "test", "compromised").await.unwrap();
        assert_eq!(store.unchecked_blocked_keys(10).await.unwrap(), std::slice::from_ref(&key_hash), "{}", db.url);
        let serials = store.serials_by_key(&key_hash, now()).await.unwrap();
        assert_eq!(serials, [superseded.clone(), held.clone()], "{}: not {expired}, not {other_key}", db.url);

        use quarry_sa::store::KeyCompromise;
        assert_eq!(store.revoke_for_key_compromise(&superseded, now()).await.unwrap(), KeyCompromise::Upgraded);
        assert_eq!(store.revoke_for_key_compromise(&held, now()).await.unwrap(), KeyCompromise::Revoked);
        assert_eq!(store.revoke_for_key_compromise(&held, now()).await.unwrap(), KeyCompromise::Already);
        let mut on_crls = Vec::new();
        for shard in 0..4 {
            let listed = store.revoked_certificates(7, shard, now()).await.unwrap();
            on_crls.extend(listed.into_iter().map(|r| (r.serial, r.revoked_reason, r.revoked_date == t + 60)));
        }
        assert!(on_crls.contains(&(superseded, 1, true)), "{}: the upgrade keeps its date: {on_crls:?}", db.url);
        assert!(on_crls.iter().any(|(serial, reason, _)| serial == &held && *reason == 1), "{on_crls:?}");

        // Blocked just now: a check before its grace has passed leaves it listed.
        store.mark_blocked_key_checked(&key_hash, now() - 300).await.unwrap();
        assert_eq!(store.unchecked_blocked_keys(10).await.unwrap().len(), 1, "{}", db.url);
        store.mark_blocked_key_checked(&key_hash, now() + 1).await.unwrap();
        assert!(store.unchecked_blocked_keys(10).await.unwrap().is_empty(), "{}", db.url);
    }
}

#[tokio::test]
async fn crl_shards_are_leased_to_one_updater_at_a_time() {
    for (store, db) in stores().await {
        let t = now();
        // Staleness aside (every shard old enough): the lease's shard index.
        let lease = |now, until, updated_before| {
            let store = &store;
            async move {
                store.lease_crl_shard(7, 2, now, until, updated_before, i64::MAX).await.unwrap().map(|lease| lease.idx)
            }
        };
        let first = lease(t, t + 60, t).await;
        let second = lease(t, t + 60, t).await;
        assert_eq!((first, second), (Some(0), Some(1)), "{}", db.url);
        assert_eq!(lease(t, t + 60, t).await, None, "every shard is leased");
        assert_eq!(store.get_crl(7, 0).await.unwrap_err().kind, ErrorKind::NotFound, "no CRL before the first update");
        store.update_crl_shard(7, 0, t, t + 3_600, b"crl der", 0).await.unwrap();
        let stored = store.get_crl(7, 0).await.unwrap();
        assert_eq!((stored.der.as_slice(), stored.this_update, stored.next_update), (&b"crl der"[..], t, t + 3_600));
        // An updater whose lease lapsed cannot put back an older CRL.
        let older = store.update_crl_shard(7, 0, t - 5, t + 3_000, b"older der", 0).await.unwrap_err();
        assert_eq!(older.kind, ErrorKind::Conflict, "{}", db.url);
        assert_eq!(store.get_crl(7, 0).await.unwrap().der, b"crl der");
        // Shard 0 is released, but a pass that began at t has updated it already.
        assert_eq!(lease(t + 1, t + 120, t).await, None, "{}", db.url);
        // Later, shard 1's lease has lapsed and it is the older; then shard 0 is due again.
        assert_eq!(lease(t + 61, t + 120, t + 61).await, Some(1), "{}", db.url);
        assert_eq!(lease(t + 61, t + 120, t + 61).await, Some(0), "{}", db.url);
        assert_eq!(store.update_crl_shard(9, 0, t, t, b"", 0).await.unwrap_err().kind, ErrorKind::NotFound);
    }
}

#[tokio::test]
async fn unchanged_crl_shards_are_due_only_when_stale() {
    for (store, db) in stores().await {
        let t = now();
        for idx in [0, 1] {
            let leased = store.lease_crl_shard(8, 2, t, t + 60, t, i64::MAX).await.unwrap();
            assert_eq!(leased, Some(ShardLease { idx, revocations_pending: 0 }), "{}", db.url);
            store.update_crl_shard(8, idx, t, t + 3_600, b"crl der", 0).await.unwrap();
        }
        // Nothing revoked since: signed at t, not stale before t.
        assert_eq!(store.lease_crl_shard(8, 2, t + 10, t + 70, t + 10, t).await.unwrap(), None, "{}", db.url);
        let stale = store.lease_crl_shard(8, 2, t + 10, t + 70, t + 10, t + 1).await.unwrap();
        assert_eq!(stale.map(|lease| lease.idx), Some(0), "{}", db.url);
    }
}

#[tokio::test]
async fn precertificates_are_stored_once_and_precede_their_certificate() {
    for (store, db) in stores().await {
        let owner = account(&store).await;
        let der = certificate(&["pre.example.org"], &[0x04, 0xab], now());
        assert_eq!(store.add_precertificate(owner.id, &der, now(), 7).await.unwrap_err().kind, ErrorKind::Malformed);
        store.add_serial(owner.id, 0, "04ab", now(), now() + 90 * DAY).await.unwrap();
        assert_eq!(
            store.add_certificate(owner.id, &der, now(), 7).await.unwrap_err().kind,
            ErrorKind::Malformed,
            "no precertificate yet"
        );
        store.add_precertificate(owner.id, &der, now(), 7).await.unwrap();
        let stored = store.get_precertificate("04AB").await.unwrap();
        assert_eq!((stored.serial.as_str(), &stored.der, stored.issuer_id), ("04ab", &der, 7), "{}", db.url);
        store.add_precertificate(owner.id, &der, now(), 7).await.expect("the same one again: a retry");
        let other = certificate(&["pre.example.org"], &[0x04, 0xab], now());
        assert_eq!(store.add_precertificate(owner.id, &other, now(), 7).await.unwrap_err().kind, ErrorKind::Duplicate);
        assert_eq!(store.get_precertificate("ffff").await.unwrap_err().kind, ErrorKind::NotFound);
        // Revocable from the precertificate on, before any final certificate exists: the serial reaches its shard.
        assert_eq!(store.get_certificate_status("04ab").await.unwrap().0, "good");
        store.revoke_certificate("04ab", 1, now()).await.unwrap();
        let shard = quarry_core::crl::shard("04ab", 4);
        let listed = store.revoked_certificates(7, shard, now()).await.unwrap();
        assert_eq!(listed.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), ["04ab"], "{}", db.url);
        assert_eq!(
            store.add_certificate(owner.id, &der, now(), 8).await.unwrap_err().kind,
            ErrorKind::Malformed,
            "another issuer"
        );
        store.add_certificate(owner.id, &der, now(), 7).await.unwrap();
    }
}

#[tokio::test]
async fn identifiers_pause_and_unpause() {
    for (store, db) in stores().await {
        let owner = account(&store).await;
        let names = [Identifier::dns("a.example.org"), Identifier::dns("b.example.org")];
        store.pause_identifiers(owner.id, &names[..1], now()).await.unwrap();
        assert_eq!(store.paused_identifiers(owner.id, &names).await.unwrap(), &names[..1], "{}", db.url);
        assert!(store.paused_identifiers(owner.id + 1, &names).await.unwrap().is_empty(), "per account");
        store.pause_identifiers(owner.id, &names, now()).await.unwrap();
        assert_eq!(store.account_paused_identifiers(owner.id).await.unwrap(), names);
        assert_eq!(store.unpause_account(owner.id, now()).await.unwrap(), 2, "{}", db.url);
        assert!(store.paused_identifiers(owner.id, &names).await.unwrap().is_empty());
        store.pause_identifiers(owner.id, &names[1..], now()).await.unwrap();
        assert_eq!(store.account_paused_identifiers(owner.id).await.unwrap(), &names[1..], "paused again");
    }
}

#[tokio::test]
async fn rate_limit_overrides_are_set_replaced_and_disabled() {
    for (store, db) in stores().await {
        let mut o = RateLimitOverride {
            limit_name: "CertificatesPerDomain".into(),
            bucket_key: "example.org".into(),
            count: 500,
            period_secs: 7 * DAY,
            burst: 500,
            comment: "hosting provider".into(),
            enabled: true,
        };
        store.set_rate_limit_override(&o, now()).await.unwrap();
        assert_eq!(store.rate_limit_override("CertificatesPerDomain", "example.org").await.unwrap(), Some(o.clone()));
        o.count = 1_000;
        store.set_rate_limit_override(&o, now()).await.unwrap();
        let stored = store.rate_limit_override("CertificatesPerDomain", "example.org").await.unwrap().unwrap();
        assert_eq!(stored.count, 1_000, "{}", db.url);
        store.disable_rate_limit_override("CertificatesPerDomain", "example.org", now()).await.unwrap();
        assert_eq!(store.rate_limit_override("CertificatesPerDomain", "example.org").await.unwrap(), None);
        let unknown = store.disable_rate_limit_override("NewOrdersPerAccount", "1", now()).await.unwrap_err();
        assert_eq!(unknown.kind, ErrorKind::NotFound);
    }
}

/// Stuck past a deadline, whoever owns it.
fn deadline(before: i64) -> quarry_sa::StuckSince {
    quarry_sa::StuckSince { before, orphaned_before: 0 }
}

/// What a crashed ra or ca leaves behind can be found and taken over by exactly one sweeper, and every write a
/// retry repeats is accepted the second time.
#[tokio::test]
async fn interrupted_work_is_found_claimed_once_and_repeats_are_harmless() {
    use quarry_core::model::{AuthorizationStatus, OrderStatus};
    use quarry_sa::store::ValidationOutcome;
    for (store, db) in stores().await {
        let owner = account(&store).await;
        // A validation begun long ago and never recorded.
        let (order, _) =
            store.new_order_and_authorizations(&order_for(owner.id, &["stuck.example.org"])).await.unwrap();
        let authz_id = order.authorization_ids[0];
        store.set_authorization_processing(authz_id, "http-01", now() - 600, "ra-gone").await.unwrap();
        let stuck = store.stuck_authorizations(deadline(now() - 300), 10).await.unwrap();
        assert_eq!(stuck.iter().map(|s| s.id).collect::<Vec<_>>(), [authz_id], "{}", db.url);
        assert!(store.stuck_authorizations(deadline(now() - 900), 10).await.unwrap().is_empty(), "{}", db.url);
        let since = stuck[0].since;
        assert_eq!(
            store.claim_stuck_authorization(authz_id, since, "ra-sweeper").await.unwrap(),
            Some(0),
            "{}",
            db.url
        );
        assert_eq!(
            store.claim_stuck_authorization(authz_id, since, "ra-sweeper").await.unwrap(),
            None,
            "one claim wins"
        );
        assert!(
            store.stuck_authorizations(deadline(now() - 300), 10).await.unwrap().is_empty(),
            "its deadline restarted"
        );
        let again = store.stuck_authorizations(deadline(now() + 1), 10).await.unwrap()[0];
        assert_eq!(
            store.claim_stuck_authorization(authz_id, again.since, "ra-sweeper").await.unwrap(),
            Some(1),
            "{}",
            db.url
        );

        // Its outcome recorded twice (a retry after a lost answer) is accepted; another outcome is not.
        let outcome = ValidationOutcome {
            id: authz_id,
            status: AuthorizationStatus::Valid,
            expires: now() + DAY,
            attempted: "http-01".into(),
            attempted_at: now(),
            records: Vec::new(),
            error: None,
        };
        let recorded = store.finalize_authorization(&outcome).await.unwrap();
        assert_eq!(recorded.status, AuthorizationStatus::Valid, "{}", db.url);
        assert_eq!(recorded, store.get_authorization(authz_id).await.unwrap(), "answered as stored: {}", db.url);
        assert_eq!(store.finalize_authorization(&outcome).await.unwrap(), recorded, "{}", db.url);
        let other = ValidationOutcome { status: AuthorizationStatus::Invalid, ..outcome };
        assert_eq!(store.finalize_authorization(&other).await.unwrap_err().kind, ErrorKind::Malformed);

        // An order processing since long ago, with a precertificate reserved for it: its claim finds it.
        store.set_order_processing(order.id, "ra-test").await.unwrap();
        let stuck = store.stuck_orders(deadline(now() + 1), 10).await.unwrap();
        assert_eq!(stuck.iter().map(|s| s.id).collect::<Vec<_>>(), [order.id], "{}", db.url);
        assert!(store.stuck_orders(deadline(now() - 300), 10).await.unwrap().is_empty(), "{}", db.url);
        let claimed = store.claim_stuck_order(order.id, stuck[0].since, "ra-sweeper").await.unwrap();
        assert_eq!(claimed, Some(None), "no precertificate yet: {}", db.url);
        assert_eq!(
            store.claim_stuck_order(order.id, stuck[0].since, "ra-sweeper").await.unwrap(),
            None,
            "one claim wins"
        );
        store.add_serial(owner.id, order.id, "05ab", now(), now() + 90 * DAY).await.unwrap();
        let der = certificate(&["stuck.example.org"], &[0x05, 0xab], now());
        store.add_precertificate(owner.id, &der, now(), 7).await.unwrap();
        store.add_precertificate(owner.id, &der, now(), 7).await.expect("the same precertificate again");
        let other_der = certificate(&["stuck.example.org"], &[0x05, 0xab], now());
        assert_eq!(
            store.add_precertificate(owner.id, &other_der, now(), 7).await.unwrap_err().kind,
            ErrorKind::Duplicate
        );
        let since = store.stuck_orders(deadline(now() + 2), 10).await.unwrap()[0].since;
        assert_eq!(
            store.claim_stuck_order(order.id, since, "ra-sweeper").await.unwrap(),
            Some(Some("05ab".to_owned())),
            "{}",
            db.url
        );

        // The ra gave up (an error recorded), then the ca's certificate arrives: it makes the order valid.
        store.set_order_error(order.id, &quarry_core::Problem::internal("gave up")).await.unwrap();
        assert_eq!(store.get_order(order.id).await.unwrap().status, OrderStatus::Invalid);
        store.add_certificate(owner.id, &der, now(), 7).await.unwrap();
        store.add_certificate(owner.id, &der, now(), 7).await.expect("the same certificate again");
        let valid = store.get_order(order.id).await.unwrap();
        assert_eq!((valid.status, valid.certificate_serial.as_str()), (OrderStatus::Valid, "05ab"), "{}", db.url);
        assert!(valid.error.is_none(), "{}", db.url);
        store.finalize_order(order.id, "05ab").await.expect("recording it again is accepted");
        let late = store.set_order_error(order.id, &quarry_core::Problem::internal("too late")).await.unwrap_err();
        assert_eq!(late.kind, ErrorKind::Conflict, "{}", db.url);
        assert!(store.stuck_orders(deadline(now() + 5), 10).await.unwrap().is_empty(), "{}", db.url);
    }
}

/// Replicas of the sa start together on one fresh database: their migrations take turns, and all start. On SQLite
/// several fresh files in turn, since the race (every connection setting a new file to WAL at once, which SQLite
/// may refuse at once as busy) is lost only now and then.
#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let settings = PoolSettings { max_connections: 4, statement_timeout: Duration::from_secs(5) };
    let more_sqlite = (0..7).map(|_| TestDatabase::sqlite());
    for db in TestDatabase::every_backend().await.into_iter().chain(more_sqlite) {
        let (a, b, c) = tokio::join!(
            Store::open(&db.url, settings),
            Store::open(&db.url, settings),
            Store::open(&db.url, settings)
        );
        for opened in [a, b, c] {
            opened.unwrap_or_else(|e| panic!("{}: {e}", db.url));
        }
        let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap().count();
        assert_eq!(db.count("schema_migrations").await, migrations as i64, "{}", db.url);
    }
}

/// Work whose ra replica stopped sending heartbeats is stuck at once, however young; a live replica's is not.
#[tokio::test]
async fn the_work_of_a_replica_whose_heartbeat_lapsed_is_orphaned() {
    for (store, db) in stores().await {
        let owner = account(&store).await;
        let (order, _) =
            store.new_order_and_authorizations(&order_for(owner.id, &["orphan.example.org"])).await.unwrap();
        let authz_id = order.authorization_ids[0];
        store.heartbeat("ra-alive", 15).await.unwrap();
        store.heartbeat("ra-dying", 15).await.unwrap();
        store.set_authorization_processing(authz_id, "http-01", now() - 10, "ra-dying").await.unwrap();
        let orphaned = quarry_sa::StuckSince { before: now() - 3600, orphaned_before: now() - 5 };
        assert!(store.stuck_authorizations(orphaned, 10).await.unwrap().is_empty(), "its owner is alive: {}", db.url);
        store.heartbeat("ra-dying", 0).await.unwrap();
        let stuck = store.stuck_authorizations(orphaned, 10).await.unwrap();
        assert_eq!(stuck.iter().map(|s| s.id).collect::<Vec<_>>(), [authz_id], "{}", db.url);
        let too_young = quarry_sa::StuckSince { before: now() - 3600, orphaned_before: now() - 60 };
        assert!(store.stuck_authorizations(too_young, 10).await.unwrap().is_empty(), "{}", db.url);
        // Claimed by the live replica, it is that one's now: not orphaned while it beats.
        assert_eq!(store.claim_stuck_authorization(authz_id, stuck[0].since, "ra-alive").await.unwrap(), Some(0));
        let later = quarry_sa::StuckSince { before: now() - 3600, orphaned_before: now() + 5 };
        assert!(store.stuck_authorizations(later, 10).await.unwrap().is_empty(), "{}", db.url);

        // The same for an order processing.
        let (order, _) =
            store.new_order_and_authorizations(&order_for(owner.id, &["orphan2.example.org"])).await.unwrap();
        store.set_authorization_processing(order.authorization_ids[0], "http-01", now(), "ra-alive").await.unwrap();
        store
            .finalize_authorization(&quarry_sa::store::ValidationOutcome {
                id: order.authorization_ids[0],
                status: quarry_core::model::AuthorizationStatus::Valid,
                expires: now() + DAY,
                attempted: "http-01".into(),
                attempted_at: now(),
                records: Vec::new(),
                error: None,
            })
            .await
            .unwrap();
        store.set_order_processing(order.id, "ra-gone").await.unwrap();
        let stuck = store.stuck_orders(later, 10).await.unwrap();
        assert_eq!(stuck.iter().map(|s| s.id).collect::<Vec<_>>(), [order.id], "never beat: {}", db.url);
        assert_eq!(store.claim_stuck_order(order.id, stuck[0].since, "ra-alive").await.unwrap(), Some(None));
        assert!(store.stuck_orders(later, 10).await.unwrap().is_empty(), "{}", db.url);
    }
}

/// Writers that come at once all get through, none refused as busy: on SQLite they queue for the one writing
/// connection in the sa, on PostgreSQL they run side by side; reads made meanwhile see each write once it is done.
#[tokio::test]
async fn writers_at_once_all_get_through() {
    const WRITERS: usize = 24;
    for (store, db) in stores().await {
        let owner = account(&store).await;
        let writes = (0..WRITERS).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let name = format!("w{i}.example.org");
                let (order, authorizations) =
                    store.new_order_and_authorizations(&order_for(owner.id, &[name.as_str()])).await?;
                store.set_authorization_processing(authorizations[0].id, "http-01", now(), "ra-a").await?;
                let read = store.get_order(order.id).await?;
                Ok::<_, quarry_core::Problem>((order, read))
            })
        });
        for written in futures::future::join_all(writes).await {
            let (order, read) = written.expect("the task").unwrap_or_else(|e| panic!("{}: {e}", db.url));
            assert_eq!(read.authorization_ids, order.authorization_ids, "{}", db.url);
        }
        assert_eq!(db.count("orders").await, WRITERS as i64, "{}", db.url);
    }
}
