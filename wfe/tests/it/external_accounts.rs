//! External account binding (RFC 8555 §7.3.4) when the environment requires it.

use quarry_jose::{Algorithm, sign_external_account_binding};
use quarry_testkit::client::AcmeAccount;
use serde_json::{Value, json};

use crate::harness::Stack;

const KID: &str = "kid-quarry-test";
const MAC_KEY: &[u8] = b"a 32-byte MAC key for EAB tests.";

async fn eab_stack() -> Stack {
    Stack::start_with(|wfe| {
        wfe.external_account_binding.required = true;
        wfe.external_account_binding.keys.insert(KID.into(), quarry_jose::b64_encode(MAC_KEY));
    })
    .await
}

fn payload(binding: Option<Value>) -> Value {
    let mut payload = json!({"termsOfServiceAgreed": true});
    if let Some(binding) = binding {
        payload["externalAccountBinding"] = binding;
    }
    payload
}

#[tokio::test]
async fn new_accounts_need_a_valid_binding_when_required() {
    let stack = eab_stack().await;
    assert_eq!(stack.client.directory()["meta"]["externalAccountRequired"], true);
    let url = stack.client.url("newAccount");
    let account = AcmeAccount::generate(Algorithm::Es256);
    let jwk = account.key.jwk();
    let binding = |alg: &str, kid: &str, key: &[u8], url: &str, jwk: &quarry_jose::Jwk| {
        Some(sign_external_account_binding(alg, kid, key, url, jwk).unwrap())
    };

    let missing = stack.client.post(&account, &url, Some(&payload(None))).await.unwrap();
    assert_eq!(missing.problem_type().as_deref(), Some("externalAccountRequired"));
    let other_key = AcmeAccount::generate(Algorithm::Es384).key.jwk();
    let cases = [
        (binding("HS256", KID, b"not the key", &url, &jwk), "unauthorized"),
        (binding("HS256", "unknown-kid", MAC_KEY, &url, &jwk), "unauthorized"),
        (binding("HS256", KID, MAC_KEY, "https://elsewhere.example/new-acct", &jwk), "malformed"),
        (binding("HS256", KID, MAC_KEY, &url, &other_key), "malformed"),
        (Some(json!({"protected": "e30", "payload": "", "signature": ""})), "malformed"),
    ];
    for (binding, expected) in cases {
        let refused = stack.client.post(&account, &url, Some(&payload(binding))).await.unwrap();
        assert_eq!(refused.problem_type().as_deref(), Some(expected), "{}", String::from_utf8_lossy(&refused.body));
    }
    // Nothing was created by the refused requests.
    let lookup = stack.client.post(&account, &url, Some(&json!({"onlyReturnExisting": true}))).await.unwrap();
    assert_eq!(lookup.problem_type().as_deref(), Some("accountDoesNotExist"));

    let created = stack.client.post(&account, &url, Some(&payload(binding("HS512", KID, MAC_KEY, &url, &jwk)))).await;
    let created = created.unwrap();
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    // The key is registered now: looking it up needs no binding.
    let existing = stack.client.post(&account, &url, Some(&json!({"onlyReturnExisting": true}))).await.unwrap();
    assert_eq!(existing.status, 200);
    assert_eq!(existing.header("location"), created.header("location"));
}

/// Creates an account for a fresh key bound with `KID`; returns the answer.
async fn bound_account(stack: &Stack) -> quarry_testkit::client::HttpResponse {
    let url = stack.client.url("newAccount");
    let account = AcmeAccount::generate(Algorithm::Es256);
    let binding = sign_external_account_binding("HS256", KID, MAC_KEY, &url, &account.key.jwk()).unwrap();
    stack.client.post(&account, &url, Some(&payload(Some(binding)))).await.unwrap()
}

/// Finding 10 of the security review: one binding key created any number of accounts. Now it binds the first one
/// (a second — even two racing — is `unauthorized`), unless the environment sets `reuse`.
#[tokio::test]
async fn a_binding_key_binds_one_account_unless_reuse_is_allowed() {
    let stack = eab_stack().await;
    let (first, second) = futures::join!(bound_account(&stack), bound_account(&stack));
    let mut statuses = [first.status, second.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [201, 403],
        "{} / {}",
        String::from_utf8_lossy(&first.body),
        String::from_utf8_lossy(&second.body)
    );
    let refused = if first.status == 403 { first } else { second };
    assert_eq!(refused.problem_type().as_deref(), Some("unauthorized"));
    assert!(String::from_utf8_lossy(&refused.body).contains("already bound"));
    let third = bound_account(&stack).await;
    assert_eq!(third.problem_type().as_deref(), Some("unauthorized"));

    let reusing = Stack::start_with(|wfe| {
        wfe.external_account_binding.required = true;
        wfe.external_account_binding.reuse = true;
        wfe.external_account_binding.keys.insert(KID.into(), quarry_jose::b64_encode(MAC_KEY));
    })
    .await;
    for _ in 0..2 {
        let created = bound_account(&reusing).await;
        assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    }
}

#[tokio::test]
async fn binding_keys_are_checked_at_start_up() {
    let short_key = format!("keys = {{ short = \"{}\" }}", quarry_jose::b64_encode(b"short"));
    for eab in ["required = true", "keys = { bad = \"not base64!\" }", short_key.as_str()] {
        let config = toml_config(eab).expect("parses");
        assert!(quarry_wfe_fails_to_start(config).await, "{eab}");
    }
}

fn toml_config(eab: &str) -> Result<quarry_wfe::Config, quarry_core::config::ConfigError> {
    let text = format!(
        r#"
        version = 1
        listen = "127.0.0.1:0"
        base_url = "http://127.0.0.1"
        nonce_prefix_key = "sixteen bytes or more"
        [tls]
        cert = "/nonexistent/wfe.pem"
        key = "/nonexistent/wfe.key.pem"
        ca = "/nonexistent/ca.pem"
        [ra]
        address = "https://127.0.0.1:1"
        server_name = "ra.quarry"
        [sa]
        address = "https://127.0.0.1:1"
        server_name = "sa.quarry"
        [nonce]
        address = "https://127.0.0.1:1"
        server_name = "nonce.quarry"
        [external_account_binding]
        {eab}
        "#
    );
    quarry_core::config::parse(&text, "wfe.toml")
}

async fn quarry_wfe_fails_to_start(config: quarry_wfe::Config) -> bool {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    match quarry_wfe::serve(config, listener, std::future::ready(())).await {
        Err(err) => err.to_string().contains("external_account_binding"),
        Ok(()) => false,
    }
}
