//! Finalization's sa calls, on every backend: the ra's one read of what it checks (GetFinalizationFacts), the ca's
//! precertificate with its serial reserved and its order's fuse taken in the same write (or the fuse taken alone by
//! SetOrderProcessing, for an asynchronous finalization), and its certificate with its order finalized in the same
//! write — and the older callers' calls they replace, still served.

use crate::*;

/// An order of `account_id` for `name`, its authorization valid: the order is ready.
async fn ready_order(sa: &Sa, account_id: i64, name: &str) -> pb::Order {
    let order = new_order(sa, account_id, &[name], vec![]).await;
    validate(sa, order.authorization_ids[0], "valid").await;
    order
}

/// A replacement order (RFC 9773) of `account_id` for `name`, replacing the certificate of serial `replaces_serial`
/// (ARI CertID `replaces`), its authorization valid: the order is ready.
async fn ready_replacement_order(
    sa: &Sa,
    account_id: i64,
    name: &str,
    replaces: &str,
    replaces_serial: &str,
) -> pb::Order {
    let order = sa
        .rw("ra")
        .new_order_and_authorizations(NewOrderAndAuthorizationsRequest {
            account_id,
            identifiers: vec![dns(name)],
            expires: quarry_core::clock::now() + 7 * DAY,
            new_authorizations: vec![new_authz(name, &["http-01"])],
            profile: "classic".into(),
            replaces: replaces.into(),
            replaces_serial: replaces_serial.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    validate(sa, order.authorization_ids[0], "valid").await;
    order
}

/// An order of `account_id` for `name`, its authorization valid and the order processing (the ra's fuse taken).
async fn processing_order(sa: &Sa, account_id: i64, name: &str) -> pb::Order {
    let order = ready_order(sa, account_id, name).await;
    let fuse = SetOrderProcessingRequest { id: order.id, owner: "ra-test".into() };
    sa.rw("ra").set_order_processing(fuse).await.unwrap();
    order
}

/// What the ca sends for a precertificate or certificate of `order_id`, issued now; `expires` non-zero reserves its
/// serial.
fn stored(account_id: i64, order_id: i64, der: &[u8], expires: i64) -> AddCertificateRequest {
    let issued = quarry_core::clock::now();
    AddCertificateRequest {
        account_id,
        der: der.to_vec(),
        issued,
        issuer_id: 7,
        order_id,
        expires,
        processing_by: String::new(),
    }
}

/// The order `id` as the wfe reads it.
async fn order_of(sa: &Sa, id: i64) -> pb::Order {
    sa.ro("wfe").get_order(OrderId { id }).await.unwrap().into_inner()
}

/// Stores a precertificate for `name` under `serial`, reserving the serial for `order_id`, as the ca does; gives its
/// DER (the final certificate's stand-in).
async fn precertificate_for(sa: &Sa, account_id: i64, order_id: i64, name: &str, serial: &[u8]) -> Vec<u8> {
    let der = certificate(name, serial);
    let expires = quarry_core::clock::now() + 90 * DAY;
    sa.rw("ca").add_precertificate(stored(account_id, order_id, &der, expires)).await.unwrap();
    der
}

async fn facts(sa: &Sa, request: GetFinalizationFactsRequest) -> GetFinalizationFactsResponse {
    sa.ro("ra").get_finalization_facts(request).await.unwrap().into_inner()
}

fn facts_request(order_id: i64, key_hash: &[u8], names: &[&str], renewal_since: i64) -> GetFinalizationFactsRequest {
    GetFinalizationFactsRequest {
        order_id,
        key_hash: key_hash.to_vec(),
        identifiers: names.iter().map(|n| dns(n)).collect(),
        renewal_since,
        with_order: false,
    }
}

/// Asked `with_order` and no identifiers, the one read answers with the order as GetOrder reads it, its
/// authorizations, and the renewal answer for the order's own identifiers; a missing order is `not found`.
#[tokio::test]
async fn finalization_facts_with_the_order_stand_for_get_order() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let name = "with-order.example.org";
        let order = ready_order(&sa, account.id, name).await;
        let since = quarry_core::clock::now() - 120 * DAY;
        let with_order = |order_id| GetFinalizationFactsRequest {
            with_order: true,
            ..facts_request(order_id, &[7; 32], &[], since)
        };

        let first = facts(&sa, with_order(order.id)).await;
        let read = order_of(&sa, order.id).await;
        assert_eq!(first.order.as_ref(), Some(&read), "{}", sa.db.url);
        assert_eq!(read.status, "ready");
        assert_eq!(first.authorizations.len(), 1);
        assert_eq!(first.authorizations[0].id, order.authorization_ids[0]);
        assert!(!first.renewal && !first.key_blocked, "{first:?}");
        assert!(facts(&sa, facts_request(order.id, &[7; 32], &[name], since)).await.order.is_none(), "only when asked");

        // The order's identifiers stand for the absent ones: an earlier certificate for them makes it a renewal.
        let other = processing_order(&sa, account.id, name).await;
        let der = certificate(name, &[0x0f, 0x02]);
        sa.rw("ca").add_precertificate(stored(account.id, other.id, &der, 2)).await.unwrap();
        sa.rw("ca").add_certificate(stored(account.id, other.id, &der, 0)).await.unwrap();
        assert!(facts(&sa, with_order(order.id)).await.renewal);

        let missing = sa.ro("ra").get_finalization_facts(with_order(order.id + 1_000)).await;
        assert_eq!(missing.unwrap_err().code(), Code::NotFound, "{}", sa.db.url);
    }
}

