//! The ACME resources as a client sees them: directory, nonces, accounts, orders, authorizations, challenges,
//! finalization and certificate download.

use std::time::Duration;

use quarry_jose::Algorithm;
use serde_json::json;

use crate::harness::{Stack, csr, issue, issue_for_key};
use quarry_testkit::csr::csr_with_key;

#[tokio::test]
async fn the_directory_lists_every_resource() {
    let stack = Stack::start().await;
    let base = &stack.base;
    let expected = json!({
        "newNonce": format!("{base}/acme/new-nonce"),
        "newAccount": format!("{base}/acme/new-acct"),
        "newOrder": format!("{base}/acme/new-order"),
        "revokeCert": format!("{base}/acme/revoke-cert"),
        "keyChange": format!("{base}/acme/key-change"),
        "renewalInfo": format!("{base}/acme/renewal-info"),
        "meta": {
            "termsOfService": "https://quarry.example/terms",
            "website": "https://quarry.example",
            "caaIdentities": ["quarry.example"],
            "profiles": {
                "classic": "90-day certificates for DNS names",
                "shortlived": "160-hour certificates for DNS names and IP addresses",
            },
        },
    });
    assert_eq!(stack.client.directory(), &expected);
}

#[tokio::test]
async fn new_nonce_answers_head_and_get_with_a_nonce() {
    let stack = Stack::start().await;
    let url = stack.client.url("newNonce");
    for (method, status) in [(http::Method::HEAD, 200), (http::Method::GET, 204)] {
        let response = stack.client.request(method, &url, None, Vec::new()).await.unwrap();
        assert_eq!(response.status, status);
        let nonce = response.header("replay-nonce").unwrap();
        assert!(stack.services.nonces.iter().any(|(prefix, _)| nonce.starts_with(prefix.as_str())), "{nonce}");
        assert_eq!(response.header("cache-control").as_deref(), Some("no-store"));
        assert!(response.headers_all("link").iter().any(|l| l.ends_with("rel=\"index\"")));
    }
}

#[tokio::test]
async fn accounts_for_every_key_type() {
    let stack = Stack::start().await;
    for alg in [Algorithm::Es256, Algorithm::Es384, Algorithm::Rs256] {
        let mut account = quarry_testkit::client::AcmeAccount::generate(alg);
        let created = stack.client.register(&mut account).await.unwrap();
        assert_eq!(created.status, 201, "{alg:?}");
        assert_eq!(created.json()["status"], "valid");
        let url = account.url.clone().unwrap();
        assert!(url.starts_with(&format!("{}/acme/acct/", stack.base)));

        // The same key again: the existing account, 200.
        account.url = None;
        let again = stack.client.register(&mut account).await.unwrap();
        assert_eq!(again.status, 200);
        assert_eq!(account.url.as_deref(), Some(url.as_str()));

        let fetched = stack.client.post(&account, &url, None).await.unwrap();
        assert_eq!(fetched.status, 200);
        assert_eq!(fetched.json()["key"], account.key.jwk().to_json());
    }
    let stranger = quarry_testkit::client::AcmeAccount::generate(Algorithm::Es256);
    let no_agreement = stack.client.post(&stranger, &stack.client.url("newAccount"), Some(&json!({}))).await.unwrap();
    assert_eq!(no_agreement.problem_type().as_deref(), Some("malformed"), "the terms must be agreed to");
    let only_existing = stack
        .client
        .post(&stranger, &stack.client.url("newAccount"), Some(&json!({"onlyReturnExisting": true})))
        .await
        .unwrap();
    assert_eq!(only_existing.status, 400);
    assert_eq!(only_existing.problem_type().as_deref(), Some("accountDoesNotExist"));
}

