//! The full stack as `quarry dev` runs it, every service its own process talking gRPC over mutual TLS, driven by
//! ACME clients: instant-acme (ES256 accounts) and the project's own client (any account key type). This file is
//! the harness (a stack started and stopped, clients, checks); the tests are in the files beside it, by subject.

mod issuance;
mod limits;
mod observability;
mod processes;
mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use quarry_testkit::challtestsrv::{ChallTestSrv, Config as ChallConfig, RunningServer};
use x509_parser::prelude::*;

/// How long a whole stack may take to come up.
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

/// `quarry --version`: the version, the commit and its date, as (version, commit, date).
fn binary_build() -> (String, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quarry")).arg("--version").output().expect("run");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    // quarry 0.1.0 (commit 0123456789ab, 2026-12-04)
    let (version, rest) = text.trim().trim_start_matches("quarry ").split_once(" (commit ").expect("a commit");
    let (commit, date) = rest.trim_end_matches(')').split_once(", ").expect("a date");
    (version.to_owned(), commit.to_owned(), date.to_owned())
}
