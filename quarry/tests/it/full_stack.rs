//! The full stack as `quarry dev` runs it, every service its own process talking gRPC over mutual TLS, driven by
//! ACME clients: instant-acme (ES256 accounts) and the project's own client (any account key type).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use quarry_testkit::challtestsrv::{ChallTestSrv, Config as ChallConfig, RunningServer};
use x509_parser::prelude::*;

/// How long a whole stack may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running `quarry dev` with its own challenge test server, removed when dropped.
pub(crate) struct Stack {
    pub(crate) _process: tokio::process::Child,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) challtestsrv: RunningServer,
    pub(crate) directory_url: String,
    pub(crate) tls_ca_pem: PathBuf,
    pub(crate) root_pem: PathBuf,
}

/// A port nothing listens on right now (the OS picks it).
/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The first of ten consecutive free ports for a stack. Ranges come from a per-process block of 250 ports below the
/// kernel's ephemeral range (which starts at 32768), so concurrent stacks in this process never pick overlapping
/// ports and no outgoing connection takes one; blocks are reused round-robin once earlier stacks have stopped.
pub(crate) fn free_port_range() -> u16 {
    static NEXT_BLOCK: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let process_base = 10_000 + (std::process::id() % 90) as u16 * 250;
    for _ in 0..25 {
        let base = process_base + NEXT_BLOCK.fetch_add(10, std::sync::atomic::Ordering::SeqCst) % 250;
        let all_free = (base..base + 10).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no ten consecutive free ports found in this process's block");
}

/// A challenge test server on ephemeral loopback ports: DNS (every name 127.0.0.1) and http-01.
pub(crate) async fn challenge_server() -> RunningServer {
    quarry_core::install_crypto_provider();
    let loopback = |port| Some(SocketAddr::from(([127, 0, 0, 1], port)));
    ChallTestSrv::start(ChallConfig {
        dns_addr: loopback(0),
        http01_addr: loopback(0),
        tlsalpn01_addr: None,
        management_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        default_ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
        default_ipv6: None,
    })
    .await
    .expect("start challenge test server")
}

impl Stack {
    pub(crate) async fn start() -> Stack {
        Self::start_on(None).await
    }

    /// `quarry dev`, with its sa on the database `db` (SQLite in the data directory when `None`).
    async fn start_on(db: Option<&str>) -> Stack {
        Self::start_with(db, None).await
    }

    /// `quarry dev` on `db`, with the remote perspective `remote-b` resolving through `remote_b_dns` when given.
    async fn start_with(db: Option<&str>, remote_b_dns: Option<SocketAddr>) -> Stack {
        Self::start_with_args(db, remote_b_dns, &[]).await
    }

    /// As [`Stack::start_with`], with more `quarry dev` arguments.
    pub(crate) async fn start_with_args(db: Option<&str>, remote_b_dns: Option<SocketAddr>, extra: &[String]) -> Stack {
        Self::start_with_env(db, remote_b_dns, extra, &[]).await
    }

    /// As [`Stack::start_with_args`], with `env` in the environment of `quarry dev` and every service it starts.
    pub(crate) async fn start_with_env(
        db: Option<&str>,
        remote_b_dns: Option<SocketAddr>,
        extra: &[String],
        env: &[(&str, String)],
    ) -> Stack {
        let challtestsrv = challenge_server().await;
        let dir = tempfile::tempdir().expect("temp dir");
        // Every port of the stack from this process's own block: an ephemeral port found free can be taken by any
        // outgoing connection before the service binds it. The gRPC servers use eight of the ten; the wfe's ACME
        // and CRL listeners take the other two (the offsets of the wfe and the crl-updater, which serve no gRPC).
        let ports = free_port_range();
        let acme_addr = SocketAddr::from(([127, 0, 0, 1], ports + 9));
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_quarry"));
        command.arg("dev");
        if let Some(db) = db {
            command.arg("--db").arg(db);
        }
        if let Some(remote_b_dns) = remote_b_dns {
            let primary_dns = challtestsrv.dns_addr.expect("dns").to_string();
            command.arg("--va-remote-dns").arg(primary_dns).arg(remote_b_dns.to_string());
        }
        let process = command
            .arg("--data-dir")
            .arg(dir.path().join("dev"))
            .arg("--acme-addr")
            .arg(acme_addr.to_string())
            .arg("--va-dns")
            .arg(challtestsrv.dns_addr.expect("dns").to_string())
            .arg("--va-http-port")
            .arg(challtestsrv.http01_addr.expect("http01").port().to_string())
            .arg("--grpc-base-port")
            .arg(ports.to_string())
            .arg("--crl-addr")
            .arg(format!("127.0.0.1:{}", ports + 7))
            .args(extra)
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn quarry dev");
        let stack_json = dir.path().join("dev/stack.json");
        let started = Instant::now();
        let info: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&stack_json)
                && let Ok(info) = serde_json::from_str(&text)
            {
                break info;
            }
            assert!(started.elapsed() < START_TIMEOUT, "quarry dev did not start: {}", logs(dir.path()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let field = |key: &str| info[key].as_str().expect(key).to_owned();
        Stack {
            _process: process,
            directory_url: field("directory_url"),
            tls_ca_pem: field("tls_ca_pem").into(),
            root_pem: field("root_pem").into(),
            challtestsrv,
            dir,
        }
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    pub(crate) async fn instant_acme_account(&self) -> Account {
        let (account, _) = Account::builder_with_root(&self.tls_ca_pem)
            .expect("client trusting the dev HTTPS CA")
            .create(
                &NewAccount {
                    contact: &["mailto:ops@quarry-test.org"],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory_url.clone(),
                None,
            )
            .await
            .expect("create account");
        account
    }
}

/// The (pid, service) of every child process of `parent`, read from /proc.
pub(crate) fn children(parent: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1));
        if ppid != Some(&parent.to_string()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if let Some(service) = args.get(1) {
            found.push((pid, service.clone()));
        }
    }
    found
}

/// Every service log, for a failure message.
pub(crate) fn logs(dir: &Path) -> String {
    let logs_dir = dir.join("dev/logs");
    let mut out = String::new();
    for entry in std::fs::read_dir(&logs_dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        out.push_str(&format!("\n--- {}\n", entry.path().display()));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A certificate's authority key identifier, which an ARI CertID names (RFC 9773 §4.1).
fn authority_key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        })
        .expect("authority key identifier")
}

pub(crate) fn csr_for(names: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).expect("csr").der().to_vec()
}