/// The one read answers what KeyBlocked, GetOrderAuthorizations and FqdnSetIssuanceTimes answered, as they do.
#[tokio::test]
async fn finalization_facts_answer_what_the_three_reads_did() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let name = "facts.example.org";
        let order = ready_order(&sa, account.id, name).await;
        let key_hash = [0x42; 32];
        let since = quarry_core::clock::now() - 120 * DAY;

        let first = facts(&sa, facts_request(order.id, &key_hash, &[name], since)).await;
        let separately =
            sa.ro("ra").get_order_authorizations(OrderId { id: order.id }).await.unwrap().into_inner().authorizations;
        assert_eq!(first.authorizations, separately, "{}", sa.db.url);
        assert_eq!(first.authorizations.len(), 1);
        assert_eq!(first.authorizations[0].status, "valid");
        assert!(!first.key_blocked && !first.renewal, "{first:?}");

        let block = AddBlockedKeyRequest { key_hash: key_hash.to_vec(), source: "test".into(), comment: String::new() };
        sa.rw("ra").add_blocked_key(block).await.unwrap();
        assert!(facts(&sa, facts_request(order.id, &key_hash, &[name], since)).await.key_blocked);
        assert!(!facts(&sa, facts_request(order.id, &[0x43; 32], &[name], since)).await.key_blocked);

        // A certificate for exactly these identifiers makes the next order for them a renewal, within the window.
        let other = processing_order(&sa, account.id, name).await;
        let der = certificate(name, &[0x0f, 0x01]);
        sa.rw("ca").add_precertificate(stored(account.id, other.id, &der, 2)).await.unwrap();
        sa.rw("ca").add_certificate(stored(account.id, other.id, &der, 0)).await.unwrap();
        assert!(facts(&sa, facts_request(order.id, &key_hash, &[name], since)).await.renewal);
        let later = quarry_core::clock::now() + 60;
        assert!(!facts(&sa, facts_request(order.id, &key_hash, &[name], later)).await.renewal);
        let more_names = facts(&sa, facts_request(order.id, &key_hash, &[name, "more.example.org"], since)).await;
        assert!(!more_names.renewal, "only exactly the same identifiers");

        // An order that does not exist has no authorizations, as GetOrderAuthorizations says.
        assert!(facts(&sa, facts_request(order.id + 1_000, &key_hash, &[name], since)).await.authorizations.is_empty());
        // The ra reads it through the read-only service, which the wfe may read too; an intruder may not.
        let mut intruder = sa.ro("intruder");
        let denied = intruder.get_finalization_facts(facts_request(order.id, &key_hash, &[name], since)).await;
        assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    }
}