#[tokio::test]
async fn an_order_from_creation_to_certificate() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es256).await;
    let names = ["one.example.org", "two.example.org"];
    let (order_url, order) = stack.order(&account, &names).await;
    assert_eq!(order["status"], "pending");
    assert_eq!(order["authorizations"].as_array().unwrap().len(), 2);
    assert!(order["expires"].as_str().unwrap().ends_with('Z'));

    let early = stack
        .client
        .post(&account, order["finalize"].as_str().unwrap(), Some(&json!({"csr": csr(&names)})))
        .await
        .unwrap();
    assert_eq!(early.status, 403);
    assert_eq!(early.problem_type().as_deref(), Some("orderNotReady"));

    let authz_url = order["authorizations"][0].as_str().unwrap();
    let authz = stack.client.post(&account, authz_url, None).await.unwrap().json();
    assert_eq!(authz["status"], "pending");
    let types: Vec<&str> =
        authz["challenges"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["http-01", "dns-01", "tls-alpn-01"]);

    stack.make_ready(&account, &order_url, &order).await;
    let authz = stack.client.post(&account, authz_url, None).await.unwrap().json();
    assert_eq!(authz["status"], "valid");
    assert_eq!(authz["challenges"].as_array().unwrap().len(), 1);
    assert_eq!(authz["challenges"][0]["status"], "valid");

    let mismatch = stack
        .client
        .post(&account, order["finalize"].as_str().unwrap(), Some(&json!({"csr": csr(&["one.example.org"])})))
        .await
        .unwrap();
    assert_eq!(mismatch.problem_type().as_deref(), Some("badCSR"));
    let still = stack.client.post(&account, &order_url, None).await.unwrap().json();
    assert_eq!(still["status"], "ready", "a refused CSR changes nothing");

    let done = stack
        .client
        .post(&account, order["finalize"].as_str().unwrap(), Some(&json!({"csr": csr(&names)})))
        .await
        .unwrap();
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    assert_eq!(done.json()["status"], "valid");
    assert_eq!(done.header("location").as_deref(), Some(order_url.as_str()));
    let cert_url = done.json()["certificate"].as_str().unwrap().to_owned();
    let cert = stack.client.post(&account, &cert_url, None).await.unwrap();
    assert_eq!(cert.status, 200);
    assert_eq!(cert.header("content-type").as_deref(), Some("application/pem-certificate-chain"));
    assert_eq!(String::from_utf8_lossy(&cert.body).matches("BEGIN CERTIFICATE").count(), 2);

    let other = stack.account(Algorithm::Es256).await;
    let foreign = stack.client.post(&other, &order_url, None).await.unwrap();
    assert_eq!(foreign.status, 404);
    let foreign_cert = stack.client.post(&other, &cert_url, None).await.unwrap();
    assert_eq!(foreign_cert.problem_type().as_deref(), Some("unauthorized"));
}

