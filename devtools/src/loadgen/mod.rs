//! `quarry loadgen`: K concurrent ACME clients, each looping new-order → http-01 → finalize → download over kept-alive
//! connections, for a duration or a number of certificates. It reports certificates per second, latency percentiles
//! per step and per order, errors by problem type, and — read from `/proc` — the CPU time and peak memory of every
//! server process (and its own) per certificate, so that CAs are compared by what a certificate costs them.

mod grpc_calls;
mod session;
mod usage;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use session::{Failure, REQUEST_TIMEOUT, Responder, SETTLE_TIME, Session, bounded, serve_http01};
use usage::{clock_ticks_per_second, cpu_spent, ms, percentile, server_processes, spent_since, usage_of};

/// Clients still running this long after the end of the run are stopped and counted as stalled: longer than an
/// order that settles twice at the limit with every other request at its own.
const WIND_DOWN: Duration = Duration::from_secs(2 * SETTLE_TIME.as_secs() + 8 * REQUEST_TIMEOUT.as_secs());
/// The steps of one order, in order.
const STEPS: [&str; 5] = ["new-order", "validation", "finalize", "download", "order"];

#[derive(clap::Args, Debug)]
pub struct LoadgenArgs {
    #[command(flatten)]
    target: quarry::stack_file::AcmeTarget,
    /// Concurrent clients, each with its own account.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Stop after this long.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Stop after this many certificates in all (or the duration, whichever comes first).
    #[arg(long)]
    orders: Option<usize>,
    /// Answer http-01 here (the CA must validate against this address's port, e.g. `quarry dev
    /// --no-http01-responder` with 127.0.0.1:5002).
    #[arg(long, default_value = "127.0.0.1:5002", conflicts_with = "challtestsrv")]
    http01_listen: SocketAddr,
    /// Instead: have the CA's challenge test server answer (its management API URL).
    #[arg(long)]
    challtestsrv: Option<String>,
    /// Names are `c<client>-o<n>-<run>.<domain>`; the CA must resolve them to the responder.
    #[arg(long, default_value = "loadgen.quarry-test.org")]
    domain: String,
    /// Server processes to measure: those whose program name is one of these.
    #[arg(long, value_delimiter = ',', default_value = "quarry,pebble")]
    processes: Vec<String>,
    /// And among them only these processes (PIDs) and their descendants: a `quarry dev`, a PostgreSQL postmaster.
    /// Without it, any process of those names counts, another stack's or cluster's too.
    #[arg(long, value_delimiter = ',')]
    under: Vec<u32>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// First measure the servers idle for this long, to report their CPU per certificate net of what they spend
    /// anyway (timers, CRL updates).
    #[arg(long, default_value_t = 0)]
    idle_secs: u64,
    /// Retry a failed order (any failure: a 5xx, an invalid order, a broken connection) up to this many times, half
    /// a second after the first failure and twice as long after each next, as real clients do (and `badNonce` up to
    /// three times instead of once): for runs where replicas are killed.
    #[arg(long, default_value_t = 0)]
    retries: usize,
    /// Between two polls of a pending authorization or a processing order, wait the answer's `Retry-After` (capped
    /// by `--retry-after-cap-ms`) as certbot, lego and cert-manager do, instead of polling again after 20 ms.
    #[arg(long)]
    honour_retry_after: bool,
    /// The longest `Retry-After` waited with `--honour-retry-after`.
    #[arg(long, default_value_t = 3_000, requires = "honour_retry_after")]
    retry_after_cap_ms: u64,
    /// Count the gRPC calls the services served per certificate, by RPC, from their metrics (`--stack` of a `quarry
    /// dev --metrics-base-port`; background work such as CRL updates is counted too).
    #[arg(long)]
    count_grpc_calls: bool,
}