fn pem_blocks(chain: &str) -> Vec<Vec<u8>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(chain.as_bytes()).map(|c| c.expect("pem").to_vec()).collect()
}

/// Checks an issued PEM chain: the leaf names, the chain up to the issuing root, and the validity window.
fn check_chain(chain_pem: &str, root_pem: &Path, names: &[&str]) {
    let certs = pem_blocks(chain_pem);
    assert_eq!(certs.len(), 2, "leaf and intermediate expected");
    let root = pem_blocks(&std::fs::read_to_string(root_pem).expect("root pem")).remove(0);
    let (_, leaf) = parse_x509_certificate(&certs[0]).expect("leaf");
    let (_, intermediate) = parse_x509_certificate(&certs[1]).expect("intermediate");
    let (_, root) = parse_x509_certificate(&root).expect("root");
    leaf.verify_signature(Some(intermediate.public_key())).expect("leaf signed by intermediate");
    intermediate.verify_signature(Some(root.public_key())).expect("intermediate signed by root");
    assert_eq!(leaf.issuer().as_raw(), intermediate.subject().as_raw());
    let mut sans: Vec<String> = leaf
        .subject_alternative_name()
        .expect("san")
        .expect("san present")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    sans.sort();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(sans, expected);
    let now = ASN1Time::now();
    assert!(leaf.validity().not_before <= now && now < leaf.validity().not_after, "leaf valid now");
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(lifetime <= 100 * 86_400, "lifetime {lifetime}s");
    assert!(!leaf.is_ca());
}

fn retry() -> RetryPolicy {
    RetryPolicy::new().timeout(Duration::from_secs(30))
}

/// Orders `names`, answers http-01 through the challenge server, finalizes with `csr` and returns the PEM chain.
pub(crate) async fn issue_via_http01(stack: &Stack, account: &Account, names: &[&str], csr: &[u8]) -> String {
    issue_with_profile(stack, account, names, csr, None).await
}

