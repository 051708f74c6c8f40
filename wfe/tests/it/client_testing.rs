//! The client-testing knobs of the wfe and the ra (`[client_testing]`, quarry dev only), each turned all the way up
//! so that its effect is certain: refused nonces (and a retry that passes), provoked server errors and rate limits,
//! the directory at Pebble's `/dir`, renewal windows open now, renewal-information answers stored in the sa,
//! authorizations not reused, slow finalization.

use axum::http::Method;
use quarry_jose::Algorithm;
use quarry_testkit::client::AcmeAccount;
use serde_json::{Value, json};

use crate::harness::{Stack, issue};
use crate::profiles_and_renewal::cert_id;

#[tokio::test]
async fn a_refused_good_nonce_is_spent_and_the_retry_passes() {
    let stack = Stack::start_with(|wfe| wfe.client_testing.nonce_reject_percent = 100).await;
    let client = &stack.client;
    let mut account = AcmeAccount::generate(Algorithm::Es256);
    let new_account = client.url("newAccount");
    let payload = json!({"termsOfServiceAgreed": true});
    let nonce = client.nonce().await.unwrap();
    let refused_body = account.sign(&new_account, &nonce, Some(&payload));
    let refused = client.post_body(&new_account, refused_body.clone()).await.unwrap();
    assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.problem_type().as_deref(), Some("badNonce"));
    // The wording clients (acme.sh) recognise, and a fresh nonce to retry with.
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.starts_with("JWS has an invalid anti-replay nonce"), "{detail}");
    let fresh = refused.header("replay-nonce").expect("a fresh nonce with the refusal");
    // The refused nonce was spent, as Pebble spends it: replayed, it is a bad nonce for good.
    let replayed = client.post_body(&new_account, refused_body).await.unwrap();
    assert_eq!(replayed.problem_type().as_deref(), Some("badNonce"));
    // Retried with the fresh nonce, the request passes: a key just refused is not refused again at once.
    let retried = client.post_body(&new_account, account.sign(&new_account, &fresh, Some(&payload))).await.unwrap();
    assert_eq!(retried.status, 201, "{}", String::from_utf8_lossy(&retried.body));
    account.url = retried.header("location");
    // At 100 % the next request of the account is refused again, and its retry passes.
    let account_url = account.url.clone().unwrap();
    let outcomes: Vec<u16> = {
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(client.post(&account, &account_url, None).await.unwrap().status);
        }
        outcomes
    };
    assert_eq!(outcomes, [400, 200, 400, 200]);
}

#[tokio::test]
async fn provoked_server_errors_and_rate_limits_answer_posts_only() {
    let stack = Stack::start_with(|wfe| wfe.client_testing.server_internal_percent = 100).await;
    let mut account = AcmeAccount::generate(Algorithm::Es256);
    let failed = stack.client.register(&mut account).await.unwrap_err().to_string();
    assert!(failed.contains("500") && failed.contains("serverInternal") && failed.contains("on purpose"), "{failed}");
    // GETs are not provoked.
    let directory = stack.client.request(Method::GET, &format!("{}/directory", stack.base), None, Vec::new()).await;
    assert_eq!(directory.unwrap().status, 200);

    let stack = Stack::start_with(|wfe| {
        wfe.client_testing.rate_limited_percent = 100;
        wfe.client_testing.error_retry_after_secs = 7;
    })
    .await;
    let nonce = stack.client.nonce().await.unwrap();
    let new_account = stack.client.url("newAccount");
    let body = account.sign(&new_account, &nonce, Some(&json!({"termsOfServiceAgreed": true})));
    let limited = stack.client.post_body(&new_account, body).await.unwrap();
    assert_eq!(limited.status, 429);
    assert_eq!(limited.problem_type().as_deref(), Some("rateLimited"));
    assert_eq!(limited.header("retry-after").as_deref(), Some("7"));
}

#[tokio::test]
async fn the_directory_at_pebbles_path_and_renewal_windows_open_now() {
    let stack = Stack::start_with(|wfe| {
        wfe.client_testing.directory_aliases = vec!["/dir".into()];
        wfe.client_testing.renew_now = true;
    })
    .await;
    let client = &stack.client;
    let get = |url: String| async move { client.request(Method::GET, &url, None, Vec::new()).await };
    let at_dir = get(format!("{}/dir", stack.base)).await.unwrap();
    assert_eq!(at_dir.status, 200);
    assert_eq!(at_dir.json(), get(format!("{}/directory", stack.base)).await.unwrap().json());

    let account = stack.account(Algorithm::Es256).await;
    let (der, _) = issue(&stack, &account, &["renew-now.example.org"]).await;
    let info = get(format!("{}/{}", stack.client.url("renewalInfo"), cert_id(&der))).await.unwrap();
    let window = &info.json()["suggestedWindow"];
    let parse = |v: &Value| {
        time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
    };
    let now = time::OffsetDateTime::now_utc();
    assert!(parse(&window["start"]) <= now && now < parse(&window["end"]), "{window}");
}

