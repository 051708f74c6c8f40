//! `quarry probe`: an end-to-end prober that gates and monitors an environment by real issuance — account, order,
//! validation (http-01 through a challenge test server, or dns-01 through an operator's DNS hook), finalization,
//! download, chain check, revocation — reporting each step's latency and outcome, as text and as Prometheus metrics.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use quarry_testkit::client::{AcmeAccount, AcmeClient, HttpResponse};

use crate::dev::Target;
use serde_json::{Value, json};

/// How long a polled resource (authorization, order) may take to settle.
const SETTLE_TIME: Duration = Duration::from_secs(60);
/// How long any one step may take, polling included: an unresponsive server fails the probe, never hangs it.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    target: crate::dev::AcmeTarget,
    /// The issuing root (PEM); when given, the certificate's chain must lead to it.
    #[arg(long)]
    root: Option<PathBuf>,
    /// The management API of the challenge test server the CA validates against (pebble-challtestsrv's): the probe
    /// answers http-01 through it.
    #[arg(long)]
    challtestsrv: Option<String>,
    /// Instead: a command that publishes the dns-01 TXT record, run as `HOOK present|cleanup FQDN VALUE`.
    #[arg(long, conflicts_with = "challtestsrv")]
    dns_hook: Option<PathBuf>,
    /// The name to certify (default: a fresh name under probe.quarry-test.org, for a challenge test server).
    #[arg(long)]
    name: Option<String>,
    /// Write the results as Prometheus text here (for the textfile collector), besides printing them.
    #[arg(long)]
    metrics_file: Option<PathBuf>,
}

impl ProbeArgs {
    /// The server, with this command's own settings over the stack file's.
    fn target(&self) -> anyhow::Result<Target> {
        let mut target = self.target.resolve()?;
        target.root = self.root.clone().or(target.root);
        target.challtestsrv = self.challtestsrv.clone().or(target.challtestsrv);
        Ok(target)
    }
}

/// One step's outcome.
struct Step {
    name: &'static str,
    took: Duration,
    error: Option<String>,
}

/// Runs the probe; `Ok(false)` when a step failed (already reported).
pub async fn run(args: ProbeArgs) -> anyhow::Result<bool> {
    let target = args.target()?;
    if target.challtestsrv.is_none() && args.dns_hook.is_none() {
        bail!("nothing can answer the challenge: give --challtestsrv URL or --dns-hook COMMAND");
    }
    let name = args.name.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        format!("p{nanos:x}.probe.quarry-test.org")
    });
    let mut probe = Probe { target, dns_hook: args.dns_hook.clone(), name, steps: Vec::new() };
    let started = Instant::now();
    let outcome = probe.issue_and_revoke().await;
    let passed = outcome.is_ok() && probe.steps.iter().all(|step| step.error.is_none());
    for step in &probe.steps {
        let status = step.error.as_deref().map_or_else(|| "ok".to_owned(), |e| format!("FAILED: {e}"));
        println!("{:<14} {:>8.1} ms  {status}", step.name, step.took.as_secs_f64() * 1000.0);
    }
    if let Err(err) = &outcome {
        println!("probe stopped: {err:#}");
    }
    println!("{} in {:.1} s", if passed { "PASSED" } else { "FAILED" }, started.elapsed().as_secs_f64());
    if let Some(path) = &args.metrics_file {
        std::fs::write(path, probe.prometheus(passed, started.elapsed()))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(passed)
}

struct Probe {
    target: Target,
    dns_hook: Option<PathBuf>,
    name: String,
    steps: Vec<Step>,
}

