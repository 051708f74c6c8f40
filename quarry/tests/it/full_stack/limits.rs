//! Rate limits and pausing as production has them: in memory and in Redis, a paused account, renewal exemptions.

use super::*;

#[tokio::test]
async fn quarry_dev_runs_with_productions_limits_in_memory_and_in_redis() {
    use quarry_testkit::client::{AcmeAccount, AcmeClient};
    let production = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/env/production/ratelimits.toml");
    let mut runs = vec![vec!["--ratelimits".to_owned(), production.display().to_string()]];
    if let Ok(url) = std::env::var("QUARRY_TEST_REDIS_URL") {
        runs.push(vec!["--ratelimits".to_owned(), production.display().to_string(), "--redis".to_owned(), url]);
    }
    for args in runs {
        let stack = Stack::start_with_args(None, None, &args).await;
        let client = AcmeClient::new(&stack.directory_url, Some(&stack.tls_ca_pem)).await.expect("directory");
        // Production allows 10 accounts per IP address every 3 hours. (A Redis shared with earlier runs may hold
        // some of this address's budget already, so count the accounts until the first refusal.)
        let terms = serde_json::json!({ "termsOfServiceAgreed": true });
        let mut created = 0;
        let refused = loop {
            let account = AcmeAccount::generate(quarry_jose::Algorithm::Es256);
            let response = client.post(&account, &client.url("newAccount"), Some(&terms)).await.expect("answered");
            if response.status != 201 {
                break response;
            }
            created += 1;
            assert!(created <= 10, "{args:?}: more than production's 10 accounts per IP address");
        };
        assert_eq!(refused.status, 429, "{args:?}: {}", String::from_utf8_lossy(&refused.body));
        assert_eq!(refused.problem_type().as_deref(), Some("rateLimited"));
        let retry_after: u64 = refused.header("retry-after").expect("Retry-After").parse().expect("seconds");
        assert!(
            (1..=1_080).contains(&retry_after),
            "{args:?}: one account comes back every 18 minutes, not {retry_after} s"
        );
    }
}

#[tokio::test]
async fn a_paused_account_is_refused_until_quarry_admin_unpauses_it() {
    // The dev limits, but an account is paused for a name after its second failed validation in a row.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = limits_with(dir.path(), &[("FailedAuthorizationsForPausingPerDomainPerAccount", 1)]);
    let stack = Stack::start_with_args(None, None, &["--ratelimits".to_owned(), file.display().to_string()]).await;
    let account = stack.instant_acme_account().await;
    let name = "zombie.quarry-test.org";
    let identifiers = [Identifier::Dns(name.to_owned())];
    // Two orders whose http-01 challenge nobody answers.
    for _ in 0..2 {
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await.expect("new order");
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.expect("authorization");
            // The challenge's answer waits for its validation: instant-acme reports the failure from it (or, had
            // the validation outlasted the hold, the order's poll would).
            match authz.challenge(ChallengeType::Http01).expect("http-01").set_ready().await {
                Ok(()) => {}
                Err(instant_acme::Error::Api(problem)) => {
                    let detail = problem.detail.unwrap_or_default();
                    assert!(detail.contains("Invalid response") && detail.contains("404"), "{detail}");
                }
                Err(other) => panic!("the challenge's answer failed: {other}"),
            }
        }
        let status = order.poll_ready(&retry()).await;
        assert!(matches!(status, Ok(OrderStatus::Invalid) | Err(_)), "{status:?}");
    }
    let refused = account.new_order(&NewOrder::new(&identifiers)).await.err().expect("paused").to_string();
    assert!(refused.contains("paused") && refused.contains("quarry admin unpause"), "{refused}");

    let id = account.id().rsplit('/').next().expect("account id").to_owned();
    let admin = |args: &[&str]| {
        let (ok, said) = quarry_admin(&stack, args);
        assert!(ok, "{said}");
        said
    };
    let listed = admin(&["paused", "--account", &id]);
    assert!(listed.contains(name), "{listed}");
    let dry = admin(&["unpause", "--account", &id]);
    assert!(dry.contains("would unpause") && dry.contains(name), "{dry}");
    assert!(account.new_order(&NewOrder::new(&identifiers)).await.is_err(), "a dry run changes nothing");
    let done = admin(&["unpause", "--account", &id, "--execute"]);
    assert!(done.contains("unpaused account") && done.contains("for 1 identifiers"), "{done}");
    account.new_order(&NewOrder::new(&identifiers)).await.expect("unpaused: orders are taken again");
}

/// The dev limits with the named limits changed to `burst` per week (burst the same), in a file under `dir`.
fn limits_with(dir: &Path, changes: &[(&str, u64)]) -> PathBuf {
    let dev = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/env/dev/ratelimits.toml"))
        .expect("dev limits");
    let mut limits: toml::Table = toml::from_str(&dev).expect("toml");
    for (name, burst) in changes {
        limits["limits"][*name] =
            toml::from_str::<toml::Value>(&format!("count = {burst}\nperiod_secs = 604800\nburst = {burst}"))
                .expect("value");
    }
    let file = dir.join("limits.toml");
    std::fs::write(&file, limits.to_string()).expect("write");
    file
}

#[tokio::test]
async fn renewals_and_ari_replacements_are_exempt_as_boulder_exempts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = limits_with(dir.path(), &[("CertificatesPerDomain", 1), ("CertificatesPerFQDNSet", 2)]);
    let stack = Stack::start_with_args(None, None, &["--ratelimits".to_owned(), file.display().to_string()]).await;
    let account = stack.instant_acme_account().await;
    let names = ["www.renew.quarry-test.org"];
    issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;

    // Another name under the same registered domain: its one certificate this week is spent.
    let other = [Identifier::Dns("api.renew.quarry-test.org".to_owned())];
    let refused = account.new_order(&NewOrder::new(&other)).await.err().expect("per-domain limit").to_string();
    assert!(refused.contains("CertificatesPerDomain"), "{refused}");

    // A renewal (exactly the same names) is exempt from the per-domain limit...
    let chain = issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;
    // ...but not from the per-identifier-set limit, now spent.
    let same = [Identifier::Dns(names[0].to_owned())];
    let refused = account.new_order(&NewOrder::new(&same)).await.err().expect("identifier-set limit").to_string();
    assert!(refused.contains("CertificatesPerFQDNSet"), "{refused}");

    // An ARI replacement inside its window is exempt from every limit: revoked, the certificate's window is now.
    let leaf = rustls_pki_types::CertificateDer::from(pem_blocks(&chain).remove(0));
    let revocation = instant_acme::RevocationRequest { certificate: &leaf, reason: None };
    account.revoke(&revocation).await.expect("revoked");
    let (_, parsed) = parse_x509_certificate(&leaf).expect("leaf");
    let key_id = authority_key_id(&parsed);
    let replaces = instant_acme::CertificateIdentifier::new(
        rustls_pki_types::Der::from(key_id),
        rustls_pki_types::Der::from(parsed.raw_serial().to_vec()),
    );
    account.new_order(&NewOrder::new(&same).replaces(replaces)).await.expect("the replacement is exempt");
}
