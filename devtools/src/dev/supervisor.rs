//! The supervisor of `quarry dev`: starts every replica of every service as its own process, restarts one that
//! exits with a growing pause (as a container runtime would), and stops them all on Ctrl-C, which alone stops the
//! stack. Readiness is each replica's own health check — gRPC health over mutual TLS, the wfe's `/healthz` — never
//! an open port.

use quarry::stack_file::ReplicaInfo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The pause before the first restart of a replica that exited…
const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(500);
/// …doubling with each quick exit, up to this.
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(15);
/// A replica that ran this long before exiting is restarted after the first pause again.
const STABLE_RUN: Duration = Duration::from_secs(30);

/// How one replica's readiness is asked.
#[derive(Debug, Clone)]
pub enum Health {
    /// gRPC health over mutual TLS, of the server with this certificate name.
    Grpc { addr: SocketAddr, server_name: String },
    /// The wfe's `GET /healthz` over HTTPS.
    Https { addr: SocketAddr },
    /// Nothing to ask (the crl-updater serves nothing): running is ready.
    Running,
}

/// One process of the stack.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    /// The service it is a replica of (`sa`, `va-remote-a`…).
    pub service: &'static str,
    /// `sa`, `sa-2`…: its log is `<name>.log`.
    pub name: String,
    /// The `quarry` subcommand.
    pub subcommand: &'static str,
    pub config: PathBuf,
    pub health: Health,
    /// Where it serves its metrics, if it does.
    pub metrics: Option<SocketAddr>,
}

/// A replica under supervision.
struct Supervised {
    spec: ReplicaSpec,
    log: PathBuf,
    /// The running process's id; 0 between a crash and its restart.
    pid: AtomicU32,
    restarts: AtomicU32,
}

/// Every replica of the stack, kept running.
pub struct Supervisor {
    replicas: Vec<Arc<Supervised>>,
    stop: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Bumped whenever a replica (re)starts, so that the stack file follows.
    changed: watch::Sender<u64>,
}

impl Supervisor {
    /// Starts every replica; their output goes to `<logs_dir>/<name>.log`, appended across restarts.
    pub fn start(specs: Vec<ReplicaSpec>, exe: &Path, logs_dir: &Path) -> anyhow::Result<Arc<Self>> {
        let replicas: Vec<Arc<Supervised>> = specs
            .into_iter()
            .map(|spec| {
                let log = logs_dir.join(format!("{}.log", spec.name));
                Arc::new(Supervised { spec, log, pid: AtomicU32::new(0), restarts: AtomicU32::new(0) })
            })
            .collect();
        // Each run of `quarry dev` starts its logs afresh; restarts within it append.
        for replica in &replicas {
            std::fs::File::create(&replica.log)?;
        }
        let (changed, _) = watch::channel(0);
        let supervisor = Arc::new(Self { replicas, stop: CancellationToken::new(), tasks: Mutex::default(), changed });
        let tasks = supervisor
            .replicas
            .iter()
            .map(|replica| tokio::spawn(supervise(Arc::clone(replica), exe.to_owned(), Arc::clone(&supervisor))))
            .collect();
        *supervisor.tasks.lock().unwrap_or_else(PoisonError::into_inner) = tasks;
        Ok(supervisor)
    }