impl Probe {
    /// Times `work` as the step `name`; a failure is recorded and stops the probe.
    async fn step<T>(
        &mut self,
        name: &'static str,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let result = match tokio::time::timeout(STEP_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!("no answer within {STEP_TIMEOUT:?}")),
        };
        self.steps.push(Step { name, took: started.elapsed(), error: result.as_ref().err().map(|e| format!("{e:#}")) });
        result.map_err(|e| anyhow!("{name}: {e:#}"))
    }

    async fn issue_and_revoke(&mut self) -> anyhow::Result<()> {
        let (url, ca) = (self.target.directory_url.clone(), self.target.tls_ca.clone());
        let client = self.step("directory", AcmeClient::new(&url, ca.as_deref())).await?;
        let mut account = AcmeAccount::generate(quarry_jose::Algorithm::Es256);
        self.step("new-account", async { client.register(&mut account).await.map(drop) }).await?;
        let identifiers = json!({ "identifiers": [{ "type": "dns", "value": self.name }] });
        let order = self
            .step("new-order", expect(client.post(&account, &client.url("newOrder"), Some(&identifiers)), 201))
            .await?;
        let order_url = order.header("location").context("the order has no Location")?;
        let order = order.json();
        let authz_url = order["authorizations"][0].as_str().context("the order has no authorization")?.to_owned();
        let answerer = Answerer {
            dns_hook: self.dns_hook.clone(),
            challtestsrv: self.target.challtestsrv.clone(),
            name: self.name.clone(),
        };
        self.step("validation", answerer.validate(&client, &account, &authz_url)).await?;

        let key = rcgen::KeyPair::generate().context("generate the certificate key")?;
        let mut params = rcgen::CertificateParams::new(vec![self.name.clone()])?;
        // No subject: rcgen's default common name is not a name the order holds.
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        let finalize_url = order["finalize"].as_str().context("the order has no finalize URL")?.to_owned();
        let finalize = json!({ "csr": quarry_jose::b64_encode(csr.der()) });
        let certificate_url = self
            .step("finalize", async {
                expect(client.post(&account, &finalize_url, Some(&finalize)), 200).await?;
                let order = settle(&client, &account, &order_url, |o| o["status"] != "processing").await?;
                match order["status"].as_str() {
                    Some("valid") => order["certificate"].as_str().map(str::to_owned).context("no certificate URL"),
                    _ => Err(anyhow!("order {}: {}", order["status"], order["error"])),
                }
            })
            .await?;
        let chain = self.step("download", expect(client.post(&account, &certificate_url, None), 200)).await?;
        let chain = String::from_utf8(chain.body).context("the chain is not PEM")?;
        let root = self.target.root.clone();
        let leaf = self.step("chain", async { check_chain(&chain, root.as_deref()) }).await?;
        let revoke = json!({ "certificate": quarry_jose::b64_encode(&leaf), "reason": 5 });
        self.step("revoke", expect(client.post(&account, &client.url("revokeCert"), Some(&revoke)), 200)).await?;
        Ok(())
    }

    /// The results in Prometheus' text format.
    fn prometheus(&self, passed: bool, took: Duration) -> String {
        let mut text = String::new();
        text.push_str("# HELP quarry_probe_step_seconds How long each step of the last probe took.\n");
        text.push_str("# TYPE quarry_probe_step_seconds gauge\n");
        for step in &self.steps {
            let _ = writeln!(text, "quarry_probe_step_seconds{{step=\"{}\"}} {}", step.name, step.took.as_secs_f64());
        }
        text.push_str("# HELP quarry_probe_step_success Whether each step of the last probe succeeded.\n");
        text.push_str("# TYPE quarry_probe_step_success gauge\n");
        for step in &self.steps {
            let _ = writeln!(
                text,
                "quarry_probe_step_success{{step=\"{}\"}} {}",
                step.name,
                u8::from(step.error.is_none())
            );
        }
        text.push_str("# HELP quarry_probe_success Whether the last probe issued and revoked a certificate.\n");
        text.push_str("# TYPE quarry_probe_success gauge\n");
        let _ = writeln!(text, "quarry_probe_success {}", u8::from(passed));
        text.push_str("# HELP quarry_probe_duration_seconds How long the last probe took.\n");
        text.push_str("# TYPE quarry_probe_duration_seconds gauge\n");
        let _ = writeln!(text, "quarry_probe_duration_seconds {}", took.as_secs_f64());
        text
    }
}

/// What answers the challenge: the operator's DNS hook (dns-01) or the challenge test server (http-01).
struct Answerer {
    dns_hook: Option<PathBuf>,
    challtestsrv: Option<String>,
    name: String,
}

