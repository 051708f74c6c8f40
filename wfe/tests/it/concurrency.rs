//! Races the sa's transactions and fuses must win, on every backend: parallel finalize issues one certificate,
//! parallel new-account with one key creates one account, parallel challenge POSTs validate once.

use futures::future::join_all;
use quarry_jose::Algorithm;
use quarry_testkit::client::AcmeAccount;
use quarry_testkit::db::TestDatabase;
use serde_json::json;

use crate::harness::{Stack, csr};

/// How many requests race each other.
const RACERS: usize = 8;

#[tokio::test]
async fn parallel_finalize_issues_exactly_one_certificate() {
    for db in TestDatabase::every_backend().await {
        let stack = Stack::start_on(db).await;
        let account = stack.account(Algorithm::Es256).await;
        let (order_url, order) = stack.order(&account, &["race.example.org"]).await;
        stack.make_ready(&account, &order_url, &order).await;
        let finalize = order["finalize"].as_str().unwrap();
        let payload = json!({"csr": csr(&["race.example.org"])});
        let answers = join_all((0..RACERS).map(|_| stack.client.post(&account, finalize, Some(&payload)))).await;
        let mut issued = 0;
        for answer in answers {
            let answer = answer.unwrap();
            if answer.status == 200 {
                issued += 1;
                assert_eq!(answer.json()["status"], "valid");
            } else {
                let body = String::from_utf8_lossy(&answer.body);
                assert_eq!(
                    answer.problem_type().as_deref(),
                    Some("orderNotReady"),
                    "{}: {body}",
                    stack.services.db.url
                );
            }
        }
        assert_eq!(issued, 1, "{}", stack.services.db.url);
        assert_eq!(stack.services.db.count("certificates").await, 1);
        assert_eq!(stack.services.db.count("serials").await, 1);
        // The losers were refused as their precertificates were to be stored: nothing of them is kept.
        assert_eq!(stack.services.db.count("precertificates").await, 1);
    }
}

#[tokio::test]
async fn parallel_new_accounts_with_one_key_create_one_account() {
    for db in TestDatabase::every_backend().await {
        let stack = Stack::start_on(db).await;
        let account = AcmeAccount::generate(Algorithm::Es384);
        let url = stack.client.url("newAccount");
        let payload = json!({"termsOfServiceAgreed": true});
        let answers = join_all((0..RACERS).map(|_| stack.client.post(&account, &url, Some(&payload)))).await;
        let mut locations = Vec::new();
        for answer in answers {
            let answer = answer.unwrap();
            assert!(answer.status == 201 || answer.status == 200, "{}", String::from_utf8_lossy(&answer.body));
            locations.push(answer.header("location").unwrap());
        }
        locations.dedup();
        assert_eq!(locations.len(), 1, "{locations:?}");
        assert_eq!(stack.services.db.count("accounts").await, 1, "{}", stack.services.db.url);
    }
}

#[tokio::test]
async fn parallel_challenge_posts_validate_once() {
    for db in TestDatabase::every_backend().await {
        let stack = Stack::start_on(db).await;
        let account = stack.account(Algorithm::Rs256).await;
        let (order_url, order) = stack.order(&account, &["once.example.org"]).await;
        let authz = stack.client.post(&account, order["authorizations"][0].as_str().unwrap(), None).await.unwrap();
        let challenge = authz.json()["challenges"][0]["url"].as_str().unwrap().to_owned();
        let empty = json!({});
        let answers = join_all((0..RACERS).map(|_| stack.client.post(&account, &challenge, Some(&empty)))).await;
        for answer in answers {
            assert_eq!(answer.unwrap().status, 200);
        }
        stack.client.poll(&account, &order_url, 100, |o| o["status"] == "ready").await.expect("order ready");
        assert_eq!(stack.va.calls(), 1, "{}", stack.services.db.url);
    }
}