    /// Notified whenever a replica (re)starts.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What the stack file lists.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        self.replicas
            .iter()
            .map(|replica| ReplicaInfo {
                name: replica.spec.name.clone(),
                service: replica.spec.service.to_owned(),
                address: match &replica.spec.health {
                    Health::Grpc { addr, .. } | Health::Https { addr } => Some(*addr),
                    Health::Running => None,
                },
                pid: replica.pid.load(Ordering::SeqCst),
                restarts: replica.restarts.load(Ordering::SeqCst),
                log: replica.log.clone(),
                metrics: replica.spec.metrics,
            })
            .collect()
    }

    /// Waits until every replica is ready, by its own health check; on `timeout`, says which is not, why, and
    /// where its log is.
    pub async fn wait_ready(&self, checker: &HealthChecker, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        for replica in &self.replicas {
            let mut last = String::from("not started");
            loop {
                if replica.pid.load(Ordering::SeqCst) != 0 {
                    match checker.check(&replica.spec.health).await {
                        Ok(()) => break,
                        Err(why) => last = why,
                    }
                }
                if started.elapsed() > timeout {
                    let restarts = replica.restarts.load(Ordering::SeqCst);
                    anyhow::bail!(
                        "{} is not ready after {timeout:?} ({last}; restarted {restarts} times); see {}",
                        replica.spec.name,
                        replica.log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Stops every replica and waits for them.
    pub async fn stop(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Keeps one replica running until the supervisor stops.
async fn supervise(replica: Arc<Supervised>, exe: PathBuf, supervisor: Arc<Supervisor>) {
    let mut pause = FIRST_RESTART_PAUSE;
    loop {
        let started = Instant::now();
        let mut child = match spawn(&replica, &exe) {
            Ok(child) => child,
            Err(err) => {
                eprintln!("quarry dev: cannot start {}: {err:#}", replica.spec.name);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = supervisor.stop.cancelled() => return,
                }
                continue;
            }
        };
        replica.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
        supervisor.changed.send_modify(|n| *n += 1);
        let status = tokio::select! {
            status = child.wait() => status,
            () = supervisor.stop.cancelled() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return;
            }
        };
        replica.pid.store(0, Ordering::SeqCst);
        if started.elapsed() >= STABLE_RUN {
            pause = FIRST_RESTART_PAUSE;
        }
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        let note = format!("{} exited ({status}); restarting in {pause:?}", replica.spec.name);
        eprintln!("quarry dev: {note}");
        append_line(&replica.log, &format!("quarry dev: {note}"));
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = supervisor.stop.cancelled() => return,
        }
        pause = (pause * 2).min(MAX_RESTART_PAUSE);
        replica.restarts.fetch_add(1, Ordering::SeqCst);
    }
}

fn spawn(replica: &Supervised, exe: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().append(true).create(true).open(&replica.log)?;
    let mut command = Command::new(exe);
    // A dozen or more processes share this host's cores: one runtime worker each (unless the caller chose
    // otherwise) spares the cross-thread wake-ups that cost about a sixth of the CPU per certificate with a worker
    // per core.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        command.env("TOKIO_WORKER_THREADS", "1");
    }
    Ok(command
        .arg(replica.spec.subcommand)
        .arg("--config")
        .arg(&replica.spec.config)
        .env(quarry_core::service::SUPERVISED_ENV, "1")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

/// Asks replicas whether they are ready, as the stack's operator (the admin identity) and trusting the wfe's
/// HTTPS CA.
pub struct HealthChecker {
    tls: quarry_core::config::TlsFiles,
    https: tokio_rustls::TlsConnector,
}

/// The name on the dev wfe's HTTPS certificate: each replica is reached at its own address but checked as the
/// clients see it.
const WFE_NAME: &str = "localhost";

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl HealthChecker {
    pub fn new(tls: quarry_core::config::TlsFiles, https_ca: &Path) -> anyhow::Result<Self> {
        Ok(Self { tls, https: quarry::health::tls_connector(https_ca)? })
    }

    /// A checker that knows the wfe by its very certificate (the first of the PEM file `https_cert`), whoever issued
    /// it: an operator's certificate given to `quarry dev` comes from a CA it does not know.
    pub fn pinned(tls: quarry_core::config::TlsFiles, https_cert: &Path) -> anyhow::Result<Self> {
        Ok(Self { tls, https: quarry::health::pinned_connector(https_cert)? })
    }

    pub async fn check(&self, health: &Health) -> Result<(), String> {
        match health {
            Health::Running => Ok(()),
            Health::Grpc { addr, server_name } => {
                let client = quarry_core::config::GrpcClientConfig::at(format!("https://{addr}"), server_name.clone());
                let channel = quarry_core::grpc::channel(&client, &self.tls).map_err(|e| e.to_string())?;
                quarry_core::grpc::check_health(channel, "", Some(Instant::now() + CHECK_TIMEOUT)).await
            }
            Health::Https { addr } => {
                let check = quarry::health::wfe_healthz(&self.https, *addr, WFE_NAME);
                match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                    Ok(Ok(200)) => Ok(()),
                    Ok(Ok(status)) => Err(format!("/healthz answered {status}")),
                    Ok(Err(err)) => Err(format!("unreachable ({err})")),
                    Err(_) => Err("no answer in time".to_owned()),
                }
            }
        }
    }
}