#[tokio::test]
async fn a_processing_challenge_and_a_bad_order() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es256).await;
    let bad = stack
        .client
        .post(
            &account,
            &stack.client.url("newOrder"),
            Some(&json!({"identifiers": [
                {"type": "dns", "value": "ok.example.org"},
                {"type": "dns", "value": "bad..example.org"},
                {"type": "email", "value": "a@example.org"},
            ]})),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.problem_type().as_deref(), Some("rejectedIdentifier"));
    assert_eq!(bad.json()["subproblems"].as_array().unwrap().len(), 2);

    let not_before = stack
        .client
        .post(&account, &stack.client.url("newOrder"), Some(&json!({"identifiers": [{"type": "dns", "value": "a.example.org"}], "notBefore": "2030-01-01T00:00:00Z"})))
        .await
        .unwrap();
    assert_eq!(not_before.problem_type().as_deref(), Some("malformed"));

    stack.va.fail(quarry_core::Problem::new(quarry_core::ErrorKind::IncorrectResponse, "wrong"));
    let (order_url, order) = stack.order(&account, &["fail.example.org"]).await;
    let authz = stack.client.post(&account, order["authorizations"][0].as_str().unwrap(), None).await.unwrap().json();
    let challenge_url = authz["challenges"][0]["url"].as_str().unwrap();
    let answer = stack.client.post(&account, challenge_url, Some(&json!({}))).await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.headers_all("link").iter().any(|l| l.contains("rel=\"up\"")));
    // The answer waited for the validation, which failed within the hold.
    assert_eq!(answer.json()["status"], "invalid", "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.json()["error"]["type"], "urn:ietf:params:acme:error:incorrectResponse");
    let order = stack.client.poll(&account, &order_url, 100, |o| o["status"] == "invalid").await.unwrap();
    assert_eq!(order["status"], "invalid");
    let challenge = stack.client.post(&account, challenge_url, None).await.unwrap().json();
    assert_eq!(challenge["status"], "invalid");
    assert_eq!(challenge["error"]["type"], "urn:ietf:params:acme:error:incorrectResponse");

    // No retry (as Boulder): the authorization is invalid for good, and so is its order; a new order starts afresh.
    stack.va.pass();
    let retry = stack.client.post(&account, challenge_url, Some(&json!({}))).await.unwrap();
    assert_eq!(retry.problem_type().as_deref(), Some("malformed"), "{}", String::from_utf8_lossy(&retry.body));
    let authz = stack.client.post(&account, order["authorizations"][0].as_str().unwrap(), None).await.unwrap().json();
    assert_eq!(authz["status"], "invalid");
    let (_, fresh) = stack.order(&account, &["fail.example.org"]).await;
    assert_eq!(fresh["status"], "pending");
    assert_ne!(fresh["authorizations"][0], order["authorizations"][0]);
}

