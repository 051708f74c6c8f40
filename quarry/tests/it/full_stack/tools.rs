//! The operator's and developer's tools against a running stack: quarry admin, the prober, the load generator and
//! Pebble's management API.

use super::*;

/// The operator revokes by serial (keyCompromise blocks the key too), blocks keys and manages rate-limit overrides
/// with `quarry admin`, and nothing changes without `--execute`.
#[tokio::test]
async fn quarry_admin_revokes_blocks_keys_and_manages_overrides() {
    let stack = Stack::start().await;
    let account = stack.instant_acme_account().await;
    let names = ["admin.quarry-test.org"];
    let chain = issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;
    let leaf_der = pem_blocks(&chain).into_iter().next().expect("leaf");
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf parses");
    let serial = hex::encode(leaf.raw_serial());
    let leaf_pem = stack.dir.path().join("leaf.pem");
    std::fs::write(&leaf_pem, chain.split_inclusive("-----END CERTIFICATE-----").next().expect("leaf pem")).unwrap();

    let admin = |args: &[&str]| quarry_admin(&stack, args);

    let (ok, said) = admin(&["revoke", "--serial", &serial, "--reason", "stolen"]);
    assert!(!ok && said.contains("unknown reason") && said.contains("keyCompromise"), "{said}");
    let (ok, said) = admin(&["revoke", "--serial", &serial, "--reason", "keyCompromise"]);
    assert!(
        ok && said.contains("would revoke") && said.contains("now good") && said.contains("block its key"),
        "{said}"
    );
    let (ok, said) = admin(&["block-key", "--pem", leaf_pem.to_str().unwrap()]);
    assert!(ok && said.contains("would block"), "a dry run blocked the key: {said}");
    let (ok, said) = admin(&["revoke", "--serial", &serial, "--reason", "keyCompromise", "--execute"]);
    assert!(ok && said.contains("revoked"), "{said}");
    let (ok, said) = admin(&["revoke", "--serial", &serial, "--reason", "superseded"]);
    assert!(!ok && said.contains("already revoked (reason 1)"), "{said}");
    let (ok, said) = admin(&["block-key", "--pem", leaf_pem.to_str().unwrap()]);
    assert!(ok && said.contains("already blocked"), "keyCompromise blocks the key: {said}");

    let rsa =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap_or_else(|_| rcgen::KeyPair::generate().unwrap());
    let public_pem = stack.dir.path().join("public.pem");
    std::fs::write(&public_pem, rsa.public_key_pem()).unwrap();
    let (ok, said) = admin(&["block-key", "--pem", public_pem.to_str().unwrap(), "--comment", "test", "--execute"]);
    assert!(ok && said.contains("blocked"), "{said}");
    let (ok, said) = admin(&["block-key", "--pem", public_pem.to_str().unwrap()]);
    assert!(ok && said.contains("already blocked"), "{said}");

    let add = ["override-add", "--limit", "CertificatesPerDomain", "--bucket", "quarry-test.org"];
    let rate = ["--count", "500", "--period-secs", "604800", "--burst", "500", "--comment", "big customer"];
    let (ok, said) = admin(&[&add[..], &rate[..]].concat());
    assert!(ok && said.contains("would set"), "{said}");
    let (ok, said) = admin(&["overrides"]);
    assert!(ok && said.contains("0 enabled overrides"), "a dry run added an override: {said}");
    let (ok, said) = admin(&[&add[..], &rate[..], &["--execute"]].concat());
    assert!(ok && said.contains("set;"), "{said}");
    let (_, said) = admin(&["overrides"]);
    assert!(
        said.contains("CertificatesPerDomain quarry-test.org: 500 per 604800 s, burst 500 (big customer)"),
        "{said}"
    );
    let disable = ["override-disable", "--limit", "CertificatesPerDomain", "--bucket", "quarry-test.org", "--execute"];
    let (ok, said) = admin(&disable);
    assert!(ok && said.contains("disabled"), "{said}");
    let (_, said) = admin(&["overrides"]);
    assert!(said.contains("0 enabled overrides"), "{said}");
    let (ok, said) = admin(&disable);
    assert!(!ok && said.contains("no enabled override of CertificatesPerDomain"), "{said}");
    let (ok, said) = admin(&[
        "override-add",
        "--limit",
        "Nonsense",
        "--bucket",
        "x",
        "--count",
        "1",
        "--period-secs",
        "1",
        "--burst",
        "1",
    ]);
    assert!(!ok && said.contains("unknown limit"), "{said}");
}