impl Answerer {
    /// Answers the authorization's challenge, asks for validation and waits for the verdict.
    async fn validate(&self, client: &AcmeClient, account: &AcmeAccount, authz_url: &str) -> anyhow::Result<()> {
        let authz = expect(client.post(account, authz_url, None), 200).await?.json();
        let kind = if self.dns_hook.is_some() { "dns-01" } else { "http-01" };
        let challenge = authz["challenges"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["type"] == kind))
            .with_context(|| format!("no {kind} challenge offered"))?;
        let token = challenge["token"].as_str().context("challenge without a token")?;
        let key_authorization = quarry_jose::key_authorization(token, &account.key.jwk());
        let fqdn = format!("_acme-challenge.{}", self.name);
        let txt = quarry_jose::dns01_txt_value(&key_authorization);
        match (&self.dns_hook, &self.challtestsrv) {
            (Some(hook), _) => run_hook(hook, "present", &fqdn, &txt)?,
            (None, Some(server)) => {
                let body = json!({ "token": token, "content": key_authorization });
                let response = client
                    .request(
                        http::Method::POST,
                        &format!("{server}/add-http01"),
                        Some("application/json"),
                        body.to_string().into_bytes(),
                    )
                    .await?;
                if response.status != 200 {
                    bail!("the challenge test server answered {}", response.status);
                }
            }
            (None, None) => bail!("nothing can answer the challenge"),
        }
        let challenge_url = challenge["url"].as_str().context("challenge without a URL")?;
        expect(client.post(account, challenge_url, Some(&json!({}))), 200).await?;
        let settled = settle(client, account, authz_url, |a| a["status"] != "pending").await;
        if let Some(hook) = &self.dns_hook {
            run_hook(hook, "cleanup", &fqdn, &txt)?;
        }
        let authz = settled?;
        if authz["status"] != "valid" {
            let error = authz["challenges"].as_array().and_then(|all| all.iter().find_map(|c| c.get("error"))).cloned();
            bail!("authorization {}: {}", authz["status"], error.unwrap_or(Value::Null));
        }
        Ok(())
    }
}

/// The response, if it has `status`; otherwise an error with the problem document.
async fn expect(
    response: impl Future<Output = anyhow::Result<HttpResponse>>,
    status: u16,
) -> anyhow::Result<HttpResponse> {
    let response = response.await?;
    if response.status != status {
        bail!("HTTP {}: {}", response.status, String::from_utf8_lossy(&response.body));
    }
    Ok(response)
}

/// POST-as-GET `url` until `done`, for at most [`SETTLE_TIME`].
async fn settle(
    client: &AcmeClient,
    account: &AcmeAccount,
    url: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let resource = client.post(account, url, None).await?.json();
        if done(&resource) {
            return Ok(resource);
        }
        if started.elapsed() > SETTLE_TIME {
            bail!("{url} still {} after {SETTLE_TIME:?}", resource["status"]);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `HOOK present|cleanup FQDN VALUE`, which must exit 0.
fn run_hook(hook: &Path, action: &str, fqdn: &str, value: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new(hook)
        .args([action, fqdn, value])
        .status()
        .with_context(|| format!("run {}", hook.display()))?;
    if !status.success() {
        bail!("{} {action} exited with {status}", hook.display());
    }
    Ok(())
}

/// Checks that each certificate of the PEM chain is signed by the next, and the last by `root` when given; returns
/// the leaf's DER.
fn check_chain(chain_pem: &str, root: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut ders = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes()) {
        ders.push(block.context("the chain is not PEM")?.contents);
    }
    if let Some(root) = root {
        let text = std::fs::read(root).with_context(|| format!("read {}", root.display()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&text).context("the root is not PEM")?;
        ders.push(pem.contents);
    }
    let certificates = ders
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, c)| c).context("a certificate of the chain does not parse"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if certificates.len() < 2 {
        bail!("the chain has no issuer");
    }
    for pair in certificates.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| anyhow!("{} is not signed by {}", pair[0].subject(), pair[1].subject()))?;
    }
    Ok(ders.swap_remove(0))
}
