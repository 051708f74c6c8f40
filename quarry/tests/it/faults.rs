//! Every place where a crash would leave work mid-way, each hit by a real order: a replicated stack
//! (`quarry dev --replicas 2`) whose services abort at fault points (compiled into this test build only), driven by
//! the project's own ACME client. A point fires once, for the first process to create its marker file; the test
//! creates every marker first and removes one at a time, so each order meets exactly the crash it is meant to.
//! Afterwards nothing is left mid-way, every certificate signed is stored (the one a ca died holding is adopted from
//! its audit log), and each order ends as its crash allows.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use quarry_testkit::client::{AcmeAccount, AcmeClient};
use serde_json::{Value, json};

use crate::chaos::{adopt_orphans, unfinished};
use crate::full_stack::{Stack, answer_http01, csr_for, logs, new_order};

/// The fault points, in the order orders reach them.
const POINTS: [&str; 6] = [
    "ra.validation_dispatched",
    "ra.validation_before_record",
    "ra.finalize_before_issue",
    "ca.after_precertificate_stored",
    "ca.after_final_signed",
    "ra.finalize_after_issue",
];
/// How long an authorization or order may take to settle, a takeover included: a dead ra's heartbeat lapses
/// within 15 s, and a sweep comes every 5 s.
const SETTLE: Duration = Duration::from_secs(60);

/// What became of one order.
#[derive(Debug)]
struct Outcome {
    url: String,
    /// The fault points it hit.
    points: Vec<String>,
    /// The authorization's final status.
    authorization: String,
    /// The finalize request's HTTP status (0: the connection broke).
    finalize_status: u16,
    order: Value,
}

fn marker(markers: &Path, point: &str) -> std::path::PathBuf {
    markers.with_extension(point)
}