/// `quarry probe --stack` issues and revokes a certificate against a running stack, timing every step, and fails,
/// naming the step, when the environment does not issue.
#[tokio::test]
async fn quarry_probe_proves_a_running_stack_by_issuance() {
    let stack = Stack::start().await;
    let metrics = stack.dir.path().join("probe.prom");
    // Run without blocking this test's runtime: the challenge test server the probe programs runs on it.
    let probe = async |extra: &[&str]| {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
            .arg("probe")
            .arg("--stack")
            .arg(stack.data_dir().join("stack.json"))
            .arg("--challtestsrv")
            .arg(format!("http://{}", stack.challtestsrv.management_addr))
            .arg("--metrics-file")
            .arg(&metrics)
            .args(extra)
            .output()
            .await
            .expect("run quarry probe");
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), said, std::fs::read_to_string(&metrics).unwrap_or_default())
    };

    // A stack just started may not have signed every CRL shard yet: the probe waits for the certificate's.
    let (code, said, prometheus) = probe(&["--crl-wait-secs", "30"]).await;
    assert_eq!(code, Some(0), "{said}{}", logs(stack.dir.path()));
    for step in ["directory", "new-account", "new-order", "validation", "finalize", "download", "chain", "revoke"] {
        assert!(said.lines().any(|line| line.starts_with(step) && line.ends_with("ok")), "{step}: {said}");
        assert!(prometheus.contains(&format!("quarry_probe_step_success{{step=\"{step}\"}} 1")), "{prometheus}");
    }
    assert!(said.contains("PASSED") && prometheus.contains("quarry_probe_success 1"), "{said}");

    let (code, said, prometheus) = probe(&["--name", "probe.invalid"]).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("new-order") && said.contains("rejectedIdentifier") && said.contains("FAILED"), "{said}");
    assert!(prometheus.contains("quarry_probe_success 0"), "{prometheus}");
}

