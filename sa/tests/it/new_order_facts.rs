//! `GetNewOrderFacts`: each part of the answer as its own read (`GetOrderForNames`, `CheckIdentifiersPaused`,
//! `FqdnSetIssuanceTimes`, `GetValidAuthorizations`) gives it, on every backend, read from the primary.

use quarry_core::clock::now;
use quarry_proto::sa::*;

use super::{DAY, Sa, dns, new_order, primary_and_replica_databases, store_certificate, validate};

/// What the ra asks for a new order of `names` in the classic profile.
fn ask(account_id: i64, names: &[&str]) -> NewOrderFactsRequest {
    NewOrderFactsRequest {
        account_id,
        identifiers: names.iter().map(|n| dns(n)).collect(),
        profile: "classic".into(),
        replacement: false,
        renewal_since: now() - 120 * DAY,
        valid_until: now() + DAY,
    }
}

async fn facts(sa: &Sa, request: NewOrderFactsRequest) -> NewOrderFacts {
    sa.ro("ra").get_new_order_facts(request).await.unwrap().into_inner()
}

async fn pause(sa: &Sa, account_id: i64, name: &str) {
    let request = PausedIdentifiersRequest { account_id, identifiers: vec![dns(name)] };
    sa.rw("ra").pause_identifiers(request).await.unwrap();
}

fn ids(authorizations: &[quarry_proto::core::Authorization]) -> Vec<i64> {
    let mut ids: Vec<i64> = authorizations.iter().map(|a| a.id).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn a_reusable_order_is_the_whole_answer_unless_the_order_is_a_replacement() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let names = ["r.facts.example", "*.r.facts.example"];
        let order = new_order(&sa, account.id, &names, vec![]).await;
        // Reuse is decided before pausing, as the ra decides it: a paused name does not hide the order.
        pause(&sa, account.id, "r.facts.example").await;
        let found = facts(&sa, ask(account.id, &["*.r.facts.example", "r.facts.example"])).await;
        assert_eq!(found.reusable_order.as_ref().map(|o| o.id), Some(order.id), "{}", sa.db.url);
        assert_eq!(found.reusable_order.as_ref().unwrap().status, "pending");
        let only_the_order = NewOrderFacts { reusable_order: found.reusable_order.clone(), ..Default::default() };
        assert_eq!(found, only_the_order, "nothing else is read");

        // A replacement order never reuses one: the rest is read instead, one paused entry per identifier.
        let replacement = facts(&sa, NewOrderFactsRequest { replacement: true, ..ask(account.id, &names) }).await;
        assert_eq!(replacement.reusable_order, None);
        assert_eq!(replacement.paused, [dns("r.facts.example"), dns("r.facts.example")]);
        assert!(!replacement.renewal);
        assert!(replacement.valid_authorizations.is_empty(), "pending authorizations are not valid ones");

        // Only the account's own order, of the same profile, for exactly these names.
        let shortlived = NewOrderFactsRequest { profile: "shortlived".into(), ..ask(account.id, &names) };
        assert_eq!(facts(&sa, shortlived).await.reusable_order, None);
        let other = sa.account().await;
        assert_eq!(facts(&sa, ask(other.id, &names)).await.reusable_order, None);
        assert_eq!(facts(&sa, ask(account.id, &["r.facts.example"])).await.reusable_order, None);
    }
}

#[tokio::test]
async fn paused_identifiers_are_the_accounts_own_checked_without_their_wildcard_label() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        pause(&sa, account.id, "p.facts.example").await;
        let names = ["*.p.facts.example", "q.facts.example"];
        let answer = facts(&sa, ask(account.id, &names)).await;
        assert_eq!(answer.paused, [dns("p.facts.example")], "{}", sa.db.url);
        let other = sa.account().await;
        assert!(facts(&sa, ask(other.id, &names)).await.paused.is_empty(), "another account is not paused");

        sa.rw("admin").unpause_account(AccountId { id: account.id }).await.unwrap();
        assert!(facts(&sa, ask(account.id, &names)).await.paused.is_empty(), "unpaused");
    }
}