/// AddPrecertificate with `expires` reserves the serial for the order in the same transaction: the order's recovery
/// finds the precertificate by it, a serial taken already is `duplicate` and stores nothing, and a retry is accepted.
/// Without `expires` (an older ca) the serial must have been reserved by AddSerial, as before.
#[tokio::test]
async fn a_serial_is_reserved_with_its_precertificate() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let order = processing_order(&sa, account.id, "reserve.example.org").await;
        let expires = quarry_core::clock::now() + 90 * DAY;
        let der = certificate("reserve.example.org", &[0x06, 0xab]);
        let precertificate = stored(account.id, order.id, &der, expires);
        let recovery_finds = || async { sa.rw("ra").get_order_precertificate(OrderId { id: order.id }).await };
        assert_eq!(recovery_finds().await.unwrap().into_inner().serial, "", "{}", sa.db.url);
        sa.rw("ca").add_precertificate(precertificate.clone()).await.unwrap();
        assert_eq!(recovery_finds().await.unwrap().into_inner().serial, "06ab", "{}", sa.db.url);
        assert!(sa.ro("ra").serial_exists(Serial { serial: "06ab".into() }).await.unwrap().into_inner().exists);
        let status = sa.ro("wfe").get_certificate_status(Serial { serial: "06ab".into() }).await.unwrap();
        assert_eq!(status.into_inner().status, "good", "revocable from the precertificate on");
        sa.rw("ca").add_precertificate(precertificate).await.expect("the same precertificate again: a retry");

        // Another precertificate under a serial taken: duplicate, whether the serial has a precertificate already…
        let (serials, precertificates) = (sa.db.count("serials").await, sa.db.count("precertificates").await);
        let other = certificate("reserve.example.org", &[0x06, 0xab]);
        let taken = sa.rw("ca").add_precertificate(stored(account.id, order.id, &other, expires)).await.unwrap_err();
        assert_eq!(problem_kind(&taken), quarry_core::ErrorKind::Duplicate, "{}", sa.db.url);
        // …or was only reserved (by an older ca's AddSerial): then nothing of the refused one is kept.
        let reserved =
            AddSerialRequest { account_id: account.id, serial: "07ab".into(), created: 1, expires, order_id: 0 };
        sa.rw("ca").add_serial(reserved).await.unwrap();
        let der = certificate("reserve.example.org", &[0x07, 0xab]);
        let taken = sa.rw("ca").add_precertificate(stored(account.id, order.id, &der, expires)).await.unwrap_err();
        assert_eq!(problem_kind(&taken), quarry_core::ErrorKind::Duplicate, "{}", sa.db.url);
        assert_eq!(sa.db.count("serials").await, serials + 1, "only AddSerial's row: {}", sa.db.url);
        assert_eq!(sa.db.count("precertificates").await, precertificates, "{}", sa.db.url);
        let missing = sa.ro("ca").get_precertificate(Serial { serial: "07ab".into() }).await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        assert_eq!(recovery_finds().await.unwrap().into_inner().serial, "06ab", "{}", sa.db.url);

        // An older ca: AddSerial first, then the precertificate without `expires`; unreserved, it is refused in the
        // words the ca's fallback looks for.
        let der = certificate("older.example.org", &[0x08, 0xab]);
        let unreserved = sa.rw("ca").add_precertificate(stored(account.id, 0, &der, 0)).await.unwrap_err();
        assert_eq!(problem_kind(&unreserved), quarry_core::ErrorKind::Malformed);
        assert!(unreserved.message().ends_with("was never reserved"), "{}", unreserved.message());
        let reserved =
            AddSerialRequest { account_id: account.id, serial: "08ab".into(), created: 1, expires, order_id: 0 };
        sa.rw("ca").add_serial(reserved).await.unwrap();
        sa.rw("ca").add_precertificate(stored(account.id, 0, &der, 0)).await.unwrap();
    }
}

/// Who the order's fuse names, read from the table: the sweeper adopts a processing order by it.
async fn processing_by(sa: &Sa, order_id: i64) -> (i64, String) {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&sa.db.url).await.expect("connect");
    let row: (i64, String) = sqlx::query_as("SELECT began_processing, processing_by FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&mut conn)
        .await
        .expect("the order's row");
    let _ = conn.close().await;
    row
}

