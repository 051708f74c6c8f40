//! The account's orders list (RFC 8555 §7.1.2.1) as the sa pages it: orders that are not invalid, in creation
//! order, each page bounded in what it returns and in what it reads.

use crate::*;

async fn account_orders_in_pages(sa: &Sa, account_id: i64, limit: i64) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    let mut after_id = 0;
    loop {
        let request = AccountOrdersRequest { account_id, after_id, limit };
        let page = sa.ro("wfe").get_account_orders(request).await.unwrap().into_inner();
        assert!(page.order_ids.len() as i64 <= limit, "{page:?}");
        assert!(page.order_ids.iter().all(|id| *id > after_id), "{page:?} after {after_id}");
        pages.push(page.order_ids);
        if page.next_after_id == 0 {
            return pages;
        }
        assert!(page.next_after_id > after_id, "the cursor moves on");
        after_id = page.next_after_id;
    }
}

/// RFC 8555 §7.1.2.1: an account's orders list holds its pending, ready, processing and valid orders — never an
/// invalid one, whether it failed, was given up or expired, or one of its authorizations did — in creation order,
/// a page at a time; the list agrees with each order's own status, which is derived on read.
#[tokio::test]
async fn an_accounts_orders_list_holds_its_orders_that_are_not_invalid_in_pages() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let other = sa.account().await;
        let (on, account_id) = (&sa, account.id);
        let order = |n: usize| async move {
            let name = format!("list-{n}.example.org");
            new_order(on, account_id, &[name.as_str()], vec![]).await
        };
        let pending = order(1).await;
        let ready = order(2).await;
        validate(&sa, ready.authorization_ids[0], "valid").await;
        // Another account's order between this account's: not on its list.
        let others = new_order(&sa, other.id, &["list-other.example.org"], vec![]).await;
        let failed = order(3).await;
        validate(&sa, failed.authorization_ids[0], "invalid").await;
        let deactivated = order(4).await;
        let id = deactivated.authorization_ids[0];
        sa.rw("ra").deactivate_authorization(AuthorizationId { id }).await.unwrap();
        let processing = order(5).await;
        validate(&sa, processing.authorization_ids[0], "valid").await;
        let processing_request = |id| SetOrderProcessingRequest { id, owner: "ra-test".into() };
        sa.rw("ra").set_order_processing(processing_request(processing.id)).await.unwrap();
        let given_up = order(6).await;
        validate(&sa, given_up.authorization_ids[0], "valid").await;
        sa.rw("ra").set_order_processing(processing_request(given_up.id)).await.unwrap();
        let error = pb::Problem { kind: "serverInternal".into(), detail: "gave up".into(), subproblems: vec![] };
        sa.rw("ca").set_order_error(SetOrderErrorRequest { id: given_up.id, error: Some(error) }).await.unwrap();
        // Valid, and past its own expiry: still valid, so its certificate URL keeps working; listed.
        let valid = order(7).await;
        validate(&sa, valid.authorization_ids[0], "valid").await;
        sa.rw("ra").set_order_processing(processing_request(valid.id)).await.unwrap();
        let serial = "0a0b".to_owned();
        sa.rw("ca").finalize_order(FinalizeOrderRequest { id: valid.id, certificate_serial: serial }).await.unwrap();
        sa.sql("UPDATE orders SET expires = 1 WHERE id = $1", valid.id).await;
        let expired = order(8).await;
        sa.sql("UPDATE orders SET expires = 1 WHERE id = $1", expired.id).await;
        let authorization_expired = order(9).await;
        let id = authorization_expired.authorization_ids[0];
        sa.sql("UPDATE authorizations SET expires = 1 WHERE id = $1", id).await;
        let last = order(10).await;

        let listed = vec![pending.id, ready.id, processing.id, valid.id, last.id];
        let pages = account_orders_in_pages(&sa, account.id, MAX_ORDER_PAGE).await;
        assert_eq!(pages, vec![listed.clone()], "{}", sa.db.url);
        // Listed exactly when the order reads as anything but invalid.
        let every = [&pending, &ready, &failed, &deactivated, &processing, &given_up, &valid, &expired];
        for order in every.into_iter().chain([&authorization_expired, &last]) {
            let read = sa.ro("wfe").get_order(OrderId { id: order.id }).await.unwrap().into_inner();
            assert_eq!(listed.contains(&order.id), read.status != "invalid", "order {} is {}", order.id, read.status);
        }

        // Two at a time: the same orders in the same order, the last page short, then no more.
        let pages = account_orders_in_pages(&sa, account.id, 2).await;
        assert_eq!(pages, [listed[..2].to_vec(), listed[2..4].to_vec(), listed[4..].to_vec()]);
        // Exactly a page's worth: no empty page after it.
        assert_eq!(account_orders_in_pages(&sa, account.id, 5).await, vec![listed.clone()]);
        // Past the end: nothing, and no next page.
        let past = AccountOrdersRequest { account_id: account.id, after_id: last.id, limit: 2 };
        let past = sa.ro("wfe").get_account_orders(past).await.unwrap().into_inner();
        assert_eq!((past.order_ids, past.next_after_id), (vec![], 0));
        assert_eq!(account_orders_in_pages(&sa, other.id, 2).await, [vec![others.id]]);

        for limit in [0, -1, MAX_ORDER_PAGE + 1] {
            let request = AccountOrdersRequest { account_id: account.id, after_id: 0, limit };
            let refused = sa.ro("wfe").get_account_orders(request).await.unwrap_err();
            assert_eq!(problem_kind(&refused), quarry_core::ErrorKind::Malformed, "limit {limit}");
        }
    }
}

/// A page looks at a bounded number of the account's orders: past two thousand invalid ones, the first page is
/// empty with a next page, and the order after them is on that one — no request reads every order of an account.
#[tokio::test]
async fn a_page_of_orders_looks_at_a_bounded_number_of_orders() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        // Expired orders without authorizations, written at once rather than through 2,000 RPCs.
        sa.sql(
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2005) \
             INSERT INTO orders (account_id, expires, created, profile, identifiers) \
             SELECT $1, 1, 1, 'classic', '[]' FROM n",
            account.id,
        )
        .await;
        let live = new_order(&sa, account.id, &["after-the-expired.example.org"], vec![]).await;
        let pages = account_orders_in_pages(&sa, account.id, 10).await;
        assert_eq!(pages, [vec![], vec![live.id]], "{}", sa.db.url);
    }
}
