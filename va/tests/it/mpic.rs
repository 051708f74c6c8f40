//! Multi-perspective validation: a primary va and remote vas, each a gRPC server over mutual TLS with its own
//! resolver and challenge server, so that perspectives really see different answers and the quorum decides.

use std::net::SocketAddr;

use quarry_core::{ErrorKind, Identifier};
use quarry_proto::va::va_client::VaClient;
use quarry_proto::va::{CaaRequest, DcvRequest};
use quarry_testkit::challtestsrv::{CaaPolicy, RunningServer};
use quarry_testkit::fakes::FakeVa;
use quarry_testkit::pki::TestPki;
use quarry_va::{Config, RemoteConfig};

use crate::{KEY_AUTHORIZATION, SERVICE, challenge_server, config};

async fn serve(config: Config) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(quarry_va::serve(config, listener, std::future::pending()));
    addr
}

/// A remote va named `perspective` in `rir`, validating against `srv`; only the primary ("va") may call it.
async fn remote(pki: &TestPki, srv: &RunningServer, perspective: &str, rir: &str) -> RemoteConfig {
    let config = Config {
        telemetry: Default::default(),
        lane: None,
        grpc: pki.server_config(&[(SERVICE, &["va"])]),
        perspective: perspective.into(),
        rir: rir.into(),
        ..config(pki, srv)
    };
    let addr = serve(config).await;
    RemoteConfig { grpc: pki.client_config("va", addr), perspective: perspective.into(), rir: rir.into() }
}

/// A primary validating against `srv`, with `remotes`; returns a client as the ra.
async fn primary(
    pki: &TestPki,
    srv: &RunningServer,
    remotes: Vec<RemoteConfig>,
) -> VaClient<quarry_core::grpc::Channel> {
    let addr = serve(Config { remotes, ..config(pki, srv) }).await;
    VaClient::new(pki.channel("ra", "va", addr))
}

fn dcv(token: &str) -> DcvRequest {
    DcvRequest {
        identifier: Some((&Identifier::dns("mpic.example.org")).into()),
        challenge_type: "http-01".into(),
        token: token.into(),
        expected_key_authorization: KEY_AUTHORIZATION.into(),
        authorization_id: 1,
        account_id: 1,
        caa: None,
    }
}

/// The problem of a validation through `client`, if any.
async fn outcome(client: &mut VaClient<quarry_core::grpc::Channel>, token: &str) -> Option<quarry_core::Problem> {
    let result = client.do_dcv(dcv(token)).await.expect("an answer").into_inner();
    assert_eq!(result.perspective, "primary");
    result.problem.as_ref().map(quarry_core::Problem::from)
}

#[tokio::test]
async fn the_quorum_of_remote_perspectives_decides() {
    let pki = TestPki::new();
    // Two views of the world: `seen` answers the challenge, `unseen` does not.
    let seen = challenge_server().await;
    seen.state.add_http01("token", KEY_AUTHORIZATION);
    let unseen = challenge_server().await;

    let a = remote(&pki, &seen, "remote-a", "RIPE").await;
    let b = remote(&pki, &seen, "remote-b", "APNIC").await;
    let c = remote(&pki, &seen, "remote-c", "ARIN").await;
    let c_blind = remote(&pki, &unseen, "remote-c", "ARIN").await;
    let b_blind = remote(&pki, &unseen, "remote-b", "APNIC").await;

    let mut all_agree = primary(&pki, &seen, vec![a.clone(), b.clone(), c.clone()]).await;
    assert_eq!(outcome(&mut all_agree, "token").await, None);

    // One of three may fail.
    let mut one_blind = primary(&pki, &seen, vec![a.clone(), b.clone(), c_blind.clone()]).await;
    assert_eq!(outcome(&mut one_blind, "token").await, None);

    // Two of three may not: the remote's problem reaches the client, marked as secondary.
    let mut two_blind = primary(&pki, &seen, vec![a.clone(), b_blind, c_blind]).await;
    let problem = outcome(&mut two_blind, "token").await.expect("the quorum fails");
    assert_eq!(problem.kind, ErrorKind::Unauthorized, "{problem:?}");
    assert!(problem.detail.starts_with("During secondary validation: "), "{}", problem.detail);

    // Successes from one RIR are not enough.
    let same_rir = [
        remote(&pki, &seen, "remote-x", "ARIN").await,
        remote(&pki, &seen, "remote-y", "ARIN").await,
        remote(&pki, &seen, "remote-z", "ARIN").await,
    ];
    let mut one_rir = primary(&pki, &seen, same_rir.to_vec()).await;
    let problem = outcome(&mut one_rir, "token").await.expect("one RIR fails");
    assert!(problem.detail.contains("fewer than two RIRs"), "{}", problem.detail);

    // A remote answering under another name counts as a failure.
    let impostor = RemoteConfig { perspective: "remote-q".into(), ..a.clone() };
    let mut mismatched = primary(&pki, &seen, vec![impostor, b.clone()]).await;
    let problem = outcome(&mut mismatched, "token").await.expect("a mismatched perspective fails");
    assert!(problem.detail.contains("answered as remote-a"), "{}", problem.detail);
}

