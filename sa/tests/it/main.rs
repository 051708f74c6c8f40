//! The sa as a real gRPC server over mutual TLS on loopback; every test runs against SQLite, and against PostgreSQL
//! when the test command provides a server.

use std::net::SocketAddr;

use quarry_core::config::ConfigVersion;
use quarry_core::grpc::Channel;
use quarry_proto::core as pb;
use quarry_proto::sa::storage_authority_client::StorageAuthorityClient;
use quarry_proto::sa::storage_authority_read_only_client::StorageAuthorityReadOnlyClient;
use quarry_proto::sa::*;
use quarry_testkit::db::TestDatabase;
use quarry_testkit::pki::TestPki;
use tonic::Code;

mod compat;
mod crl;
mod finalization;
mod new_order_facts;
mod orders_list;
mod store;

const RO: &str = "quarry.sa.v1.StorageAuthorityReadOnly";
const RW: &str = "quarry.sa.v1.StorageAuthority";
const DAY: i64 = 86_400;
/// The most ids a page of an account's orders list holds.
const MAX_ORDER_PAGE: i64 = quarry_core::model::MAX_ORDER_PAGE;

struct Sa {
    pki: TestPki,
    addr: SocketAddr,
    db: TestDatabase,
}

impl Sa {
    /// One sa per backend.
    async fn every_backend() -> Vec<Sa> {
        let mut started = Vec::new();
        for db in TestDatabase::every_backend().await {
            started.push(Sa::start(db).await);
        }
        started
    }

    async fn start(db: TestDatabase) -> Sa {
        Self::start_with_replica(db, None).await
    }

    async fn start_with_replica(db: TestDatabase, replica: Option<&TestDatabase>) -> Sa {
        Self::launch(db, replica, quarry_sa::ClientTesting::default()).await
    }

    /// An sa with quarry dev's client-testing knobs `knobs`.
    async fn start_with_knobs(db: TestDatabase, knobs: quarry_sa::ClientTesting) -> Sa {
        Self::launch(db, None, knobs).await
    }

    async fn launch(db: TestDatabase, replica: Option<&TestDatabase>, knobs: quarry_sa::ClientTesting) -> Sa {
        let pki = TestPki::new();
        let config = quarry_sa::Config {
            telemetry: Default::default(),
            read_replica_url: replica.map(|r| r.url.clone()),
            version: ConfigVersion::CURRENT,
            // As deploy/env/base/sa.toml allows them, the operator's `admin` identity included.
            grpc: pki.server_config(&[
                (RO, &["wfe", "ra", "ca", "crl-updater", "admin"]),
                (RW, &["ra", "ca", "crl-updater", "admin"]),
            ]),
            tls: pki.tls("sa"),
            database_url: db.url.clone(),
            max_connections: 4,
            statement_timeout_ms: 5_000,
            crl_shards: 128,
            client_testing: knobs,
        };
        let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if let Err(err) = quarry_sa::serve(config, listener, std::future::pending()).await {
                panic!("sa failed: {err}");
            }
        });
        Sa { pki, addr, db }
    }

    fn rw(&self, client: &str) -> StorageAuthorityClient<Channel> {
        StorageAuthorityClient::new(self.pki.channel(client, "sa", self.addr))
    }

    fn ro(&self, client: &str) -> StorageAuthorityReadOnlyClient<Channel> {
        StorageAuthorityReadOnlyClient::new(self.pki.channel(client, "sa", self.addr))
    }

    /// Runs `statement` on the sa's database directly, binding `id`: the states no RPC reaches (yet), such as an
    /// expiry in the past.
    async fn sql(&self, statement: &'static str, id: i64) {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db.url).await.expect("connect to the sa's database");
        sqlx::query(statement).bind(id).execute(&mut conn).await.expect(statement);
        let _ = conn.close().await;
    }

    async fn account(&self) -> pb::Account {
        let key = quarry_jose::SigningKey::generate(quarry_jose::Algorithm::Es256).unwrap();
        let account = pb::Account {
            jwk: key.jwk().to_json().to_string().into_bytes(),
            status: "valid".into(),
            contact: vec!["mailto:a@example.org".into()],
            ..Default::default()
        };
        self.rw("ra").new_account(account).await.unwrap().into_inner()
    }
}

