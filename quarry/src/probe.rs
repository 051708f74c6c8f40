//! `quarry probe`: an end-to-end prober that gates and monitors an environment by real issuance — account, order,
//! validation (http-01 through a challenge test server, or dns-01 through an operator's DNS hook), finalization,
//! download, chain check, embedded SCTs (`ct`, with `--min-scts`), revocation, and the revocation's CRL (`crl`:
//! signed by the issuer, current, and with `--crl-wait-secs` listing the serial) — reporting each step's latency and
//! outcome as text, as Prometheus metrics (`--metrics-file`, or PUT to a Pushgateway with `--push-gateway`) and as a
//! JSON report (`--report-json`) naming the build the server says it runs (its `/healthz`) and the image digest the
//! deployment says it runs (`--image-digest`). A hosted environment runs it every few minutes with its own persistent
//! account (`--account-key`), so the account is not created anew each run.
//!
//! Exit status: 0 when every step passed, 1 when one failed, 69 when the steps passed but the metrics could not be
//! pushed, 2 for a malformed flag, 64 when the probe could not run at all (an unreadable stack file, nothing to answer
//! the challenge, an unwritable report). The report and the metrics file are written before the push, whatever its
//! fate.

mod account_key;
mod crl;
mod plain_http;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use quarry_acme_client::{AcmeAccount, AcmeClient, HttpResponse};

use crate::stack_file::Target;
use serde_json::{Value, json};

/// How long a polled resource (authorization, order) may take to settle.
const SETTLE_TIME: Duration = Duration::from_secs(60);
/// How long any one step may take, polling included: an unresponsive server fails the probe, never hangs it.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    target: crate::stack_file::AcmeTarget,
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
    /// The environment probed (`staging`): a label of every metric, named in the report and in the Pushgateway's
    /// grouping key. Letters, digits, `.`, `_` and `-`.
    #[arg(long, value_parser = report::parse_environment)]
    environment: Option<String>,
    /// The image digest the deployment says it runs (`sha256:` and 64 lowercase hex digits): recorded in the report
    /// and the `quarry_probe_build_info` metric, beside the version the server itself reports.
    #[arg(long, value_parser = report::parse_image_digest)]
    image_digest: Option<String>,
    /// The prober's own account key (PKCS#8 PEM, P-256), so that every run uses one account: read when the file
    /// exists, else generated and written there (mode 0600). Without it, each run registers a fresh account.
    #[arg(long)]
    account_key: Option<PathBuf>,
    /// Write the report as JSON here: the environment, the build under test, the verdict and every step.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// After revocation, poll the certificate's CRL every 2 s for up to this many seconds until it lists the serial
    /// (0: check the CRL's signature and dates only).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    crl_wait_secs: u64,
    /// The certificate must embed SCTs from at least this many distinct CT logs (0: no CT check).
    #[arg(long, default_value_t = 0)]
    min_scts: usize,
    /// A Prometheus Pushgateway's base URL: the metrics are PUT to
    /// `URL/metrics/job/quarry-probe/environment/<environment or unknown>` after the report is written.
    #[arg(long)]
    push_gateway: Option<String>,
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

/// How a probe ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every step passed and the results went wherever they were asked to go.
    Passed,
    /// A step failed (reported).
    Failed,
    /// Every step passed, but the Pushgateway did not take the metrics: the monitoring never saw this run.
    NotPushed,
}

/// One step's outcome.
struct Step {
    name: &'static str,
    took: Duration,
    error: Option<String>,
}

/// Runs the probe and reports it; an error only when it could not run or report at all.
pub async fn run(args: ProbeArgs) -> anyhow::Result<Verdict> {
    let target = args.target()?;
    if target.challtestsrv.is_none() && args.dns_hook.is_none() {
        bail!("nothing can answer the challenge: give --challtestsrv URL or --dns-hook COMMAND");
    }
    let name = args.name.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        format!("p{nanos:x}.probe.quarry-test.org")
    });
    // Requests beside ACME need no directory, so they still work (and the push still happens) when it fails.
    let plain_http = AcmeClient::without_directory(target.tls_ca.as_deref())?;
    let started_at = time::OffsetDateTime::now_utc();
    let started = Instant::now();
    let server_build = report::server_build(&plain_http, &target.directory_url).await;
    let mut probe = Probe {
        directory_url: target.directory_url.clone(),
        target,
        dns_hook: args.dns_hook.clone(),
        name,
        account_key: args.account_key.clone(),
        account_url: None,
        crl_wait: Duration::from_secs(args.crl_wait_secs),
        min_scts: args.min_scts,
        plain_http: plain_http.clone(),
        steps: Vec::new(),
    };
    let outcome = probe.issue_and_revoke().await;
    let took = started.elapsed();
    let passed = outcome.is_ok() && probe.steps.iter().all(|step| step.error.is_none());
    for step in &probe.steps {
        let status = step.error.as_deref().map_or_else(|| "ok".to_owned(), |e| format!("FAILED: {e}"));
        println!("{:<14} {:>8.1} ms  {status}", step.name, step.took.as_secs_f64() * 1000.0);
    }
    if let Err(err) = &outcome {
        println!("probe stopped: {err:#}");
    }
    if let Some(account) = &probe.account_url {
        println!("account {account}");
    }
    println!("{} in {:.1} s", if passed { "PASSED" } else { "FAILED" }, took.as_secs_f64());

    let report = report::Report {
        environment: args.environment.clone(),
        directory: probe.directory_url.clone(),
        version: server_build.as_ref().map(|build| build.version.clone()),
        commit: server_build.as_ref().map(|build| build.commit.clone()),
        image_digest: args.image_digest.clone(),
        account: probe.account_url.clone(),
        passed,
        started_at: report::rfc3339(started_at),
        finished_at: report::rfc3339(time::OffsetDateTime::now_utc()),
        steps: probe
            .steps
            .iter()
            .map(|step| report::StepReport {
                name: step.name.to_owned(),
                seconds: step.took.as_secs_f64(),
                error: step.error.clone(),
            })
            .collect(),
    };
    let prometheus = report.prometheus(took);
    if let Some(path) = &args.metrics_file {
        std::fs::write(path, &prometheus).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.report_json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(gateway) = &args.push_gateway
        && let Err(err) = report::push(&plain_http, gateway, args.environment.as_deref(), &prometheus).await
    {
        eprintln!("quarry probe: the metrics were not pushed: {err:#}");
        return Ok(if passed { Verdict::NotPushed } else { Verdict::Failed });
    }
    Ok(if passed { Verdict::Passed } else { Verdict::Failed })
}