#[tokio::test]
async fn a_renewal_is_a_certificate_for_exactly_the_set_issued_since_the_window_began() {
    for sa in Sa::every_backend().await {
        // Stored as issued at 10 (Unix seconds), by another account: a renewal is any account's.
        store_certificate(&sa, &[0x0f, 0xac, 0x75], "renewed.facts.example").await;
        let account = sa.account().await;
        let since = |renewal_since, names: &[&str]| NewOrderFactsRequest { renewal_since, ..ask(account.id, names) };
        assert!(facts(&sa, since(9, &["renewed.facts.example"])).await.renewal, "{}", sa.db.url);
        assert!(!facts(&sa, since(10, &["renewed.facts.example"])).await.renewal, "issued before the window");
        let more = ["renewed.facts.example", "new.facts.example"];
        assert!(!facts(&sa, since(0, &more)).await.renewal, "not exactly the certificate's set");
    }
}

#[tokio::test]
async fn valid_authorizations_are_the_accounts_of_the_profile_valid_past_valid_until() {
    for sa in Sa::every_backend().await {
        let account = sa.account().await;
        let validated = ["v.facts.example", "*.v.facts.example"];
        let order = new_order(&sa, account.id, &validated, vec![]).await;
        for id in &order.authorization_ids {
            validate(&sa, *id, "valid").await; // valid for 30 days
        }
        let mut expected = order.authorization_ids.clone();
        expected.sort_unstable();

        // The ready order itself is reused for exactly its names...
        let same = facts(&sa, ask(account.id, &validated)).await.reusable_order.expect("the ready order");
        assert_eq!((same.id, same.status.as_str()), (order.id, "ready"), "{}", sa.db.url);
        // ...and its valid authorizations for a new set that holds them, the wildcard's apart from the name's.
        let names = ["v.facts.example", "*.v.facts.example", "n.facts.example"];
        let answer = facts(&sa, ask(account.id, &names)).await;
        assert_eq!(answer.reusable_order, None);
        assert_eq!(ids(&answer.valid_authorizations), expected);
        assert_eq!(answer.valid_authorizations.iter().filter(|a| a.wildcard).count(), 1);
        assert!(answer.valid_authorizations.iter().all(|a| a.status == "valid"));

        // Not another profile's...
        let shortlived = NewOrderFactsRequest { profile: "shortlived".into(), ..ask(account.id, &names) };
        assert!(facts(&sa, shortlived).await.valid_authorizations.is_empty());
        // ...nor one expiring before valid_until...
        let late = NewOrderFactsRequest { valid_until: now() + 31 * DAY, ..ask(account.id, &names) };
        assert!(facts(&sa, late).await.valid_authorizations.is_empty());
        let early = NewOrderFactsRequest { valid_until: now() + 29 * DAY, ..ask(account.id, &names) };
        assert_eq!(ids(&facts(&sa, early).await.valid_authorizations), expected);
        // ...nor another account's.
        let other = sa.account().await;
        assert!(facts(&sa, ask(other.id, &names)).await.valid_authorizations.is_empty());
    }
}

/// With a read replica, the answer still comes from the primary: a pause the replica lacks is seen, as
/// `CheckIdentifiersPaused` sees it, and so is an order and its authorizations written a moment ago.
#[tokio::test]
async fn the_answer_comes_from_the_primary_when_there_is_a_replica() {
    for (primary, replica) in primary_and_replica_databases().await {
        let settings =
            quarry_sa::store::PoolSettings { max_connections: 1, statement_timeout: std::time::Duration::from_secs(5) };
        // The replica's schema, and nothing else: everything below is written to the primary only.
        quarry_sa::Store::open(&replica.url, settings).await.unwrap();
        let sa = Sa::start_with_replica(primary, Some(&replica)).await;
        let account = sa.account().await;
        let order = new_order(&sa, account.id, &["primary.facts.example"], vec![]).await;
        validate(&sa, order.authorization_ids[0], "valid").await;
        pause(&sa, account.id, "paused.facts.example").await;

        let reused = facts(&sa, ask(account.id, &["primary.facts.example"])).await.reusable_order;
        assert_eq!(reused.map(|o| o.id), Some(order.id), "{}", replica.url);
        let answer = facts(&sa, ask(account.id, &["primary.facts.example", "paused.facts.example"])).await;
        assert_eq!(answer.paused, [dns("paused.facts.example")], "{}", replica.url);
        assert_eq!(ids(&answer.valid_authorizations), order.authorization_ids);
    }
}
