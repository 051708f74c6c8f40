//! CRL shard leases over gRPC: the sa leases only at its own shard count, so a crl-updater whose `shards` drifted
//! from the sa's `crl_shards` is refused, with both keys named, instead of signing shards the sa does not file under.

use quarry_core::ErrorKind;
use quarry_proto::sa::LeaseCrlShardRequest;
use tonic::Code;

use crate::{Sa, problem_kind};

/// As `Sa::launch` configures the sa.
const SA_SHARDS: i64 = 128;

fn lease(issuer_id: i64, shard_count: i64) -> LeaseCrlShardRequest {
    let now = quarry_core::clock::now();
    LeaseCrlShardRequest { issuer_id, shard_count, until: now + 60, updated_before: now + 1, stale_before: 0 }
}

#[tokio::test]
async fn a_lease_at_another_shard_count_than_the_sas_is_refused_naming_both() {
    for sa in Sa::every_backend().await {
        let issuer_id = 41;
        for other in [SA_SHARDS / 2, SA_SHARDS + 1] {
            let refused = sa.rw("crl-updater").lease_crl_shard(lease(issuer_id, other)).await.unwrap_err();
            assert_eq!(refused.code(), Code::FailedPrecondition, "{}: {refused:?}", sa.db.url);
            assert_eq!(problem_kind(&refused), ErrorKind::Misconfigured, "{}", sa.db.url);
            let detail = refused.message();
            assert!(detail.contains(&format!("sa crl_shards {SA_SHARDS}")), "{detail}");
            assert!(detail.contains(&format!("crl-updater shards {other}")), "{detail}");
        }
        // A count below one is still the caller's malformed request, whatever the sa's count.
        let zero = sa.rw("crl-updater").lease_crl_shard(lease(issuer_id, 0)).await.unwrap_err();
        assert_eq!(zero.code(), Code::InvalidArgument, "{}", sa.db.url);

        // The refusals took nothing: at the sa's own count the oldest shard, the first, is leased.
        let leased = sa.rw("crl-updater").lease_crl_shard(lease(issuer_id, SA_SHARDS)).await.unwrap().into_inner();
        assert!(leased.leased, "{}", sa.db.url);
        assert_eq!(leased.shard, 0, "{}", sa.db.url);
        assert_eq!(shard_rows(&sa, issuer_id).await, SA_SHARDS, "{}", sa.db.url);
    }
}

/// How many shard rows the sa's database holds for `issuer_id`.
async fn shard_rows(sa: &Sa, issuer_id: i64) -> i64 {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&sa.db.url).await.expect("connect to the sa's database");
    let rows = sqlx::query_scalar("SELECT COUNT(*) FROM crl_shards WHERE issuer_id = $1")
        .bind(issuer_id)
        .fetch_one(&mut conn)
        .await
        .expect("count shard rows");
    let _ = conn.close().await;
    rows
}