/// POST-as-GET `url` until its status is not `waiting`, within [`SETTLE`]; transport failures (a wfe replica
/// killed) are retried.
async fn settle(client: &AcmeClient, account: &AcmeAccount, url: &str, waiting: &[&str]) -> Value {
    let started = Instant::now();
    loop {
        if let Ok(response) = client.post(account, url, None).await {
            let json = response.json();
            if json["status"].as_str().is_some_and(|status| !waiting.contains(&status)) {
                return json;
            }
        }
        assert!(started.elapsed() < SETTLE, "{url} did not settle");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (within [`SETTLE`]) until every replica of the stack runs and accepts connections again: a crashed one
/// is restarted by `quarry dev` after a pause, and an order sent meanwhile would meet that crash too.
async fn whole_again(stack: &Stack) {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(stack.data_dir().join("stack.json")).unwrap_or_default();
        let info: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let replicas = info["replicas"].as_array().cloned().unwrap_or_default();
        let mut whole = !replicas.is_empty();
        for replica in &replicas {
            let running = replica["pid"].as_u64().is_some_and(|pid| pid != 0);
            let listening = match replica["address"].as_str() {
                Some(address) => tokio::net::TcpStream::connect(address).await.is_ok(),
                None => true,
            };
            whole &= running && listening;
        }
        if whole {
            return;
        }
        assert!(started.elapsed() < SETTLE, "the stack was not whole again: {text}{}", logs(stack.dir.path()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Arms `point`, then drives one order for `name` through validation and finalization; the point must fire.
async fn order(
    stack: &Stack,
    client: &AcmeClient,
    account: &AcmeAccount,
    name: &str,
    markers: &Path,
    point: &str,
) -> Outcome {
    std::fs::remove_file(marker(markers, point)).expect("arm the fault point");
    let (url, created) = new_order(client, account, name).await;
    let authz_url = answer_http01(stack, client, account, &created).await;
    let authorization = settle(client, account, &authz_url, &["pending"]).await["status"].as_str().unwrap().to_owned();
    let mut finalize_status = 0;
    let mut order = settle(client, account, &url, &["pending"]).await;
    if order["status"] == "ready" {
        let csr = quarry_jose::b64_encode(&csr_for(&[name]));
        let finalize = client.post(account, created["finalize"].as_str().unwrap(), Some(&json!({"csr": csr}))).await;
        finalize_status = finalize.map(|response| response.status).unwrap_or(0);
        // A finalization whose ra died before the ca was asked leaves the order ready (its fuse is taken as the
        // precertificate is stored): settled too.
        order = settle(client, account, &url, &["processing"]).await;
    }
    assert!(marker(markers, point).exists(), "{point} was not reached by {name}{}", logs(stack.dir.path()));
    Outcome { url, points: vec![point.to_owned()], authorization, finalize_status, order }
}

#[tokio::test]
async fn a_crash_at_any_fault_point_leaves_nothing_mid_way_and_loses_no_certificate() {
    let markers_dir = tempfile::tempdir().expect("temp dir");
    let markers = markers_dir.path().join("fired");
    for point in POINTS {
        std::fs::write(marker(&markers, point), "").expect("disarm");
    }
    let env = [("QUARRY_FAULT_POINT", POINTS.join(",")), ("QUARRY_FAULT_ONCE", markers.display().to_string())];
    let stack = Stack::start_with_env(None, None, &["--replicas".into(), "2".into()], &env).await;
    let client = AcmeClient::new(&stack.directory_url, Some(&stack.tls_ca_pem)).await.expect("directory");
    let mut account = AcmeAccount::generate(quarry_jose::Algorithm::Es256);
    client.register(&mut account).await.expect("register");

    let mut outcomes = Vec::new();
    for (n, point) in POINTS.iter().enumerate() {
        outcomes.push(order(&stack, &client, &account, &format!("fault{n}.quarry-test.org"), &markers, point).await);
        // Each order meets its own crash only: the one before must have been restarted and be listening again.
        whole_again(&stack).await;
    }
    let by_point: BTreeMap<&str, &Outcome> =
        outcomes.iter().flat_map(|o| o.points.iter().map(move |p| (p.as_str(), o))).collect();

    // A validation whose ra died, before or after the va answered, is run again by another replica: valid.
    for point in ["ra.validation_dispatched", "ra.validation_before_record"] {
        assert_eq!(by_point[point].authorization, "valid", "{point}: {:#?}", by_point[point]);
    }
    // An issuance whose ra died before the ca was asked began nothing: the order is still ready, and the client
    // finalizes it again.
    let early = by_point["ra.finalize_before_issue"];
    assert_eq!(early.order["status"], "ready", "{early:#?}");
    assert!(early.finalize_status == 0 || early.finalize_status >= 500, "{early:#?}");
    let name = early.order["identifiers"][0]["value"].as_str().unwrap();
    let csr = quarry_jose::b64_encode(&csr_for(&[name]));
    let finalize = early.order["finalize"].as_str().unwrap();
    let again = client.post(&account, finalize, Some(&json!({"csr": csr}))).await.expect("finalize again");
    assert_eq!((again.status, again.json()["status"].as_str()), (200, Some("valid")), "{early:#?}");
    // An issuance whose ra died after the ca stored the certificate is valid, although the client's finalize failed.
    let late = by_point["ra.finalize_after_issue"];
    assert_eq!(late.order["status"], "valid", "{late:#?}");
    assert!(late.finalize_status == 0 || late.finalize_status >= 500, "{late:#?}");
    // A ca that died with a precertificate stored, or a final certificate signed, fails the order its live ra is
    // waiting for.
    for point in ["ca.after_precertificate_stored", "ca.after_final_signed"] {
        assert_eq!(by_point[point].order["status"], "invalid", "{point}: {:#?}", by_point[point]);
    }

    // Nothing is left mid-way.
    let db = format!("sqlite://{}?mode=ro", stack.data_dir().join("quarry.db").display());
    assert_eq!(unfinished(&db).await, (0, 0), "{}", logs(stack.dir.path()));

    // The certificate the ca signed and died holding is in its audit log, and adopted from there: its order is
    // valid after all.
    assert_eq!(adopt_orphans(&stack.data_dir(), true), 1);
    assert_eq!(adopt_orphans(&stack.data_dir(), false), 0);
    let orphaned = by_point["ca.after_final_signed"];
    let adopted = settle(&client, &account, &orphaned.url, &[]).await;
    assert_eq!(adopted["status"], "valid", "{adopted}");
    let chain = client.post(&account, adopted["certificate"].as_str().unwrap(), None).await.expect("download");
    assert_eq!(chain.status, 200);
}
