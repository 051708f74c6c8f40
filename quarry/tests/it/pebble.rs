//! `quarry dev` in place of Pebble: Pebble's `PEBBLE_*` variables reach the services that act on them, and the
//! knobs they turn on are refused by every service of any other environment.

use quarry_jose::Algorithm;
use quarry_testkit::client::{AcmeAccount, AcmeClient};
use rustls_pki_types::pem::PemObject;
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

    // Without the management API, neither the sa nor the wfe takes renewal-information overrides.
    for service in ["sa", "wfe"] {
        let rendered = std::fs::read_to_string(stack.data_dir().join(format!("config/{service}.toml"))).expect("read");
        assert!(!rendered.contains("renewal_info_overrides"), "{service}: {rendered}");
    }

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
async fn a_knob_out_of_range_stops_quarry_dev_with_its_name() {
    for (variable, value) in [
        ("PEBBLE_CHAIN_LENGTH", "9"),
        ("PEBBLE_ALTERNATE_ROOTS", "99"),
        ("PEBBLE_AUTHZREUSE", "101"),
        // Pebble would take its default of 3; Quarry says the 0 is not a page size.
        ("PEBBLE_WFE_ORDERS_PER_PAGE", "0"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(["dev", "--data-dir"])
            .arg(dir.path())
            .env(variable, value)
            .kill_on_drop(true)
            .output();
        // Refused before anything starts; a stack that started instead is stopped here by the timeout.
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("{variable}={value}: quarry dev started"))
            .expect("run quarry dev");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{variable}={value}");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }
}

/// PEBBLE_WFE_ORDERS_PER_PAGE sets the wfe's page size of an account's orders list — a setting of production's, not
/// a client-testing knob: with 1, two orders take two pages, the first linking to the second.
#[tokio::test]
async fn pebbles_orders_per_page_sets_the_page_size_of_the_orders_list() {
    let stack = Stack::start_with_env(None, None, &[], &[("PEBBLE_WFE_ORDERS_PER_PAGE", "1".to_owned())]).await;
    let rendered = std::fs::read_to_string(stack.data_dir().join("config/wfe.toml")).expect("read");
    assert!(rendered.contains("orders_per_page = 1\n") && !rendered.contains("client_testing"), "{rendered}");
    let client = AcmeClient::new(&stack.directory_url, Some(&stack.tls_ca_pem)).await.expect("directory");
    let mut account = AcmeAccount::generate(Algorithm::Es256);
    let registered = client.register(&mut account).await.expect("account").json();
    let mut orders = Vec::new();
    for name in ["first.quarry-test.org", "second.quarry-test.org"] {
        let identifiers = json!({"identifiers": [{"type": "dns", "value": name}]});
        let order = client.post(&account, &client.url("newOrder"), Some(&identifiers)).await.expect("order");
        assert_eq!(order.status, 201, "{}", String::from_utf8_lossy(&order.body));
        orders.push(order.header("location").expect("order URL"));
    }

    let orders_url = registered["orders"].as_str().expect("the account's orders URL").to_owned();
    let first = client.post(&account, &orders_url, None).await.expect("first page");
    assert_eq!(first.json(), json!({"orders": [orders[0]]}));
    let next = first.headers_all("link").into_iter().find(|link| link.ends_with(";rel=\"next\""));
    let next = next.expect("a next page").trim_start_matches('<').split('>').next().expect("a URL").to_owned();
    let second = client.post(&account, &next, None).await.expect("second page");
    assert_eq!(second.json(), json!({"orders": [orders[1]]}));
    assert!(!second.headers_all("link").iter().any(|link| link.contains("rel=\"next\"")), "the last page");
}

/// A CA of the test's own and a `localhost` certificate under it, as Pebble's repository has (`test/certs`): PEM
/// texts of (CA certificate, server certificate, server key).
fn localhost_certificate() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "suite's own test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Starts `quarry pebble -config test/config/pebble-config.json -dnsserver DNS` in `dir` (Quarry's own processes on
/// the ten ports from `ports`, its data in `dir/dev`), and waits for its stack file.
async fn start_quarry_pebble(
    dir: &std::path::Path,
    dns: std::net::SocketAddr,
    ports: u16,
) -> (tokio::process::Child, serde_json::Value) {
    let process = tokio::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["pebble", "-config", "test/config/pebble-config.json", "-dnsserver"])
        .arg(dns.to_string())
        .args(["--data-dir", "dev", "--grpc-base-port"])
        .arg(ports.to_string())
        .arg("--crl-addr")
        .arg(format!("127.0.0.1:{}", ports + 7))
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn quarry pebble");
    let stack_json = dir.join("dev/stack.json");
    for _ in 0..450 {
        if let Some(info) = std::fs::read_to_string(&stack_json).ok().and_then(|text| serde_json::from_str(&text).ok())
        {
            return (process, info);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("quarry pebble did not start: {}", crate::full_stack::logs(dir));
}

/// Writes the certificates of [`localhost_certificate`] where Pebble's configuration files name them
/// (`test/certs/localhost/{cert,key}.pem`, relative to where Pebble runs), and the CA as `test/certs/ca.pem`.
fn write_pebble_certificates(dir: &std::path::Path) {
    let (ca, cert, key) = localhost_certificate();
    let certs = dir.join("test/certs/localhost");
    std::fs::create_dir_all(&certs).expect("mkdir");
    std::fs::write(certs.join("cert.pem"), cert).expect("write");
    std::fs::write(certs.join("key.pem"), key).expect("write");
    std::fs::write(dir.join("test/certs/ca.pem"), ca).expect("write");
}

/// Debian's `pebble` package ships Pebble's example configurations; each starts `quarry pebble` with only its
/// listen addresses changed (its certificate paths are Pebble's repository layout, which the test recreates), and the
/// one with external account binding holds new accounts to its keys.
#[tokio::test]
async fn debians_example_configurations_start_as_they_are() {
    let examples = std::path::Path::new("/usr/share/doc/pebble/examples");
    for (file, binding_required) in
        [("pebble-config.json", false), ("pebble-config-external-account-bindings.json", true)]
    {
        let text = std::fs::read_to_string(examples.join(file))
            .unwrap_or_else(|err| panic!("{file}: {err} (scripts/test.sh installs Debian's pebble)"));
        let mut config: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let ports = crate::full_stack::free_port_range();
        let management = format!("127.0.0.1:{}", crate::full_stack::free_port());
        config["pebble"]["listenAddress"] = format!("127.0.0.1:{}", ports + 9).into();
        config["pebble"]["managementListenAddress"] = management.clone().into();
        let dir = tempfile::tempdir().expect("tempdir");
        write_pebble_certificates(dir.path());
        std::fs::create_dir_all(dir.path().join("test/config")).expect("mkdir");
        std::fs::write(dir.path().join("test/config/pebble-config.json"), config.to_string()).expect("write");
        let srv = crate::full_stack::challenge_server().await;
        let (_process, info) = start_quarry_pebble(dir.path(), srv.dns_addr.expect("dns"), ports).await;
        let ca = dir.path().join("test/certs/ca.pem");
        let client = AcmeClient::new(info["directory_url"].as_str().expect("directory"), Some(&ca)).await.expect("dir");
        assert_eq!(client.directory()["meta"]["externalAccountRequired"].as_bool().unwrap_or(false), binding_required);
        let root = client.request(http::Method::GET, &format!("https://{management}/roots/0"), None, Vec::new()).await;
        assert_eq!(root.expect("management API").status, 200, "{file}");

        let url = client.url("newAccount");
        let account = AcmeAccount::generate(Algorithm::Es256);
        let unbound = client.post(&account, &url, Some(&json!({"termsOfServiceAgreed": true}))).await.expect("answer");
        if !binding_required {
            assert_eq!(unbound.status, 201, "{file}");
            continue;
        }
        assert_eq!(unbound.problem_type().as_deref(), Some("externalAccountRequired"), "{file}");
        // Both of the file's keys bind accounts, and a key binds more than one, as in Pebble.
        let keys = config["pebble"]["externalAccountMACKeys"].as_object().expect("keys").clone();
        for (kid, mac) in keys.iter().chain(keys.iter().take(1)) {
            let mac = quarry_jose::b64_decode(mac.as_str().expect("key")).expect("base64url");
            let account = AcmeAccount::generate(Algorithm::Es256);
            let binding =
                quarry_jose::sign_external_account_binding("HS256", kid, &mac, &url, &account.key.jwk()).expect("EAB");
            let payload = json!({"termsOfServiceAgreed": true, "externalAccountBinding": binding});
            let bound = client.post(&account, &url, Some(&payload)).await.expect("answer");
            assert_eq!(bound.status, 201, "{kid}: {}", String::from_utf8_lossy(&bound.body));
        }
    }
}

#[tokio::test]
async fn a_pebble_configuration_file_starts_quarry_as_pebble_and_its_chain_verifies_with_the_management_api() {
    let srv = crate::full_stack::challenge_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_pebble_certificates(dir.path());
    let ports = crate::full_stack::free_port_range();
    let management = format!("127.0.0.1:{}", crate::full_stack::free_port());
    // The shape of Pebble's own test/config/pebble-config.json, only its addresses changed (and its ports, to the
    // challenge test server's).
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{}", ports + 9),
        "managementListenAddress": management,
        "certificate": "test/certs/localhost/cert.pem",
        "privateKey": "test/certs/localhost/key.pem",
        "httpPort": srv.http01_addr.expect("http-01").port(),
        "tlsPort": 5001,
        "ocspResponderURL": "test",
        "profiles": {"default": {"description": "The profile you know and trust", "validityPeriod": 518400}},
        "keyAlgorithm": "rsa",
    }});
    std::fs::create_dir_all(dir.path().join("test/config")).expect("mkdir");
    std::fs::write(dir.path().join("test/config/pebble-config.json"), config.to_string()).expect("write");
    let (process, info) = start_quarry_pebble(dir.path(), srv.dns_addr.expect("dns"), ports).await;
    let directory_url = info["directory_url"].as_str().expect("directory").to_owned();
    assert_eq!(directory_url, format!("https://localhost:{}/dir", ports + 9));
    let wfe = std::fs::read_to_string(dir.path().join("dev/config/wfe.toml")).expect("the rendered wfe");
    assert!(wfe.contains("orders_per_page = 3\n"), "Pebble's page size in Pebble mode: {wfe}");
    let stack = Stack {
        _process: process,
        challtestsrv: srv,
        directory_url,
        // Clients trust the suite's own CA, which issued the configured certificate.
        tls_ca_pem: dir.path().join("test/certs/ca.pem"),
        root_pem: info["root_pem"].as_str().expect("root").into(),
        dir,
    };

    let account = stack.instant_acme_account().await;
    let names = ["as-pebble.quarry-test.org"];
    let chain =
        crate::full_stack::issue_via_http01(&stack, &account, &names, &crate::full_stack::csr_for(&names)).await;
    // Pebble's "default" profile is the default, with its validity: 6 days.
    let leaf_der =
        rustls_pki_types::CertificateDer::pem_slice_iter(chain.as_bytes()).next().expect("leaf").expect("PEM");
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).expect("leaf parses");
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((518_399..=518_400).contains(&lifetime), "{lifetime}");
    // keyAlgorithm "rsa": an ECDSA subscriber key, yet the RSA intermediate signed.
    assert!(leaf.issuer().to_string().contains("Intermediate R1"), "{}", leaf.issuer());
    assert!(matches!(leaf.public_key().parsed(), Ok(x509_parser::public_key::PublicKey::EC(_))));
    let api = AcmeClient::without_directory(Some(&stack.tls_ca_pem)).expect("client");
    let directory = api.request(http::Method::GET, &stack.directory_url, None, Vec::new()).await.expect("directory");
    assert_eq!(directory.json()["meta"]["profiles"]["default"], "The profile you know and trust");
    let fetched = stack.dir.path().join("fetched");
    std::fs::create_dir_all(&fetched).expect("mkdir");
    for (path, file) in [("/roots/0", "root.pem"), ("/intermediates/0", "intermediates.pem")] {
        let url = format!("https://{management}{path}");
        let answer = api.request(http::Method::GET, &url, None, Vec::new()).await.expect("management API");
        assert_eq!(answer.status, 200, "{path}");
        std::fs::write(fetched.join(file), &answer.body).expect("write");
    }
    let leaf = chain.split_inclusive("-----END CERTIFICATE-----").next().expect("leaf").trim().to_owned();
    std::fs::write(fetched.join("leaf.pem"), format!("{leaf}\n")).expect("write");
    let verified = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "root.pem", "-untrusted", "intermediates.pem", "leaf.pem"])
        .current_dir(&fetched)
        .output()
        .expect("openssl");
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