/// A precertificate stored with `processing_by` takes its order's fuse in the same write: the order is processing
/// by that ra from then on, a retry of the same call is accepted, and a second precertificate for the order (another
/// finalization) is `orderNotReady` with nothing of it stored — nor is one for an order that failed. Without
/// `processing_by` (an asynchronous finalization, whose ra took the fuse before) the order is left as it is.
#[tokio::test]
async fn a_precertificate_takes_its_orders_fuse_once() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let order = ready_order(&sa, account.id, "fuse.example.org").await;
        let expires = quarry_core::clock::now() + 90 * DAY;
        let with_fuse = |der: &[u8]| AddCertificateRequest {
            processing_by: "ra-a".into(),
            ..stored(account.id, order.id, der, expires)
        };
        let der = certificate("fuse.example.org", &[0x0a, 0x01]);
        sa.rw("ca").add_precertificate(with_fuse(&der)).await.unwrap();
        assert_eq!(order_of(&sa, order.id).await.status, "processing", "{}", sa.db.url);
        let (began, by) = processing_by(&sa, order.id).await;
        assert!(began > 0, "{}", sa.db.url);
        assert_eq!(by, "ra-a", "{}", sa.db.url);
        sa.rw("ca").add_precertificate(with_fuse(&der)).await.expect("the same precertificate again: a retry");

        let (serials, precertificates) = (sa.db.count("serials").await, sa.db.count("precertificates").await);
        let second = certificate("fuse.example.org", &[0x0a, 0x02]);
        let refused = sa.rw("ca").add_precertificate(with_fuse(&second)).await.unwrap_err();
        assert_eq!(problem_kind(&refused), quarry_core::ErrorKind::OrderNotReady, "{}", sa.db.url);
        assert_eq!(sa.db.count("serials").await, serials, "{}", sa.db.url);
        assert_eq!(sa.db.count("precertificates").await, precertificates, "{}", sa.db.url);
        let missing = sa.ro("ca").get_precertificate(Serial { serial: "0a02".into() }).await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{}", sa.db.url);
        assert_eq!(processing_by(&sa, order.id).await, (began, "ra-a".to_owned()), "{}", sa.db.url);

        // The rest of the flow: the certificate makes the order valid.
        let answer = sa.rw("ca").add_certificate(stored(account.id, order.id, &der, 0)).await.unwrap().into_inner();
        assert!(answer.order_finalized, "{}", sa.db.url);
        assert_eq!(order_of(&sa, order.id).await.status, "valid", "{}", sa.db.url);

        // A failed order takes no precertificate.
        let failed = ready_order(&sa, account.id, "failed.example.org").await;
        let error = Some(pb::Problem { kind: "serverInternal".into(), detail: "gave up".into(), subproblems: vec![] });
        sa.rw("ra").set_order_error(SetOrderErrorRequest { id: failed.id, error }).await.unwrap();
        let der = certificate("failed.example.org", &[0x0a, 0x03]);
        let request =
            AddCertificateRequest { processing_by: "ra-a".into(), ..stored(account.id, failed.id, &der, expires) };
        let refused = sa.rw("ca").add_precertificate(request).await.unwrap_err();
        assert_eq!(problem_kind(&refused), quarry_core::ErrorKind::OrderNotReady, "{}", sa.db.url);
        assert_eq!(order_of(&sa, failed.id).await.status, "invalid", "{}", sa.db.url);

        // Without `processing_by` the order is not touched.
        let ready = ready_order(&sa, account.id, "async.example.org").await;
        precertificate_for(&sa, account.id, ready.id, "async.example.org", &[0x0a, 0x04]).await;
        assert_eq!(order_of(&sa, ready.id).await.status, "ready", "{}", sa.db.url);
        assert_eq!(processing_by(&sa, ready.id).await.0, 0, "{}", sa.db.url);
    }
}

