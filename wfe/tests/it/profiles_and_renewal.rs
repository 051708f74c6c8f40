//! Profiles (draft-aaron-acme-profiles), IP identifiers (RFC 8738) and ACME Renewal Information (RFC 9773), as a
//! client sees them.

use http::Method;
use quarry_jose::Algorithm;
use serde_json::{Value, json};

use crate::harness::{Stack, issue};

fn identifiers(list: &[(&str, &str)]) -> Value {
    list.iter().map(|(kind, value)| json!({"type": kind, "value": value})).collect()
}

fn challenge_types(authz: &Value) -> Vec<String> {
    authz["challenges"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn profiles_decide_identifier_types_and_lifetimes() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es256).await;

    let ip_in_classic = stack.new_order(&account, &json!({"identifiers": identifiers(&[("ip", "127.0.0.1")])})).await;
    assert_eq!(ip_in_classic.problem_type().as_deref(), Some("rejectedIdentifier"));
    let problem = ip_in_classic.json();
    assert_eq!(problem["subproblems"][0]["identifier"], json!({"type": "ip", "value": "127.0.0.1"}));

    let unknown = stack
        .new_order(&account, &json!({"identifiers": identifiers(&[("dns", "a.example.org")]), "profile": "nope"}))
        .await;
    assert_eq!(unknown.problem_type().as_deref(), Some("invalidProfile"));
    assert!(unknown.json()["detail"].as_str().unwrap().contains("shortlived"));

    let not_canonical =
        stack.new_order(&account, &json!({"identifiers": identifiers(&[("ip", "127.000.000.001")])})).await;
    assert_eq!(not_canonical.problem_type().as_deref(), Some("malformed"));

    let payload = json!({
        "identifiers": identifiers(&[("ip", "127.0.0.1"), ("dns", "short.example.org"), ("ip", "::1")]),
        "profile": "shortlived",
    });
    let created = stack.new_order(&account, &payload).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let order = created.json();
    assert_eq!(order["profile"], "shortlived");
    let expires =
        time::OffsetDateTime::parse(order["expires"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    let lifetime = expires - time::OffsetDateTime::now_utc();
    assert!(lifetime <= time::Duration::hours(8) && lifetime > time::Duration::hours(0), "{lifetime}");
    let mut seen = Vec::new();
    for url in order["authorizations"].as_array().unwrap() {
        let authz = stack.client.post(&account, url.as_str().unwrap(), None).await.unwrap().json();
        let kind = authz["identifier"]["type"].as_str().unwrap().to_owned();
        let types = challenge_types(&authz);
        match kind.as_str() {
            "ip" => assert_eq!(types, ["http-01", "tls-alpn-01"], "{authz}"),
            _ => assert_eq!(types, ["http-01", "dns-01", "tls-alpn-01"], "{authz}"),
        }
        seen.push(authz["identifier"]["value"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["127.0.0.1", "::1", "short.example.org"]);
}

#[tokio::test]
async fn a_shortlived_certificate_for_ip_addresses() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es384).await;
    let payload = json!({"identifiers": identifiers(&[("ip", "127.0.0.1")]), "profile": "shortlived"});
    let created = stack.new_order(&account, &payload).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let order_url = created.header("location").unwrap();
    let order = created.json();
    stack.make_ready(&account, &order_url, &order).await;

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = quarry_jose::b64_encode(params.serialize_request(&key).unwrap().der());
    let done =
        stack.client.post(&account, order["finalize"].as_str().unwrap(), Some(&json!({"csr": csr}))).await.unwrap();
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    let pem = stack.client.post(&account, done.json()["certificate"].as_str().unwrap(), None).await.unwrap().body;
    let der = {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::pem_slice_iter(&pem).next().unwrap().unwrap().to_vec()
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let validity = cert.validity();
    assert_eq!(validity.not_after.timestamp() - validity.not_before.timestamp() + 1, 160 * 3_600);
    assert!(cert.subject().iter_common_name().next().is_none(), "shortlived certificates have no common name");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, [x509_parser::extensions::GeneralName::IPAddress(&[127, 0, 0, 1])]);
}

/// The ARI CertID of a certificate (RFC 9773 §4.1).
pub(crate) fn cert_id(der: &[u8]) -> String {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        })
        .expect("an authority key identifier");
    format!("{}.{}", quarry_jose::b64_encode(&aki), quarry_jose::b64_encode(cert.raw_serial()))
}