/// A primary database and its replica on every backend this run has: two SQLite files, and two PostgreSQL databases
/// when PostgreSQL is there.
async fn primary_and_replica_databases() -> Vec<(TestDatabase, TestDatabase)> {
    let mut pairs = vec![(TestDatabase::sqlite(), TestDatabase::sqlite())];
    if let (Some(primary), Some(replica)) = (TestDatabase::postgres().await, TestDatabase::postgres().await) {
        pairs.push((primary, replica));
    }
    pairs
}

/// A self-signed certificate for `name` with `serial` (its DER content bytes).
fn certificate(name: &str, serial: &[u8]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    params.self_signed(&key).unwrap().der().to_vec()
}

fn problem_kind(status: &tonic::Status) -> quarry_core::ErrorKind {
    quarry_core::Problem::from(status.clone()).kind
}

fn dns(value: &str) -> pb::Identifier {
    pb::Identifier { r#type: "dns".into(), value: value.into() }
}

fn new_authz(value: &str, types: &[&str]) -> NewAuthorization {
    NewAuthorization {
        identifier: Some(dns(value)),
        challenge_types: types.iter().map(|t| t.to_string()).collect(),
        token: format!("token-{value}"),
        expires: quarry_core::clock::now() + 7 * DAY,
    }
}

async fn new_order(sa: &Sa, account_id: i64, names: &[&str], reused: Vec<i64>) -> pb::Order {
    let new_authorizations = names
        .iter()
        .skip(reused.len())
        .map(|n| new_authz(n, if n.starts_with("*.") { &["dns-01"] } else { &["http-01", "dns-01"] }))
        .collect();
    sa.rw("ra")
        .new_order_and_authorizations(NewOrderAndAuthorizationsRequest {
            account_id,
            identifiers: names.iter().map(|n| dns(n)).collect(),
            expires: quarry_core::clock::now() + 7 * DAY,
            reused_authorization_ids: reused,
            new_authorizations,
            profile: "classic".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn validate(sa: &Sa, authz_id: i64, status: &str) {
    let now = quarry_core::clock::now();
    sa.rw("ra")
        .set_authorization_processing(SetAuthorizationProcessingRequest {
            id: authz_id,
            attempted: "http-01".into(),
            attempted_at: now,
            owner: "ra-test".into(),
        })
        .await
        .unwrap();
    sa.rw("ra")
        .finalize_authorization(FinalizeAuthorizationRequest {
            id: authz_id,
            status: status.into(),
            expires: now + 30 * DAY,
            attempted: "http-01".into(),
            attempted_at: now,
            validation_records: vec![pb::ValidationRecord { hostname: "x".into(), ..Default::default() }],
            validation_error: (status == "invalid").then(|| pb::Problem {
                kind: "incorrectResponse".into(),
                detail: "no".into(),
                subproblems: vec![],
            }),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn accounts_are_unique_per_key() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        assert!(account.id > 0);
        assert_eq!(account.status, "valid");
        let again = sa.rw("ra").new_account(account.clone()).await.unwrap_err();
        assert_eq!(problem_kind(&again), quarry_core::ErrorKind::Duplicate);
        let found =
            sa.ro("wfe").get_account_by_key(AccountKey { jwk: account.jwk.clone() }).await.unwrap().into_inner();
        assert_eq!(found.id, account.id);
        let missing = sa.ro("wfe").get_account(AccountId { id: account.id + 100 }).await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
    }
}

#[tokio::test]
async fn orders_derive_their_status_from_their_authorizations() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let order = new_order(&sa, account.id, &["a.example.org", "*.b.example.org"], vec![]).await;
        assert_eq!(order.status, "pending");
        assert_eq!(order.authorization_ids.len(), 2);
        let authzs =
            sa.ro("ra").get_order_authorizations(OrderId { id: order.id }).await.unwrap().into_inner().authorizations;
        // The new order's answer carries its authorizations as recorded, for the wfe to show; reads do not.
        assert_eq!(order.authorizations, authzs, "{}", sa.db.url);
        let read = sa.ro("wfe").get_order(OrderId { id: order.id }).await.unwrap().into_inner();
        assert_eq!(read, pb::Order { authorizations: Vec::new(), ..order.clone() });
        let wildcard = authzs.iter().find(|a| a.wildcard).expect("wildcard authz");
        assert_eq!(wildcard.identifier.as_ref().unwrap().value, "b.example.org");
        assert_eq!(wildcard.challenges.iter().map(|c| c.r#type.as_str()).collect::<Vec<_>>(), ["dns-01"]);

        // The same set of names gives back the same order while it is pending.
        let reused = sa
            .ro("ra")
            .get_order_for_names(GetOrderForNamesRequest {
                account_id: account.id,
                identifiers: vec![dns("*.b.example.org"), dns("A.example.org")],
                profile: "classic".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reused.id, order.id);

        for id in &order.authorization_ids {
            validate(&sa, *id, "valid").await;
        }
        let order = sa.ro("wfe").get_order(OrderId { id: order.id }).await.unwrap().into_inner();
        assert_eq!(order.status, "ready");
        let authz = sa
            .ro("wfe")
            .get_authorization(AuthorizationId { id: order.authorization_ids[0] })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(authz.status, "valid");
        assert_eq!(authz.challenges.len(), 1, "a valid authorization shows only the challenge used");
        assert_eq!(authz.challenges[0].status, "valid");

        // Valid authorizations are reused for exactly the same identifier value only.
        let valid = sa
            .ro("ra")
            .get_valid_authorizations(GetValidAuthorizationsRequest {
                account_id: account.id,
                identifiers: vec![dns("a.example.org"), dns("b.example.org"), dns("*.b.example.org")],
                valid_until: quarry_core::clock::now() + DAY,
                profile: "classic".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .authorizations;
        assert_eq!(valid.len(), 2);
        let reusing = new_order(&sa, account.id, &["a.example.org"], vec![order.authorization_ids[0]]).await;
        assert_eq!(reusing.authorizations, std::slice::from_ref(&authz), "a reused authorization is answered as it is");
        // A reused authorization and new ones together: answered, and read again, in the order's order.
        let names = ["a.example.org", "c.example.org", "*.c.example.org"];
        let mixed = new_order(&sa, account.id, &names, vec![order.authorization_ids[0]]).await;
        assert_eq!(mixed.authorizations[0], authz, "{}", sa.db.url);
        let answered: Vec<(String, String)> = mixed
            .authorizations
            .iter()
            .map(|a| (a.identifier.clone().unwrap_or_default().value, a.status.clone()))
            .collect();
        let pending = |value: &str| (value.to_owned(), "pending".to_owned());
        // A wildcard's authorization is for the name under it.
        assert_eq!(answered[1..], [pending("c.example.org"), pending("c.example.org")], "{}", sa.db.url);
        assert_eq!(mixed.authorization_ids[0], order.authorization_ids[0], "{}", sa.db.url);
        let read = sa.ro("wfe").get_order(OrderId { id: mixed.id }).await.unwrap().into_inner();
        assert_eq!(read.authorization_ids, mixed.authorization_ids, "{}", sa.db.url);
        assert!(mixed.authorizations[2].wildcard && !mixed.authorizations[1].wildcard, "{}", sa.db.url);

        // Finalization is a fuse.
        sa.rw("ra")
            .set_order_processing(SetOrderProcessingRequest { id: order.id, owner: "ra-test".into() })
            .await
            .unwrap();
        let second = sa
            .rw("ra")
            .set_order_processing(SetOrderProcessingRequest { id: order.id, owner: "ra-test".into() })
            .await
            .unwrap_err();
        assert_eq!(problem_kind(&second), quarry_core::ErrorKind::OrderNotReady);
        let order = sa.ro("wfe").get_order(OrderId { id: order.id }).await.unwrap().into_inner();
        assert_eq!(order.status, "processing");
        sa.rw("ca")
            .set_order_error(SetOrderErrorRequest {
                id: order.id,
                error: Some(pb::Problem { kind: "serverInternal".into(), detail: "boom".into(), subproblems: vec![] }),
            })
            .await
            .unwrap();
        let order = sa.ro("wfe").get_order(OrderId { id: order.id }).await.unwrap().into_inner();
        assert_eq!(order.status, "invalid");
        assert_eq!(order.error.unwrap().kind, "serverInternal");
    }
}

#[tokio::test]
async fn a_failed_authorization_invalidates_its_order_and_cannot_be_validated_twice() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let order = new_order(&sa, account.id, &["c.example.org"], vec![]).await;
        let id = order.authorization_ids[0];
        sa.rw("ra")
            .set_authorization_processing(SetAuthorizationProcessingRequest {
                id,
                attempted: "http-01".into(),
                attempted_at: 1,
                owner: "ra-test".into(),
            })
            .await
            .unwrap();
        let busy = sa
            .rw("ra")
            .set_authorization_processing(SetAuthorizationProcessingRequest {
                id,
                attempted: "dns-01".into(),
                attempted_at: 1,
                owner: "ra-test".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(problem_kind(&busy), quarry_core::ErrorKind::Conflict);
        let authz = sa.ro("wfe").get_authorization(AuthorizationId { id }).await.unwrap().into_inner();
        assert_eq!(authz.challenges.iter().find(|c| c.r#type == "http-01").unwrap().status, "processing");
        sa.rw("ra")
            .finalize_authorization(FinalizeAuthorizationRequest {
                id,
                status: "invalid".into(),
                attempted: "http-01".into(),
                attempted_at: 2,
                validation_error: Some(pb::Problem {
                    kind: "unauthorized".into(),
                    detail: "404".into(),
                    subproblems: vec![],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let again = sa
            .rw("ra")
            .finalize_authorization(FinalizeAuthorizationRequest { id, status: "valid".into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(problem_kind(&again), quarry_core::ErrorKind::Malformed);
        let order = sa.ro("wfe").get_order(OrderId { id: order.id }).await.unwrap().into_inner();
        assert_eq!(order.status, "invalid");
        let authz = sa.ro("wfe").get_authorization(AuthorizationId { id }).await.unwrap().into_inner();
        assert_eq!(authz.challenges[0].error.as_ref().unwrap().kind, "unauthorized");
        let no_reuse = sa
            .ro("ra")
            .get_order_for_names(GetOrderForNamesRequest {
                account_id: account.id,
                identifiers: vec![dns("c.example.org")],
                profile: "classic".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(no_reuse.code(), Code::NotFound);
    }
}

#[tokio::test]
async fn certificates_need_a_reserved_serial() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let der = certificate("d.example.org", &[0x01, 0xab, 0xcd]);
        let add = || AddCertificateRequest {
            account_id: account.id,
            der: der.clone(),
            issued: 10,
            issuer_id: 7,
            ..Default::default()
        };
        let unreserved = sa.rw("ca").add_precertificate(add()).await.unwrap_err();
        assert_eq!(problem_kind(&unreserved), quarry_core::ErrorKind::Malformed);
        let serial = || AddSerialRequest {
            account_id: account.id,
            serial: "01abcd".into(),
            created: 1,
            expires: 2,
            order_id: 0,
        };
        sa.rw("ca").add_serial(serial()).await.unwrap();
        let duplicate = sa.rw("ca").add_serial(serial()).await.unwrap_err();
        assert_eq!(problem_kind(&duplicate), quarry_core::ErrorKind::Duplicate);
        let no_precertificate = sa.rw("ca").add_certificate(add()).await.unwrap_err();
        assert_eq!(problem_kind(&no_precertificate), quarry_core::ErrorKind::Malformed);
        sa.rw("ca").add_precertificate(add()).await.unwrap();
        sa.rw("ca").add_certificate(add()).await.unwrap();
        let stored = sa.ro("wfe").get_certificate(Serial { serial: "01ABCD".into() }).await.unwrap().into_inner();
        assert_eq!(stored.der, der);
        assert_eq!(stored.issuer_id, 7);
        let status =
            sa.ro("wfe").get_certificate_status(Serial { serial: "01abcd".into() }).await.unwrap().into_inner();
        assert_eq!(status.status, "good");
    }
}

/// Stores a certificate with `serial` (its DER content bytes) for a new account, as the ca does; returns its serial
/// as the sa keeps it (lowercase hex).
async fn store_certificate(sa: &Sa, serial: &[u8], name: &str) -> String {
    let account = sa.account().await;
    let der = certificate(name, serial);
    let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let reserve = AddSerialRequest { account_id: account.id, serial: hex.clone(), created: 1, expires: 2, order_id: 0 };
    sa.rw("ca").add_serial(reserve).await.unwrap();
    let add = || AddCertificateRequest {
        account_id: account.id,
        der: der.clone(),
        issued: 10,
        issuer_id: 7,
        ..Default::default()
    };
    sa.rw("ca").add_precertificate(add()).await.unwrap();
    sa.rw("ca").add_certificate(add()).await.unwrap();
    hex
}

/// quarry dev's stand-in for Pebble's set-renewal-info: an sa takes an override only when its `[client_testing]`
/// says so; then only for a stored certificate, read back verbatim through the read-only service (as every wfe
/// replica reads it), replaced by a later one, removed by an empty one.
#[tokio::test]
async fn renewal_info_overrides_are_taken_only_when_client_testing_allows_them() {
    let overriding = quarry_sa::ClientTesting { renewal_info_overrides: true };
    let plain_databases = TestDatabase::every_backend().await;
    for (db, plain_db) in TestDatabase::every_backend().await.into_iter().zip(plain_databases) {
        let set = |serial: &str, response: &str| RenewalInfoOverride {
            serial: serial.into(),
            response: response.into(),
            set_at: 0,
        };
        let get = |serial: &str| Serial { serial: serial.into() };

        // Production behaviour: the write is refused, saying why, before anything is looked up.
        let plain = Sa::start(plain_db).await;
        let refused = plain.rw("admin").set_renewal_info_override(set("01abcd", "{}")).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        let problem = quarry_core::Problem::from(refused);
        assert_eq!(problem.kind, quarry_core::ErrorKind::Unauthorized);
        assert!(problem.detail.contains("[client_testing] renewal_info_overrides"), "{}", problem.detail);

        let sa = Sa::start_with_knobs(db, overriding.clone()).await;
        let serial = store_certificate(&sa, &[0x01, 0xab, 0xcd], "ari.example.org").await;
        let none = sa.ro("wfe").get_renewal_info_override(get(&serial)).await.unwrap_err();
        assert_eq!(none.code(), Code::NotFound);
        // Only a stored certificate's serial takes one.
        let unknown = sa.rw("admin").set_renewal_info_override(set("02", "{}")).await.unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);

        let window = r#"{"suggestedWindow": {"start": "2020-01-01T00:00:00Z", "end": "2020-01-02T00:00:00Z"}}"#;
        let before = quarry_core::clock::now();
        sa.rw("admin").set_renewal_info_override(set("01ABCD", window)).await.unwrap();
        let stored = sa.ro("wfe").get_renewal_info_override(get(&serial)).await.unwrap().into_inner();
        assert_eq!((stored.serial.as_str(), stored.response.as_str()), (serial.as_str(), window));
        assert!(stored.set_at >= before, "{}", stored.set_at);
        // A later one replaces it, any text at all (a suite tests its client on malformed answers too).
        sa.rw("admin").set_renewal_info_override(set(&serial, "not JSON {")).await.unwrap();
        let stored = sa.ro("wfe").get_renewal_info_override(get(&serial)).await.unwrap().into_inner();
        assert_eq!(stored.response, "not JSON {");
        // An empty one removes it, as Pebble reads an empty answer as none; removing again is no error.
        for _ in 0..2 {
            sa.rw("admin").set_renewal_info_override(set(&serial, "")).await.unwrap();
        }
        let removed = sa.ro("wfe").get_renewal_info_override(get(&serial)).await.unwrap_err();
        assert_eq!(removed.code(), Code::NotFound);

        let oversized = sa.rw("admin").set_renewal_info_override(set(&serial, &"x".repeat(65 * 1024))).await;
        assert_eq!(problem_kind(&oversized.unwrap_err()), quarry_core::ErrorKind::Malformed);
        // The wfe reads overrides but may not write them.
        let denied = sa.rw("wfe").set_renewal_info_override(set(&serial, "{}")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
    }
}

/// Every page of `account_id`'s orders list, `limit` ids at a time, as the wfe follows its `next` links.
#[tokio::test]
async fn the_wfe_reads_but_may_not_write() {
    for sa in Sa::every_backend().await {
        let denied = sa
            .rw("wfe")
            .add_serial(AddSerialRequest { account_id: 1, serial: "01".into(), created: 1, expires: 2, order_id: 0 })
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        let denied = sa.ro("intruder").get_account(AccountId { id: 1 }).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        let exists = sa.ro("wfe").key_blocked(KeyHash { key_hash: vec![1; 32] }).await.unwrap().into_inner();
        assert!(!exists.exists);
    }
}

#[tokio::test]
async fn reads_go_to_the_replica_and_fall_back_to_the_primary() {
    for (primary, replica) in primary_and_replica_databases().await {
        // An account only the replica knows: answered from the replica, so reads do go there.
        let settings =
            quarry_sa::store::PoolSettings { max_connections: 1, statement_timeout: std::time::Duration::from_secs(5) };
        let replica_store = quarry_sa::Store::open(&replica.url, settings).await.unwrap();
        let replica_only = quarry_jose::SigningKey::generate(quarry_jose::Algorithm::Es256).unwrap().jwk();
        let stored = quarry_core::model::Account {
            id: 0,
            jwk: replica_only.canonical_json().into_bytes(),
            status: quarry_core::model::AccountStatus::Valid,
            contact: Vec::new(),
            terms_of_service_agreed: true,
            created_at: 0,
            external_account_id: String::new(),
        };
        replica_store.new_account(&stored, false).await.unwrap();

        let sa = Sa::start_with_replica(primary, Some(&replica)).await;
        let by_key = |jwk: Vec<u8>| AccountKey { jwk };
        let found = sa.ro("wfe").get_account_by_key(by_key(stored.jwk.clone())).await.unwrap().into_inner();
        assert_eq!(found.jwk, stored.jwk, "{}", replica.url);
        // A row written just now to the primary, not (yet) on the replica: the primary answers.
        let written = sa.account().await;
        let found = sa.ro("wfe").get_account_by_key(by_key(written.jwk.clone())).await.unwrap().into_inner();
        assert_eq!(found.id, written.id, "{}", replica.url);
        // Neither has it: still notFound.
        let nobody = quarry_jose::SigningKey::generate(quarry_jose::Algorithm::Es256).unwrap().jwk();
        let missing = sa.ro("wfe").get_account_by_key(by_key(nobody.canonical_json().into_bytes())).await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);

        // A finalize's facts come from the replica, but whether the key is blocked is the primary's word: a key
        // blocked a moment ago counts, and one the replica alone lists does not.
        let (on_primary, on_replica) = ([0x51; 32], [0x52; 32]);
        let block =
            AddBlockedKeyRequest { key_hash: on_primary.to_vec(), source: "test".into(), comment: String::new() };
        sa.rw("ra").add_blocked_key(block).await.unwrap();
        replica_store.add_blocked_key(&on_replica, "test", "").await.unwrap();
        for (key_hash, blocked) in [(on_primary, true), (on_replica, false)] {
            let request =
                GetFinalizationFactsRequest { order_id: 1, key_hash: key_hash.to_vec(), ..Default::default() };
            let facts = sa.ro("ra").get_finalization_facts(request).await.unwrap().into_inner();
            assert_eq!(facts.key_blocked, blocked, "{:x?}: {}", key_hash[0], replica.url);
        }
    }
}

/// The health service follows the database: when PostgreSQL loses the sa's database, the sa reports NOT_SERVING,
/// so that probes and load balancers take it out instead of sending it calls that can only fail.
#[tokio::test]
async fn health_follows_the_database() {
    let Some(db) = TestDatabase::postgres().await else { return };
    let url = db.url.clone();
    let sa = Sa::start(db).await;
    let channel = sa.pki.channel("wfe", "sa", sa.addr);
    let deadline = || Some(std::time::Instant::now() + std::time::Duration::from_secs(5));
    let started = std::time::Instant::now();
    while quarry_core::grpc::check_health(channel.clone(), "", deadline()).await.is_err() {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the sa never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let (_, name) = url.rsplit_once('/').expect("database URL");
    let admin = std::env::var(quarry_testkit::db::POSTGRES_ENV).expect("the admin URL");
    let mut conn = <sqlx::postgres::PgConnection as sqlx::Connection>::connect(&admin).await.expect("admin connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await
        .expect("drop the sa's database");

    let dropped = std::time::Instant::now();
    loop {
        match quarry_core::grpc::check_health(channel.clone(), "", deadline()).await {
            Err(why) if why == "not serving" => break,
            _ => {
                assert!(dropped.elapsed() < std::time::Duration::from_secs(30), "still serving without its database");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
    // Not ready, but alive: it answers, so a liveness probe (`quarry health --live`) leaves it running.
    assert_eq!(quarry_core::grpc::health_status(channel, "", deadline()).await, Ok(false));
}