struct Probe {
    target: Target,
    directory_url: String,
    dns_hook: Option<PathBuf>,
    name: String,
    /// Where the persistent account key is kept (`--account-key`); `None`: a fresh account each run.
    account_key: Option<PathBuf>,
    /// The account the probe used, once known.
    account_url: Option<String>,
    /// How long the CRL may take to list the revoked serial (zero: not waited for).
    crl_wait: Duration,
    /// How many distinct logs' SCTs the certificate must embed (zero: not checked).
    min_scts: usize,
    /// For requests beside ACME (the CRL).
    plain_http: AcmeClient,
    steps: Vec<Step>,
}

impl Probe {
    /// Times `work` as the step `name`; a failure is recorded and stops the probe.
    async fn step<T>(
        &mut self,
        name: &'static str,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        self.step_within(name, STEP_TIMEOUT, work).await
    }

    /// As [`Probe::step`], for a step that may take up to `limit`.
    async fn step_within<T>(
        &mut self,
        name: &'static str,
        limit: Duration,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let result = match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!("no answer within {limit:?}")),
        };
        self.steps.push(Step { name, took: started.elapsed(), error: result.as_ref().err().map(|e| format!("{e:#}")) });
        result.map_err(|e| anyhow!("{name}: {e:#}"))
    }

    async fn issue_and_revoke(&mut self) -> anyhow::Result<()> {
        let (url, ca) = (self.target.directory_url.clone(), self.target.tls_ca.clone());
        let client = self.step("directory", AcmeClient::new(&url, ca.as_deref())).await?;
        let key_file = self.account_key.clone();
        let account = self.step("new-account", account(&client, key_file.as_deref())).await?;
        self.account_url = account.url.clone();
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
        let chain = self.step("chain", async { check_chain(&chain, root.as_deref()) }).await?;
        let (leaf, issuer) = (&chain[0], &chain[1]);
        if self.min_scts > 0 {
            let min_scts = self.min_scts;
            // A certificate without its SCTs still gets revoked, so a failed check leaves no live certificate:
            // the failure is recorded, and the probe goes on.
            let _ = self.step("ct", async { check_scts(leaf, min_scts) }).await;
        }
        let revoke = json!({ "certificate": quarry_jose::b64_encode(leaf), "reason": 5 });
        self.step("revoke", expect(client.post(&account, &client.url("revokeCert"), Some(&revoke)), 200)).await?;
        let (plain_http, crl_wait) = (self.plain_http.clone(), self.crl_wait);
        self.step_within("crl", STEP_TIMEOUT + crl_wait, crl::check(&plain_http, leaf, issuer, crl_wait)).await?;
        Ok(())
    }
}

/// The probe's account: with a key file, the account of the kept key (found with `onlyReturnExisting`, created when
/// the server knows none, as after a run that wrote the key but failed to register); without, a fresh one.
async fn account(client: &AcmeClient, key_file: Option<&Path>) -> anyhow::Result<AcmeAccount> {
    let Some(path) = key_file else {
        let mut account = AcmeAccount::generate(quarry_jose::Algorithm::Es256);
        client.register(&mut account).await?;
        return Ok(account);
    };
    let (key, created) = account_key::load_or_create(path)?;
    let mut account = AcmeAccount { key, url: None };
    if !created {
        let lookup = json!({ "onlyReturnExisting": true });
        let found = client.post(&account, &client.url("newAccount"), Some(&lookup)).await?;
        match (found.status, found.problem_type().as_deref()) {
            (200, _) => {
                account.url = Some(found.header("location").context("the existing account has no Location")?);
                return Ok(account);
            }
            (_, Some("accountDoesNotExist")) => {}
            (status, _) => bail!("new-account (onlyReturnExisting) answered {status}: {}", found.json()),
        }
    }
    client.register(&mut account).await?;
    Ok(account)
}

/// Checks that the certificate embeds SCTs from at least `min_logs` distinct logs (whose signatures the probe cannot
/// check: it does not know the logs' keys).
fn check_scts(certificate: &[u8], min_logs: usize) -> anyhow::Result<()> {
    let scts = quarry_core::ct::embedded_scts(certificate).map_err(|e| anyhow!("the SCT list does not parse: {e}"))?;
    let logs: std::collections::BTreeSet<[u8; 32]> = scts.iter().map(|sct| sct.log_id).collect();
    if logs.len() < min_logs {
        bail!(
            "the certificate embeds {} SCTs from {} distinct logs; at least {min_logs} wanted",
            scts.len(),
            logs.len()
        );
    }
    Ok(())
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
/// the DER of every certificate, leaf first (at least two: the leaf and its issuer).
fn check_chain(chain_pem: &str, root: Option<&Path>) -> anyhow::Result<Vec<Vec<u8>>> {
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
    Ok(ders)
}