#[tokio::test]
async fn remotes_are_asked_only_after_the_primary_passes() {
    let pki = TestPki::new();
    let primary_view = challenge_server().await;
    let remote_view = challenge_server().await;
    remote_view.state.add_http01("token", KEY_AUTHORIZATION);
    let remotes = vec![
        remote(&pki, &remote_view, "remote-a", "RIPE").await,
        remote(&pki, &remote_view, "remote-b", "APNIC").await,
    ];
    let mut client = primary(&pki, &primary_view, remotes).await;
    let problem = outcome(&mut client, "token").await.expect("the primary fails");
    assert!(!problem.detail.contains("secondary"), "{}", problem.detail);
    assert!(remote_view.state.http_request_history("mpic.example.org").is_empty(), "no remote was asked");
}

#[tokio::test]
async fn caa_is_checked_from_every_perspective() {
    let pki = TestPki::new();
    let allowing = challenge_server().await;
    let denying = challenge_server().await;
    let issue = |value: &str| CaaPolicy { flags: 0, tag: "issue".into(), value: value.into() };
    allowing.state.add_caa("mpic.example.org", [issue(crate::CA_IDENTITY)]).unwrap();
    denying.state.add_caa("mpic.example.org", [issue("other-ca.example")]).unwrap();
    let remotes =
        vec![remote(&pki, &allowing, "remote-a", "RIPE").await, remote(&pki, &denying, "remote-b", "APNIC").await];
    let mut client = primary(&pki, &allowing, remotes).await;
    let result = client.do_caa(caa()).await.unwrap().into_inner();
    let problem = quarry_core::Problem::from(result.problem.as_ref().expect("a remote saw a denying CAA set"));
    assert_eq!(problem.kind, ErrorKind::Caa);
    assert!(problem.detail.starts_with("During secondary validation: CAA record for"), "{}", problem.detail);
}

fn caa() -> CaaRequest {
    CaaRequest {
        identifier: Some((&Identifier::dns("mpic.example.org")).into()),
        validation_method: "http-01".into(),
        account_uri: "https://ca.quarry.test/acme/acct/1".into(),
        ..Default::default()
    }
}