/// As [`issue_via_http01`], ordering under `profile` when given.
async fn issue_with_profile(
    stack: &Stack,
    account: &Account,
    names: &[&str],
    csr: &[u8],
    profile: Option<&str>,
) -> String {
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.to_string())).collect();
    let new_order = match profile {
        Some(profile) => NewOrder::new(&identifiers).profile(profile),
        None => NewOrder::new(&identifiers),
    };
    let mut order = account.new_order(&new_order).await.expect("new order");
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.expect("authorization");
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        assert_eq!(authz.status, AuthorizationStatus::Pending);
        let mut challenge = authz.challenge(ChallengeType::Http01).expect("http-01 offered");
        let key_authorization = challenge.key_authorization();
        stack.challtestsrv.state.add_http01(&challenge.token, key_authorization.as_str());
        challenge.set_ready().await.expect("challenge ready");
    }
    let status =
        order.poll_ready(&retry()).await.unwrap_or_else(|e| panic!("poll ready: {e}{}", logs(stack.dir.path())));
    assert_eq!(status, OrderStatus::Ready);
    order.finalize_csr(csr).await.expect("finalize");
    order.poll_certificate(&retry()).await.expect("certificate")
}

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
async fn every_service_is_its_own_process_and_peers_are_held_to_their_allowlists() {
    let stack = Stack::start().await;
    let pid = stack._process.id().expect("dev pid");
    let mut services: Vec<String> = children(pid).into_iter().map(|(_, service)| service).collect();
    services.sort();
    // The primary va and two remote perspectives: the same `quarry va`, three processes.
    assert_eq!(services, ["ca", "crl-updater", "nonce", "publisher", "ra", "sa", "va", "va", "va", "wfe"]);

    // The deployed configuration lets the wfe read from the sa but not write to it.
    let rendered = std::fs::read_to_string(stack.data_dir().join("config/sa.toml")).expect("sa config");
    let sa_config: quarry_sa::Config = quarry_core::config::parse(&rendered, "sa.toml").expect("sa config parses");
    let pki = stack.data_dir().join("pki");
    let wfe_tls = quarry_core::config::TlsFiles::new(
        pki.join("internal/wfe.pem"),
        pki.join("internal/wfe.key.pem"),
        pki.join("internal/internal-ca.pem"),
    );
    let client = quarry_core::config::GrpcClientConfig::at(format!("https://{}", sa_config.grpc.listen), "sa.quarry");
    let channel = quarry_core::grpc::channel(&client, &wfe_tls).expect("channel");
    let mut read_write = quarry_proto::sa::storage_authority_client::StorageAuthorityClient::new(channel.clone());
    let refused = read_write
        .add_serial(quarry_proto::sa::AddSerialRequest {
            account_id: 1,
            serial: "01".into(),
            created: 0,
            expires: 0,
            order_id: 0,
        })
        .await
        .expect_err("the wfe may not write");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // Every service answers the gRPC health check with what it serves.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["quarry.sa.v1.StorageAuthority", "quarry.sa.v1.StorageAuthorityReadOnly"] {
        let check = tonic_health::pb::HealthCheckRequest { service: service.into() };
        let status = health.check(check).await.expect("health check").into_inner().status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}");
    }
    let mut read_only =
        quarry_proto::sa::storage_authority_read_only_client::StorageAuthorityReadOnlyClient::new(channel);
    let missing =
        read_only.get_account(quarry_proto::sa::AccountId { id: 999_999 }).await.expect_err("no such account");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // `quarry health`, the containers' and pods' probe, says every service is ready, over its own identity.
    let config = |service: &str| stack.data_dir().join(format!("config/{service}.toml"));
    let quarry = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_quarry")).args(args).output().expect("run quarry")
    };
    for service in ["nonce", "sa", "va-remote-a", "va-remote-b", "va", "publisher", "ca", "ra"] {
        for live in [None, Some("--live")] {
            let config = config(service);
            let mut args: Vec<&std::ffi::OsStr> =
                vec!["health".as_ref(), service.as_ref(), "--config".as_ref(), config.as_os_str()];
            args.extend(live.map(std::ffi::OsStr::new));
            let out = quarry(&args);
            assert!(out.status.success(), "{service} {live:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let out = quarry(&[
        "health".as_ref(),
        "wfe".as_ref(),
        "--config".as_ref(),
        config("wfe").as_os_str(),
        "--https-ca".as_ref(),
        stack.tls_ca_pem.as_os_str(),
    ]);
    assert!(out.status.success(), "wfe: {}", String::from_utf8_lossy(&out.stderr));
    // A service that is not there is not healthy, and the probe says where it looked.
    let gone = stack.dir.path().join("gone.toml");
    let port = free_port();
    std::fs::write(&gone, rendered.replace(&sa_config.grpc.listen.to_string(), &format!("127.0.0.1:{port}"))).unwrap();
    let out = quarry(&["health".as_ref(), "sa".as_ref(), "--config".as_ref(), gone.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port}")), "{out:?}");
    // The deployment's migration step is idempotent: on the running sa's database it has nothing to do.
    let out = quarry(&["migrate".as_ref(), "--config".as_ref(), config("sa").as_os_str()]);
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
}

/// A new order of `account` for `name`, with the project's client; returns its URL and the order.
pub(crate) async fn new_order(
    client: &quarry_testkit::client::AcmeClient,
    account: &quarry_testkit::client::AcmeAccount,
    name: &str,
) -> (String, serde_json::Value) {
    let identifiers = serde_json::json!({"identifiers": [{"type": "dns", "value": name}]});
    let created = client.post(account, &client.url("newOrder"), Some(&identifiers)).await.expect("new order");
    assert_eq!(created.status, 201, "{name}: {}", String::from_utf8_lossy(&created.body));
    (created.header("location").expect("order location"), created.json())
}

/// Answers the http-01 challenge of `order`'s first authorization, its key authorization served by the stack's
/// challenge server; returns the authorization's URL.
pub(crate) async fn answer_http01(
    stack: &Stack,
    client: &quarry_testkit::client::AcmeClient,
    account: &quarry_testkit::client::AcmeAccount,
    order: &serde_json::Value,
) -> String {
    let authz_url = order["authorizations"][0].as_str().expect("authorization").to_owned();
    let authz = client.post(account, &authz_url, None).await.expect("authorization").json();
    let challenge = authz["challenges"].as_array().unwrap().iter().find(|c| c["type"] == "http-01").expect("http-01");
    let token = challenge["token"].as_str().unwrap();
    stack.challtestsrv.state.add_http01(token, &quarry_jose::key_authorization(token, &account.key.jwk()));
    let url = challenge["url"].as_str().unwrap();
    let answered = client.post(account, url, Some(&serde_json::json!({}))).await.expect("answer challenge");
    assert_eq!(answered.status, 200, "{}", String::from_utf8_lossy(&answered.body));
    authz_url
}

/// An order for `name`, its http-01 challenge answered through the stack's challenge server, ready to finalize;
/// returns its URL and the order.
pub(crate) async fn ready_order(
    stack: &Stack,
    client: &quarry_testkit::client::AcmeClient,
    account: &quarry_testkit::client::AcmeAccount,
    name: &str,
) -> (String, serde_json::Value) {
    let (order_url, order) = new_order(client, account, name).await;
    answer_http01(stack, client, account, &order).await;
    let order = client
        .poll(account, &order_url, 300, |o| o["status"] == "ready")
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}{}", logs(stack.dir.path())));
    (order_url, order)
}