/// AddCertificate naming its order records the certificate as the order's in the same transaction and says so; a
/// retry says so again, and FinalizeOrder repeated with the same serial is accepted. The certificate is stored
/// whatever becomes of the order: a caller naming another order than the serial's, an older caller naming none, and
/// an order that is not processing are answered "not finalized", and the caller records it itself as before.
#[tokio::test]
async fn storing_a_certificate_finalizes_its_order() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let order = processing_order(&sa, account.id, "final.example.org").await;
        let der = precertificate_for(&sa, account.id, order.id, "final.example.org", &[0x09, 0x01]).await;
        assert_eq!(order_of(&sa, order.id).await.status, "processing");
        let answer = sa.rw("ca").add_certificate(stored(account.id, order.id, &der, 0)).await.unwrap().into_inner();
        assert!(answer.order_finalized, "{}", sa.db.url);
        let valid = order_of(&sa, order.id).await;
        assert_eq!((valid.status.as_str(), valid.certificate_serial.as_str()), ("valid", "0901"), "{}", sa.db.url);
        let again = sa.rw("ca").add_certificate(stored(account.id, order.id, &der, 0)).await.unwrap().into_inner();
        assert!(again.order_finalized, "a retry: {}", sa.db.url);
        // The ra's FinalizeOrder, as an older ca's ra still sends it: the same serial again is accepted…
        let finalize = |certificate_serial: &str| FinalizeOrderRequest {
            id: order.id,
            certificate_serial: certificate_serial.into(),
        };
        sa.rw("ra").finalize_order(finalize("0901")).await.expect("the same serial again");
        sa.rw("ra").finalize_order(finalize("0901")).await.expect("and again");
        // …another is not.
        let other = sa.rw("ra").finalize_order(finalize("0902")).await.unwrap_err();
        assert_eq!(problem_kind(&other), quarry_core::ErrorKind::OrderNotReady, "{}", sa.db.url);
        assert_eq!(order_of(&sa, order.id).await.certificate_serial, "0901");

        // Naming another order than the serial was reserved for: stored, its own order valid, the other untouched.
        let reserved_for = processing_order(&sa, account.id, "mine.example.org").await;
        let named = processing_order(&sa, account.id, "named.example.org").await;
        let der = precertificate_for(&sa, account.id, reserved_for.id, "mine.example.org", &[0x09, 0x03]).await;
        let answer = sa.rw("ca").add_certificate(stored(account.id, named.id, &der, 0)).await.unwrap().into_inner();
        assert!(!answer.order_finalized, "{}", sa.db.url);
        assert_eq!(order_of(&sa, reserved_for.id).await.status, "valid", "{}", sa.db.url);
        assert_eq!(order_of(&sa, named.id).await.status, "processing", "{}", sa.db.url);

        // An older ca names no order: the serial's order is valid all the same, and the answer leaves the ra to it.
        let unnamed = processing_order(&sa, account.id, "unnamed.example.org").await;
        let der = precertificate_for(&sa, account.id, unnamed.id, "unnamed.example.org", &[0x09, 0x04]).await;
        let answer = sa.rw("ca").add_certificate(stored(account.id, 0, &der, 0)).await.unwrap().into_inner();
        assert!(!answer.order_finalized, "{}", sa.db.url);
        assert_eq!(order_of(&sa, unnamed.id).await.status, "valid", "{}", sa.db.url);

        // An order that is not processing (its fuse never taken) does not become valid: not finalized.
        let ready = new_order(&sa, account.id, &["ready.example.org"], vec![]).await;
        validate(&sa, ready.authorization_ids[0], "valid").await;
        let der = precertificate_for(&sa, account.id, ready.id, "ready.example.org", &[0x09, 0x05]).await;
        let answer = sa.rw("ca").add_certificate(stored(account.id, ready.id, &der, 0)).await.unwrap().into_inner();
        assert!(!answer.order_finalized, "{}", sa.db.url);
        assert_eq!(order_of(&sa, ready.id).await.status, "ready", "{}", sa.db.url);
        let kept = sa.ro("wfe").get_certificate(Serial { serial: "0905".into() }).await.unwrap().into_inner();
        assert_eq!(kept.der, der, "stored all the same");
    }
}

/// A replacement order (RFC 9773) that storing its certificate finalizes marks the certificate it replaces as
/// replaced, in the same write, so the mark outlives the order's expiry; the replaced certificate is not marked
/// before.
#[tokio::test]
async fn storing_a_replacements_certificate_marks_the_one_it_replaces() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let name = "renewed.example.org";
        let replacing = ready_replacement_order(&sa, account.id, name, "aGVsbG8.d29ybGQ", "0c01").await;
        let fuse = SetOrderProcessingRequest { id: replacing.id, owner: "ra-test".into() };
        sa.rw("ra").set_order_processing(fuse).await.unwrap();
        let marked = || sa.db.count("replacement_orders WHERE serial = '0c01' AND replaced = 1");
        assert_eq!(sa.db.count("replacement_orders WHERE serial = '0c01'").await, 1, "{}", sa.db.url);
        assert_eq!(marked().await, 0, "not replaced before its replacement is issued: {}", sa.db.url);

        let der = precertificate_for(&sa, account.id, replacing.id, name, &[0x0c, 0x02]).await;
        let answer = sa.rw("ca").add_certificate(stored(account.id, replacing.id, &der, 0)).await.unwrap();
        assert!(answer.into_inner().order_finalized, "{}", sa.db.url);
        assert_eq!(marked().await, 1, "{}", sa.db.url);
        assert_eq!(order_of(&sa, replacing.id).await.replaces, "aGVsbG8.d29ybGQ", "{}", sa.db.url);

        // A replacement order that does not take its certificate (not processing) leaves the one it replaces
        // unmarked, although the certificate is stored.
        let other = "unfinished.example.org";
        let unfinished = ready_replacement_order(&sa, account.id, other, "b3RoZXI.c2VyaWFs", "0c03").await;
        let der = precertificate_for(&sa, account.id, unfinished.id, other, &[0x0c, 0x04]).await;
        let answer = sa.rw("ca").add_certificate(stored(account.id, unfinished.id, &der, 0)).await.unwrap();
        assert!(!answer.into_inner().order_finalized, "{}", sa.db.url);
        assert_eq!(sa.db.count("replacement_orders WHERE serial = '0c03' AND replaced = 0").await, 1, "{}", sa.db.url);
    }
}
