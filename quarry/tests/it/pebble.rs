//! `quarry dev` in place of Pebble: Pebble's `PEBBLE_*` variables reach the services that act on them, and the
//! knobs they turn on are refused by every service of any other environment.

use quarry_jose::Algorithm;
use quarry_testkit::client::{AcmeAccount, AcmeClient};
use serde_json::json;

use crate::full_stack::Stack;

#[tokio::test]
async fn pebbles_variables_reach_the_services_and_no_other_environment_accepts_them() {
    let env = [
        ("PEBBLE_WFE_NONCEREJECT", "100".to_owned()),
        ("PEBBLE_VA_ALWAYS_VALID", "1".to_owned()),
        ("PEBBLE_VA_NOSLEEP", "1".to_owned()),
        ("PEBBLE_AUTHZREUSE", "0".to_owned()),
    ];
    let stack = Stack::start_with_env(None, None, &[], &env).await;
    let client = AcmeClient::new(&stack.directory_url, Some(&stack.tls_ca_pem)).await.expect("directory");

    // Every request is refused once (100 %), its retry passes.
    let mut account = AcmeAccount::generate(Algorithm::Es256);
    let refused = client.register(&mut account).await.unwrap_err().to_string();
    assert!(refused.contains("badNonce"), "{refused}");
    client.register(&mut account).await.expect("the retry passes");

    // PEBBLE_VA_ALWAYS_VALID: no responder holds this name's token, yet its validation passes.
    let post = |url: String, payload: Option<serde_json::Value>| {
        let (client, account) = (&client, &account);
        async move {
            let refused = client.post(account, &url, payload.as_ref()).await.expect("answer");
            assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(&refused.body));
            client.post(account, &url, payload.as_ref()).await.expect("answer")
        }
    };
    let identifiers = json!({"identifiers": [{"type": "dns", "value": "nobody-answers.quarry-test.org"}]});
    let order = post(client.url("newOrder"), Some(identifiers)).await;
    assert_eq!(order.status, 201, "{}", String::from_utf8_lossy(&order.body));
    let order_url = order.header("location").expect("order URL");
    let authz_url = order.json()["authorizations"][0].as_str().expect("authorization").to_owned();
    let authz = post(authz_url.clone(), None).await.json();
    let challenge = authz["challenges"][0]["url"].as_str().expect("challenge").to_owned();
    assert_eq!(post(challenge, Some(json!({}))).await.status, 200);
    let mut status = String::new();
    for _ in 0..50 {
        status = post(order_url.clone(), None).await.json()["status"].as_str().unwrap_or_default().to_owned();
        if status != "pending" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "ready");

    // The same rendered configurations, said to be staging's, do not start.
    let dir = tempfile::tempdir().expect("tempdir");
    for (service, knob) in [("wfe", "nonce_reject_percent"), ("va", "always_valid"), ("ra", "authz_reuse_percent")] {
        let rendered = std::fs::read_to_string(stack.data_dir().join(format!("config/{service}.toml"))).expect("read");
        assert!(rendered.contains(knob), "{service}: {rendered}");
        let hosted = dir.path().join(format!("{service}.toml"));
        std::fs::write(&hosted, rendered.replace("environment = \"dev\"", "environment = \"staging\"")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args([service, "--config"])
            .arg(&hosted)
            .output()
            .expect("run quarry");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{service}: {stderr}");
        assert!(stderr.contains("[client_testing]") && stderr.contains(knob), "{service}: {stderr}");
    }
}

#[tokio::test]
async fn a_knob_quarry_cannot_honour_stops_quarry_dev_with_its_name() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["dev", "--data-dir"])
        .arg(tempfile::tempdir().expect("tempdir").path())
        .env("PEBBLE_CHAIN_LENGTH", "3")
        .output()
        .expect("run quarry dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("PEBBLE_CHAIN_LENGTH"), "{stderr}");
}