/// A validation may carry its CAA check: every perspective checks both in one call, and a perspective passes only
/// if both pass.
#[tokio::test]
async fn caa_rides_along_with_the_validation_at_every_perspective() {
    let pki = TestPki::new();
    let issue = |value: &str| CaaPolicy { flags: 0, tag: "issue".into(), value: value.into() };
    let view = |caa_value: &'static str| async move {
        let srv = challenge_server().await;
        srv.state.add_http01("token", KEY_AUTHORIZATION);
        srv.state.add_caa("mpic.example.org", [issue(caa_value)]).unwrap();
        srv
    };
    let allowing = view(crate::CA_IDENTITY).await;
    let denying = view("other-ca.example").await;
    let with_caa = DcvRequest { caa: Some(caa()), ..dcv("token") };

    let agreeing =
        vec![remote(&pki, &allowing, "remote-a", "RIPE").await, remote(&pki, &allowing, "remote-b", "APNIC").await];
    let mut client = primary(&pki, &allowing, agreeing.clone()).await;
    let result = client.do_dcv(with_caa.clone()).await.unwrap().into_inner();
    assert_eq!(result.problem, None);
    assert!(result.caa_checked, "the answer says CAA was checked");
    let without = client.do_dcv(dcv("token")).await.unwrap().into_inner();
    assert!(!without.caa_checked, "nothing said about CAA when it was not asked for");

    // A remote that proves control but sees a denying CAA set fails the quorum of two.
    let split =
        vec![remote(&pki, &allowing, "remote-a", "RIPE").await, remote(&pki, &denying, "remote-b", "APNIC").await];
    let mut client = primary(&pki, &allowing, split).await;
    let result = client.do_dcv(with_caa.clone()).await.unwrap().into_inner();
    let problem = quarry_core::Problem::from(result.problem.as_ref().expect("a remote's CAA denies"));
    assert_eq!(problem.kind, ErrorKind::Caa);
    assert!(problem.detail.starts_with("During secondary validation: CAA record for"), "{}", problem.detail);

    // The primary's own denial ends it before any remote is asked.
    let mut client = primary(&pki, &denying, agreeing).await;
    let asked_before = allowing.state.http_request_history("mpic.example.org").len();
    let result = client.do_dcv(with_caa).await.unwrap().into_inner();
    let problem = quarry_core::Problem::from(result.problem.as_ref().expect("the primary's CAA denies"));
    assert_eq!(problem.kind, ErrorKind::Caa);
    assert!(!problem.detail.contains("secondary"), "{}", problem.detail);
    let asked_after = allowing.state.http_request_history("mpic.example.org").len();
    assert_eq!(asked_after, asked_before, "no remote was asked");
}

/// A remote older than CAA in `DoDCV` passes the validation without checking CAA: the primary asks it `DoCAA` apart
/// and counts that answer.
#[tokio::test]
async fn a_remote_too_old_for_caa_in_the_validation_is_asked_apart() {
    let pki = TestPki::new();
    let allowing = challenge_server().await;
    allowing.state.add_http01("token", KEY_AUTHORIZATION);
    let issue = CaaPolicy { flags: 0, tag: "issue".into(), value: crate::CA_IDENTITY.into() };
    allowing.state.add_caa("mpic.example.org", [issue]).unwrap();
    let older = FakeVa::default();
    older.answer_as_older_va(true);
    let older_addr = older.start_as_remote(&pki, "remote-b", "APNIC").await;
    let remotes = vec![
        remote(&pki, &allowing, "remote-a", "RIPE").await,
        RemoteConfig { grpc: pki.client_config("va", older_addr), perspective: "remote-b".into(), rir: "APNIC".into() },
    ];
    let mut client = primary(&pki, &allowing, remotes).await;
    let with_caa = DcvRequest { caa: Some(caa()), ..dcv("token") };

    let result = client.do_dcv(with_caa.clone()).await.unwrap().into_inner();
    assert_eq!(result.problem, None);
    assert_eq!(older.caa_requests().len(), 1, "the older remote was asked DoCAA apart");

    older.caa(Some(quarry_core::Problem::new(ErrorKind::Caa, "CAA record for mpic.example.org prevents issuance")));
    let result = client.do_dcv(with_caa).await.unwrap().into_inner();
    let problem = quarry_core::Problem::from(result.problem.as_ref().expect("the older remote's CAA denies"));
    assert_eq!(problem.kind, ErrorKind::Caa);
    assert!(problem.detail.starts_with("During secondary validation: "), "{}", problem.detail);
}

/// The CAA part must name the identifier being validated.
#[tokio::test]
async fn a_caa_check_for_another_identifier_is_refused() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let mut client = primary(&pki, &srv, Vec::new()).await;
    let other = CaaRequest { identifier: Some((&Identifier::dns("other.example.org")).into()), ..caa() };
    let status = client.do_dcv(DcvRequest { caa: Some(other), ..dcv("token") }).await.unwrap_err();
    assert_eq!(quarry_core::Problem::from(status).kind, ErrorKind::Malformed);
}