#[tokio::test]
async fn orders_and_authorizations_expire() {
    // Two-second lifetimes, so that expiry can be watched without a fake clock.
    let stack = Stack::start_configured(
        |ra| {
            let classic = ra.profiles.get_mut("classic").unwrap();
            classic.pending_authorization_lifetime_secs = 2;
            classic.order_lifetime_secs = 2;
        },
        |_| {},
    )
    .await;
    let account = stack.account(Algorithm::Es384).await;
    let (order_url, order) = stack.order(&account, &["expiring.example.org"]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let authz = stack.client.post(&account, &authz_url, None).await.unwrap().json();
    let challenge_url = authz["challenges"][0]["url"].as_str().unwrap().to_owned();
    let expires =
        time::OffsetDateTime::parse(order["expires"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    let wait = (expires - time::OffsetDateTime::now_utc()).whole_milliseconds().clamp(0, 3_000) as u64 + 1_100;
    tokio::time::sleep(Duration::from_millis(wait)).await;

    let order = stack.client.post(&account, &order_url, None).await.unwrap().json();
    assert_eq!(order["status"], "invalid");
    let authz = stack.client.post(&account, &authz_url, None).await.unwrap().json();
    assert_eq!(authz["status"], "expired");
    let late = stack.client.post(&account, &challenge_url, Some(&json!({}))).await.unwrap();
    assert_eq!(late.problem_type().as_deref(), Some("malformed"));
    let finalize = json!({"csr": csr(&["expiring.example.org"])});
    let late = stack.client.post(&account, order["finalize"].as_str().unwrap(), Some(&finalize)).await.unwrap();
    assert_eq!(late.problem_type().as_deref(), Some("orderNotReady"));
    // The expired order is not reused.
    let (new_url, _) = stack.order(&account, &["expiring.example.org"]).await;
    assert_ne!(new_url, order_url);
}

#[tokio::test]
async fn accounts_update_their_contacts_and_deactivate() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es384).await;
    let url = account.url.clone().unwrap();
    let updated =
        stack.client.post(&account, &url, Some(&json!({"contact": ["mailto:new@example.org"]}))).await.unwrap();
    assert_eq!(updated.status, 200);
    assert_eq!(updated.json()["contact"], json!(["mailto:new@example.org"]));

    let refused =
        stack.client.post(&account, &url, Some(&json!({"contact": ["mailto:a@example.org?x=1"]}))).await.unwrap();
    assert_eq!(refused.problem_type().as_deref(), Some("invalidContact"));
    let unchanged = stack.client.post(&account, &url, None).await.unwrap().json();
    assert_eq!(unchanged["contact"], json!(["mailto:new@example.org"]), "a refused update changes nothing");

    let bad_status = stack.client.post(&account, &url, Some(&json!({"status": "revoked"}))).await.unwrap();
    assert_eq!(bad_status.problem_type().as_deref(), Some("malformed"));

    let deactivated = stack.client.post(&account, &url, Some(&json!({"status": "deactivated"}))).await.unwrap();
    assert_eq!(deactivated.status, 200);
    assert_eq!(deactivated.json()["status"], "deactivated");
    let order = stack
        .client
        .post(
            &account,
            &stack.client.url("newOrder"),
            Some(&json!({"identifiers": [{"type": "dns", "value": "a.example.org"}]})),
        )
        .await
        .unwrap();
    assert_eq!((order.status, order.problem_type().as_deref()), (403, Some("unauthorized")));
}

/// RFC 8555 §6.3: orders, authorizations and challenges are read with POST-as-GET only. Their ids are sequential;
/// a plain GET used to answer 200 with the resource, so anyone could list every subscriber's names.
#[tokio::test]
async fn orders_authorizations_and_challenges_refuse_a_plain_get() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es256).await;
    let (order_url, order) = stack.order(&account, &["private.example.org"]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let authz = stack.client.post(&account, &authz_url, None).await.unwrap().json();
    let challenge_url = authz["challenges"][0]["url"].as_str().unwrap().to_owned();
    for url in [&order_url, &authz_url, &challenge_url] {
        for method in [http::Method::GET, http::Method::HEAD] {
            let plain = stack.client.request(method.clone(), url, None, Vec::new()).await.unwrap();
            assert_eq!(plain.status, 405, "{method} {url}");
            assert_eq!(plain.header("allow").as_deref(), Some("POST"), "{method} {url}");
            if method == http::Method::GET {
                assert_eq!(plain.problem_type().as_deref(), Some("malformed"), "{url}");
                assert!(!String::from_utf8_lossy(&plain.body).contains("private.example.org"), "{url}");
            }
        }
        assert_eq!(stack.client.post(&account, url, None).await.unwrap().status, 200, "{url}");
    }
    // Certificates stay public (RFC 8555 §7.4.2 lets a CA serve them by GET).
    stack.make_ready(&account, &order_url, &order).await;
    let finalize = order["finalize"].as_str().unwrap();
    let done = stack.client.post(&account, finalize, Some(&json!({"csr": csr(&["private.example.org"])}))).await;
    let cert_url = done.unwrap().json()["certificate"].as_str().unwrap().to_owned();
    let cert = stack.client.request(http::Method::GET, &cert_url, None, Vec::new()).await.unwrap();
    assert_eq!(cert.status, 200);
    let put = stack.client.request(http::Method::PUT, &cert_url, None, Vec::new()).await.unwrap();
    assert_eq!((put.status, put.header("allow").as_deref()), (405, Some("GET, HEAD, POST")));
}

#[tokio::test]
async fn authorizations_can_be_deactivated_by_their_account_only() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Rs256).await;
    let (order_url, order) = stack.order(&account, &["deact.example.org"]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap();

    let other = stack.account(Algorithm::Es384).await;
    let foreign = stack.client.post(&other, authz_url, Some(&json!({"status": "deactivated"}))).await.unwrap();
    assert_eq!(foreign.status, 404);
    let wrong = stack.client.post(&account, authz_url, Some(&json!({"status": "valid"}))).await.unwrap();
    assert_eq!(wrong.problem_type().as_deref(), Some("malformed"));
    let still = stack.client.post(&account, authz_url, None).await.unwrap().json();
    assert_eq!(still["status"], "pending", "refused requests change nothing");

    let deactivated = stack.client.post(&account, authz_url, Some(&json!({"status": "deactivated"}))).await.unwrap();
    assert_eq!(deactivated.status, 200);
    assert_eq!(deactivated.json()["status"], "deactivated");
    let again = stack.client.post(&account, authz_url, Some(&json!({"status": "deactivated"}))).await.unwrap();
    assert_eq!(again.problem_type().as_deref(), Some("malformed"));
    let order = stack.client.post(&account, &order_url, None).await.unwrap().json();
    assert_eq!(order["status"], "invalid");
}

