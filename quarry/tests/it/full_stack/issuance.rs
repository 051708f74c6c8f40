//! Issuance end to end: every client, key type, challenge type and profile, and the chains and CRLs that follow.

use super::*;

#[tokio::test]
async fn instant_acme_gets_a_certificate_for_several_names_via_http01() {
    let stack = Stack::start().await;
    let account = stack.instant_acme_account().await;
    let names = ["a.quarry-test.org", "b.quarry-test.org", "www.quarry-test.org"];
    let chain = issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;
    check_chain(&chain, &stack.root_pem, &names);
}

#[tokio::test]
async fn each_key_type_gets_its_intermediate_and_scts_from_both_dev_logs() {
    let stack = Stack::start().await;
    let account = stack.instant_acme_account().await;
    let names = ["keys.quarry-test.org"];
    let log_keys: Vec<quarry_core::ct::LogKey> = ["ct-log-a", "ct-log-b"]
        .iter()
        .map(|log| {
            let pem = std::fs::read_to_string(stack.data_dir().join(format!("pki/ct/{log}.key.pem"))).expect("key");
            let spki = rcgen::PublicKeyData::subject_public_key_info(&rcgen::KeyPair::from_pem(&pem).expect("pem"));
            quarry_core::ct::LogKey::from_spki(&spki).expect("log key")
        })
        .collect();
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("rsa");
    let p256 = rcgen::KeyPair::generate().expect("p256");
    for (key, intermediate_name) in [(p256, "(DEV) Quarry Intermediate E1"), (rsa, "(DEV) Quarry Intermediate R1")] {
        let mut params = rcgen::CertificateParams::new(vec![names[0].to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).expect("csr").der().to_vec();
        let chain = issue_via_http01(&stack, &account, &names, &csr).await;
        check_chain(&chain, &stack.root_pem, &names);
        let certs = pem_blocks(&chain);
        let (_, intermediate) = parse_x509_certificate(&certs[1]).expect("intermediate");
        let common_name = intermediate.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
        assert_eq!(common_name, Some(intermediate_name));

        let scts = quarry_core::ct::embedded_scts(&certs[0]).expect("SCT list");
        assert_eq!(scts.len(), 2, "{intermediate_name}");
        let (tbs, issuer_key_hash) =
            quarry_core::ct::LogEntry::of_final_certificate(&certs[0], intermediate.public_key().raw).expect("entry");
        let entry = quarry_core::ct::LogEntry::Precert { issuer_key_hash, tbs: &tbs };
        for log in &log_keys {
            let sct = scts.iter().find(|sct| sct.log_id == log.log_id()).expect("an SCT from each dev log");
            log.verify(sct, &entry).unwrap_or_else(|e| panic!("{intermediate_name}: {e}"));
        }
    }
}

#[tokio::test]
async fn instant_acme_gets_a_wildcard_via_dns01() {
    let stack = Stack::start().await;
    let account = stack.instant_acme_account().await;
    let names = ["*.wild.quarry-test.org", "wild.quarry-test.org"];
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.to_string())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.expect("new order");
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.expect("authorization");
        let mut challenge = authz.challenge(ChallengeType::Dns01).expect("dns-01 offered");
        let value = challenge.key_authorization().dns_value();
        stack.challtestsrv.state.set_txt("_acme-challenge.wild.quarry-test.org.", &value);
        challenge.set_ready().await.expect("challenge ready");
    }
    let status =
        order.poll_ready(&retry()).await.unwrap_or_else(|e| panic!("poll ready: {e}{}", logs(stack.dir.path())));
    assert_eq!(status, OrderStatus::Ready);
    order.finalize_csr(&csr_for(&names)).await.expect("finalize");
    let chain = order.poll_certificate(&retry()).await.expect("certificate");
    check_chain(&chain, &stack.root_pem, &names);
}

