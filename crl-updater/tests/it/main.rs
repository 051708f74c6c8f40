//! The crl-updater against a real sa and ca (in-process, over mutual TLS): a revoked certificate appears in its
//! shard's CRL after one pass, every shard gets a CRL the issuer signed, concurrent updaters share the work, and an
//! updater whose shard count is not the sa's is refused.

use std::time::Instant;

use quarry_crl_updater::Config;
use quarry_crl_updater::updater::{PassReport, Updater};
use quarry_proto::ca::IssueCertificateRequest;
use quarry_proto::ca::certificate_authority_client::CertificateAuthorityClient;
use quarry_proto::core as pb;
use quarry_proto::sa::storage_authority_client::StorageAuthorityClient;
use quarry_proto::sa::storage_authority_read_only_client::StorageAuthorityReadOnlyClient;
use quarry_proto::sa::{CrlShard, RevokeCertificateRequest};
use quarry_testkit::stack::InProcessStack;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// As the in-process sa and ca are configured: the updater's count must match theirs.
const SHARDS: i64 = quarry_core::crl::DEFAULT_SHARDS;

fn updater_config(stack: &InProcessStack) -> Config {
    Config {
        telemetry: Default::default(),
        version: quarry_core::config::ConfigVersion::CURRENT,
        tls: stack.pki.tls("crl-updater"),
        sa: stack.pki.client_config("sa", stack.sa),
        ca: stack.pki.client_config("ca", stack.ca),
        issuers: vec![stack.pki.issuer_cert(), stack.pki.rsa_issuer_cert()],
        shards: SHARDS,
        update_period_secs: 1,
        lease_secs: 60,
        max_age_secs: 3_600,
    }
}

/// Issues a certificate through the ca (as the ra would) and returns (DER, hex serial).
async fn issue(stack: &InProcessStack) -> (Vec<u8>, String) {
    let key = quarry_jose::SigningKey::generate(quarry_jose::Algorithm::Es256).expect("account key");
    let account =
        pb::Account { jwk: key.jwk().to_json().to_string().into_bytes(), status: "valid".into(), ..Default::default() };
    let sa = stack.pki.channel("ra", "sa", stack.sa);
    let account = StorageAuthorityClient::new(sa).new_account(account).await.expect("account").into_inner();
    let cert_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["crl.example.org".to_owned()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&cert_key).expect("csr").der().to_vec();
    let request = IssueCertificateRequest {
        csr,
        account_id: account.id,
        order_id: 1,
        profile: "classic".into(),
        processing_by: String::new(),
    };
    let ca = stack.pki.channel("ra", "ca", stack.ca);
    let issued = CertificateAuthorityClient::new(ca).issue_certificate(request).await.expect("issued").into_inner();
    (issued.der, issued.serial)
}

#[tokio::test]
async fn a_revoked_certificate_is_in_its_shards_crl_after_one_pass() {
    let stack = InProcessStack::start(false, |_| {}).await;
    let (der, serial) = issue(&stack).await;
    let revoke = RevokeCertificateRequest { serial: serial.clone(), reason: 1, date: quarry_core::clock::now() };
    StorageAuthorityClient::new(stack.pki.channel("ra", "sa", stack.sa)).revoke_certificate(revoke).await.unwrap();

    let updater = Updater::new(&updater_config(&stack)).expect("updater");
    let started = Instant::now();
    let report = updater.pass().await;
    eprintln!("one pass over {} shards took {:?}", 2 * SHARDS, started.elapsed());
    assert_eq!(report, PassReport { updated: 2 * SHARDS as usize, failed: 0 });

    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).expect("certificate");
    let issuer_der = rustls_pem(&std::fs::read(stack.pki.issuer_cert()).expect("issuer pem"));
    let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(&issuer_der).expect("issuer");
    let issuer_id = quarry_core::certificate::issuer_id(issuer.subject().as_raw());
    let shard = quarry_core::crl::shard(&serial, SHARDS);
    let sa_read = StorageAuthorityReadOnlyClient::new(stack.pki.channel("wfe", "sa", stack.sa));
    for index in 0..SHARDS {
        let stored =
            sa_read.clone().get_crl(CrlShard { issuer_id, shard: index }).await.expect("every shard has a CRL");
        let stored = stored.into_inner();
        let (_, crl) = CertificateRevocationList::from_der(&stored.der).expect("CRL parses");
        crl.verify_signature(issuer.public_key()).expect("signed by the issuer");
        assert_eq!(stored.next_update - stored.this_update, 9 * 86_400);
        let serials: Vec<String> = crl.iter_revoked_certificates().map(|r| hex::encode(r.raw_serial())).collect();
        if index == shard {
            assert_eq!(serials, std::slice::from_ref(&serial));
            let entry = crl.iter_revoked_certificates().next().expect("entry");
            assert_eq!(entry.reason_code().map(|(_, reason)| reason.0), Some(1), "keyCompromise");
            // The CRL names the URL the certificate points at.
            let url = format!("http://c.quarry.example.com/e1/{shard}.crl");
            assert!(cert.extensions().iter().any(|e| e.value.windows(url.len()).any(|w| w == url.as_bytes())));
            assert!(crl.extensions().iter().any(|e| e.value.windows(url.len()).any(|w| w == url.as_bytes())));
        } else {
            assert!(serials.is_empty(), "shard {index}: {serials:?}");
        }
    }
}

