//! The chaos test: `quarry dev --replicas 2` under load from `quarry loadgen` with the retries real clients make,
//! while one replica of every service after another is killed with SIGKILL (sa and ca included), then checked:
//! nearly every order completed, every error a client saw was a problem document, no certificate signed without a
//! stored record, and nothing left mid-way once the sweepers' deadlines have passed. On PostgreSQL the database is
//! also restarted during the load, and the rate limits' Redis killed and later started again (the limits fail open
//! while it is away, counted, without slowing requests down, and use it again once it is back).
//!
//! Kept short here (`.ci/run`); `QUARRY_CHAOS_SECS` makes the load run longer (README, "Replicas and crashes").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::full_stack::{Stack, free_port_range, http_get, logs, metric};

/// The services in the order their replicas are killed.
const VICTIMS: [&str; 10] =
    ["nonce", "sa", "va-remote-a", "va-remote-b", "va", "publisher", "ca", "ra", "wfe", "crl-updater"];
/// Between two kills.
const KILL_EVERY: Duration = Duration::from_millis(2_500);
/// How long the sweepers may take, after the load, to leave nothing mid-way: the longest deadline (a timeout of
/// 60 s plus 30 s to record the outcome), a sweep period, and margin.
const RECOVERY_TIME: Duration = Duration::from_secs(120);

/// How long the load runs.
fn load_time() -> Duration {
    let secs = std::env::var("QUARRY_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(35);
    Duration::from_secs(secs)
}

/// What one chaos run measured, for its assertions and the closing note.
#[derive(Debug)]
struct ChaosReport {
    begun: u64,
    completed: u64,
    retries: u64,
    not_problems: Vec<String>,
    kills: usize,
    /// Final certificates a killed ca signed but could not store, adopted from its audit log.
    orphans: usize,
}

/// A replica's current process id, from the stack file `quarry dev` keeps up to date.
fn pid_of(stack_file: &Path, name: &str) -> Option<u32> {
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(stack_file).ok()?).ok()?;
    info["replicas"].as_array()?.iter().find(|r| r["name"] == name)?["pid"].as_u64().map(|pid| pid as u32)
}

fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -9 {pid}");
}

/// A PostgreSQL cluster of this test's own (it is restarted under load), started with `scripts/postgres.sh`.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
    }

    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port_range();
        let out = std::process::Command::new("bash")
            .arg(Self::script())
            .args(["start".as_ref(), dir.path().as_os_str(), port.to_string().as_ref()])
            .output()
            .expect("run postgres.sh");
        assert!(out.status.success(), "postgres.sh: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let port = url.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse().ok()).expect("port");
        Self { dir, port }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, action: &str) {
        let mut command = std::process::Command::new("bash");
        command.arg(Self::script()).arg(action).arg(self.dir.path());
        if action == "start" {
            command.arg(self.port.to_string());
        }
        let out = command.output().expect("run postgres.sh");
        assert!(out.status.success(), "postgres.sh {action}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash").arg(Self::script()).arg("stop").arg(self.dir.path()).output();
    }
}

/// A Redis of this test's own (it is killed under load, then started again on the same port, empty).
struct PrivateRedis {
    process: std::sync::Mutex<std::process::Child>,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = free_port_range();
        Self { process: std::sync::Mutex::new(Self::spawn(port)), port }
    }

    fn spawn(port: u16) -> std::process::Child {
        std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    fn kill(&self) {
        let mut process = self.process.lock().unwrap();
        let _ = process.kill();
        let _ = process.wait();
    }

    fn restart(&self) {
        *self.process.lock().unwrap() = Self::spawn(self.port);
    }

    /// How many keys it holds (the rate limits' buckets), through `redis-cli`.
    fn keys(&self) -> u64 {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "DBSIZE"])
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("DBSIZE: {out:?}"))
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Rows left mid-way: authorizations being validated and orders processing, neither expired.
pub(crate) async fn unfinished(db_url: &str) -> (i64, i64) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(db_url).await.expect("connect to the stack's database");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut counts = Vec::new();
    for query in [
        "SELECT COUNT(*) FROM authorizations WHERE status = 'pending' AND attempted IS NOT NULL AND expires > $1",
        "SELECT COUNT(*) FROM orders WHERE began_processing != 0 AND certificate_serial = '' AND error IS NULL AND expires > $1",
    ] {
        let count: i64 = sqlx::query_scalar(query).bind(now).fetch_one(&mut db).await.expect("count rows left mid-way");
        counts.push(count);
    }
    let (validations, orders) = (counts[0], counts[1]);
    (validations, orders)
}