#[tokio::test]
async fn rsa_and_p384_accounts_get_certificates_with_the_projects_own_client() {
    let stack = Stack::start().await;
    for (alg, name) in [
        (quarry_jose::Algorithm::Rs256, "rsa.quarry-test.org"),
        (quarry_jose::Algorithm::Es384, "p384.quarry-test.org"),
    ] {
        issue_with_own_client(&stack, alg, name).await;
    }
}

#[tokio::test]
async fn the_whole_stack_runs_on_postgresql() {
    let Some(db) = quarry_testkit::db::TestDatabase::postgres().await else {
        eprintln!(
            "{} is not set: skipping the PostgreSQL run (scripts/test.sh always sets it)",
            quarry_testkit::db::POSTGRES_ENV
        );
        return;
    };
    let stack = Stack::start_on(Some(&db.url)).await;
    issue_with_own_client(&stack, quarry_jose::Algorithm::Es256, "pg.quarry-test.org").await;
    assert!(!stack.data_dir().join("quarry.db").exists(), "no SQLite database was created");
}

#[tokio::test]
async fn the_va_checks_caa_against_the_challenge_servers_dns() {
    use quarry_testkit::challtestsrv::CaaPolicy;
    use quarry_testkit::client::{AcmeAccount, AcmeClient};
    use serde_json::json;
    let stack = Stack::start().await;
    let issue = |value: &str| CaaPolicy { flags: 0, tag: "issue".into(), value: value.into() };
    stack.challtestsrv.state.add_caa("denied.quarry-test.org", [issue("other-ca.example")]).unwrap();
    stack.challtestsrv.state.add_caa("allowed.quarry-test.org", [issue("quarry.test")]).unwrap();
    issue_with_own_client(&stack, quarry_jose::Algorithm::Es256, "allowed.quarry-test.org").await;

    let client = AcmeClient::new(&stack.directory_url, Some(&stack.tls_ca_pem)).await.expect("directory");
    let mut account = AcmeAccount::generate(quarry_jose::Algorithm::Es256);
    client.register(&mut account).await.expect("register");
    let identifiers = json!({"identifiers": [{"type": "dns", "value": "denied.quarry-test.org"}]});
    let created = client.post(&account, &client.url("newOrder"), Some(&identifiers)).await.unwrap();
    let order_url = created.header("location").expect("order location");
    let authz_url = created.json()["authorizations"][0].as_str().unwrap().to_owned();
    let authz = client.post(&account, &authz_url, None).await.unwrap().json();
    let challenge = authz["challenges"].as_array().unwrap().iter().find(|c| c["type"] == "http-01").unwrap().clone();
    let key_authorization = quarry_jose::key_authorization(challenge["token"].as_str().unwrap(), &account.key.jwk());
    stack.challtestsrv.state.add_http01(challenge["token"].as_str().unwrap(), &key_authorization);
    client.post(&account, challenge["url"].as_str().unwrap(), Some(&json!({}))).await.unwrap();
    client.poll(&account, &order_url, 300, |o| o["status"] == "invalid").await.expect("order invalid");
    let authz = client.post(&account, &authz_url, None).await.unwrap().json();
    let error = &authz["challenges"].as_array().unwrap().iter().find(|c| c["type"] == "http-01").unwrap()["error"];
    assert_eq!(error["type"], "urn:ietf:params:acme:error:caa", "{authz}");
    assert!(error["detail"].as_str().unwrap().contains("denied.quarry-test.org"), "{error}");
}