/// Registers an account with an `alg` key and obtains a certificate for `name` over http-01, with the project's client.
async fn issue_with_own_client(stack: &Stack, alg: quarry_jose::Algorithm, name: &str) {
    use quarry_testkit::client::{AcmeAccount, AcmeClient};
    use serde_json::json;
    let client = AcmeClient::new(&stack.directory_url, Some(&stack.tls_ca_pem)).await.expect("directory over HTTPS");
    let mut account = AcmeAccount::generate(alg);
    client.register(&mut account).await.expect("register");
    let (_, order) = ready_order(stack, &client, &account, name).await;
    let csr = quarry_jose::b64_encode(&csr_for(&[name]));
    let done = client.post(&account, order["finalize"].as_str().unwrap(), Some(&json!({"csr": csr}))).await.unwrap();
    assert_eq!(done.json()["status"], "valid", "{alg:?}");
    let chain = client.post(&account, done.json()["certificate"].as_str().unwrap(), None).await.unwrap();
    check_chain(&String::from_utf8_lossy(&chain.body), &stack.root_pem, &[name]);
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

/// Readiness is each service's own health check, not an open port: an sa whose database is unreachable keeps
/// `quarry dev` from saying it runs, and it stops, naming the sa and its log.
#[tokio::test]
async fn quarry_dev_is_not_ready_while_a_service_is_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_port_range();
    let closed = free_port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("dev")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--db", &format!("postgres://quarry@127.0.0.1:{closed}/quarry"), "--start-timeout-secs", "8"])
        .args(["--grpc-base-port", &ports.to_string(), "--va-dns", "127.0.0.1:9"])
        .args(["--acme-addr", &format!("127.0.0.1:{}", ports + 9), "--crl-addr", &format!("127.0.0.1:{}", ports + 7)])
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(60), out).await.expect("quarry dev gave up in time").expect("ran");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sa is not ready") && stderr.contains("sa.log"), "{stderr}");
    assert!(!dir.path().join("stack.json").exists(), "a stack that is not ready has no stack file");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Quarry is running"));
}