/// Latencies of every step, and failures by kind, of one client or all.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    failures: BTreeMap<String, usize>,
    certificates: usize,
    requests: usize,
    /// POST-as-GETs of pending authorizations and processing orders (part of `requests`).
    polls: usize,
    /// Orders begun (each counts once, however often it was retried), and retries made.
    orders: usize,
    retries: usize,
    not_problems: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (step, mut samples) in other.latencies {
            self.latencies.entry(step).or_default().append(&mut samples);
        }
        for (kind, count) in other.failures {
            *self.failures.entry(kind).or_default() += count;
        }
        self.certificates += other.certificates;
        self.requests += other.requests;
        self.polls += other.polls;
        self.orders += other.orders;
        self.retries += other.retries;
        self.not_problems.extend(other.not_problems);
    }
}

/// Certificates left to issue, shared by every client.
struct Budget {
    deadline: Instant,
    remaining: Mutex<Option<usize>>,
}

impl Budget {
    fn take(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        let mut remaining = self.remaining.lock().unwrap_or_else(PoisonError::into_inner);
        match remaining.as_mut() {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
}

/// How long a client waits before its first retry of a failed order or account (a replica being replaced gets a
/// moment), twice as long before each further one, as clients back off.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The pause before retry number `attempt` (0 for the first).
fn retry_pause(attempt: usize) -> Duration {
    RETRY_PAUSE * (1 << attempt.min(6)) as u32
}

/// One client: an account, then orders until the budget is spent; each failure retried up to `retries` times.
async fn client_loop(
    mut session: Session,
    index: usize,
    run: u64,
    domain: String,
    responder: Responder,
    budget: Arc<Budget>,
    retries: usize,
) -> Tally {
    let mut tally = Tally::default();
    session.nonce_retries = if retries > 0 { 3 } else { 1 };
    for attempt in 0..=retries {
        match session.post(&session.url("newAccount"), Some(&json!({ "termsOfServiceAgreed": true }))).await {
            Ok(reply) if reply.status == 201 || reply.status == 200 => {
                session.account_url = reply.location;
                break;
            }
            Ok(reply) => *tally.failures.entry(format!("new-account: {}", reply.problem())).or_default() += 1,
            Err(err) => *tally.failures.entry(format!("new-account: transport: {err}")).or_default() += 1,
        }
        if attempt == retries {
            tally.not_problems = std::mem::take(&mut session.not_problems);
            return tally;
        }
        tokio::time::sleep(retry_pause(attempt)).await;
    }
    let key = rcgen::KeyPair::generate().expect("generate a certificate key");
    let mut n = 0;
    while budget.take() {
        n += 1;
        tally.orders += 1;
        for attempt in 0..=retries {
            // Each attempt a name of its own: an order the CA failed stays failed.
            let name = format!("c{index}-o{n}-a{attempt}-{run:x}.{domain}");
            let started = Instant::now();
            match one_order(&mut session, &name, &key, &responder, &mut tally).await {
                Ok(()) => {
                    tally.certificates += 1;
                    tally.latencies.entry("order").or_default().push(started.elapsed());
                    break;
                }
                Err(Failure(kind)) => *tally.failures.entry(kind).or_default() += 1,
            }
            if attempt < retries {
                tally.retries += 1;
                session.nonce = None;
                tokio::time::sleep(retry_pause(attempt)).await;
            }
        }
    }
    tally.requests = session.requests;
    tally.polls = session.polls;
    tally.not_problems = std::mem::take(&mut session.not_problems);
    tally
}

async fn one_order(
    session: &mut Session,
    name: &str,
    key: &rcgen::KeyPair,
    responder: &Responder,
    tally: &mut Tally,
) -> Result<(), Failure> {
    fn transport(step: &'static str) -> impl Fn(anyhow::Error) -> Failure {
        move |e| Failure(format!("{step}: transport: {e}"))
    }
    let mut timed = Instant::now();
    let identifiers = json!({ "identifiers": [{ "type": "dns", "value": name }] });
    let order = session.post(&session.url("newOrder"), Some(&identifiers)).await.map_err(transport("new-order"))?;
    if order.status != 201 {
        return Err(Failure(format!("new-order: {}", order.problem())));
    }
    let order_url = order.location.clone().ok_or_else(|| Failure("new-order: no Location".into()))?;
    let order = order.json();
    tally.latencies.entry("new-order").or_default().push(timed.elapsed());

    timed = Instant::now();
    let authz_url = order["authorizations"][0].as_str().unwrap_or_default().to_owned();
    let authz = session.post(&authz_url, None).await.map_err(transport("validation"))?.json();
    let challenge = authz["challenges"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == "http-01"))
        .ok_or_else(|| Failure("validation: no http-01".into()))?;
    let token = challenge["token"].as_str().unwrap_or_default().to_owned();
    let key_authorization = quarry_jose::key_authorization(&token, &session.key.jwk());
    responder.answer(&token, &key_authorization).await?;
    let challenge_url = challenge["url"].as_str().unwrap_or_default().to_owned();
    let answered = session.post(&challenge_url, Some(&json!({}))).await.map_err(transport("validation"))?;
    if answered.status != 200 {
        responder.forget(&token);
        return Err(Failure(format!("validation: {}", answered.problem())));
    }
    let authz = session.settle(&authz_url, &["pending"]).await;
    responder.forget(&token);
    let authz = authz?;
    if authz["status"] != "valid" {
        let problem = authz["challenges"][0]["error"]["type"]
            .as_str()
            .unwrap_or("invalid")
            .rsplit(':')
            .next()
            .unwrap_or("invalid");
        return Err(Failure(format!("validation: {problem}")));
    }
    tally.latencies.entry("validation").or_default().push(timed.elapsed());

    timed = Instant::now();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| Failure(format!("csr: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(key).map_err(|e| Failure(format!("csr: {e}")))?;
    let finalize_url = order["finalize"].as_str().unwrap_or_default().to_owned();
    let finalized = session
        .post(&finalize_url, Some(&json!({ "csr": quarry_jose::b64_encode(csr.der()) })))
        .await
        .map_err(transport("finalize"))?;
    if finalized.status != 200 {
        return Err(Failure(format!("finalize: {}", finalized.problem())));
    }
    let mut order = finalized.json();
    if order["status"] == "processing" {
        order = session.settle(&order_url, &["processing"]).await?;
    }
    if order["status"] != "valid" {
        return Err(Failure(format!("finalize: order {}", order["status"])));
    }
    tally.latencies.entry("finalize").or_default().push(timed.elapsed());

    timed = Instant::now();
    let certificate_url = order["certificate"].as_str().unwrap_or_default().to_owned();
    let chain = session.post(&certificate_url, None).await.map_err(transport("download"))?;
    if chain.status != 200 || !chain.body.starts_with(b"-----BEGIN CERTIFICATE-----") {
        return Err(Failure(format!("download: {}", chain.problem())));
    }
    tally.latencies.entry("download").or_default().push(timed.elapsed());
    Ok(())
}

/// Whether the CA at `url` is reached over IPv4 loopback (`localhost` or a 127.0.0.0/8 address).
fn is_ipv4_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Client `index`'s own source address on loopback (127.0.0.2 to 127.0.0.251): real clients come from many
/// addresses, and a CA limits connections per address (the wfe's `max_connections_per_client`), which one address
/// for every load client would meet at 64 clients.
fn loopback_source(index: usize) -> std::net::IpAddr {
    let last = 2 + (index % 250) as u8;
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
}

/// Runs the load and prints the report; `Ok(false)` when no certificate was issued.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<bool> {
    let target = args.target.resolve()?;
    let (directory_url, tls_ca) = (target.directory_url, target.tls_ca);
    if args.count_grpc_calls && target.metrics.is_empty() {
        anyhow::bail!("--count-grpc-calls needs --stack of a `quarry dev` started with --metrics-base-port");
    }
    // The publisher's client for CT logs is the one needed here too: pooled keep-alive connections, HTTPS trusting
    // the system's roots and the given CA, plain HTTP accepted.
    let tls = quarry_core::http_client::tls_config(tls_ca.as_deref())?;
    let http = quarry_core::http_client::http_client_from(tls.clone(), None);
    let on_loopback = is_ipv4_loopback(&directory_url);
    let directory = {
        let request = http::Request::get(&directory_url).body(Full::new(Bytes::new()))?;
        let fetch = async { anyhow::Ok(http.request(request).await?.into_body().collect().await?.to_bytes()) };
        let body = bounded(fetch).await.with_context(|| format!("GET {directory_url}"))?;
        serde_json::from_slice::<Value>(&body).context("the directory is not JSON")?
    };
    let responder = match &args.challtestsrv {
        Some(url) => Responder::ChallTestSrv {
            url: url.trim_end_matches('/').to_owned(),
            // The ACME client's pool serves plain HTTP too.
            http: Box::new(http.clone()),
        },
        None => {
            let tokens = Arc::new(Mutex::new(HashMap::new()));
            serve_http01(args.http01_listen, tokens.clone()).await?;
            Responder::Own(tokens)
        }
    };

    let ticks = clock_ticks_per_second();
    let idle_cpu_ms_per_sec = if args.idle_secs > 0 {
        let start = server_processes(&args.processes, &args.under, ticks);
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        let end = server_processes(&args.processes, &args.under, ticks);
        Some(ms(cpu_spent(&start, &end)) / args.idle_secs as f64)
    } else {
        None
    };
    let calls_before = if args.count_grpc_calls { Some(grpc_calls::read(&http, &target.metrics).await?) } else { None };
    let before = server_processes(&args.processes, &args.under, ticks);
    let me_before = usage_of(std::process::id(), ticks).map(|u| u.cpu).unwrap_or_default();
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let budget = Arc::new(Budget {
        deadline: Instant::now() + Duration::from_secs(args.duration_secs),
        remaining: Mutex::new(args.orders),
    });
    let started = Instant::now();
    let clients: Vec<_> = (0..args.clients.max(1))
        .map(|index| {
            let source = on_loopback.then(|| loopback_source(index));
            let http = quarry_core::http_client::http_client_from(tls.clone(), source);
            let mut session = Session::new(http, directory.clone());
            session.retry_after_cap = args.honour_retry_after.then(|| Duration::from_millis(args.retry_after_cap_ms));
            let (domain, responder, budget) = (args.domain.clone(), responder.clone(), budget.clone());
            tokio::spawn(client_loop(session, index, run, domain, responder, budget, args.retries))
        })
        .collect();
    let mut tally = Tally::default();
    let give_up = tokio::time::Instant::from_std(budget.deadline) + WIND_DOWN;
    for mut client in clients {
        match tokio::time::timeout_at(give_up, &mut client).await {
            Ok(joined) => tally.merge(joined.map_err(|e| anyhow!("a client panicked: {e}"))?),
            Err(_) => {
                client.abort();
                *tally.failures.entry("client stalled".into()).or_default() += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let after = server_processes(&args.processes, &args.under, ticks);
    let me_after = usage_of(std::process::id(), ticks).map(|u| u.cpu).unwrap_or_default();
    let calls = match &calls_before {
        Some(before) => Some(grpc_calls::made_between(before, &grpc_calls::read(&http, &target.metrics).await?)),
        None => None,
    };

    let failures: usize = tally.failures.values().sum();
    let rate = tally.certificates as f64 / elapsed.as_secs_f64();
    println!(
        "{} clients, {:.1} s: {} certificates ({rate:.2}/s), {failures} failed orders",
        args.clients,
        elapsed.as_secs_f64(),
        tally.certificates
    );
    println!("{:<12} {:>9} {:>9} {:>9} {:>9}", "step (ms)", "p50", "p90", "p99", "max");
    let mut steps = serde_json::Map::new();
    for step in STEPS {
        let mut samples = tally.latencies.remove(step).unwrap_or_default();
        samples.sort();
        let [p50, p90, p99] = [50.0, 90.0, 99.0].map(|p| percentile(&samples, p));
        let max = samples.last().copied().unwrap_or_default();
        println!("{step:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1}", ms(p50), ms(p90), ms(p99), ms(max));
        steps.insert(step.into(), json!({ "p50_ms": ms(p50), "p90_ms": ms(p90), "p99_ms": ms(p99), "max_ms": ms(max), "count": samples.len() }));
    }
    for (kind, count) in &tally.failures {
        println!("failed: {count} × {kind}");
    }
    if args.retries > 0 {
        println!("orders: {} begun, {} completed, {} retries", tally.orders, tally.certificates, tally.retries);
    }
    for answer in &tally.not_problems {
        println!("not a problem document: {answer}");
    }
    let per_cert = |cpu: Duration| if tally.certificates == 0 { 0.0 } else { ms(cpu) / tally.certificates as f64 };
    println!("{:<24} {:>12} {:>14}", "process", "CPU ms/cert", "peak RSS MiB");
    let mut total = Duration::ZERO;
    let mut processes = Vec::new();
    for usage in &after {
        let spent = spent_since(&before, usage);
        total += spent;
        println!("{:<24} {:>12.2} {:>14.1}", usage.name, per_cert(spent), usage.peak_rss_kib as f64 / 1024.0);
        processes.push(json!({ "name": usage.name, "pid": usage.pid, "cpu_ms_per_cert": per_cert(spent), "peak_rss_kib": usage.peak_rss_kib }));
    }
    println!("{:<24} {:>12.2}", "all server processes", per_cert(total));
    let net_of_idle = idle_cpu_ms_per_sec.map(|idle| {
        let busy = ms(total) - idle * elapsed.as_secs_f64();
        if tally.certificates == 0 { 0.0 } else { busy.max(0.0) / tally.certificates as f64 }
    });
    if let (Some(idle), Some(net)) = (idle_cpu_ms_per_sec, net_of_idle) {
        println!("{:<24} {:>12.2}   (idle: {idle:.1} ms CPU per second)", "  net of idle", net);
    }
    let own = me_after.saturating_sub(me_before);
    println!("{:<24} {:>12.2}", "loadgen itself", per_cert(own));
    let requests_per_certificate =
        if tally.certificates == 0 { 0.0 } else { tally.requests as f64 / tally.certificates as f64 };
    println!("{:<24} {:>12.1}", "requests per certificate", requests_per_certificate);
    let polls_per_certificate =
        if tally.certificates == 0 { 0.0 } else { tally.polls as f64 / tally.certificates as f64 };
    let pacing = if args.honour_retry_after {
        format!("Retry-After honoured, at most {} ms", args.retry_after_cap_ms)
    } else {
        "every 20 ms".to_owned()
    };
    println!("{:<24} {:>12.1}   (polled {pacing})", "polls per certificate", polls_per_certificate);
    let calls_per_certificate = calls.as_ref().map(|calls| {
        let per = |count: f64| if tally.certificates == 0 { 0.0 } else { count / tally.certificates as f64 };
        let total = per(calls.iter().map(|(_, count)| count).sum());
        println!("{:<24} {:>12.1}", "gRPC calls per cert.", total);
        let by_rpc: serde_json::Map<String, Value> = calls
            .iter()
            .map(|(rpc, count)| {
                println!("  {rpc:<50} {:>8.2}", per(*count));
                (rpc.clone(), json!(per(*count)))
            })
            .collect();
        json!({ "total": total, "by_rpc": by_rpc })
    });
    if let Some(path) = &args.json {
        let report = json!({
            "clients": args.clients,
            "seconds": elapsed.as_secs_f64(),
            "certificates": tally.certificates,
            "certificates_per_second": rate,
            "failures": tally.failures,
            "steps": steps,
            "processes": processes,
            "server_cpu_ms_per_cert": per_cert(total),
            "loadgen_cpu_ms_per_cert": per_cert(own),
            "requests_per_certificate": requests_per_certificate,
            "polls_per_certificate": polls_per_certificate,
            "grpc_calls_per_certificate": calls_per_certificate,
            "honour_retry_after": args.honour_retry_after,
            "retry_after_cap_ms": args.honour_retry_after.then_some(args.retry_after_cap_ms),
            "idle_cpu_ms_per_sec": idle_cpu_ms_per_sec,
            "server_cpu_ms_per_cert_net_of_idle": net_of_idle,
            "orders_begun": tally.orders,
            "retries": tally.retries,
            "not_problem_documents": tally.not_problems,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(tally.certificates > 0)
}
