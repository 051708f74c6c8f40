//! dns-01 through the challenge test server's DNS.

use quarry_core::{ErrorKind, Identifier};
use quarry_testkit::pki::TestPki;

use crate::{Expect, KEY_AUTHORIZATION, authority, challenge_server, check, config};

#[tokio::test]
async fn dns01_outcomes() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let config = config(&pki, &srv);
    let va = authority(&config);
    let value = quarry_jose::dns01_txt_value(KEY_AUTHORIZATION);
    let state = &srv.state;
    state.set_txt("_acme-challenge.one.example.org.", &value);
    state.set_txt("_acme-challenge.two.example.org.", "unrelated");
    state.set_txt("_acme-challenge.two.example.org.", &value);
    state.set_txt("_acme-challenge.bad.example.org.", "unrelated");
    state.set_txt("_acme-challenge.bad.example.org.", "also-unrelated");
    state.set_cname("_acme-challenge.alias.example.org", "_acme-challenge.one.example.org").unwrap();
    state.set_servfail("_acme-challenge.broken.example.org");
    let cases: &[(&str, Expect)] = &[
        ("one.example.org", Expect::Pass),
        ("two.example.org", Expect::Pass),
        ("alias.example.org", Expect::Pass),
        ("*.one.example.org", Expect::Pass),
        (
            "bad.example.org",
            Expect::Fail(ErrorKind::IncorrectResponse, "Incorrect TXT record \"unrelated\" (and 1 more) found at"),
        ),
        (
            "missing.example.org",
            Expect::Fail(ErrorKind::Unauthorized, "No TXT record found at _acme-challenge.missing.example.org"),
        ),
        ("broken.example.org", Expect::Fail(ErrorKind::Dns, "SERVFAIL looking up TXT")),
    ];
    for (name, expect) in cases {
        // The ra sends a wildcard's authorization without `*.`; both forms validate the base name.
        for identifier in [Identifier::dns(*name), Identifier::dns(*name).without_wildcard()] {
            let (records, problem) = va.validate(&identifier, "dns-01", "token123", KEY_AUTHORIZATION, None).await;
            check(name, *expect, &records, &problem);
            assert_eq!(records.len(), 1, "{name}");
            assert_eq!(records[0].hostname, name.trim_start_matches("*."));
            assert_eq!(records[0].resolver_addresses, [config.dns_resolver.to_string()]);
            assert_eq!(records[0].perspective, "primary");
        }
    }
    let questions = state.dns_request_history("_acme-challenge.one.example.org");
    assert!(questions.iter().all(|q| q.question.name.ends_with('.')), "{questions:?}");
}
