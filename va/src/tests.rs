//! The va's configuration, challenge-type dispatch, and how a validation and its CAA check run side by side.

use super::*;

const MINIMAL: &str = r#"
    version = 1
    dns_resolver = "127.0.0.1:8053"
    caa_identities = ["quarry.test"]
    [grpc]
    listen = "127.0.0.1:0"
    [grpc.services."quarry.va.v1.VA"]
    client_names = ["ra.quarry"]
    [tls]
    cert = "va.pem"
    key = "va.key"
    ca = "ca.pem"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    quarry_core::config::parse(text, "va.toml")
}

#[test]
fn defaults_fill_everything_but_addresses() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.http01_port, 80);
    assert_eq!(config.tls_alpn01_port, 443);
    assert_eq!(config.perspective, "primary");
    assert_eq!(config.timeout_ms, 10_000);
    assert_eq!(config.max_redirects, 10);
    assert_eq!(config.max_body_bytes, 128 * 1024);
    assert!(config.validate().is_ok());
}

#[test]
fn bad_settings_are_refused() {
    let cases = [
        "http01_port = 0",
        "tls_alpn01_port = 0",
        "timeout_ms = 0",
        "timeout_ms = 3600000",
        "max_body_bytes = 16",
        "perspective = \" \"",
        "unknown_setting = 1",
        "http01_port = 70000",
    ];
    for case in cases {
        let text = MINIMAL.replacen("version = 1", &format!("version = 1\n{case}"), 1);
        let outcome = parse(&text).and_then(|config| config.validate());
        assert!(outcome.is_err(), "{case} was accepted");
    }
    let no_port = MINIMAL.replace("127.0.0.1:8053", "127.0.0.1:0");
    assert!(parse(&no_port).unwrap().validate().is_err());
}

#[tokio::test]
async fn unknown_challenge_types_are_malformed_results() {
    let authority = ValidationAuthority::with_validators("primary", Duration::from_secs(1), Vec::new());
    for challenge in ["tls-alpn-02", "http-02", ""] {
        let (records, problem) = authority.validate(&Identifier::dns("example.com"), challenge, "t", "t.k", None).await;
        let problem = problem.expect("a problem");
        assert_eq!(problem.kind, ErrorKind::Malformed, "{challenge}");
        assert!(problem.detail.contains("is not supported"), "{}", problem.detail);
        assert!(records.is_empty());
    }
}

/// A validator for http-01 that meets `barrier` (when there is one) and then gives `outcome`.
struct MeetingValidator {
    barrier: Option<Arc<tokio::sync::Barrier>>,
    outcome: Result<(), Problem>,
}

#[tonic::async_trait]
impl Validator for MeetingValidator {
    fn challenge_type(&self) -> ChallengeType {
        ChallengeType::Http01
    }
    async fn validate(&self, _: Attempt<'_>, _: &mut Vec<ValidationRecord>) -> Result<(), Problem> {
        if let Some(barrier) = &self.barrier {
            barrier.wait().await;
        }
        self.outcome.clone()
    }
}

/// CAA lookups that meet `barrier` and find no record set, or never answer without one.
struct MeetingCaa(Option<Arc<tokio::sync::Barrier>>);

#[tonic::async_trait]
impl Resolver for MeetingCaa {
    async fn lookup_ips(&self, _: &str) -> Result<Vec<std::net::IpAddr>, resolver::LookupError> {
        Err(resolver::LookupError::NotFound)
    }
    async fn lookup_txt(&self, _: &str) -> Result<Vec<String>, resolver::LookupError> {
        Err(resolver::LookupError::NotFound)
    }
    async fn lookup_caa(&self, _: &str) -> Result<Vec<caa::CaaRecord>, resolver::LookupError> {
        match &self.0 {
            Some(barrier) => {
                barrier.wait().await;
                Ok(Vec::new())
            }
            None => std::future::pending().await,
        }
    }
    fn addresses(&self) -> Vec<String> {
        vec!["meeting".to_owned()]
    }
}

/// DoDCV for `example.org` over http-01 with CAA riding along, answered within a bounded time.
async fn dcv_with_caa(authority: &ValidationAuthority) -> ValidationResult {
    let identifier = Some((&Identifier::dns("example.org")).into());
    let caa = CaaRequest {
        identifier: identifier.clone(),
        validation_method: "http-01".into(),
        account_uri: "https://ca.example/acme/acct/1".into(),
        ..Default::default()
    };
    let request = DcvRequest {
        identifier,
        challenge_type: "http-01".into(),
        token: "t".into(),
        expected_key_authorization: "t.k".into(),
        caa: Some(caa),
        ..Default::default()
    };
    let call = authority.do_dcv(Request::new(request));
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("DoDCV waited for the other half of the check")
        .expect("DoDCV answers")
        .into_inner()
}

#[tokio::test]
async fn caa_is_looked_up_while_control_is_proven() {
    // The validation and both CAA lookups (`example.org`, `org`) must all be under way before any can finish.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let validator = MeetingValidator { barrier: Some(barrier.clone()), outcome: Ok(()) };
    let authority = ValidationAuthority::with_validators("primary", Duration::from_secs(5), vec![Arc::new(validator)])
        .with_caa(Arc::new(MeetingCaa(Some(barrier))), vec!["quarry.test".into()]);
    let result = dcv_with_caa(&authority).await;
    assert_eq!(result.problem, None);
    assert!(result.caa_checked);
}

#[tokio::test]
async fn a_failed_validation_answers_without_waiting_for_caa() {
    let refused = Problem::new(ErrorKind::Unauthorized, "the token was not served");
    let validator = MeetingValidator { barrier: None, outcome: Err(refused) };
    // CAA lookups that never answer: only the validation's own problem can end the call in time.
    let authority = ValidationAuthority::with_validators("primary", Duration::from_secs(30), vec![Arc::new(validator)])
        .with_caa(Arc::new(MeetingCaa(None)), vec!["quarry.test".into()]);
    let result = dcv_with_caa(&authority).await;
    let problem = result.problem.expect("the validation's problem");
    assert_eq!(problem.kind, ErrorKind::Unauthorized.as_str(), "{problem:?}");
    assert!(problem.detail.contains("the token was not served"), "{problem:?}");
}