/// Runs `quarry admin adopt-orphans` over every ca replica's log of the stack, as its operator would; returns how
/// many final certificates the logs show signed but the database lacks (before adopting them, with `execute`).
pub(crate) fn adopt_orphans(data_dir: &Path, execute: bool) -> usize {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"));
    command.arg("admin").arg("--config").arg(data_dir.join("config/admin.toml")).arg("adopt-orphans");
    for entry in std::fs::read_dir(data_dir.join("logs")).expect("logs").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "ca.log" || name.starts_with("ca-") {
            command.arg("--log").arg(entry.path());
        }
    }
    if execute {
        command.arg("--execute");
    }
    let out = command.output().expect("run quarry admin");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    let summary = printed.lines().find(|line| line.contains(" signed in the logs, ")).expect("a summary");
    assert!(!summary.starts_with("0 signed"), "the cas logged no signed certificate: {printed}");
    summary.split(", ").nth(1).and_then(|rest| rest.split_whitespace().next()?.parse().ok()).expect("a count")
}

/// Runs the load, the kills and the checks against a stack on `db` (SQLite when `None`).
async fn chaos(postgres: Option<&PrivatePostgres>, redis: Option<&PrivateRedis>) -> ChaosReport {
    let metrics_base = free_port_range();
    let mut args =
        vec!["--replicas".to_owned(), "2".to_owned(), "--metrics-base-port".into(), metrics_base.to_string()];
    if let Some(redis) = redis {
        args.extend(["--redis".to_owned(), format!("redis://127.0.0.1:{}/", redis.port)]);
    }
    let db_url = postgres.map(PrivatePostgres::url);
    let stack = Stack::start_with_args(db_url.as_deref(), None, &args).await;
    let db_url = db_url.unwrap_or_else(|| format!("sqlite://{}?mode=ro", stack.data_dir().join("quarry.db").display()));
    let stack_file = stack.data_dir().join("stack.json");
    let report_file = stack.dir.path().join("loadgen.json");
    let load = tokio::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("loadgen")
        .arg("--stack")
        .arg(&stack_file)
        .arg("--challtestsrv")
        .arg(format!("http://{}", stack.challtestsrv.management_addr))
        .args(["--clients", "4", "--retries", "5", "--processes", "none"])
        .arg("--duration-secs")
        .arg(load_time().as_secs().to_string())
        .arg("--json")
        .arg(&report_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start quarry loadgen");

    // Kill one replica of each service in turn, while the load runs; the database and Redis get theirs too.
    let started = Instant::now();
    let mut kills = 0;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (round, victim) in VICTIMS.iter().enumerate() {
        let name = if round % 2 == 0 || *victim == "crl-updater" { victim.to_string() } else { format!("{victim}-2") };
        let pid =
            pid_of(&stack_file, &name).unwrap_or_else(|| panic!("{name} is not running{}", logs(stack.dir.path())));
        sigkill(pid);
        kills += 1;
        if round == 3
            && let Some(postgres) = postgres
        {
            postgres.run("stop");
            tokio::time::sleep(Duration::from_secs(1)).await;
            postgres.run("start");
        }
        // Redis dies for a third of the kills, and comes back empty.
        if let Some(redis) = redis {
            match round {
                4 => redis.kill(),
                7 => redis.restart(),
                _ => {}
            }
        }
        tokio::time::sleep(KILL_EVERY).await;
    }
    assert!(started.elapsed() < load_time() + Duration::from_secs(5), "the kills outlasted the load");

    let output = tokio::time::timeout(load_time() + Duration::from_secs(120), load.wait_with_output())
        .await
        .expect("loadgen finished in time")
        .expect("loadgen ran");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{printed}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("loadgen report")).expect("json report");
    let count = |key: &str| report[key].as_u64().unwrap_or_default();

    // Every replica of the services that call others stood in a lane of its own, a killed one too once restarted:
    // ranks 0 and 1 of 2 (its metrics port is the stack's base plus the service's place in the start order).
    for (service, place) in [("va", 4), ("ca", 6), ("ra", 8), ("wfe", 9)] {
        let mut ranks = Vec::new();
        for index in 0..2u8 {
            let url = format!("http://127.0.0.{}:{}/metrics", index + 1, metrics_base + place);
            let (status, body) = http_get(&url).await;
            assert_eq!(status, 200, "{url}");
            let text = String::from_utf8_lossy(&body);
            assert_eq!(metric(&text, "quarry_lane_replicas", &[]), 2.0, "{service} replica {index}");
            ranks.push(metric(&text, "quarry_lane_rank", &[]));
        }
        assert_eq!(ranks, [0.0, 1.0], "the lanes of the {service}'s replicas");
    }

    if let Some(redis) = redis {
        // The ras carried on without their rate-limit store, counting every check they could not make, and used
        // it again once it was back.
        let mut errors = 0.0;
        for index in 0..2u8 {
            let port = metrics_base + 8;
            let (status, body) = http_get(&format!("http://127.0.0.{}:{port}/metrics", index + 1)).await;
            assert_eq!(status, 200);
            errors += metric(&String::from_utf8_lossy(&body), "quarry_ratelimit_store_errors_total", &[]);
        }
        assert!(errors > 0.0, "no rate-limit store error was counted after Redis stopped");
        assert!(redis.keys() > 0, "no bucket was written to Redis after it came back");
    }

    // Nothing stays mid-way once the sweepers' deadlines have passed.
    let recovering = Instant::now();
    loop {
        let (validations, orders) = unfinished(&db_url).await;
        if validations == 0 && orders == 0 {
            break;
        }
        assert!(
            recovering.elapsed() < RECOVERY_TIME,
            "{validations} validations and {orders} orders still mid-way{}",
            logs(stack.dir.path())
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // PostgreSQL restarts once more with the stack idle: every pooled connection it ended is replaced before use, so
    // the first calls after it (the adoption below) do not fail.
    if let Some(postgres) = postgres {
        postgres.run("stop");
        postgres.run("start");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // A ca killed between signing a certificate and storing it leaves it in its audit log only: adopted from there.
    let orphans = adopt_orphans(&stack.data_dir(), true);
    assert_eq!(adopt_orphans(&stack.data_dir(), false), 0, "certificates signed but still not stored");

    ChaosReport {
        begun: count("orders_begun"),
        completed: count("certificates"),
        retries: count("retries"),
        not_problems: report["not_problem_documents"]
            .as_array()
            .map(|all| all.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        kills,
        orphans,
    }
}

fn check(report: &ChaosReport) {
    eprintln!(
        "chaos: {} orders begun, {} completed, {} retries, {} replicas killed, {} orphans adopted",
        report.begun, report.completed, report.retries, report.kills, report.orphans
    );
    assert!(report.begun > 20, "too little load to judge: {report:?}");
    assert!(report.completed * 100 >= report.begun * 99, "fewer than 99 % of orders completed: {report:?}");
    assert!(report.not_problems.is_empty(), "errors that were not problem documents: {report:?}");
    assert_eq!(report.kills, VICTIMS.len());
}

#[tokio::test]
async fn killing_any_replica_under_load_loses_nothing_on_sqlite() {
    check(&chaos(None, None).await);
}

#[tokio::test]
async fn killing_any_replica_and_restarting_postgresql_under_load_loses_nothing() {
    if std::env::var_os(quarry_testkit::db::POSTGRES_ENV).is_none() {
        eprintln!("{} is not set: no PostgreSQL here (scripts/test.sh installs it)", quarry_testkit::db::POSTGRES_ENV);
        return;
    }
    let postgres = PrivatePostgres::start();
    let redis = std::process::Command::new("redis-server").arg("--version").output().is_ok().then(PrivateRedis::start);
    check(&chaos(Some(&postgres), redis.as_ref()).await);
}
