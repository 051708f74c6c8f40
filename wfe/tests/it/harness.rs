//! Starts sa, ca, nonce, a fake va, ra and the wfe on loopback ports for one test.

use quarry_jose::Algorithm;
use quarry_testkit::client::{AcmeAccount, AcmeClient, HttpResponse};
use quarry_testkit::fakes::FakeVa;
use quarry_testkit::stack::InProcessStack;
use serde_json::{Value, json};

pub struct Stack {
    pub client: AcmeClient,
    pub va: FakeVa,
    pub base: String,
    pub services: InProcessStack,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(|_| {}).await
    }

    /// A stack whose wfe configuration `configure` changed first.
    pub async fn start_with(configure: impl FnOnce(&mut quarry_wfe::Config)) -> Stack {
        Self::start_configured(|_| {}, configure).await
    }

    /// A stack whose ra and wfe configurations were changed first.
    pub async fn start_configured(
        configure_ra: impl FnOnce(&mut quarry_ra::Config),
        configure_wfe: impl FnOnce(&mut quarry_wfe::Config),
    ) -> Stack {
        let services = InProcessStack::start_configured(true, configure_ra, configure_wfe).await;
        Self::around(services).await
    }

    /// A stack whose sa uses `db`.
    pub async fn start_on(db: quarry_testkit::db::TestDatabase) -> Stack {
        Self::start_on_configured(db, |_| {}).await
    }

    /// A stack whose sa uses `db` and whose ra configuration was changed first.
    pub async fn start_on_configured(
        db: quarry_testkit::db::TestDatabase,
        configure_ra: impl FnOnce(&mut quarry_ra::Config),
    ) -> Stack {
        Self::around(InProcessStack::start_on(db, true, configure_ra, |_| {}).await).await
    }

    async fn around(services: InProcessStack) -> Stack {
        let base = services.wfe.clone().expect("wfe started");
        let client = AcmeClient::new(&format!("{base}/directory"), None).await.expect("directory");
        Stack { client, va: services.va.clone(), base, services }
    }

    pub async fn account(&self, alg: Algorithm) -> AcmeAccount {
        let mut account = AcmeAccount::generate(alg);
        self.client.register(&mut account).await.expect("register");
        account
    }

    /// A new order for `names`; returns (order URL, order JSON).
    pub async fn order(&self, account: &AcmeAccount, names: &[&str]) -> (String, Value) {
        let identifiers: Vec<Value> = names.iter().map(|n| json!({"type": "dns", "value": n})).collect();
        let response = self
            .client
            .post(account, &self.client.url("newOrder"), Some(&json!({ "identifiers": identifiers })))
            .await
            .unwrap();
        assert_eq!(response.status, 201, "{}", String::from_utf8_lossy(&response.body));
        (response.header("location").expect("order location"), response.json())
    }

    /// POSTs `payload` to new-order as is.
    pub async fn new_order(&self, account: &AcmeAccount, payload: &Value) -> HttpResponse {
        self.client.post(account, &self.client.url("newOrder"), Some(payload)).await.unwrap()
    }

    /// Answers every challenge of the order (the fake va passes) and waits until the order is ready.
    pub async fn make_ready(&self, account: &AcmeAccount, order_url: &str, order: &Value) {
        for authz_url in order["authorizations"].as_array().unwrap() {
            let authz = self.client.post(account, authz_url.as_str().unwrap(), None).await.unwrap().json();
            let challenge = authz["challenges"][0]["url"].as_str().unwrap().to_owned();
            let answer = self.client.post(account, &challenge, Some(&json!({}))).await.unwrap();
            assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        }
        self.client.poll(account, order_url, 100, |o| o["status"] == "ready").await.expect("order ready");
    }

    /// Orders `names`, makes the order ready and finalizes it with the CSR `csr` (DER); returns the answer.
    pub async fn finalize(&self, account: &AcmeAccount, names: &[&str], csr: &[u8]) -> HttpResponse {
        let (order_url, order) = self.order(account, names).await;
        self.make_ready(account, &order_url, &order).await;
        let payload = json!({"csr": quarry_jose::b64_encode(csr)});
        self.client.post(account, order["finalize"].as_str().unwrap(), Some(&payload)).await.unwrap()
    }
}

pub fn csr(names: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    quarry_jose::b64_encode(params.serialize_request(&key).unwrap().der())
}

/// Issues a certificate for `names` to `account`; returns its DER and its key (which a client can sign JWSs with).
pub async fn issue(stack: &Stack, account: &AcmeAccount, names: &[&str]) -> (Vec<u8>, quarry_jose::SigningKey) {
    let key = quarry_jose::SigningKey::generate(Algorithm::Es256).unwrap();
    let der = issue_for_key(stack, account, names, &key, false).await;
    (der, key)
}

/// Issues a certificate for `names` and `key` (its point `compressed` in the CSR) to `account`; returns its DER.
pub async fn issue_for_key(
    stack: &Stack,
    account: &AcmeAccount,
    names: &[&str],
    key: &quarry_jose::SigningKey,
    compressed: bool,
) -> Vec<u8> {
    let done = stack.finalize(account, names, &quarry_testkit::csr::csr_with_key(key, names, compressed)).await;
    assert_eq!(done.json()["status"], "valid", "{}", String::from_utf8_lossy(&done.body));
    stack.client.certificate_der(account, &done).await.expect("the certificate")
}