/// The inner JWS of a key change: signed by `new_key`, naming the account and its old key.
fn key_change_inner(
    new_key: &quarry_jose::SigningKey,
    url: &str,
    account: &str,
    old_key: &quarry_jose::Jwk,
) -> serde_json::Value {
    let header = json!({"alg": new_key.algorithm().as_str(), "url": url, "jwk": new_key.jwk().to_json()});
    let payload = json!({"account": account, "oldKey": old_key.to_json()}).to_string();
    serde_json::from_str(&quarry_jose::sign_flattened(new_key, &header, Some(payload.as_bytes()))).unwrap()
}

#[tokio::test]
async fn account_keys_roll_over() {
    let stack = Stack::start().await;
    let mut account = stack.account(Algorithm::Es256).await;
    let url = stack.client.url("keyChange");
    let account_url = account.url.clone().unwrap();
    let old_jwk = account.key.jwk();

    let new_key = quarry_jose::SigningKey::generate(Algorithm::Es384).unwrap();
    let wrong_url = key_change_inner(&new_key, &stack.client.url("newOrder"), &account_url, &old_jwk);
    let refused = stack.client.post(&account, &url, Some(&wrong_url)).await.unwrap();
    assert_eq!(refused.problem_type().as_deref(), Some("malformed"));
    let stranger = quarry_jose::SigningKey::generate(Algorithm::Es256).unwrap().jwk();
    let wrong_old = key_change_inner(&new_key, &url, &account_url, &stranger);
    let refused = stack.client.post(&account, &url, Some(&wrong_old)).await.unwrap();
    assert_eq!(refused.problem_type().as_deref(), Some("unauthorized"));

    let taken = stack.account(Algorithm::Es384).await;
    let in_use = key_change_inner(&taken.key, &url, &account_url, &old_jwk);
    let conflict = stack.client.post(&account, &url, Some(&in_use)).await.unwrap();
    assert_eq!((conflict.status, conflict.problem_type().as_deref()), (409, Some("conflict")));
    assert_eq!(conflict.header("location"), taken.url);

    let inner = key_change_inner(&new_key, &url, &account_url, &old_jwk);
    let changed = stack.client.post(&account, &url, Some(&inner)).await.unwrap();
    assert_eq!(changed.status, 200, "{}", String::from_utf8_lossy(&changed.body));
    assert_eq!(changed.json()["key"], new_key.jwk().to_json());

    // The account key is Ed25519 now, so an ES256 signature no longer fits it.
    let with_old_key = stack.client.post(&account, &account_url, None).await.unwrap();
    assert_eq!(
        with_old_key.problem_type().as_deref(),
        Some("badSignatureAlgorithm"),
        "the old key no longer signs for the account"
    );
    account.key = new_key;
    let with_new_key = stack.client.post(&account, &account_url, None).await.unwrap();
    assert_eq!(with_new_key.status, 200);
}

