//! The stack as processes: each service its own, held to its peers' allowlists, supervised, stopped with its
//! supervisor, and a validation in flight when the ra stops.

use super::*;

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