#[tokio::test]
async fn renewal_information_and_replacement_orders() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Rs256).await;
    let (der, _) = issue(&stack, &account, &["ari.example.org", "www.ari.example.org"]).await;
    let id = cert_id(&der);
    let url = format!("{}/{id}", stack.client.url("renewalInfo"));

    let info = stack.client.request(Method::GET, &url, None, Vec::new()).await.unwrap();
    assert_eq!(info.status, 200, "{}", String::from_utf8_lossy(&info.body));
    let retry_after: u64 = info.header("retry-after").unwrap().parse().unwrap();
    assert!((17_280..=25_920).contains(&retry_after), "{retry_after}");
    let window = &info.json()["suggestedWindow"];
    let parse = |v: &Value| {
        time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
    };
    let (start, end) = (parse(&window["start"]), parse(&window["end"]));
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let not_after = cert.validity().not_after.to_datetime();
    // 90 days: a third of the validity before expiry, ±0.9 days.
    assert!(start < end && end < not_after);
    let ideal = not_after - time::Duration::days(30);
    assert!((ideal - start).whole_seconds().abs() <= 77_761 && (end - ideal).whole_seconds().abs() <= 77_761);

    let post = stack.client.post(&account, &url, None).await.unwrap();
    assert_eq!(post.status, 405);
    let unknown_issuer = format!("{}/AQID.AQ", stack.client.url("renewalInfo"));
    let unknown = stack.client.request(Method::GET, &unknown_issuer, None, Vec::new()).await.unwrap();
    assert_eq!(unknown.status, 404);
    let aki = id.split('.').next().unwrap();
    let unissued = format!("{}/{aki}.AX8", stack.client.url("renewalInfo"));
    assert_eq!(stack.client.request(Method::GET, &unissued, None, Vec::new()).await.unwrap().status, 404);
    let garbled = format!("{}/{aki}", stack.client.url("renewalInfo"));
    let garbled = stack.client.request(Method::GET, &garbled, None, Vec::new()).await.unwrap();
    assert_eq!(garbled.problem_type().as_deref(), Some("malformed"));

    // Replacement orders: same account, an identifier in common, once.
    let names = identifiers(&[("dns", "www.ari.example.org"), ("dns", "new.ari.example.org")]);
    let stranger = stack.account(Algorithm::Es256).await;
    let refused = stack.new_order(&stranger, &json!({"identifiers": names, "replaces": id})).await;
    assert_eq!(refused.problem_type().as_deref(), Some("unauthorized"));
    let unrelated = identifiers(&[("dns", "other.example.org")]);
    let refused = stack.new_order(&account, &json!({"identifiers": unrelated, "replaces": id})).await;
    assert_eq!(refused.problem_type().as_deref(), Some("malformed"));
    let refused = stack.new_order(&account, &json!({"identifiers": names, "replaces": "not-a-cert-id"})).await;
    assert_eq!(refused.problem_type().as_deref(), Some("malformed"));

    let created = stack.new_order(&account, &json!({"identifiers": names, "replaces": id})).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    assert_eq!(created.json()["replaces"], id.as_str());
    let again = stack.new_order(&account, &json!({"identifiers": names, "replaces": id})).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.problem_type().as_deref(), Some("alreadyReplaced"));

    // A revoked certificate should be replaced at once: its window lies in the past.
    let revoke = json!({"certificate": quarry_jose::b64_encode(&der), "reason": 4});
    let revoked = stack.client.post(&account, &stack.client.url("revokeCert"), Some(&revoke)).await.unwrap();
    assert_eq!(revoked.status, 200);
    let info = stack.client.request(Method::GET, &url, None, Vec::new()).await.unwrap();
    let end = parse(&info.json()["suggestedWindow"]["end"]);
    assert!(end < time::OffsetDateTime::now_utc());
}