/// Found by the attack run: an EC key sent compressed was not recognised as the same key. A CSR carrying the
/// account's own key compressed was issued, and a key blocked after a key-compromise revocation was issued again.
#[tokio::test]
async fn a_key_in_another_encoding_is_the_same_key() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es256).await;
    let own_csr = csr_with_key(&account.key, &["own.example.org"], true);
    let own_key = stack.finalize(&account, &["own.example.org"], &own_csr).await;
    assert_eq!(own_key.problem_type().as_deref(), Some("badCSR"), "{}", String::from_utf8_lossy(&own_key.body));

    // A certificate for a compressed key carries it canonically, uncompressed.
    let cert_key = quarry_jose::SigningKey::generate(Algorithm::Es256).unwrap();
    let der = issue_for_key(&stack, &account, &["first.example.org"], &cert_key, true).await;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.public_key().raw, cert_key.jwk().spki_der().as_slice());

    // Revoked for key compromise by the key itself: the key is blocked in either encoding.
    let by_key = quarry_testkit::client::AcmeAccount { key: cert_key, url: None };
    let body = json!({"certificate": quarry_jose::b64_encode(&der), "reason": 1});
    let revoked = stack.client.post(&by_key, &stack.client.url("revokeCert"), Some(&body)).await.unwrap();
    assert_eq!(revoked.status, 200, "{}", String::from_utf8_lossy(&revoked.body));
    for compressed in [false, true] {
        let csr = csr_with_key(&by_key.key, &["again.example.org"], compressed);
        let again = stack.finalize(&account, &["again.example.org"], &csr).await;
        assert_eq!(again.problem_type().as_deref(), Some("badPublicKey"), "compressed: {compressed}");
    }
}

/// Finding 7 of the security review: an order could go invalid while the ca was still signing for it. Now when the
/// ca's answer is lost after its precertificate was stored — here the CT logs answer after the finalization's
/// deadline — the order is answered `processing`, never `invalid`, and its certificate is finished from the
/// precertificate.
#[tokio::test]
async fn an_issuance_whose_answer_was_lost_is_finished_from_its_precertificate() {
    let stack = Stack::start_with(|wfe| wfe.finalize_timeout_ms = 4_000).await;
    // The logs answer after the whole finalization's deadline (4 s; the ra gives the ca 1 s of it, keeping a 3 s
    // margin), within their own 5 s submission timeout.
    for log in &stack.services.ct_logs {
        log.set_delay(Duration::from_millis(4_500));
    }
    let account = stack.account(Algorithm::Es256).await;
    let names = ["slow-logs.example.org"];
    let key = quarry_jose::SigningKey::generate(Algorithm::Es256).unwrap();
    let answer = stack.finalize(&account, &names, &csr_with_key(&key, &names, false)).await;
    assert_eq!(answer.json()["status"], "processing", "{}", String::from_utf8_lossy(&answer.body));
    let order_url = answer.header("location").expect("the order's URL");
    let settled = stack.client.poll(&account, &order_url, 150, |o| o["status"] != "processing").await.unwrap();
    assert_eq!(settled["status"], "valid", "{settled}");
    let pem = stack.client.post(&account, settled["certificate"].as_str().unwrap(), None).await.unwrap();
    assert_eq!(pem.status, 200);
}

#[tokio::test]
async fn asynchronous_finalization_answers_processing_and_the_order_is_polled() {
    let stack = Stack::start_configured(|ra| ra.async_finalize = true, |_| {}).await;
    let account = stack.account(Algorithm::Es256).await;
    let (order_url, order) = stack.order(&account, &["async.example.org"]).await;
    stack.make_ready(&account, &order_url, &order).await;
    let csr = csr(&["async.example.org"]);
    let answer =
        stack.client.post(&account, order["finalize"].as_str().unwrap(), Some(&json!({"csr": csr}))).await.unwrap();
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.header("location").as_deref(), Some(order_url.as_str()));
    // The ra answers from its conditional update, before issuance begins: always processing.
    assert_eq!(answer.json()["status"], "processing");
    assert_eq!(answer.header("retry-after").as_deref(), Some("1"));
    let done = stack.client.poll(&account, &order_url, 100, |o| o["status"] == "valid").await.expect("order valid");
    let cert = stack.client.post(&account, done["certificate"].as_str().unwrap(), None).await.unwrap();
    assert_eq!(cert.header("content-type").as_deref(), Some("application/pem-certificate-chain"));
}

