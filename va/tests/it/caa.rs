//! CAA through the challenge test server's DNS: the record set found climbing the tree decides, as RFC 8659 and
//! RFC 8657 say.

use quarry_core::{ErrorKind, Identifier};
use quarry_testkit::challtestsrv::CaaPolicy;
use quarry_testkit::pki::TestPki;

use crate::{CA_IDENTITY, authority, challenge_server, config};

const ACCOUNT: &str = "https://ca.quarry.test/acme/acct/42";

fn issue(value: &str) -> CaaPolicy {
    CaaPolicy { flags: 0, tag: "issue".into(), value: value.into() }
}

#[tokio::test]
async fn caa_outcomes() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let va = authority(&config(&pki, &srv));
    let state = &srv.state;
    state.add_caa("allowed.example.org", [issue(CA_IDENTITY)]).unwrap();
    state.add_caa("denied.example.org", [issue("other-ca.example")]).unwrap();
    // A record set on the parent governs every name below it that has none of its own.
    state.add_caa("parent.example.org", [issue("other-ca.example")]).unwrap();
    state.add_caa("own.parent.example.org", [issue(CA_IDENTITY)]).unwrap();
    state
        .add_caa(
            "wild.example.org",
            [issue(CA_IDENTITY), CaaPolicy { flags: 0, tag: "issuewild".into(), value: ";".into() }],
        )
        .unwrap();
    state.add_caa("account.example.org", [issue(&format!("{CA_IDENTITY}; accounturi={ACCOUNT}"))]).unwrap();
    state.add_caa("method.example.org", [issue(&format!("{CA_IDENTITY}; validationmethods=dns-01"))]).unwrap();
    state
        .add_caa(
            "critical.example.org",
            [issue(CA_IDENTITY), CaaPolicy { flags: 128, tag: "future".into(), value: "x".into() }],
        )
        .unwrap();
    state.set_servfail("broken.example.org");
    // RFC 8659 §3: the CAA lookup follows a CNAME to the records of its target.
    state.set_cname("alias.example.org", "denied.example.org").unwrap();

    let cases: &[(&str, bool, &str, &str, Option<ErrorKind>)] = &[
        ("no-caa.example.org", false, "http-01", ACCOUNT, None),
        ("allowed.example.org", false, "http-01", ACCOUNT, None),
        ("denied.example.org", false, "http-01", ACCOUNT, Some(ErrorKind::Caa)),
        ("deep.below.parent.example.org", false, "http-01", ACCOUNT, Some(ErrorKind::Caa)),
        ("own.parent.example.org", false, "http-01", ACCOUNT, None),
        ("wild.example.org", false, "dns-01", ACCOUNT, None),
        ("wild.example.org", true, "dns-01", ACCOUNT, Some(ErrorKind::Caa)),
        ("account.example.org", false, "http-01", ACCOUNT, None),
        ("account.example.org", false, "http-01", "https://ca.quarry.test/acme/acct/43", Some(ErrorKind::Caa)),
        ("method.example.org", false, "dns-01", ACCOUNT, None),
        ("method.example.org", false, "http-01", ACCOUNT, Some(ErrorKind::Caa)),
        ("critical.example.org", false, "http-01", ACCOUNT, Some(ErrorKind::Caa)),
        ("broken.example.org", false, "http-01", ACCOUNT, Some(ErrorKind::Dns)),
        ("alias.example.org", false, "http-01", ACCOUNT, Some(ErrorKind::Caa)),
    ];
    for (name, wildcard, method, account, expected) in cases {
        let problem = va.check_caa(&Identifier::dns(*name), *wildcard, method, account, None).await;
        assert_eq!(problem.as_ref().map(|p| p.kind), *expected, "{name} wildcard={wildcard} {method}: {problem:?}");
        if let Some(problem) = problem.filter(|p| p.kind == ErrorKind::Caa) {
            assert!(problem.detail.contains("CAA record for"), "{}", problem.detail);
        }
    }
    // IP identifiers have no CAA.
    let ip = Identifier::ip("127.0.0.1".parse().unwrap());
    assert_eq!(va.check_caa(&ip, false, "http-01", ACCOUNT, None).await, None);
}