#[tokio::test]
async fn services_stop_when_quarry_dev_is_killed() {
    let mut stack = Stack::start().await;
    let pid = stack._process.id().expect("dev pid");
    let services = children(pid);
    assert_eq!(services.len(), 10, "{services:?}");
    stack._process.kill().await.expect("SIGKILL quarry dev");
    let started = Instant::now();
    // A zombie (state Z) has exited; whoever adopted it just has not reaped it yet.
    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()).map(str::to_owned))
            .is_some_and(|state| state != "Z" && state != "X")
    };
    let alive = || services.iter().filter(|(pid, _)| running(pid)).map(|(_, name)| name.clone()).collect::<Vec<_>>();
    while !alive().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?} outlived quarry dev{}",
            alive(),
            logs(stack.dir.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// A plain HTTP/1.1 GET of `url` (`http://host:port/path`); returns the status and body.
pub(crate) async fn http_get(url: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest.split_at(rest.find('/').expect("path"));
    let mut stream = tokio::net::TcpStream::connect(authority).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("headers end");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("status");
    (status, response[split + 4..].to_vec())
}

/// The certificate's CRL distribution point URL.
fn crl_url(cert: &X509Certificate<'_>) -> String {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(points) => points.iter().find_map(|p| match &p.distribution_point {
                Some(DistributionPointName::FullName(names)) => names.iter().find_map(|n| match n {
                    GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                }),
                _ => None,
            }),
            _ => None,
        })
        .expect("a CRL distribution point")
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
            authz.challenge(ChallengeType::Http01).expect("http-01").set_ready().await.expect("ready");
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