#[tokio::test]
async fn alternate_chains_are_linked_from_the_certificate() {
    let stack = Stack::start_with(|wfe| {
        // A second chain for the same issuer: the intermediate followed by the root.
        let intermediate = wfe.chains[0].clone();
        let mut pem = std::fs::read(&intermediate).unwrap();
        pem.extend(std::fs::read(intermediate.with_file_name("root.pem")).unwrap());
        let alternate = intermediate.with_file_name("intermediate-e1-with-root.pem");
        std::fs::write(&alternate, pem).unwrap();
        wfe.chains.push(alternate);
    })
    .await;
    let account = stack.account(Algorithm::Es256).await;
    let (der, _) = issue(&stack, &account, &["chains.example.org"]).await;
    let serial: String = {
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect()
    };
    let url = format!("{}/acme/cert/{serial}", stack.base);
    let default = stack.client.post(&account, &url, None).await.unwrap();
    assert_eq!(default.headers_all("link").iter().filter(|l| l.contains("rel=\"alternate\"")).count(), 1);
    assert!(default.headers_all("link").contains(&format!("<{url}/1>;rel=\"alternate\"")));
    let count = |body: &[u8]| String::from_utf8_lossy(body).matches("BEGIN CERTIFICATE").count();
    assert_eq!(count(&default.body), 2);
    let alternate = stack.client.post(&account, &format!("{url}/1"), None).await.unwrap();
    assert_eq!(alternate.status, 200);
    assert_eq!(count(&alternate.body), 3);
    assert!(alternate.headers_all("link").contains(&format!("<{url}>;rel=\"alternate\"")));
    for missing in ["2", "0", "x"] {
        let response = stack.client.post(&account, &format!("{url}/{missing}"), None).await.unwrap();
        assert_eq!(response.status, 404, "{missing}");
    }
}

/// With no nonce replica to mint one, new-nonce is a 503 problem document with `Retry-After`, never a success without
/// `Replay-Nonce`; a nonce whose replica is gone is `badNonce`, which clients retry.
#[tokio::test]
async fn without_nonce_replicas_new_nonce_is_unavailable_and_their_nonces_are_bad() {
    let stack = Stack::start().await;
    let nonce = stack.client.nonce().await.unwrap();
    // The same wfe configuration, but every nonce replica gone (their ports closed).
    let gone =
        Stack::start_with(|wfe| wfe.nonce.address = vec!["https://127.0.0.1:1".into(), "https://127.0.0.1:2".into()])
            .await;
    let url = gone.client.url("newNonce");
    for method in [http::Method::HEAD, http::Method::GET] {
        let response = gone.client.request(method.clone(), &url, None, Vec::new()).await.unwrap();
        assert_eq!(response.status, 503, "{method}");
        assert!(response.header("replay-nonce").is_none(), "{method}");
        assert_eq!(response.header("retry-after").as_deref(), Some("1"), "{method}");
        if method == http::Method::GET {
            assert_eq!(response.problem_type().as_deref(), Some("serverInternal"));
        }
    }
    // A nonce of the first stack's replicas means nothing to this wfe: badNonce, not a server error.
    let new_account = gone.client.url("newAccount");
    let unregistered = quarry_testkit::client::AcmeAccount::generate(Algorithm::Es256);
    let body = unregistered.sign(&new_account, &nonce, Some(&json!({"termsOfServiceAgreed": true})));
    let answer = gone
        .client
        .request(http::Method::POST, &new_account, Some("application/jose+json"), body.into_bytes())
        .await
        .unwrap();
    assert_eq!((answer.status, answer.problem_type().as_deref()), (400, Some("badNonce")));
}