/// A pass re-signs only shards with revocations their CRL lacks (or whose CRL is older than `max_age_secs`).
#[tokio::test]
async fn later_passes_re_sign_only_changed_or_stale_shards() {
    let stack = InProcessStack::start(false, |_| {}).await;
    let (_, serial) = issue(&stack).await;
    let updater = Updater::new(&updater_config(&stack)).expect("updater");
    assert_eq!(updater.pass().await, PassReport { updated: 2 * SHARDS as usize, failed: 0 }, "first: every shard");
    // A pass skips shards it has updated since it began (whole seconds): let the clock move on.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(updater.pass().await, PassReport { updated: 0, failed: 0 }, "nothing changed");

    let revoke = RevokeCertificateRequest { serial: serial.clone(), reason: 1, date: quarry_core::clock::now() };
    StorageAuthorityClient::new(stack.pki.channel("ra", "sa", stack.sa)).revoke_certificate(revoke).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(updater.pass().await, PassReport { updated: 1, failed: 0 }, "the revoked certificate's shard");
    let shard = quarry_core::crl::shard(&serial, SHARDS);
    let issuer_der = rustls_pem(&std::fs::read(stack.pki.issuer_cert()).expect("issuer pem"));
    let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(&issuer_der).expect("issuer");
    let issuer_id = quarry_core::certificate::issuer_id(issuer.subject().as_raw());
    let sa_read = StorageAuthorityReadOnlyClient::new(stack.pki.channel("wfe", "sa", stack.sa));
    let stored = sa_read.clone().get_crl(CrlShard { issuer_id, shard }).await.expect("CRL").into_inner();
    let (_, crl) = CertificateRevocationList::from_der(&stored.der).expect("CRL parses");
    let serials: Vec<String> = crl.iter_revoked_certificates().map(|r| hex::encode(r.raw_serial())).collect();
    assert_eq!(serials, [serial]);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(updater.pass().await, PassReport { updated: 0, failed: 0 }, "the revocation is in its CRL now");

    // With max_age_secs 0 every pass signs every shard anew.
    let eager = Updater::new(&Config { max_age_secs: 0, ..updater_config(&stack) }).expect("updater");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(eager.pass().await, PassReport { updated: 2 * SHARDS as usize, failed: 0 });
}

#[tokio::test]
async fn concurrent_updaters_update_each_shard_once_per_pass() {
    let stack = InProcessStack::start(false, |_| {}).await;
    let a = Updater::new(&updater_config(&stack)).expect("updater a");
    let b = Updater::new(&updater_config(&stack)).expect("updater b");
    let (first, second) = tokio::join!(a.pass(), b.pass());
    assert_eq!(first.failed + second.failed, 0);
    assert_eq!(first.updated + second.updated, 2 * SHARDS as usize, "{first:?} {second:?}");
}

#[tokio::test]
async fn bad_settings_stop_start_up() {
    let stack = InProcessStack::start(false, |_| {}).await;
    type Adjust = fn(&mut Config);
    let cases: [(&str, Adjust); 6] = [
        ("zero shards", |c| c.shards = 0),
        ("more shards than the shared rule allows", |c| c.shards = quarry_core::crl::MAX_SHARDS + 1),
        ("zero period", |c| c.update_period_secs = 0),
        ("a max age longer than a week", |c| c.max_age_secs = 8 * 86_400),
        ("no issuers", |c| c.issuers.clear()),
        ("missing issuer", |c| c.issuers[0] = "/nonexistent.pem".into()),
    ];
    for (label, adjust) in cases {
        let mut config = updater_config(&stack);
        adjust(&mut config);
        assert!(Updater::new(&config).is_err(), "{label}");
    }
}