#[tokio::test]
async fn a_remote_perspective_that_sees_other_dns_answers_fails_the_quorum() {
    use quarry_testkit::client::{AcmeAccount, AcmeClient};
    use serde_json::json;
    // remote-b resolves through its own challenge server, where one name points at an address nothing listens on.
    let loopback = |port| Some(SocketAddr::from(([127, 0, 0, 1], port)));
    let remote_view = ChallTestSrv::start(ChallConfig {
        dns_addr: loopback(0),
        http01_addr: None,
        tlsalpn01_addr: None,
        management_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        default_ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
        default_ipv6: None,
    })
    .await
    .expect("remote-b's challenge server");
    remote_view.state.add_a("split.quarry-test.org", [std::net::Ipv4Addr::new(127, 0, 0, 2)]);
    let stack = Stack::start_with(None, remote_view.dns_addr).await;
    // Names remote-b sees like everyone else still validate.
    issue_with_own_client(&stack, quarry_jose::Algorithm::Es256, "same.quarry-test.org").await;

    let client = AcmeClient::new(&stack.directory_url, Some(&stack.tls_ca_pem)).await.expect("directory");
    let mut account = AcmeAccount::generate(quarry_jose::Algorithm::Es256);
    client.register(&mut account).await.expect("register");
    let identifiers = json!({"identifiers": [{"type": "dns", "value": "split.quarry-test.org"}]});
    let created = client.post(&account, &client.url("newOrder"), Some(&identifiers)).await.unwrap();
    let order_url = created.header("location").expect("order location");
    let authz_url = created.json()["authorizations"][0].as_str().unwrap().to_owned();
    let authz = client.post(&account, &authz_url, None).await.unwrap().json();
    let challenge = authz["challenges"].as_array().unwrap().iter().find(|c| c["type"] == "http-01").unwrap().clone();
    let token = challenge["token"].as_str().unwrap();
    stack.challtestsrv.state.add_http01(token, &quarry_jose::key_authorization(token, &account.key.jwk()));
    client.post(&account, challenge["url"].as_str().unwrap(), Some(&json!({}))).await.unwrap();
    client.poll(&account, &order_url, 300, |o| o["status"] == "invalid").await.expect("order invalid");
    let authz = client.post(&account, &authz_url, None).await.unwrap().json();
    let error = &authz["challenges"].as_array().unwrap().iter().find(|c| c["type"] == "http-01").unwrap()["error"];
    let detail = error["detail"].as_str().unwrap();
    assert!(detail.starts_with("During secondary validation: "), "{error}");
    assert!(detail.contains("127.0.0.2"), "{error}");
}