#[tokio::test]
async fn healthz_reports_the_peers() {
    let stack = Stack::start().await;
    let url = format!("{}/healthz", stack.base);
    let healthy = stack.client.request(http::Method::GET, &url, None, Vec::new()).await.unwrap();
    assert_eq!(healthy.status, 200);
    let build = quarry_core::build::get();
    let expected = json!({"status": "ok", "ra": "ok", "sa": "ok", "nonce": "ok", "version": build.version, "commit": build.commit});
    assert_eq!(healthy.json(), expected);

    // A wfe whose ra is gone says so, and which.
    let broken = Stack::start_with(|wfe| wfe.ra.address = vec!["https://127.0.0.1:1".into()]).await;
    let url = format!("{}/healthz", broken.base);
    let unhealthy = broken.client.request(http::Method::GET, &url, None, Vec::new()).await.unwrap();
    assert_eq!(unhealthy.status, 503);
    let body = unhealthy.json();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["sa"], "ok");
    assert!(body["ra"].as_str().unwrap().contains("unreachable"), "{body}");
}

#[tokio::test]
async fn an_issuance_failure_after_processing_invalidates_the_order() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es256).await;
    let names = ["no-scts.example.org"];
    let (order_url, order) = stack.order(&account, &names).await;
    stack.make_ready(&account, &order_url, &order).await;
    // Both CT logs down: the precertificate gets no SCTs, so no certificate can be finished.
    for log in &stack.services.ct_logs {
        log.set_failing(true);
    }
    let failed = stack
        .client
        .post(&account, order["finalize"].as_str().unwrap(), Some(&json!({"csr": csr(&names)})))
        .await
        .unwrap();
    assert_eq!(failed.status, 500, "{}", String::from_utf8_lossy(&failed.body));
    assert_eq!(failed.problem_type().as_deref(), Some("serverInternal"));
    let order = stack.client.post(&account, &order_url, None).await.unwrap().json();
    assert_eq!(order["status"], "invalid", "past processing an order cannot go back to ready");
    assert_eq!(order["error"]["type"], "urn:ietf:params:acme:error:serverInternal");
    assert!(order.get("certificate").is_none());

    // With the logs back, a new order for the same names is issued.
    for log in &stack.services.ct_logs {
        log.set_failing(false);
    }
    let (der, _) = issue(&stack, &account, &names).await;
    assert_eq!(quarry_core::ct::embedded_scts(&der).expect("SCT list").len(), 2);
}

#[tokio::test]
async fn the_identifier_policy_refuses_suffixes_reserved_names_and_blocklisted_names() {
    let stack = Stack::start_configured(
        |ra| {
            ra.blocklists.high_risk = vec!["bank.example.com".into()];
            ra.blocklists.exact = vec!["exact.example.net".into()];
        },
        |_| {},
    )
    .await;
    let account = stack.account(Algorithm::Es256).await;
    let order = |names: &[&str]| {
        let identifiers: Vec<serde_json::Value> = names.iter().map(|n| json!({"type": "dns", "value": n})).collect();
        json!({ "identifiers": identifiers })
    };
    // Refused at the edge, one subproblem each: a public suffix, a wildcard on one, reserved names, a bad A-label.
    let refused =
        stack.new_order(&account, &order(&["co.uk", "*.com", "printer.local", "db.test", "xn--zz.com"])).await;
    assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.problem_type().as_deref(), Some("rejectedIdentifier"));
    assert_eq!(refused.json()["subproblems"].as_array().map(Vec::len), Some(5));
    // Refused by the ra's blocklists, the names under a high-risk name too; the same names elsewhere are fine.
    for blocked in ["bank.example.com", "login.bank.example.com", "*.bank.example.com", "exact.example.net"] {
        let refused = stack.new_order(&account, &order(&[blocked])).await;
        assert_eq!(refused.problem_type().as_deref(), Some("rejectedIdentifier"), "{blocked}");
        assert!(refused.json()["detail"].as_str().unwrap_or_default().contains("policy forbids"), "{blocked}");
    }
    for allowed in ["sub.exact.example.net", "bank.example.org"] {
        assert_eq!(stack.new_order(&account, &order(&[allowed])).await.status, 201, "{allowed}");
    }
}