/// Every service exports its spans to a collector: the challenge request is one trace through the wfe, the ra, the
/// primary va and both remote perspectives and the sa; the finalize request one trace through the wfe, the ra, the
/// ca, the sa and the publisher.
#[tokio::test]
async fn one_acme_request_is_one_trace_across_every_service() {
    let receiver = quarry_testkit::otlp::OtlpReceiver::start().await;
    let stack = Stack::start_with_args(None, None, &["--otlp-endpoint".into(), receiver.endpoint.clone()]).await;
    let account = stack.instant_acme_account().await;
    let names = ["traced.quarry-test.org"];
    issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;

    // The trace of the wfe span whose path starts with `prefix`, with the services of its spans and their count.
    let trace_of = |prefix: &str| {
        let spans = receiver.spans();
        let root =
            spans.iter().find(|s| s.service == "wfe" && s.attribute("path").is_some_and(|p| p.starts_with(prefix)))?;
        let mut services: Vec<String> =
            spans.iter().filter(|s| s.trace_id == root.trace_id).map(|s| s.service.clone()).collect();
        services.sort();
        Some(services)
    };
    let covers = |services: &[String], wanted: &[&str]| wanted.iter().all(|w| services.iter().any(|s| s == w));
    let started = Instant::now();
    let (challenge, finalize) = loop {
        let challenge = trace_of("/acme/chall/").unwrap_or_default();
        let finalize = trace_of("/acme/finalize/").unwrap_or_default();
        let vas = challenge.iter().filter(|s| *s == "va").count();
        if covers(&challenge, &["wfe", "ra", "sa"])
            && vas >= 3
            && covers(&finalize, &["wfe", "ra", "ca", "sa", "publisher"])
        {
            break (challenge, finalize);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "traces incomplete: challenge {challenge:?}, finalize {finalize:?}; {} spans in all",
            receiver.spans().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!challenge.iter().any(|s| s == "ca"), "the challenge trace reached the ca: {challenge:?}");
    assert!(!finalize.iter().any(|s| s == "va"), "the finalize trace reached the va: {finalize:?}");
}

/// Runs `quarry admin` against the stack: whether it succeeded, and what it printed (stdout, then stderr).
fn quarry_admin(stack: &Stack, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("admin")
        .arg("--config")
        .arg(stack.data_dir().join("config/admin.toml"))
        .args(args)
        .output()
        .expect("run quarry admin");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// The sum of the samples of `name` in Prometheus text whose labels include every one of `labels`.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            let matches =
                series_name == name && labels.iter().all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Every service serves Prometheus metrics on its own debug port, and they move as a certificate is issued:
/// ACME requests by endpoint, validations by challenge and perspective, issuance by profile, gRPC calls by method
/// and code, rate-limit decisions, and the database pool.
#[tokio::test]
async fn every_service_serves_metrics_that_move_with_issuance() {
    let metrics_base = free_port_range();
    let stack = Stack::start_with_args(None, None, &["--metrics-base-port".into(), metrics_base.to_string()]).await;
    let scrape = |index: u16| async move {
        let (status, body) = http_get(&format!("http://127.0.0.1:{}/metrics", metrics_base + index)).await;
        assert_eq!(status, 200);
        String::from_utf8(body).expect("text")
    };
    // Indexes in `quarry dev`'s order: nonce, sa, va-remote-a, va-remote-b, va, publisher, ca, crl-updater, ra, wfe.
    let (sa, remote_a, va, publisher, ca, crl_updater, ra, wfe) = (1, 2, 4, 5, 6, 7, 8, 9);
    assert_eq!(metric(&scrape(ca).await, "quarry_certificates_issued_total", &[]), 0.0);

    let account = stack.instant_acme_account().await;
    let names = ["metered.quarry-test.org"];
    issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;

    let wfe_text = scrape(wfe).await;
    let finalized = [("endpoint", "finalize"), ("method", "POST"), ("status", "200")];
    assert_eq!(metric(&wfe_text, "quarry_acme_requests_total", &finalized), 1.0, "{wfe_text}");
    assert!(metric(&wfe_text, "quarry_acme_request_duration_seconds_count", &[("endpoint", "new-order")]) >= 1.0);
    let issued = [("profile", "classic")];
    assert_eq!(metric(&scrape(ca).await, "quarry_certificates_issued_total", &issued), 1.0);
    let valid = [("challenge", "http-01"), ("result", "valid")];
    assert_eq!(
        metric(&scrape(va).await, "quarry_validations_total", &[("perspective", "primary"), valid[0], valid[1]]),
        1.0
    );
    assert_eq!(
        metric(&scrape(remote_a).await, "quarry_validations_total", &[("perspective", "remote-a"), valid[0], valid[1]]),
        1.0
    );
    let sa_text = scrape(sa).await;
    let stored = [("rpc", "/quarry.sa.v1.StorageAuthority/AddCertificate"), ("code", "Ok")];
    assert_eq!(metric(&sa_text, "quarry_grpc_server_requests_total", &stored), 1.0, "{sa_text}");
    assert!(sa_text.contains("quarry_db_pool_connections{state=\"idle\"}"), "{sa_text}");
    let called = [("rpc", "/quarry.ra.v1.RegistrationAuthority/NewOrder"), ("code", "Ok")];
    assert_eq!(metric(&wfe_text, "quarry_grpc_client_requests_total", &called), 1.0, "{wfe_text}");
    let nonce_text = scrape(0).await;
    assert!(metric(&nonce_text, "quarry_nonces_minted_total", &[]) >= 5.0, "{nonce_text}");
    assert!(metric(&nonce_text, "quarry_nonce_redemptions_total", &[("result", "valid")]) >= 5.0, "{nonce_text}");
    let spent = [("limit", "NewOrdersPerAccount"), ("action", "spend"), ("decision", "allowed")];
    assert_eq!(metric(&scrape(ra).await, "quarry_ratelimit_decisions_total", &spent), 1.0);
    // CT per log: the precertificate went to both of the stack's logs (final certificates go on later, unawaited).
    let publisher_text = scrape(publisher).await;
    let submitted = [("kind", "precertificate"), ("result", "ok")];
    assert_eq!(metric(&publisher_text, "quarry_ct_submissions_total", &submitted), 2.0, "{publisher_text}");
    assert!(metric(&publisher_text, "quarry_ct_submission_seconds_count", &[("kind", "precertificate")]) >= 2.0);
    // The crl-updater marks its complete passes (every 10 s in dev; the first may have met an sa still starting).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let text = scrape(crl_updater).await;
        let completed = metric(&text, "quarry_crl_last_complete_pass_timestamp_seconds", &[]);
        if completed > 0.0 {
            assert!(metric(&text, "quarry_crl_shard_updates_total", &[("result", "updated")]) >= 1.0, "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no complete CRL pass within 40 s: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every process says which build it runs: the binary's commit.
    let (_, commit, _) = binary_build();
    for index in 0..10 {
        let text = scrape(index).await;
        assert_eq!(metric(&text, "quarry_build_info", &[("commit", &commit)]), 1.0, "process {index}: {text}");
    }
}

/// `quarry --version`: the version, the commit and its date, as (version, commit, date).
fn binary_build() -> (String, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quarry")).arg("--version").output().expect("run");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    // quarry 0.1.0 (commit 0123456789ab, 2026-12-04)
    let (version, rest) = text.trim().trim_start_matches("quarry ").split_once(" (commit ").expect("a commit");
    let (commit, date) = rest.trim_end_matches(')').split_once(", ").expect("a date");
    (version.to_owned(), commit.to_owned(), date.to_owned())
}

/// The binary names the commit it was built from, as git sees the checkout, and the wfe's health answer says it.
#[tokio::test]
async fn the_binary_names_the_commit_it_was_built_from() {
    let (version, commit, date) = binary_build();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let head = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output();
    match head.ok().filter(|out| out.status.success()) {
        Some(out) => {
            let head = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert_eq!(commit, head, "built from {commit}, checkout at {head}");
            assert_eq!(date.len(), 10, "{date}");
        }
        None => assert_eq!(commit, "unknown"),
    }
    let stack = Stack::start().await;
    let health = stack.directory_url.replace("/directory", "/healthz");
    let client = quarry_testkit::client::AcmeClient::new(&stack.directory_url, Some(&stack.tls_ca_pem)).await.unwrap();
    let answer = client.request(http::Method::GET, &health, None, Vec::new()).await.unwrap().json();
    assert_eq!(
        (answer["version"].as_str(), answer["commit"].as_str()),
        (Some(version.as_str()), Some(commit.as_str()))
    );
}

/// SIGTERM while a validation is pending: the ra stops taking calls but lets the validation finish and records its
/// outcome before it exits, so that the authorization is never left pending for ever.
#[tokio::test]
async fn a_validation_in_flight_when_the_ra_is_stopped_is_recorded() {
    let stack = Stack::start().await;
    // The name resolves to 127.0.0.2, where a server accepts the va's http-01 connection and never answers.
    let http_port = stack.challtestsrv.http01_addr.expect("http01").port();
    let silent = tokio::net::TcpListener::bind(("127.0.0.2", http_port)).await.expect("bind 127.0.0.2");
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let name = "stalled.quarry-test.org";
    stack.challtestsrv.state.add_a(name, [std::net::Ipv4Addr::new(127, 0, 0, 2)]);

    let account = stack.instant_acme_account().await;
    let mut order = account.new_order(&NewOrder::new(&[Identifier::Dns(name.into())])).await.expect("new order");
    let mut authorizations = order.authorizations();
    let mut authz = authorizations.next().await.expect("one authorization").expect("authorization");
    let mut challenge = authz.challenge(ChallengeType::Http01).expect("http-01 offered");
    challenge.set_ready().await.expect("challenge ready");

    let dev = stack._process.id().expect("dev pid");
    let (ra, _) = children(dev).into_iter().find(|(_, service)| service == "ra").expect("ra process");
    let sent = std::process::Command::new("kill").args(["-TERM", &ra.to_string()]).status().expect("kill");
    assert!(sent.success());
    let started = Instant::now();
    while Path::new(&format!("/proc/{ra}")).exists()
        && !std::fs::read_to_string(format!("/proc/{ra}/stat")).unwrap_or_default().contains(") Z")
    {
        assert!(started.elapsed() < Duration::from_secs(40), "the ra did not stop{}", logs(stack.dir.path()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    held.abort();

    let db = stack.data_dir().join("quarry.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await.expect("open db");
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, validation_error FROM authorizations WHERE identifier_value = ?")
            .bind(name)
            .fetch_one(&pool)
            .await
            .expect("the authorization");
    assert_eq!(status, "invalid", "{}", logs(stack.dir.path()));
    assert!(error.is_some_and(|e| !e.is_empty()), "the failure says why");
    let ra_log = std::fs::read_to_string(stack.data_dir().join("logs/ra.log")).expect("ra log");
    assert!(ra_log.contains("event=\"validation-result\""), "{ra_log}");
}

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

    let (code, said, prometheus) = probe(&[]).await;
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