#[tokio::test]
async fn a_revoked_certificate_appears_in_the_crl_at_its_distribution_point() {
    let stack = Stack::start().await;
    let account = stack.instant_acme_account().await;
    let names = ["crl.quarry-test.org"];
    let chain = issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;
    let certs = pem_blocks(&chain);
    let (_, leaf) = parse_x509_certificate(&certs[0]).expect("leaf");
    let serial = leaf.raw_serial().to_vec();
    let url = crl_url(&leaf);
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with(".crl"), "{url}");

    let leaf_der = rustls_pki_types::CertificateDer::from(certs[0].clone());
    let revocation = instant_acme::RevocationRequest {
        certificate: &leaf_der,
        reason: Some(instant_acme::RevocationReason::KeyCompromise),
    };
    account.revoke(&revocation).await.expect("revoked");

    // The dev crl-updater signs every shard every 10 s; three periods is plenty (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(45);
    let crl = loop {
        let (status, body) = http_get(&url).await;
        if status == 200 {
            let (_, crl) = CertificateRevocationList::from_der(&body).expect("a DER CRL");
            if crl.iter_revoked_certificates().any(|r| r.raw_serial() == serial.as_slice()) {
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the serial never reached {url} (last status {status}){}",
            logs(stack.dir.path())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // OpenSSL accepts the CRL as signed by the intermediate that issued the certificate.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("shard.crl"), &crl).expect("write CRL");
    let intermediate_pem = chain.split_inclusive("-----END CERTIFICATE-----").nth(1).expect("intermediate").trim();
    std::fs::write(dir.path().join("issuer.pem"), format!("{intermediate_pem}\n")).expect("write issuer");
    let output = std::process::Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in"])
        .arg(dir.path().join("shard.crl"))
        .arg("-CAfile")
        .arg(dir.path().join("issuer.pem"))
        .output()
        .expect("run openssl");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.contains("verify OK"), "openssl: {said}");

    // Beside its CRLs, the listener serves the issuer's certificate (its caIssuers URL's path), as issued.
    let (origin, path) = url.trim_start_matches("http://").split_once('/').expect("a CRL path");
    let issuer = path.split('/').next().expect("the issuer's name");
    let (status, body) = http_get(&format!("http://{origin}/{issuer}.der")).await;
    assert_eq!((status, body.as_slice()), (200, certs[1].as_slice()), "/{issuer}.der is the issuing intermediate");
    assert_eq!(http_get(&format!("http://{origin}/nobody.der")).await.0, 404);

    // The audit trail: one line per security-relevant event, with what an investigation needs, and no key material.
    let read_log = |service: &str| {
        std::fs::read_to_string(stack.data_dir().join(format!("logs/{service}.log"))).expect("service log")
    };
    let ra_log = read_log("ra");
    let audit: Vec<&str> = ra_log.lines().filter(|line| line.contains(" audit: ")).collect();
    let event = |name: &str| audit.iter().find(|line| line.contains(&format!("event=\"{name}\""))).copied();
    assert!(event("account-created").is_some(), "{ra_log}");
    assert!(event("order-created").is_some_and(|line| line.contains("crl.quarry-test.org")), "{ra_log}");
    let validation = event("validation-result").expect("validation audited");
    assert!(validation.contains("passed=true") && validation.contains("records="), "{validation}");
    assert!(event("certificate-issued").is_some_and(|line| line.contains("crl.quarry-test.org")), "{ra_log}");
    assert!(event("certificate-revoked").is_some_and(|line| line.contains("reason=")), "{ra_log}");
    assert!(read_log("ca").contains("event=\"certificate-signed\""));
    for service in ["wfe", "ra", "sa", "ca", "va"] {
        assert!(!read_log(service).contains("PRIVATE KEY"), "{service} logged key material");
    }
}

#[tokio::test]
async fn every_profile_issues_what_it_promises() {
    let stack = Stack::start().await;
    let account = stack.instant_acme_account().await;
    let names = ["profiles.quarry-test.org"];
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("rsa");
    let mut params = rcgen::CertificateParams::new(vec![names[0].to_owned()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&rsa).expect("csr").der().to_vec();
    // (profile, validity in hours, commonName, SKID, keyEncipherment, clientAuth), as Let's Encrypt defines them.
    let promises = [
        ("classic", 90 * 24, true, true, true, true),
        ("tlsserver", 45 * 24, false, false, false, false),
        ("shortlived", 160, false, false, false, false),
    ];
    for (profile, hours, common_name, skid, key_encipherment, client_auth) in promises {
        let chain = issue_with_profile(&stack, &account, &names, &csr, Some(profile)).await;
        let certs = pem_blocks(&chain);
        let (_, leaf) = parse_x509_certificate(&certs[0]).expect("leaf");
        let validity = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp() + 1;
        assert_eq!(validity, hours * 3_600, "{profile}");
        assert_eq!(leaf.subject().iter_common_name().next().is_some(), common_name, "{profile}");
        let has_skid =
            leaf.extensions().iter().any(|e| matches!(e.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(_)));
        assert_eq!(has_skid, skid, "{profile}");
        let usage = leaf.key_usage().expect("ku").expect("ku present").value;
        assert!(usage.digital_signature(), "{profile}");
        assert_eq!(usage.key_encipherment(), key_encipherment, "{profile}");
        let eku = leaf.extended_key_usage().expect("eku").expect("eku present").value;
        assert_eq!((eku.server_auth, eku.client_auth), (true, client_auth), "{profile}");
        let constraints = leaf.basic_constraints().expect("bc").expect("bc present");
        assert!(constraints.critical && !constraints.value.ca, "{profile}");
    }
}