/// `quarry loadgen` drives concurrent clients through whole orders and reports latencies and the servers' CPU per
/// certificate, read from /proc.
#[tokio::test]
async fn quarry_loadgen_issues_with_concurrent_clients_and_reports_costs() {
    let stack = Stack::start().await;
    let report = stack.dir.path().join("load.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("loadgen")
        .arg("--stack")
        .arg(stack.data_dir().join("stack.json"))
        .arg("--challtestsrv")
        .arg(format!("http://{}", stack.challtestsrv.management_addr))
        .args(["--clients", "2", "--orders", "4", "--duration-secs", "60", "--idle-secs", "1", "--json"])
        .arg(&report)
        .output()
        .await
        .expect("run quarry loadgen");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}{}", logs(stack.dir.path()));
    assert!(said.contains("4 certificates") && said.contains("0 failed orders"), "{said}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["certificates"], 4);
    assert_eq!(report["steps"]["order"]["count"], 4, "{report}");
    let processes = report["processes"].as_array().expect("processes");
    for service in ["quarry wfe", "quarry ra", "quarry sa", "quarry ca"] {
        assert!(processes.iter().any(|p| p["name"] == service && p["peak_rss_kib"].as_u64() > Some(0)), "{report}");
    }
    assert!(report["server_cpu_ms_per_cert"].as_f64() > Some(0.0), "{report}");
    // At least: new-account and a nonce per client; per order new-order, the authorization, the challenge, a poll,
    // finalize and the download.
    assert!(report["requests_per_certificate"].as_f64() >= Some(6.0), "{report}");
    assert!(report["idle_cpu_ms_per_sec"].as_f64().is_some_and(|idle| idle >= 0.0), "{report}");
    let net = report["server_cpu_ms_per_cert_net_of_idle"].as_f64().expect("net of idle");
    assert!(net <= report["server_cpu_ms_per_cert"].as_f64().unwrap(), "{report}");
}

/// Pebble's management API, as client test suites use it: the root and intermediates that verify an issued chain,
/// their keys, a certificate's renewal-information answer set by the suite and then served by the wfe, and a
/// certificate's status by serial (in Pebble's JSON) before and after its revocation.
#[tokio::test]
async fn pebbles_management_api_serves_the_dev_hierarchy_and_certificate_status() {
    let addr = format!("127.0.0.1:{}", free_port());
    // Two replicas of every service: what the management API stores must reach every wfe.
    let args = ["--management-addr".into(), addr.clone(), "--replicas".into(), "2".into()];
    let stack = Stack::start_with_args(None, None, &args).await;
    let api = quarry_testkit::client::AcmeClient::without_directory(Some(&stack.tls_ca_pem)).expect("client");
    let get = |path: String| {
        let api = &api;
        let url = format!("https://{addr}{path}");
        async move { api.request(http::Method::GET, &url, None, Vec::new()).await.expect("management API answers") }
    };

    let account = stack.instant_acme_account().await;
    let names = ["managed.quarry-test.org"];
    let chain = issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;
    let root = get("/roots/0".into()).await;
    assert_eq!(root.status, 200);
    assert_eq!(root.headers["content-type"], "application/pem-certificate-chain; charset=utf-8");
    let intermediates = get("/intermediates/0".into()).await;
    assert_eq!(String::from_utf8_lossy(&intermediates.body).matches("BEGIN CERTIFICATE").count(), 2, "E1 and R1");
    for (path, status) in [("/roots/1", 404), ("/roots/x", 404), ("/intermediates/+0", 200), ("/root-keys/0", 200)] {
        assert_eq!(get(path.into()).await.status, status, "{path}");
    }
    assert!(String::from_utf8_lossy(&get("/intermediate-keys/0".into()).await.body).contains("PRIVATE KEY"));

    // The leaf verifies against what the API serves, as a client suite checks it.
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf_pem = chain.split_inclusive("-----END CERTIFICATE-----").next().expect("leaf").trim().to_owned();
    for (file, body) in [("root.pem", root.body.clone()), ("intermediates.pem", intermediates.body.clone())] {
        std::fs::write(dir.path().join(file), body).expect("write");
    }
    std::fs::write(dir.path().join("leaf.pem"), format!("{leaf_pem}\n")).expect("write");
    let verified = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "root.pem", "-untrusted", "intermediates.pem", "leaf.pem"])
        .current_dir(dir.path())
        .output()
        .expect("openssl");
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));

    let certs = pem_blocks(&chain);
    let (_, leaf) = parse_x509_certificate(&certs[0]).expect("leaf");
    let serial = leaf.raw_serial_as_string().replace(':', "");
    let status = |body: &[u8]| serde_json::from_slice::<serde_json::Value>(body).expect("JSON");
    let valid = get(format!("/cert-status-by-serial/{serial}")).await;
    assert_eq!(valid.headers["content-type"], "application/json; charset=utf-8");
    let valid = status(&valid.body);
    assert_eq!(valid["Status"], "Valid", "{valid}");
    assert_eq!(valid["Serial"], serial.trim_start_matches('0').to_ascii_lowercase());
    assert!(valid["Certificate"].as_str().is_some_and(|pem| pem.starts_with("-----BEGIN CERTIFICATE-----")));
    assert!(valid.get("RevokedAt").is_none(), "{valid}");

    // Pebble's set-renewal-info: the suite's answer, stored in the sa, is what the certificate's renewal-info
    // resource serves from then on, verbatim, with Pebble's fixed Retry-After.
    let post = |path: &str, body: String| {
        let api = &api;
        let url = format!("https://{addr}{path}");
        async move {
            let body = body.into_bytes();
            api.request(http::Method::POST, &url, Some("application/json"), body).await.expect("management API answers")
        }
    };
    let renewal_info = |url: String| {
        let api = &api;
        async move { api.request(http::Method::GET, &url, None, Vec::new()).await.expect("the wfe answers") }
    };
    let directory = renewal_info(stack.directory_url.clone()).await.json();
    let key_id = authority_key_id(&leaf);
    let cert_id = format!("{}.{}", quarry_jose::b64_encode(&key_id), quarry_jose::b64_encode(leaf.raw_serial()));
    let info_url = format!("{}/{cert_id}", directory["renewalInfo"].as_str().expect("renewalInfo"));
    let computed = renewal_info(info_url.clone()).await;
    assert!(computed.json()["suggestedWindow"]["start"].is_string(), "{}", String::from_utf8_lossy(&computed.body));
    let chosen = r#"{"suggestedWindow": {"start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"},
  "explanationURL": "https://quarry-test.org/ari"}"#;
    let body_text =
        |response: &quarry_testkit::client::HttpResponse| String::from_utf8_lossy(&response.body).into_owned();
    let set = serde_json::json!({"certificate": leaf_pem, "ariResponse": chosen}).to_string();
    let set = post("/set-renewal-info/", set).await;
    assert_eq!((set.status, set.body.len()), (200, 0), "{}", body_text(&set));
    // Each request is a connection of its own, and the balancer hands connections to the two wfes in turn.
    for _ in 0..4 {
        let served = renewal_info(info_url.clone()).await;
        assert_eq!(served.status, 200);
        assert_eq!(String::from_utf8_lossy(&served.body), chosen);
        assert_eq!(served.headers["retry-after"], "21600");
        assert_eq!(served.headers["content-type"], "application/json");
    }
    // Without the trailing slash, with Go's member names in another case, and any text at all.
    let again = serde_json::json!({"Certificate": leaf_pem, "ARIResponse": "not JSON {"}).to_string();
    assert_eq!(post("/set-renewal-info", again).await.status, 200);
    assert_eq!(renewal_info(info_url.clone()).await.body, b"not JSON {");
    // Not JSON, not PEM: 400, saying so; a certificate not issued here: 404.
    let not_json = post("/set-renewal-info/", "certificate=…".into()).await;
    assert!(not_json.status == 400 && body_text(&not_json).contains("not JSON"), "{}", body_text(&not_json));
    let not_pem = serde_json::json!({"certificate": "MIIB", "ariResponse": "{}"}).to_string();
    let not_pem = post("/set-renewal-info/", not_pem).await;
    assert!(not_pem.status == 400 && body_text(&not_pem).contains("not PEM"), "{}", body_text(&not_pem));
    let stranger_key = rcgen::KeyPair::generate().expect("key");
    let stranger = rcgen::CertificateParams::new(vec!["stranger.quarry-test.org".to_owned()])
        .and_then(|params| params.self_signed(&stranger_key))
        .expect("a certificate of another CA")
        .pem();
    let unknown = serde_json::json!({"certificate": stranger, "ariResponse": "{}"}).to_string();
    assert_eq!(post("/set-renewal-info/", unknown).await.status, 404);
    // An empty answer gives the certificate its own window back.
    let cleared = serde_json::json!({"certificate": leaf_pem, "ariResponse": ""}).to_string();
    assert_eq!(post("/set-renewal-info/", cleared).await.status, 200);
    assert_eq!(renewal_info(info_url).await.json()["suggestedWindow"], computed.json()["suggestedWindow"]);

    let leaf_der = rustls_pki_types::CertificateDer::from(certs[0].clone());
    let revocation = instant_acme::RevocationRequest {
        certificate: &leaf_der,
        reason: Some(instant_acme::RevocationReason::Superseded),
    };
    account.revoke(&revocation).await.expect("revoked");
    let revoked = status(&get(format!("/cert-status-by-serial/{}", serial.trim_start_matches('0'))).await.body);
    assert_eq!((revoked["Status"].as_str(), revoked["Reason"].as_i64()), (Some("Revoked"), Some(4)), "{revoked}");
    assert!(revoked["RevokedAt"].as_str().is_some_and(|at| at.ends_with(" +0000 UTC")), "{revoked}");
    assert_eq!(get("/cert-status-by-serial/0x12".into()).await.status, 400);
    assert_eq!(get("/cert-status-by-serial/abcdef".into()).await.status, 404);

    // The API turned the knob on in the sa and the wfe (dev only): the same sa configuration, said to be staging's,
    // does not start.
    for service in ["sa", "wfe"] {
        let rendered = std::fs::read_to_string(stack.data_dir().join(format!("config/{service}.toml"))).expect("read");
        assert!(rendered.contains("renewal_info_overrides = true"), "{service}: {rendered}");
    }
    let rendered = std::fs::read_to_string(stack.data_dir().join("config/sa.toml")).expect("read");
    let hosted = dir.path().join("sa.toml");
    std::fs::write(&hosted, rendered.replace("environment = \"dev\"", "environment = \"staging\"")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["sa", "--config"])
        .arg(&hosted)
        .output()
        .expect("run quarry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("[client_testing]") && stderr.contains("renewal_info_overrides"), "{stderr}");
}