/// The sa as `quarry dev`'s management API reaches it: with the operator's `admin` identity.
fn admin_sa(stack: &Stack) -> quarry_proto::client::SaClient {
    let services = &stack.services;
    let peer = quarry_core::peer::Peer::new(&services.pki.client_config("sa", services.sa), &services.pki.tls("admin"));
    quarry_proto::client::SaClient::new(peer.expect("the sa's peer"))
}

/// The serial of a certificate as the sa keeps it.
fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_renewal_information_answer_stored_in_the_sa_is_served_verbatim() {
    let stack = Stack::start_with(|wfe| wfe.client_testing.renewal_info_overrides = true).await;
    let client = &stack.client;
    let account = stack.account(Algorithm::Es256).await;
    let (der, _) = issue(&stack, &account, &["ari-override.example.org"]).await;
    let url = format!("{}/{}", client.url("renewalInfo"), cert_id(&der));
    let get = || {
        let url = url.clone();
        async move { client.request(Method::GET, &url, None, Vec::new()).await.unwrap() }
    };

    // Nothing stored: the certificate's own window, with the jittered Retry-After.
    let computed = get().await;
    assert_eq!(computed.status, 200, "{}", String::from_utf8_lossy(&computed.body));
    let computed_window = computed.json()["suggestedWindow"].clone();
    assert!(computed_window["start"].is_string(), "{computed_window}");

    // Stored through the sa, as quarry dev's management API stores it: served as it was written, byte for byte.
    let sa = admin_sa(&stack);
    let serial = serial_of(&der);
    let chosen = r#"{"suggestedWindow": {"start": "2021-01-03T00:00:00Z", "end": "2021-01-07T00:00:00Z"},
  "explanationURL": "https://ari.example.org/why"}"#;
    sa.set_renewal_info_override(&serial, chosen, None).await.expect("stored");
    let served = get().await;
    assert_eq!(served.status, 200);
    assert_eq!(String::from_utf8_lossy(&served.body), chosen);
    assert_eq!(served.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(served.header("retry-after").as_deref(), Some("21600"), "Pebble's fixed six hours, no jitter");
    // Any text, so that a suite can see its client cope with a malformed answer.
    sa.set_renewal_info_override(&serial, "not JSON {", None).await.expect("replaced");
    assert_eq!(get().await.body, b"not JSON {");
    // An empty answer removes the override: the window is the certificate's again.
    sa.set_renewal_info_override(&serial, "", None).await.expect("removed");
    assert_eq!(get().await.json()["suggestedWindow"], computed_window);

    // A wfe without the knob never reads overrides (production pays no sa read for them): the window is computed,
    // even with one stored.
    let production = Stack::start().await;
    let account = production.account(Algorithm::Es256).await;
    let (der, _) = issue(&production, &account, &["ari-plain.example.org"]).await;
    admin_sa(&production).set_renewal_info_override(&serial_of(&der), chosen, None).await.expect("stored");
    let url = format!("{}/{}", production.client.url("renewalInfo"), cert_id(&der));
    let plain = production.client.request(Method::GET, &url, None, Vec::new()).await.unwrap();
    assert_eq!(plain.status, 200);
    assert!(plain.json()["suggestedWindow"]["start"].is_string(), "{}", String::from_utf8_lossy(&plain.body));
    assert_ne!(String::from_utf8_lossy(&plain.body), chosen);
    let retry_after: u64 = plain.header("retry-after").unwrap().parse().unwrap();
    assert!((17_280..=25_920).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn authorizations_are_not_reused_at_zero_percent_and_finalization_can_be_slow() {
    let stack = Stack::start_configured(
        |ra| {
            ra.client_testing.authz_reuse_percent = Some(0);
            ra.client_testing.finalize_delay_secs = 1;
        },
        |_| {},
    )
    .await;
    let account = stack.account(Algorithm::Es256).await;
    let csr = quarry_testkit::csr::csr_with_key(
        &quarry_jose::SigningKey::generate(Algorithm::Es256).unwrap(),
        &["slow.example.org"],
        false,
    );
    let (order_url, order) = stack.order(&account, &["slow.example.org"]).await;
    stack.make_ready(&account, &order_url, &order).await;
    let payload = json!({"csr": quarry_jose::b64_encode(&csr)});
    let finalized = stack.client.post(&account, order["finalize"].as_str().unwrap(), Some(&payload)).await.unwrap();
    assert_eq!(finalized.json()["status"], "processing", "{}", String::from_utf8_lossy(&finalized.body));
    let valid = stack.client.poll(&account, &order_url, 100, |o| o["status"] != "processing").await.unwrap();
    assert_eq!(valid["status"], "valid", "{valid}");
    let (_, again) = stack.order(&account, &["slow.example.org"]).await;
    let authz = again["authorizations"][0].as_str().unwrap();
    let authz = stack.client.post(&account, authz, None).await.unwrap().json();
    assert_eq!(authz["status"], "pending", "a valid authorization was reused at 0 %: {authz}");

    let reused = Stack::start().await;
    let account = reused.account(Algorithm::Es256).await;
    issue(&reused, &account, &["reused.example.org"]).await;
    let (_, again) = reused.order(&account, &["reused.example.org"]).await;
    assert_eq!(again["status"], "ready", "production reuses the valid authorization: {again}");
}