/// Verifies the leaf first in `chain` (PEM) with OpenSSL, the rest of `chain` untrusted and `root` (PEM) the anchor.
fn openssl_verifies(chain: &str, root: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut certificates = chain.split_inclusive("-----END CERTIFICATE-----\n");
    let leaf = certificates.next().expect("a leaf");
    std::fs::write(dir.path().join("leaf.pem"), leaf).expect("write");
    std::fs::write(dir.path().join("untrusted.pem"), certificates.collect::<String>()).expect("write");
    std::fs::write(dir.path().join("root.pem"), root).expect("write");
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "root.pem", "-untrusted", "untrusted.pem", "leaf.pem"])
        .current_dir(dir.path())
        .output()
        .expect("openssl");
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

#[tokio::test]
async fn longer_chains_and_alternate_roots_are_served_and_each_verifies_with_its_root() {
    let management = format!("127.0.0.1:{}", crate::full_stack::free_port());
    let env = [
        ("PEBBLE_CHAIN_LENGTH", "3".to_owned()),
        ("PEBBLE_ALTERNATE_ROOTS", "2".to_owned()),
        ("PEBBLE_VA_ALWAYS_VALID", "1".to_owned()),
    ];
    let stack = Stack::start_with_env(None, None, &["--management-addr".into(), management.clone()], &env).await;
    let client = AcmeClient::new(&stack.directory_url, Some(&stack.tls_ca_pem)).await.expect("directory");
    let mut account = AcmeAccount::generate(Algorithm::Es256);
    client.register(&mut account).await.expect("account");
    let names = ["chains.quarry-test.org"];
    let identifiers = json!({"identifiers": [{"type": "dns", "value": names[0]}]});
    let order = client.post(&account, &client.url("newOrder"), Some(&identifiers)).await.expect("order");
    let order_url = order.header("location").expect("order URL");
    let authz = order.json()["authorizations"][0].as_str().expect("authorization").to_owned();
    let authz = client.post(&account, &authz, None).await.expect("authorization").json();
    let challenge = authz["challenges"][0]["url"].as_str().expect("challenge").to_owned();
    client.post(&account, &challenge, Some(&json!({}))).await.expect("challenge");
    client.poll(&account, &order_url, 100, |o| o["status"] == "ready").await.expect("ready");
    let csr = quarry_jose::b64_encode(&crate::full_stack::csr_for(&names));
    let finalize = order.json()["finalize"].as_str().expect("finalize").to_owned();
    client.post(&account, &finalize, Some(&json!({"csr": csr}))).await.expect("finalize");
    let order = client.poll(&account, &order_url, 100, |o| o["status"] == "valid").await.expect("valid");
    let certificate_url = order["certificate"].as_str().expect("certificate URL").to_owned();

    let api = AcmeClient::without_directory(Some(&stack.tls_ca_pem)).expect("client");
    let management_get = |path: String| {
        let (api, management) = (&api, &management);
        async move {
            let url = format!("https://{management}{path}");
            api.request(http::Method::GET, &url, None, Vec::new()).await.expect("management API")
        }
    };
    let default = client.post(&account, &certificate_url, None).await.expect("certificate");
    let alternates: Vec<String> = default
        .headers_all("link")
        .into_iter()
        .filter(|link| link.contains("rel=\"alternate\""))
        .map(|link| link.trim_start_matches('<').split('>').next().expect("a URL").to_owned())
        .collect();
    assert_eq!(alternates.len(), 2, "{alternates:?}");
    let mut chains = vec![String::from_utf8(default.body).expect("PEM")];
    for url in &alternates {
        chains.push(String::from_utf8(client.post(&account, url, None).await.expect("alternate").body).expect("PEM"));
    }
    let mut roots = Vec::new();
    for (n, chain) in chains.iter().enumerate() {
        // The leaf, then its issuer certified on this chain and two upper intermediates: three between it and the
        // root.
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 4, "chain {n}:\n{chain}");
        let root = management_get(format!("/roots/{n}")).await;
        assert_eq!(root.status, 200);
        assert_eq!(root.headers_all("link").len(), 2, "the other two roots as alternates");
        openssl_verifies(chain, &root.body).unwrap_or_else(|err| panic!("chain {n} against /roots/{n}: {err}"));
        roots.push(root.body);
    }
    assert!(roots[0] != roots[1] && roots[1] != roots[2], "each chain has its own root");
    assert!(openssl_verifies(&chains[1], &roots[0]).is_err(), "an alternate chain does not lead to root 0");
    assert_eq!(management_get("/roots/3".into()).await.status, 404);
    // The stack file names the default chain's root.
    assert_eq!(std::fs::read(&stack.root_pem).expect("root"), roots[0]);
}

#[test]
fn a_binary_called_pebble_takes_pebbles_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pebble = dir.path().join("pebble");
    std::os::unix::fs::symlink(crate::quarry_dev(), &pebble).expect("symlink");
    let out = std::process::Command::new(&pebble).arg("-version").output().expect("run pebble");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("quarry ") && stdout.contains("as pebble"), "{stdout}");
    // Pebble's one-dash options with a value after `=`, and a missing file named in the refusal.
    let out = std::process::Command::new(&pebble)
        .args(["-config=missing.json", "-strict", "--data-dir"])
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .output()
        .expect("run pebble");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"), "{}", String::from_utf8_lossy(&out.stderr));
}