/// An updater whose shard count is not the sa's is refused every lease: it stores no CRL — it would sign shards the
/// sa does not file revocations under — counts the updates as failed, and tries again on its next pass.
#[tokio::test]
async fn a_shard_count_other_than_the_sas_is_refused_and_stores_no_crl() {
    let stack = InProcessStack::start(false, |_| {}).await;
    let (_, serial) = issue(&stack).await;
    let revoke = RevokeCertificateRequest { serial, reason: 1, date: quarry_core::clock::now() };
    StorageAuthorityClient::new(stack.pki.channel("ra", "sa", stack.sa)).revoke_certificate(revoke).await.unwrap();

    for shards in [SHARDS / 2, SHARDS + 1] {
        let updater = Updater::new(&Config { shards, ..updater_config(&stack) }).expect("updater");
        for pass in 0..2 {
            let report = updater.pass().await;
            assert_eq!(report.updated, 0, "shards {shards}, pass {pass}");
            // Each of an issuer's four workers stops at its first refusal: one to four failures per issuer, not one
            // (with an error logged) per shard.
            assert!((2..=8).contains(&report.failed), "shards {shards}, pass {pass}: {report:?}");
        }
    }
    let sa_read = StorageAuthorityReadOnlyClient::new(stack.pki.channel("wfe", "sa", stack.sa));
    for issuer in [stack.pki.issuer_cert(), stack.pki.rsa_issuer_cert()] {
        let issuer_der = rustls_pem(&std::fs::read(issuer).expect("issuer pem"));
        let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(&issuer_der).expect("issuer");
        let issuer_id = quarry_core::certificate::issuer_id(issuer.subject().as_raw());
        for shard in 0..=SHARDS {
            let missing = sa_read.clone().get_crl(CrlShard { issuer_id, shard }).await.expect_err("no CRL");
            assert_eq!(missing.code(), tonic::Code::NotFound, "shard {shard}");
        }
    }
}

fn rustls_pem(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem).expect("pem").to_vec()
}

/// How long the dead updater's lease holds.
const LEASE_SECS: i64 = 8;

/// An updater that dies holding a lease leaves its shard to the others once the lease lapses: nothing else is
/// needed to recover from the crash.
#[tokio::test]
async fn a_shard_leased_by_an_updater_that_died_is_signed_once_its_lease_lapses() {
    use quarry_proto::sa::LeaseCrlShardRequest;
    let stack = InProcessStack::start(false, |_| {}).await;
    let issuer_der = rustls_pem(&std::fs::read(stack.pki.issuer_cert()).expect("issuer pem"));
    let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(&issuer_der).expect("issuer");
    let issuer_id = quarry_core::certificate::issuer_id(issuer.subject().as_raw());
    // The dead updater's lease, never released: long enough for a whole pass on a loaded machine (the pass must end
    // while the lease still holds, or it signs the held shard too).
    let now = quarry_core::clock::now();
    let lapses_at = now + LEASE_SECS;
    let lease = LeaseCrlShardRequest {
        issuer_id,
        shard_count: SHARDS,
        until: lapses_at,
        updated_before: now + 1,
        stale_before: 0,
    };
    let mut sa = StorageAuthorityClient::new(stack.pki.channel("crl-updater", "sa", stack.sa));
    let held = sa.lease_crl_shard(lease).await.expect("lease").into_inner();
    assert!(held.leased);

    let updater = Updater::new(&updater_config(&stack)).expect("updater");
    assert_eq!(
        updater.pass().await,
        PassReport { updated: 2 * SHARDS as usize - 1, failed: 0 },
        "all but the held one"
    );
    let lapsed = std::time::UNIX_EPOCH + std::time::Duration::from_millis(lapses_at as u64 * 1_000 + 1_100);
    tokio::time::sleep(lapsed.duration_since(std::time::SystemTime::now()).unwrap_or_default()).await;
    assert_eq!(updater.pass().await, PassReport { updated: 1, failed: 0 }, "the lapsed lease's shard");
    let sa_read = StorageAuthorityReadOnlyClient::new(stack.pki.channel("wfe", "sa", stack.sa));
    sa_read.clone().get_crl(CrlShard { issuer_id, shard: held.shard }).await.expect("its CRL");
}
